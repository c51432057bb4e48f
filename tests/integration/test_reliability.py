"""Worker behaviours around a job's life: heartbeat, progress, cancellation, expiry, timeout, and
the DLQ tools. One worker with short timings on a bucket/queue of its own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.jobs.contract import JobErrorInfo, JobState, JobStatus, utcnow
from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    aws,
    drop_manifest,
    get_json,
    outputs_left,
    queue_depth,
    reference_voice_path,
    s3_event,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

NAME = "reliability"
LONG_TEXT = "This is a sentence of moderate length. " * 20  # five chunks with the test voice


@pytest.fixture(scope="module")
def env(make_stack: Any) -> dict[str, str]:
    e = make_stack(NAME)
    aws(e, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return e


VISIBILITY_S = 6


@pytest.fixture(scope="module")
def rholds(tmp_path_factory: pytest.TempPathFactory) -> Holds:
    return Holds(tmp_path_factory.mktemp("rholds"))


@pytest.fixture(scope="module")
def rworker(env: dict[str, str], rholds: Holds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(
        env,
        tmp_path_factory.mktemp("rworker") / "worker.log",
        visibility_timeout_s=VISIBILITY_S,
        heartbeat_interval_s=1,
        progress_interval_s=0.5,
        cancel_poll_s=0.5,
        **rholds.settings,
    )
    wait_ready(w)
    yield w
    assert stop_worker(w) == 0, w.log()[-3000:]


def _job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2, **fields}


def _status(s3: Any, job_id: str) -> dict[str, Any] | None:
    return get_json(s3, f"status/{job_id}.json", NAME)


def _queue_depths(sqs: Any) -> tuple[int, int]:
    return queue_depth(sqs, NAME)


def test_heartbeat_keeps_a_job_beyond_the_visibility_timeout_with_one_worker(
    env: dict[str, str], s3: Any, sqs: Any, rworker: WorkerProcess, rholds: Holds, tmp_path: Path
) -> None:
    """The job is held after chunk 1 of 5 while its heartbeat renews the lease and the message's
    visibility: the lease (written by the worker) moves on by more than two visibility timeouts,
    the message stays in flight and is never redelivered, progress 1/5 is published; released, the
    job completes on its first attempt."""
    before = rworker.metrics()
    rholds.hold("hb-long", after_chunks=1)
    drop_manifest(env, tmp_path, "hb-long", _job("hb-long", text=LONG_TEXT), bucket=NAME)
    held = rholds.wait_held("hb-long", rworker)
    assert (held["chunks_done"], held["chunks_total"], held["attempt"]) == (1, 5, 1)

    first = JobStatus.model_validate(_status(s3, "hb-long"))
    assert first.state is JobState.PROCESSING and first.lease_expires_at is not None

    def renewed_past_two_timeouts() -> JobStatus | None:
        status = JobStatus.model_validate(_status(s3, "hb-long"))
        assert _queue_depths(sqs) == (0, 1), "the message became visible again while its job ran"
        moved = (status.lease_expires_at - first.lease_expires_at).total_seconds()  # type: ignore[operator]
        return status if moved > 2 * VISIBILITY_S and status.progress is not None else None

    status = wait_until(renewed_past_two_timeouts, "two visibility timeouts of lease renewals", worker=rworker)
    assert (status.progress.chunks_done, status.progress.chunks_total) == (1, 5)  # type: ignore[union-attr]
    assert status.attempt == 1 and status.worker == first.worker

    rholds.release("hb-long")
    final = wait_for_state(s3, "hb-long", bucket=NAME, worker=rworker)
    assert final["state"] == "COMPLETED" and final["attempt"] == 1, final
    assert [h["state"] for h in final["history"]] == ["QUEUED", "PROCESSING", "COMPLETED"]
    assert wait_until(lambda: _queue_depths(sqs) == (0, 0), "queue drained", worker=rworker)
    after = rworker.metrics()
    for counter in ("tts_duplicate_deliveries_total", "tts_deferred_deliveries_total"):
        assert after.get(counter, 0) == before.get(counter, 0), counter  # delivered exactly once


def test_cancel_a_running_job(
    env: dict[str, str], s3: Any, rworker: WorkerProcess, rholds: Holds, tmp_path: Path
) -> None:
    rholds.hold("cancel-run", after_chunks=1)
    drop_manifest(env, tmp_path, "cancel-run", _job("cancel-run", text=LONG_TEXT), bucket=NAME)
    rholds.wait_held("cancel-run", rworker)
    out = subprocess.run([TTS, "cancel", "cancel-run"], env=env, capture_output=True, text=True, check=True)
    assert "cancel" in out.stdout
    status = wait_for_state(s3, "cancel-run", bucket=NAME, worker=rworker)
    rholds.release("cancel-run")
    assert status["state"] == "CANCELLED", status
    assert status["history"][-1]["note"] == "cancelled while running"
    assert outputs_left(s3, "cancel-run", [], bucket=NAME) == []
    assert get_json(s3, "results/cancel-run.json", NAME) is None
    # The worker goes on.
    drop_manifest(env, tmp_path, "after-cancel", _job("after-cancel"), bucket=NAME)
    assert wait_for_state(s3, "after-cancel", bucket=NAME, worker=rworker)["state"] == "COMPLETED"


def test_cancel_before_start(env: dict[str, str], s3: Any, rworker: WorkerProcess, tmp_path: Path) -> None:
    s3.put_object(Bucket=NAME, Key="cancel/cancel-early", Body=b"")
    drop_manifest(env, tmp_path, "cancel-early", _job("cancel-early"), bucket=NAME)
    status = wait_for_state(s3, "cancel-early", bucket=NAME, worker=rworker)
    assert status["state"] == "CANCELLED" and status["history"][-1]["note"] == "cancelled before start"


def test_cancel_of_an_unknown_job_is_an_error(env: dict[str, str]) -> None:
    out = subprocess.run([TTS, "cancel", "no-such-job"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "no job no-such-job" in out.stderr


def test_job_older_than_the_ttl_expires(env: dict[str, str], s3: Any, rworker: WorkerProcess, tmp_path: Path) -> None:
    old = JobStatus.new("too-old", created_at=utcnow() - timedelta(days=8))
    s3.put_object(Bucket=NAME, Key="status/too-old.json", Body=old.model_dump_json().encode())
    drop_manifest(env, tmp_path, "too-old", _job("too-old"), bucket=NAME)
    status = wait_for_state(s3, "too-old", bucket=NAME, worker=rworker)
    assert status["state"] == "EXPIRED" and "TTL" in status["history"][-1]["note"]


def test_job_timeout_fails_the_job_not_the_worker(make_stack: Any, s3: Any, holds: Holds, tmp_path: Path) -> None:
    """A job held past TTS_JOB_TIMEOUT_S=2 is stopped at the next check and ends FAILED/TIMEOUT
    with its partial outputs removed; the worker goes on to its next message. (Its own stack: a
    2 s timeout would fail ordinary jobs on a slow machine.)"""
    bucket = "reliability-timeout"
    stack = make_stack(bucket)
    aws(stack, "s3", "cp", str(reference_voice_path()), f"s3://{bucket}/voices/alice.wav")
    w = start_worker(stack, tmp_path / "worker.log", job_timeout_s=2, **holds.settings)
    try:
        wait_ready(w)
        holds.hold("slowpoke", after_chunks=1)
        drop_manifest(stack, tmp_path, "slowpoke", _job("slowpoke", text=LONG_TEXT), bucket=bucket)
        status = wait_for_state(s3, "slowpoke", bucket=bucket, worker=w)
        assert status["state"] == "FAILED" and status["error"]["code"] == "TIMEOUT", status
        assert "TTS_JOB_TIMEOUT_S=2" in status["error"]["message"]
        assert outputs_left(s3, "slowpoke", [], bucket=bucket) == []
        # Still consuming: the next message is handled (cancelled before it starts, so that this
        # check does not depend on synthesis fitting in 2 s).
        s3.put_object(Bucket=bucket, Key="cancel/after-timeout", Body=b"")
        drop_manifest(stack, tmp_path, "after-timeout", _job("after-timeout"), bucket=bucket)
        assert wait_for_state(s3, "after-timeout", bucket=bucket, worker=w)["state"] == "CANCELLED"
    finally:
        holds.release("slowpoke")
        assert stop_worker(w) == 0, w.log()[-3000:]


def test_dlq_list_and_redrive_replay_a_job(
    env: dict[str, str], s3: Any, sqs: Any, rworker: WorkerProcess, tmp_path: Path
) -> None:
    """An operator replays a job that ran out of retries: redrive resets it to QUEUED and a worker
    completes it."""
    job = "dead-letter-1"
    s3.put_object(Bucket=NAME, Key=f"inbox/{job}.json", Body=json.dumps(_job(job)).encode())  # event -> worker
    assert wait_for_state(s3, job, bucket=NAME, worker=rworker)["state"] == "COMPLETED"
    # Pretend its earlier life ended in the DLQ: FAILED RETRIES_EXHAUSTED, event message parked.
    failed = (
        JobStatus.new(job)
        .moved_to(JobState.PROCESSING)
        .moved_to(JobState.FAILED, error=JobErrorInfo(code="RETRIES_EXHAUSTED", message="gave up"))
    )
    s3.put_object(Bucket=NAME, Key=f"status/{job}.json", Body=failed.model_dump_json().encode())
    s3.delete_object(Bucket=NAME, Key=f"results/{job}.json")
    dlq = sqs.get_queue_url(QueueName=f"{NAME}-dlq")["QueueUrl"]
    sqs.send_message(QueueUrl=dlq, MessageBody=s3_event(NAME, f"inbox/{job}.json"))
    sqs.send_message(QueueUrl=dlq, MessageBody="not an event")

    listed = [json.loads(line) for line in _cli(env, "dlq", "list").splitlines()]
    assert {tuple(e["jobs"] or []) for e in listed} == {(job,), ()}
    report = json.loads(_cli(env, "dlq", "redrive"))
    assert report == {"moved": 1, "skipped": 1, "jobs_requeued": [job]}
    status = wait_for_state(s3, job, bucket=NAME, worker=rworker, states=("COMPLETED",))
    assert [h["state"] for h in status["history"]][-3:] == ["QUEUED", "PROCESSING", "COMPLETED"]
    assert status["history"][-3]["note"] == "redriven from the DLQ"


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([TTS, *args], env=env, capture_output=True, text=True, check=True).stdout
