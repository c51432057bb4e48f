"""``client.submit`` on real S3 (LocalStack): a job id is used once, and a submit never writes over
a status, so it cannot put a live or finished job back to QUEUED, attempt 0. A submit writes its
manifest and nothing else (issue 27): submitters need no write access to ``status/``."""

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
    checks before any manifest exists, but only one creates the manifest (``If-None-Match``); the
    others get the single-use error, so the job is submitted once."""
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
        assert status.state is JobState.QUEUED and status.attempt == 0
        assert status.priority is Priority.interactive
        assert await _manifests(store, job) == [keys.manifest_key(job, Priority.interactive)]
        body = s3.get_object(Bucket=BUCKET, Key=keys.manifest_key(job, Priority.interactive))["Body"].read()
        assert json.loads(body)["text"] == f"Submitter {winner}."


async def _keys(store: Store) -> set[str]:
    return {
        o.key
        for prefix in ("inbox", "status/", "results/", "outputs/", "cancel/")
        for o in await store.list_objects(prefix)
    }


async def test_a_submit_writes_its_manifest_and_nothing_else(make_stack: Any) -> None:
    """Issue 27, defect 9: whoever may submit needed s3:PutObject on status/* (submit wrote the
    QUEUED status), and with it could end any job or break a running one's claim. Now the manifest
    is all a submit writes, in the inbox of its priority; until a worker claims the job (a stack
    of its own: no worker runs here), ``get_status`` reports it QUEUED from the manifest, with
    that priority. The CLI's ``submit`` writes the same and prints that QUEUED status."""
    env = make_stack("submit-writes")
    async with Store.open("submit-writes") as store:
        before = await _keys(store)
        job = _job("only-manifest")
        status = await client.submit(store, job, MANIFEST.model_copy(update={"priority": Priority.interactive}))
        assert await _keys(store) - before == {keys.manifest_key(job, Priority.interactive)}
        seen = await client.get_status(store, job)
        assert (
            seen.state is status.state is JobState.QUEUED and seen.priority is status.priority is Priority.interactive
        )
        assert seen.attempt == status.attempt == 0

        cli = _job("cli-manifest")
        proc = await asyncio.create_subprocess_exec(
            TTS, "submit", "--job-id", cli, "--text", "Hi.", "--voice", "voices/alice.wav",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err
        assert json.loads(out)["state"] == "QUEUED"
        assert await _keys(store) - before == {keys.manifest_key(job, Priority.interactive), keys.manifest_key(cli)}


async def test_submits_into_both_inboxes_at_once_have_at_most_one_winner(store: Store) -> None:
    """One id submitted to both lanes at the same time: both pass the checks, and each manifest may
    be created (``If-None-Match`` guards one key, not two). Each submit looks at the other inbox
    after its write; of two that write and then look, at least one sees the other (S3 reads
    after writes are strongly consistent), so at most one is told it won, the other gets the
    single-use error. (Both manifests may remain: the worker runs the job once, from the one it
    meets first; before issue 27 the status's ``If-None-Match`` made exactly one manifest.)"""
    for round_ in range(3):
        job = _job(f"lanes{round_}")
        manifests = [Manifest(text=f"{p.value}", voice="voices/alice.wav", priority=p) for p in Priority]
        outcomes = await asyncio.gather(*(client.submit(store, job, m) for m in manifests), return_exceptions=True)
        won = [o for o in outcomes if isinstance(o, JobStatus)]
        assert all(isinstance(o, JobStatus | client.JobExists) for o in outcomes), outcomes
        assert len(won) <= 1, outcomes
        present = await _manifests(store, job)
        assert all(keys.manifest_key(job, w.priority) in present for w in won), (outcomes, present)
