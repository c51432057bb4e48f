"""Worker behaviours around a job's life: heartbeat, progress, cancellation, expiry, timeout, and
the DLQ tools. One worker with short timings on a bucket/queue of its own."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.contract import JobErrorInfo, JobState, JobStatus, utcnow
from tests.helpers import (
    REF_TEXT,
    TTS,
    WorkerProcess,
    aws,
    drop_manifest,
    get_json,
    reference_voice_path,
    s3_event,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
)

pytestmark = pytest.mark.integration

NAME = "reliability"
LONG_TEXT = "This is a sentence of moderate length. " * 20  # five chunks for the tiny model


@pytest.fixture(scope="module")
def env(make_stack: Any) -> dict[str, str]:
    e = make_stack(NAME)
    aws(e, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return e


@pytest.fixture(scope="module")
def rworker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(
        env,
        tmp_path_factory.mktemp("rworker") / "worker.log",
        visibility_timeout_s=5,
        heartbeat_interval_s=1,
        progress_interval_s=0.5,
        cancel_poll_s=0.5,
        job_timeout_s=20,
    )
    wait_ready(w)
    yield w
    assert stop_worker(w) == 0, w.log()[-3000:]


def _job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2, **fields}


def _status(s3: Any, job_id: str) -> dict[str, Any] | None:
    return get_json(s3, f"status/{job_id}.json", NAME)


def test_heartbeat_keeps_a_job_longer_than_the_visibility_timeout_with_one_worker(
    env: dict[str, str], s3: Any, rworker: WorkerProcess, tmp_path: Path
) -> None:
    """The job runs ~2x the 5 s visibility timeout; without heartbeats SQS would redeliver it and
    the lease would lapse. Progress is published while it runs."""
    drop_manifest(env, tmp_path, "hb-long", _job("hb-long", text=LONG_TEXT, nfe_step=16), bucket=NAME)
    seen_progress = set()
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        status = _status(s3, "hb-long")
        if status and status.get("progress"):
            seen_progress.add((status["progress"]["chunks_done"], status["progress"]["chunks_total"]))
        if status and status["state"] == "COMPLETED":
            break
        time.sleep(0.2)
    assert status is not None and status["state"] == "COMPLETED", status
    assert status["attempt"] == 1
    assert [h["state"] for h in status["history"]] == ["QUEUED", "PROCESSING", "COMPLETED"]
    started, finished = status["started_at"], status["finished_at"]
    assert JobStatus.model_validate(status).finished_at - JobStatus.model_validate(status).started_at > timedelta(
        seconds=5
    ), (started, finished)
    totals = {t for _, t in seen_progress}
    assert totals == {5} and any(0 < d < 5 for d, _ in seen_progress), seen_progress


def test_cancel_a_running_job(env: dict[str, str], s3: Any, rworker: WorkerProcess, tmp_path: Path) -> None:
    drop_manifest(env, tmp_path, "cancel-run", _job("cancel-run", text=LONG_TEXT, nfe_step=16), bucket=NAME)
    status = wait_for_state(s3, "cancel-run", bucket=NAME, states=("PROCESSING",), worker=rworker)
    out = subprocess.run([TTS, "cancel", "cancel-run"], env=env, capture_output=True, text=True, check=True)
    assert "cancel" in out.stdout
    status = wait_for_state(s3, "cancel-run", bucket=NAME, worker=rworker)
    assert status["state"] == "CANCELLED", status
    assert status["history"][-1]["note"] == "cancelled while running"
    assert s3.list_objects_v2(Bucket=NAME, Prefix="outputs/cancel-run.").get("KeyCount") == 0
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


def test_job_timeout_fails_the_job_not_the_worker(
    env: dict[str, str], s3: Any, rworker: WorkerProcess, tmp_path: Path
) -> None:
    """~40 s of work against TTS_JOB_TIMEOUT_S=20: stopped at the next chunk boundary."""
    drop_manifest(env, tmp_path, "slowpoke", _job("slowpoke", text=LONG_TEXT, nfe_step=64), bucket=NAME)
    status = wait_for_state(s3, "slowpoke", bucket=NAME, worker=rworker, timeout_s=120)
    assert status["state"] == "FAILED" and status["error"]["code"] == "TIMEOUT", status
    assert s3.list_objects_v2(Bucket=NAME, Prefix="outputs/slowpoke.").get("KeyCount") == 0
    drop_manifest(env, tmp_path, "after-timeout", _job("after-timeout"), bucket=NAME)
    assert wait_for_state(s3, "after-timeout", bucket=NAME, worker=rworker)["state"] == "COMPLETED"


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
