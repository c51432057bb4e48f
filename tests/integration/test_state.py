"""The job ledger on real S3 (LocalStack): conditional writes make claims exclusive."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from pipeline.cloud.store import PreconditionFailed, Store
from pipeline.jobs import keys
from pipeline.jobs.contract import JobErrorInfo, JobState, JobStatus, Progress, utcnow
from pipeline.jobs.state import Claim, ClaimResult, Ledger, LostClaim, request_cancel
from tests.helpers import BUCKET

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(aws_env: dict[str, str]) -> Store:
    async with Store.open(BUCKET) as s:
        yield s


def _job(name: str) -> str:
    return f"ledger-{name}-{utcnow().timestamp():.0f}-{id(name) % 1000}"


async def test_conditional_writes_are_enforced_by_s3(store: Store) -> None:
    key = f"status/{_job('cond')}.json"
    etag = await store.put_json(key, {"v": 1}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await store.put_json(key, {"v": 2}, if_none_match=True)
    etag2 = await store.put_json(key, {"v": 2}, if_match=etag)
    with pytest.raises(PreconditionFailed):
        await store.put_json(key, {"v": 3}, if_match=etag)  # stale
    assert etag2 != etag and (await store.get_json(key)) == {"v": 2}


async def test_claim_new_then_busy_then_done(store: Store) -> None:
    job = _job("basic")
    a, b = Ledger(store, "worker-a", lease_s=60), Ledger(store, "worker-b", lease_s=60)
    outcome, claim = await a.claim(job, None)
    assert outcome is ClaimResult.CLAIMED and isinstance(claim, Claim)
    assert claim.status.state is JobState.PROCESSING and claim.status.attempt == 1
    assert claim.status.lease_expires_at is not None and claim.status.lease_expires_at > utcnow()

    outcome, held = await b.claim(job, None)
    assert outcome is ClaimResult.BUSY and held.status.worker == "worker-a"

    await a.renew(claim, Progress(chunks_done=1, chunks_total=3))
    status = await store.get_model(keys.status_key(job), JobStatus)
    assert status.progress == Progress(chunks_done=1, chunks_total=3)

    await a.finish(claim, JobState.COMPLETED)
    outcome, done = await b.claim(job, None)
    assert outcome is ClaimResult.DONE and done.status.state is JobState.COMPLETED


async def test_expired_lease_is_taken_over_and_the_old_holder_loses(store: Store) -> None:
    job = _job("takeover")
    a, b = Ledger(store, "worker-a", lease_s=0.5), Ledger(store, "worker-b", lease_s=60)
    _, claim_a = await a.claim(job, None)
    await asyncio.sleep(1.0)  # worker-a "dies": its lease lapses
    outcome, claim_b = await b.claim(job, None)
    assert outcome is ClaimResult.CLAIMED
    assert claim_b.status.attempt == 2 and claim_b.status.worker == "worker-b"
    assert "took over from worker-a" in (claim_b.status.history[-1].note or "")
    with pytest.raises(LostClaim):
        await a.renew(claim_a)  # a zombie cannot extend or publish
    with pytest.raises(LostClaim):
        await a.finish(claim_a, JobState.COMPLETED)
    await b.finish(claim_b, JobState.FAILED, error=JobErrorInfo(code="X", message="y"))


async def test_a_renewal_whose_answer_was_lost_does_not_lose_the_claim(store: Store) -> None:
    """During an outage a renewal can land in S3 while its answer is lost (the fault proxy does
    this): the worker's ETag is stale, but the status is still its own attempt, so the next
    renewal writes over it. A status written by anyone else still means the claim is lost."""
    job = _job("lostanswer")
    a = Ledger(store, "worker-a", lease_s=60)
    _, claim = await a.claim(job, None)
    now = utcnow()
    landed = claim.status.model_copy(update={"updated_at": now, "lease_expires_at": now + timedelta(seconds=60)})
    await store.put_json(keys.status_key(job), landed, if_match=claim.etag)  # claim.etag is now stale
    await a.renew(claim, Progress(chunks_done=1, chunks_total=2))
    status = await store.get_model(keys.status_key(job), JobStatus)
    assert status.progress == Progress(chunks_done=1, chunks_total=2) and status.worker == "worker-a"

    taken = status.moved_to(JobState.PROCESSING, worker="worker-b", lease_s=60)  # attempt 2, elsewhere
    await store.put_json(keys.status_key(job), taken)
    with pytest.raises(LostClaim):
        await a.renew(claim)
    with pytest.raises(LostClaim):
        await a.finish(claim, JobState.COMPLETED)


async def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    for round_ in range(5):
        job = _job(f"race{round_}")
        ledgers = [Ledger(store, f"worker-{i}", lease_s=60) for i in range(4)]
        results = await asyncio.gather(*(lg.claim(job, None) for lg in ledgers))
        outcomes = [r[0] for r in results]
        assert outcomes.count(ClaimResult.CLAIMED) == 1, outcomes
        assert set(outcomes) <= {ClaimResult.CLAIMED, ClaimResult.BUSY}


async def test_release_puts_the_job_back_for_anyone(store: Store) -> None:
    job = _job("release")
    a, b = Ledger(store, "worker-a", lease_s=60), Ledger(store, "worker-b", lease_s=60)
    _, claim = await a.claim(job, None)
    released = await a.release(claim, note="shutting down")
    assert released.state is JobState.QUEUED and released.lease_expires_at is None
    outcome, claim_b = await b.claim(job, None)
    assert outcome is ClaimResult.CLAIMED and claim_b.status.attempt == 2


async def test_cancel_a_queued_job_at_once(store: Store) -> None:
    job = _job("cancel")
    await store.put_json(keys.status_key(job), JobStatus.new(job), if_none_match=True)
    status = await request_cancel(store, job)
    assert status is not None and status.state is JobState.CANCELLED
    assert await store.exists(keys.cancel_key(job))
    outcome, _ = await Ledger(store, "w", 60).claim(job, None)
    assert outcome is ClaimResult.DONE


async def test_created_at_comes_from_the_first_record(store: Store) -> None:
    job = _job("created")
    old = utcnow() - timedelta(days=3)
    _, claim = await Ledger(store, "w", 60).claim(job, old)
    assert claim.status.created_at == old


async def test_a_late_heartbeat_after_the_final_status_writes_nothing(store: Store) -> None:
    """The heartbeat may tick once more after the job wrote its final status (they share the
    claim): that renewal must not touch the finished status."""
    job = _job("late-beat")
    ledger = Ledger(store, "worker-a", lease_s=60)
    _, claim = await ledger.claim(job, None)
    assert isinstance(claim, Claim)
    await ledger.renew(claim, Progress(chunks_done=1, chunks_total=2))
    await ledger.finish(claim, JobState.COMPLETED)
    final, etag_final = await ledger.read(job)
    await ledger.renew(claim, Progress(chunks_done=2, chunks_total=2))
    status, etag = await ledger.read(job)
    assert etag == etag_final and status == final and status is not None
    assert status.state is JobState.COMPLETED
