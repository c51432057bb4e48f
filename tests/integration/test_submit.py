"""``client.submit`` on real S3 (LocalStack): a job id is used once, and a submit never writes over
a status, so it cannot put a live or finished job back to QUEUED, attempt 0."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from pipeline.client import jobs as client
from pipeline.cloud.store import Store
from pipeline.jobs import keys
from pipeline.jobs.contract import JobState, JobStatus, Manifest, Priority, utcnow
from pipeline.jobs.state import Claim, Ledger
from tests.helpers import BUCKET, TTS

pytestmark = pytest.mark.integration

MANIFEST = Manifest(text="Once only.", voice="voices/alice.wav")


@pytest.fixture
async def store(aws_env: dict[str, str]) -> Store:
    async with Store.open(BUCKET) as s:
        yield s


def _job(name: str) -> str:
    return f"submit-{name}-{utcnow().timestamp():.0f}-{id(name) % 1000}"


async def _manifests(store: Store, job: str) -> list[str]:
    return [k for k in keys.manifest_keys(job) if await store.exists(k)]


async def test_a_submit_over_a_completed_job_is_refused_and_changes_nothing(
    store: Store, aws_env: dict[str, str]
) -> None:
    """The job ran and completed; its manifest is gone (the inbox's lifecycle rule expires it
    first, or it was removed). Submitting the same id again must not put the job back to QUEUED,
    attempt 0 (its next attempt would collide with ``attempt-1.*`` and end FAILED over a result):
    it is refused with the single-use error, the status is untouched and no manifest is written."""
    job = _job("completed")
    ledger = Ledger(store, "worker-a", lease_s=60)
    _, claim = await ledger.claim(job, None)
    assert isinstance(claim, Claim)
    await ledger.finish(claim, JobState.COMPLETED, result_key=keys.result_key(job))
    before, etag = await ledger.read(job)
    assert before is not None and before.attempt == 1 and await _manifests(store, job) == []

    with pytest.raises(client.JobExists) as e:
        await client.submit(store, job, MANIFEST)
    assert str(e.value) == f"job {job} already exists (status/{job}.json); job ids are single-use"
    assert isinstance(e.value, ValueError)  # what the CLI and older callers catch

    after, etag_after = await ledger.read(job)
    assert etag_after == etag and after == before
    assert after.state is JobState.COMPLETED and after.attempt == 1
    assert await _manifests(store, job) == []

    # The CLI says so and exits non-zero, as for a manifest still in the inbox.
    proc = await asyncio.create_subprocess_exec(
        TTS,
        "submit",
        "--job-id",
        job,
        "--text",
        "Again.",
        "--voice",
        "voices/alice.wav",
        env=aws_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode != 0 and "already exists" in err.decode() and "single-use" in err.decode(), err
    assert (await ledger.read(job))[1] == etag and await _manifests(store, job) == []


async def test_a_submit_over_a_live_job_is_refused(store: Store) -> None:
    """A job some worker holds (PROCESSING, attempt 1) whose manifest is gone: a second submit
    leaves the worker's claim alone (its next renewal still succeeds)."""
    job = _job("live")
    ledger = Ledger(store, "worker-a", lease_s=60)
    _, claim = await ledger.claim(job, None)
    assert isinstance(claim, Claim)
    with pytest.raises(client.JobExists):
        await client.submit(store, job, MANIFEST)
    await ledger.renew(claim)  # LostClaim if the submit had written over the status
    status, _ = await ledger.read(job)
    assert status is not None and status.state is JobState.PROCESSING and status.attempt == 1
    assert await _manifests(store, job) == []


async def test_concurrent_submits_of_one_job_id_have_exactly_one_winner(store: Store, s3: Any) -> None:
    """Submits of the same id at the same time (a double click, a retried request): all pass the
    manifest check before any manifest exists, but only one creates the status; the others get the
    single-use error and write no manifest, so the job is submitted once."""
    for round_ in range(5):
        job = _job(f"race{round_}")
        manifests = [
            Manifest(text=f"Submitter {i}.", voice="voices/alice.wav", priority=Priority.interactive) for i in range(4)
        ]
        outcomes = await asyncio.gather(*(client.submit(store, job, m) for m in manifests), return_exceptions=True)
        won = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, JobStatus)]
        lost = [o for o in outcomes if not isinstance(o, JobStatus)]
        assert len(won) == 1, outcomes
        assert all(isinstance(o, client.JobExists) and "single-use" in str(o) for o in lost), lost
        winner, status = won[0]
        stored = await store.get_model(keys.status_key(job), JobStatus)
        # The winner's status, as it wrote it (a worker serving this bucket may have claimed the
        # job since: its first transition is still the winner's).
        assert stored is not None and stored.history[0] == status.history[0], (stored, status)
        assert status.state is JobState.QUEUED and status.attempt == 0
        assert await _manifests(store, job) == [keys.manifest_key(job, Priority.interactive)]
        body = s3.get_object(Bucket=BUCKET, Key=keys.manifest_key(job, Priority.interactive))["Body"].read()
        assert json.loads(body)["text"] == f"Submitter {winner}."
