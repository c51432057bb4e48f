"""The job ledger: claims, leases and state transitions, recorded in ``status/<job_id>.json``.

At-least-once delivery means the same job can reach two workers. Every transition is therefore a
*conditional* write of the status object (S3 ``If-Match`` on the ETag we read, or
``If-None-Match: *`` when there is none), in the spirit of aws-powertools' idempotency records:

- ``claim``: a terminal job is never redone (DONE); a job whose lease is live elsewhere is left to
  its holder (BUSY: the worker puts the message back until the lease would have lapsed, since it
  may be the holder's own redelivered message); otherwise this worker writes PROCESSING with
  ``lease_expires_at`` and owns it.
  A PROCESSING job whose lease expired (its worker died) is taken over, ``attempt`` + 1.
- ``renew``: the heartbeat pushes the lease forward (and publishes progress).
- ``finish`` / ``release``: terminal state, or back to QUEUED for a retry or a shutdown.

If any of these finds the status changed under it, the claim is lost (``LostClaim``): another
worker took the job over, and this one must stop without publishing.

A conditional write whose response was lost can be retried into a 412 although it landed; each
write is recognised by its ``updated_at`` + ``worker`` pair, so that case counts as success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from botocore.exceptions import ClientError

from pipeline.cloud.aws import is_access_denied
from pipeline.cloud.store import PreconditionFailed, Store, Unreadable
from pipeline.jobs import keys
from pipeline.jobs.contract import JobErrorInfo, JobState, JobStatus, Priority, Progress, utcnow

log = logging.getLogger(__name__)

_CLAIM_ROUNDS = 5


class LostClaim(RuntimeError):
    """The status changed under us: another worker owns the job now."""


class ClaimResult(Enum):
    CLAIMED = "claimed"
    DONE = "done"  # terminal already: a duplicate delivery
    BUSY = "busy"  # held by a live lease elsewhere


@dataclass
class Claim:
    job_id: str
    status: JobStatus
    etag: str
    # The heartbeat and the job itself both write through one claim: one write at a time, each
    # built from the status the previous one left, or the second would fail its If-Match.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    # When this worker's last successful write of the status (claim or renewal) was made, on its
    # own monotonic clock, taken before the write: the lease it wrote runs from no earlier.
    written_at: float = field(default_factory=time.monotonic, repr=False)

    @property
    def key(self) -> str:
        return keys.status_key(self.job_id)

    def written_within(self, seconds: float) -> bool:
        return time.monotonic() - self.written_at < seconds


@dataclass(frozen=True)
class Seen:
    """A status as a claim found it (DONE, BUSY): not ours, but what it said and its ETag."""

    status: JobStatus
    etag: str | None


class Ledger:
    def __init__(self, store: Store, worker_id: str, lease_s: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_s = lease_s

    async def read(self, job_id: str) -> tuple[JobStatus | None, str | None]:
        return await self.store.get_model_etag(keys.status_key(job_id), JobStatus)

    async def claim(
        self, job_id: str, created_at: datetime | None, message_id: str | None = None, priority: Priority | None = None
    ) -> tuple[ClaimResult, Claim | Seen]:
        """``message_id``: the SQS message this delivery came with; the claim records it, so that
        other messages for the job can be told apart as duplicates. ``priority``: the inbox the
        delivery's manifest key is in (the effective priority), recorded in the status."""
        key = keys.status_key(job_id)
        for _ in range(_CLAIM_ROUNDS):
            replaced = None
            try:
                status, etag = await self.read(job_id)
            except Unreadable as e:
                # Planted or corrupted: no record of anything. Refusing to claim would leave the job
                # unrun and unended until its message reached the DLQ; the manifest in the inbox is
                # the job, so the claim starts it afresh over the unreadable version (conditional
                # on its ETag, like any claim) and says so in the history.
                log.error("job %s: %s; claiming over it", job_id, e)
                status, etag = None, e.etag
                replaced = "its status document was unreadable (planted or corrupted) and was replaced"
            started, now = time.monotonic(), utcnow()
            if status is not None and status.state.terminal:
                return ClaimResult.DONE, Seen(status, etag)
            note = replaced
            if status is not None and status.state is JobState.PROCESSING:
                lease = status.lease_expires_at
                if lease is not None and lease > now and status.worker != self.worker_id:
                    return ClaimResult.BUSY, Seen(status, etag)
                note = f"took over from {status.worker} (lease expired {lease.isoformat() if lease else 'never set'})"
            base = status or JobStatus.new(job_id, created_at=created_at or now)
            if replaced:
                # Whatever the lost record said, an earlier attempt may have run and published: this
                # one counts as a later attempt, so it looks for a result before rendering (and adopts
                # it) and removes only what no result names.
                base = base.model_copy(update={"attempt": 1})
            new = base.moved_to(JobState.PROCESSING, worker=self.worker_id, note=note, lease_s=self.lease_s, at=now)
            new.message_id = message_id
            new.priority = priority or new.priority
            try:
                new_etag = await self._write(key, new, etag)
            except PreconditionFailed:
                continue  # someone moved first: look again
            return ClaimResult.CLAIMED, Claim(job_id, new, new_etag, written_at=started)
        raise LostClaim(f"{job_id}: status kept changing while claiming")

    async def renew(self, claim: Claim, progress: Progress | None = None) -> None:
        def renewed(status: JobStatus) -> JobStatus:
            if status.state is not JobState.PROCESSING:
                return status  # finished or released meanwhile: a late heartbeat writes nothing
            now = utcnow()
            return status.model_copy(
                update={
                    "updated_at": now,
                    "lease_expires_at": now + timedelta(seconds=self.lease_s),
                    "progress": progress or status.progress,
                }
            )

        await self._transition(claim, renewed)

    async def finish(
        self,
        claim: Claim,
        state: JobState,
        *,
        error: JobErrorInfo | None = None,
        note: str | None = None,
        result_key: str | None = None,
    ) -> JobStatus:
        def finished(status: JobStatus) -> JobStatus:
            new = status.moved_to(state, error=error, note=note)
            if result_key:
                new.result_key = result_key
            return new

        return await self._transition(claim, finished)

    async def release(self, claim: Claim, note: str) -> JobStatus:
        """Back to QUEUED (shutdown, or a retry after a transient error). ``attempt`` is kept, and
        so is ``message_id``: the same message carries the retry."""
        return await self.finish(claim, JobState.QUEUED, note=note)

    async def record(self, claim: Claim, status: JobStatus) -> JobStatus:
        """Write ``status`` (a change this attempt made to its own final status, such as
        ``notified_at``) through the claim: conditional, serialised with the heartbeat."""
        return await self._transition(claim, lambda _: status)

    async def _transition(self, claim: Claim, change: Callable[[JobStatus], JobStatus]) -> JobStatus:
        async with claim.lock:
            started = time.monotonic()
            new = change(claim.status)
            if new is claim.status:
                return new
            # The store's deadline bounds when a retry may start, not when the last try ends, and a
            # stale ETag chains a read and a second write: the whole transition, which holds the
            # lock every renewal of this lease waits on, gets the deadline as a hard total bound.
            # Ending early raises TimeoutError: transient, like the store's own last failure.
            async with asyncio.timeout(self.store.calls.deadline_s):
                try:
                    claim.etag = await self._write(claim.key, new, claim.etag)
                except PreconditionFailed:
                    claim.etag = await self._rewrite_over_own(claim, new)
            claim.status = new
            claim.written_at = started
            return new

    async def _rewrite_over_own(self, claim: Claim, new: JobStatus) -> str:
        """Our ETag is stale. If the status is still this worker's own PROCESSING attempt, the
        change was one of our earlier writes whose answer was lost (a renewal during an outage):
        write again over it. Anything else means another worker owns the job now."""
        current, etag = await self.store.get_model_etag(claim.key, JobStatus)
        own = (
            current is not None
            and etag is not None
            and current.state is JobState.PROCESSING
            and current.worker == self.worker_id
            and current.attempt == claim.status.attempt
        )
        if not own:
            raise LostClaim(f"{claim.job_id}: status changed by another worker")
        try:
            return await self._write(claim.key, new, etag)
        except PreconditionFailed:
            raise LostClaim(f"{claim.job_id}: status changed by another worker") from None

    async def _write(self, key: str, new: JobStatus, etag: str | None) -> str:
        try:
            if etag:
                return await self.store.put_json(key, new, if_match=etag)
            return await self.store.put_json(key, new, if_none_match=True)
        except PreconditionFailed:
            # A retried write whose first try landed reads back as exactly what we wrote.
            current, current_etag = await self.store.get_model_etag(key, JobStatus)
            if current is not None and current_etag and _same_write(current, new):
                return current_etag
            raise


def _same_write(a: JobStatus, b: JobStatus) -> bool:
    return (
        a.updated_at == b.updated_at and a.worker == b.worker and a.state == b.state and a.notified_at == b.notified_at
    )


async def committed(store: Store, job_id: str) -> bool:
    """Whether the job's result exists. **The result is the commit point**: a job whose result
    exists is COMPLETED, whatever else happened to it. Every path that writes a final state other
    than COMPLETED (a worker's ending, ``request_cancel``, the reconciler, the DLQ's) asks this
    first, after reading the status whose ETag its write is conditional on. A result lands only
    through a claim (which changes that ETag) or after one was lost; the reconciler completes a
    job whose result is newer than its final status, so the late case ends COMPLETED too."""
    return await store.exists(keys.result_key(job_id))


async def recheck_commit(store: Store, written: JobStatus, etag: str, worker: str) -> tuple[JobStatus, str]:
    """After writing a final state other than COMPLETED: a result that landed between the look
    (``committed``) and the write, from an attempt that had lost its claim, would be older than
    that status, where the reconciler no longer looks. So look once more, and if it is there, the
    job is COMPLETED after all (conditional on what was just written). A result landing after this
    look is newer than the status, and the reconciler completes the job from it."""
    if written.state is JobState.COMPLETED or not await committed(store, written.job_id):
        return written, etag
    new = written.moved_to(JobState.COMPLETED, worker=worker, note=f"its result landed as it ended {written.state}")
    new.result_key = keys.result_key(written.job_id)
    try:
        return new, await store.put_json(keys.status_key(written.job_id), new, if_match=etag)
    except PreconditionFailed:
        return written, etag  # moved again meanwhile: whoever moved it looked for the result too


async def request_cancel(store: Store, job_id: str) -> JobStatus | None:
    """Ask for a job to be cancelled: write ``cancel/<job_id>``; a QUEUED job is cancelled at once,
    unless its result exists (an attempt published it and could not write COMPLETED: the job is
    done, and its next delivery says so). A job no worker has claimed yet has no status (``submit``
    writes none): its CANCELLED status is created, as a claim would create one (``If-None-Match``;
    a worker claiming it meanwhile wins, and meets the marker).

    The marker is the request; the status write only makes it visible at once. A caller whose
    role may not write ``status/`` (infra/cloudformation.yaml ``ClientPolicy``: submitters must
    not rewrite statuses) gets the status as it was read, and the worker that receives the job
    ends it CANCELLED. A running job is cancelled by its worker at the next check (before start,
    between text chunks).
    """
    await store.put_bytes(keys.cancel_key(job_id), b"", "text/plain")
    try:
        return await _cancel_queued(store, job_id)
    except ClientError as e:
        if not is_access_denied(e):
            raise
        log.info("cancel %s: may not write its status; the worker ends it at its next check", job_id)
        try:
            return (await store.get_model_etag(keys.status_key(job_id), JobStatus))[0]
        except Unreadable:
            return None


async def _cancel_queued(store: Store, job_id: str) -> JobStatus | None:
    for _ in range(_CLAIM_ROUNDS):
        try:
            status, etag = await store.get_model_etag(keys.status_key(job_id), JobStatus)
        except Unreadable:
            return None  # no state to move; the worker that claims over it meets the marker first
        if status is None:
            # Unclaimed: no result can exist yet (one is published only under a claim).
            status = await _unclaimed(store, job_id)
            if status is None:
                return None  # no manifest either: nothing to move
        elif status.state is not JobState.QUEUED or etag is None or await committed(store, job_id):
            return status
        new = status.moved_to(JobState.CANCELLED, note="cancelled before a worker started it")
        try:
            if etag is None:
                new_etag = await store.put_json(keys.status_key(job_id), new, if_none_match=True)
            else:
                new_etag = await store.put_json(keys.status_key(job_id), new, if_match=etag)
        except PreconditionFailed:
            continue  # a worker claimed it meanwhile: it will see the marker
        return (await recheck_commit(store, new, new_etag, new.worker or "cancel"))[0]
    return None


async def _unclaimed(store: Store, job_id: str) -> JobStatus | None:
    """The QUEUED status of a job whose manifest is in an inbox and that no worker has claimed."""
    for priority in (Priority.bulk, Priority.interactive):
        head = await store.head(keys.manifest_key(job_id, priority))
        if head is not None:
            status = JobStatus.new(job_id, created_at=head["LastModified"])
            status.priority = priority
            return status
    return None
