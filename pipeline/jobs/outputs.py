"""Which of a job's objects under ``outputs/<job_id>/`` are still needed: decided here, only here.

A job's outputs are its attempts' files (``attempt-<n>.<ext>``: audio, subtitles) and its durable
chunks (``chunks/``). The rule:

- **The result is the commit point.** Once ``results/<job_id>.json`` exists, exactly the keys it
  names are needed, for good; everything else under the prefix (other attempts' files, chunks) is
  garbage, whatever the status says.
- **No result, and the job has ended** (a final status): nothing is needed.
- **No result, and the job has not ended**: everything may still be needed. Chunks serve a resumed
  attempt; any attempt's files may still be named, because an attempt paused past its lease may
  wake up and write the result. Nothing is removed then, with one exception that only the attempt
  itself can vouch for: files it uploaded before it ever sent its result (it is handing the job
  back, so it will never name them).

The worker applies the rule when an attempt ends (``after_end``: after the final status, while it
still holds the message) or hands the job back (``after_release``); the reconciler applies
``unneeded`` to its listings for jobs whose worker died before cleaning up. Removal is batched
(DeleteObjects, 1,000 keys a request). A removal that fails is left to the reconciler: an unneeded
object costs storage, a removed needed one costs the job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pipeline.cloud.store import Store
from pipeline.jobs import keys
from pipeline.jobs.contract import JobResult

log = logging.getLogger(__name__)


def named_keys(result: JobResult, bucket: str) -> set[str]:
    """The output keys a result names (its audio and subtitles)."""
    uris = [result.audio.uri, *result.subtitles.values()]
    return {keys.key_from_uri(bucket, u) for u in uris}


def unneeded(found: Iterable[str], *, named: set[str] | None, ended: bool) -> list[str]:
    """Of ``found`` (keys under one job's ``outputs/<job_id>/``), those no longer needed.

    ``named``: the keys the job's result names, or None when it has no result; ``ended``: whether
    its status is final."""
    if named is not None:
        return sorted(k for k in found if k not in named)
    return sorted(found) if ended else []


class JobOutputs:
    """One job's outputs, as the worker handling it sees them."""

    def __init__(self, store: Store, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    @property
    def prefix(self) -> str:
        return f"{keys.OUTPUTS}{self.job_id}/"

    async def named(self) -> set[str] | None:
        """The keys the job's result names; None when there is no result."""
        result = await self.store.get_model(keys.result_key(self.job_id), JobResult)
        return None if result is None else named_keys(result, self.store.bucket)

    async def after_end(self, named: set[str] | None, *, known: bool, written: set[str]) -> int:
        """The job has ended (its final status is written). ``named``: the result's keys when
        the caller knows the result (it published or adopted it), else None (read here, only if
        there is something to remove). ``written``: the keys this attempt wrote; ``known``: they
        are all the job's outputs (a first attempt), so nothing needs listing.

        A job that ended without a result leaves other attempts' files to the reconciler, which
        removes them once they are older than its threshold: an attempt paused past its lease
        could still wake up and name them in a result (a second fault, but a cheap precaution)."""
        found = set(written) if known else set(await self.store.list_keys(self.prefix))
        if not found:
            return 0
        if named is None:
            named = await self.named()  # a final state without a result should have none; look
        if named is None:
            found = {k for k in found if k in written or keys.is_chunk_key(k)}
        garbage = unneeded(found, named=named, ended=True)
        if garbage:
            await self.store.delete_many(garbage)
            log.info("removed %d unneeded output object(s)", len(garbage))
        return len(garbage)

    async def after_release(self, uploaded: set[str], *, result_sent: bool) -> int:
        """The attempt hands the job back. Its chunks stay (the next attempt resumes from them); its
        own files go only if it never sent a result: one that was sent may have landed, unanswered,
        and then names them."""
        if result_sent or not uploaded:
            return 0
        await self.store.delete_many(uploaded)
        return len(uploaded)
