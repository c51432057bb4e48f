"""Client-side operations (submit, status, result, wait): plain S3 reads and writes.

Nothing here imports torch or touches a model: checking a job is an S3 GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from pipeline import keys
from pipeline.contract import JobResult, JobStatus, Manifest, utcnow
from pipeline.store import Store

VOICE_UPLOADS = keys.VOICES + "uploads/"


class JobNotFound(LookupError):
    pass


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
    """Write the QUEUED status, then the manifest (whose upload triggers the worker)."""
    if not keys.is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}: use [A-Za-z0-9._-]{{1,128}}")
    if await store.exists(keys.manifest_key(job_id)):
        raise ValueError(f"job {job_id} already exists ({keys.manifest_key(job_id)}); job ids are single-use")
    status = JobStatus.new(job_id, note="submitted with tts-pipeline submit")
    await store.put_json(keys.status_key(job_id), status)
    await store.put_bytes(
        keys.manifest_key(job_id),
        manifest.model_dump_json(exclude_defaults=True).encode(),
        "application/json",
    )
    return status


async def get_status(store: Store, job_id: str) -> JobStatus:
    status = await store.get_model(keys.status_key(job_id), JobStatus)
    if status is not None:
        return status
    head = await store.head(keys.manifest_key(job_id))
    if head is None:
        raise JobNotFound(f"no job {job_id}: neither {keys.status_key(job_id)} nor {keys.manifest_key(job_id)} exist")
    # Uploaded with the AWS CLI and not picked up yet: the manifest's presence is the QUEUED state.
    return JobStatus.new(job_id, created_at=head["LastModified"], note="manifest in inbox; not picked up yet")


async def get_result(store: Store, job_id: str, *, presign_s: int | None = None) -> JobResult:
    result = await store.get_model(keys.result_key(job_id), JobResult)
    if result is None:
        raise JobNotFound(f"no result for {job_id} (yet): {keys.result_key(job_id)} does not exist")
    if presign_s:
        # Stored URLs expire; hand out a fresh one.
        key = keys.key_from_uri(store.bucket, result.audio.uri)
        result.audio.url = await store.presign_get(key, presign_s)
        result.audio.url_expires_at = utcnow() + timedelta(seconds=presign_s)
    return result


async def wait(store: Store, job_id: str, *, timeout_s: float, poll_s: float = 1.0) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await get_status(store, job_id)
        if status.state.terminal or time.monotonic() > deadline:
            return status
        await asyncio.sleep(poll_s)


async def download(store: Store, uri: str, dest: Path) -> int:
    key = keys.key_from_uri(store.bucket, uri)
    data = await store.get_bytes(key)
    await asyncio.to_thread(_write, dest, data)
    return len(data)


def _write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def dump(doc: BaseModel) -> str:
    return doc.model_dump_json(indent=2)
