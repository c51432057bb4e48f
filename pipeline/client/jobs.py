"""Client-side operations (submit, status, result, wait): plain S3 reads and writes.

Nothing here imports torch or touches a model: checking a job is an S3 GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from pipeline.client.terminal import json_text
from pipeline.cloud.store import PreconditionFailed, Store
from pipeline.jobs import keys
from pipeline.jobs.contract import JobResult, JobState, JobStatus, Manifest, Priority, utcnow

VOICE_UPLOADS = keys.VOICES + "uploads/"


class JobNotFound(LookupError):
    pass


class JobExists(ValueError):
    """``submit`` of a job id already in use (a status or a manifest exists): job ids are single-use."""

    def __init__(self, job_id: str, key: str) -> None:
        super().__init__(f"job {job_id} already exists ({key}); job ids are single-use")
        self.job_id = job_id
        self.key = key


def new_job_id() -> str:
    return f"job-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


async def upload_voice(store: Store, path: Path) -> str:
    """Upload a local reference file under a content-addressed key (re-uploads are no-ops)."""
    data = await asyncio.to_thread(path.read_bytes)
    key = f"{VOICE_UPLOADS}{hashlib.sha256(data).hexdigest()[:20]}{path.suffix.lower()}"
    if not await store.exists(key):
        await store.put_bytes(key, data, "application/octet-stream")
    return key


async def submit(store: Store, job_id: str, manifest: Manifest) -> JobStatus:
    """Create the manifest (whose upload triggers the worker) in the inbox its ``priority`` names:
    the inbox, not the field, is what the worker goes by. Nothing else is written: the worker
    creates the status when it claims the job, as for a manifest uploaded with the AWS CLI, so a
    submitter needs no write access to ``status/`` (with it, anyone who may submit could end or
    take over any job). Returns the QUEUED status ``get_status`` reports until then.

    A job id is used once: ``JobExists`` if a manifest is in either inbox or a status exists. The
    manifest is *created* (``If-None-Match: *``), never written over: of two submits of one id at
    once into one inbox, one wins (across the two inboxes, at most one: ``_check_other_inbox``).
    A retry whose first try created the manifest but lost the answer recognises its own write
    (``Store.put_new``). A status only ever follows a manifest, and manifests expire only long
    after their job's status exists: looking at the inboxes first, then at the status, finds a
    job that ran even once its manifest is gone."""
    if not keys.is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}: use [A-Za-z0-9._-]{{1,128}}")
    for key in (*keys.manifest_keys(job_id), keys.status_key(job_id)):  # one job-id namespace
        if await store.exists(key):
            raise JobExists(job_id, key)
    key = keys.manifest_key(job_id, manifest.priority)
    body = manifest.model_dump_json(exclude_defaults=True).encode()
    try:
        await store.put_new(key, body, "application/json")
    except PreconditionFailed:
        raise JobExists(job_id, key) from None
    await _check_other_inbox(store, job_id, manifest.priority)
    return queued_status(job_id, utcnow(), manifest.priority)


async def _check_other_inbox(store: Store, job_id: str, priority: Priority) -> None:
    """Two submits of one id into *different* inboxes at once both pass the checks and may both
    create their manifest (``If-None-Match`` guards one key). Of two that write and then look here,
    at least one sees the other (S3 is strongly consistent), so at most one is told it won; the
    job runs once, from the manifest a worker meets first (not always the winner's: a race of
    one id across lanes is a client's mistake, and it is refused, not arbitrated)."""
    other = Priority.bulk if priority is Priority.interactive else Priority.interactive
    other_key = keys.manifest_key(job_id, other)
    if await store.exists(other_key):
        raise JobExists(job_id, other_key)


def queued_status(job_id: str, at: datetime, priority: Priority | None) -> JobStatus:
    """What a job whose manifest no worker has claimed yet looks like: QUEUED since ``at``."""
    status = JobStatus.new(job_id, created_at=at, note="manifest in inbox; not picked up yet")
    status.priority = priority
    return status


# Documents the pipeline writes stay well under these (a status's history is pruned; a 100,000-
# character job's result with word timings is a few MiB); a larger one is not read whole.
MAX_STATUS_BYTES = 4 * 1024 * 1024
MAX_RESULT_BYTES = 64 * 1024 * 1024


async def get_status(store: Store, job_id: str) -> JobStatus:
    status = await store.get_model(keys.status_key(job_id), JobStatus, MAX_STATUS_BYTES)
    if status is not None:
        return status
    for priority in (Priority.bulk, Priority.interactive):
        head = await store.head(keys.manifest_key(job_id, priority))
        if head is not None:
            # Submitted (by ``submit`` or the AWS CLI) and not picked up yet: the manifest's
            # presence is the QUEUED state.
            return queued_status(job_id, head["LastModified"], priority)
    raise JobNotFound(f"no job {job_id}: neither {keys.status_key(job_id)} nor a manifest in either inbox exist")


async def get_result(store: Store, job_id: str, *, presign_s: int | None = None) -> JobResult:
    result = await store.get_model(keys.result_key(job_id), JobResult, MAX_RESULT_BYTES)
    if result is None:
        raise JobNotFound(f"no result for {job_id} (yet): {keys.result_key(job_id)} does not exist")
    if presign_s:
        # Stored URLs expire; hand out a fresh one.
        key = keys.job_output_key(store.bucket, job_id, result.audio.uri)  # UntrustedKey if not its own
        result.audio.url = await store.presign_get(key, presign_s)
        result.audio.url_expires_at = utcnow() + timedelta(seconds=presign_s)
    return result


async def wait(
    store: Store,
    job_id: str,
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    on_status: Callable[[JobStatus], object] | None = None,
) -> JobStatus:
    """Poll the status until the job is in a final state or ``timeout_s`` has passed; returns the
    last status read (not final on a timeout). ``on_status`` sees every status read, the last one
    included (the CLI draws its progress bar from them); what it returns is ignored."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await get_status(store, job_id)
        if on_status is not None:
            on_status(status)
        if status.state.terminal or time.monotonic() > deadline:
            return status
        await asyncio.sleep(poll_s)


@dataclass
class JobListing:
    jobs: list[JobStatus]  # most recently updated first
    read: int  # status documents read
    complete: bool  # False: the read bound stopped the scan before ``limit`` matches were found


async def recent_jobs(
    store: Store,
    *,
    state: JobState | None = None,
    limit: int = 20,
    max_reads: int | None = None,
    concurrency: int = 16,
) -> JobListing:
    """The ``limit`` most recently updated jobs (in ``state``, if given), newest first.

    One listing of ``status/`` and of both inboxes (a manifest without a status yet is a QUEUED job, as
    ``get_status`` says), ordered by the objects' LastModified; then status documents are read from
    the newest down until ``limit`` match, at most ``max_reads`` of them (default ``10 * limit``),
    so a filter that matches little cannot read a whole bucket: older matches are then not
    found (``complete`` is False)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    budget = 10 * limit if max_reads is None else max_reads
    statuses, *inboxes = await asyncio.gather(
        store.list_objects(keys.STATUS), *(store.list_objects(prefix) for prefix in keys.INBOXES.values())
    )
    has_status = {o.key for o in statuses}
    # (last modified, key, status key?)
    candidates = [(o.last_modified, o.key, True) for o in statuses if o.key.endswith(".json")]
    for o in (m for listing in inboxes for m in listing):
        job_id = keys.job_id_from_any_inbox(o.key)
        if job_id is not None and keys.status_key(job_id) not in has_status:
            candidates.append((o.last_modified, job_id, False))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)

    gate = asyncio.Semaphore(concurrency)

    async def read(key: str) -> JobStatus | None:
        async with gate:
            try:
                return await store.get_model(key, JobStatus)  # None: removed since the listing
            except ValueError:  # pydantic's ValidationError: not a status document this client reads
                return None

    async def queued(job_id: str, at: datetime) -> JobStatus:
        return JobStatus.new(job_id, created_at=at, note="manifest in inbox; not picked up yet")

    found: list[JobStatus] = []
    reads = 0
    i = 0
    while i < len(candidates) and len(found) < limit:
        need = limit - len(found)
        take = need if state is None else max(need, concurrency)
        batch: list[Coroutine[object, object, JobStatus | None]] = []
        while i < len(candidates) and len(batch) < take:
            at, ref, is_status = candidates[i]
            if is_status:
                if reads >= budget:
                    break
                reads += 1
                batch.append(read(ref))
            else:
                batch.append(queued(ref, at))
            i += 1
        if not batch:
            break
        for status in await asyncio.gather(*batch):
            if status is not None and (state is None or status.state is state) and len(found) < limit:
                found.append(status)
    return JobListing(found, reads, complete=len(found) >= limit or i >= len(candidates))


async def download(store: Store, job_id: str, uri: str, dest: Path) -> int:
    """One of ``job_id``'s outputs, named by its result (``keys.UntrustedKey`` for anything else)."""
    key = keys.job_output_key(store.bucket, job_id, uri)
    data = await store.get_bytes(key)
    await asyncio.to_thread(_write, dest, data)
    return len(data)


def _write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def dump(doc: BaseModel) -> str:
    """A document as the CLI prints it: JSON, with what a terminal would act on escaped."""
    return json_text(doc.model_dump_json(indent=2))
