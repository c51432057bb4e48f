"""Issue 26: defects that need two things to happen at once (a fault and a cancel, an outage
longer than the retry budget, failing extensions and a second worker, a backlog and the
reconciler). One test per defect, on the real stack, black-box: each fails on the code before its
fix and passes after it.

The waits are hang guards: each test asserts on events it observes (states, object versions,
queue depths, metrics), never on a duration. Where a fault has a length (an outage), the length
is the fault's, chosen against the settings the test gives the worker, not a guess at how fast
this machine works.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from pipeline.jobs.contract import utcnow
from tests.faults.conftest import put_job, short_manifest, versions
from tests.faults.proxy import ProxyProcess
from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    get_json,
    queue_depth,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _dlq_depth(sqs: Any, queue: str) -> int:
    return sum(queue_depth(sqs, f"{queue}-dlq"))


# 1 --------------------------------------------------------------------------------------------


def test_d1_a_job_whose_result_exists_is_not_cancelled_while_queued(
    stack: dict[str, str],
    via: dict[str, str],
    fault_proxy: ProxyProcess,
    workers: Callable[..., WorkerProcess],
    s3: Any,
) -> None:
    """The result lands, every try of the COMPLETED status write fails, and the attempt hands the
    job back (QUEUED). A cancel then (the worker stopped, so nothing else moves) leaves the job
    QUEUED: its result is the commit point. Its next delivery ends it COMPLETED, and the result is
    there in one version."""
    bucket, job = stack["TTS_BUCKET"], "c1-cancel"
    key = f"status/{job}.json"
    fault_proxy.arm(
        {"id": "c1", "job": job, "op": "S3 PutObject", "key": key, "state": "COMPLETED", "kind": "brownout"}
    )
    w = workers(via, "a", retry_base_s=30, retry_max_s=60)
    put_job(s3, bucket, job, short_manifest())
    queued = wait_until(
        lambda: (st := get_json(s3, key, bucket)) and st["state"] == "QUEUED" and st["attempt"] == 1 and st,
        "the attempt to hand the job back after its final write failed",
        worker=w,
    )
    assert fault_proxy.fired("c1"), "the brownout never happened"
    assert get_json(s3, f"results/{job}.json", bucket) is not None, queued
    w.proc.send_signal(signal.SIGSTOP)  # its redelivery cannot start while we cancel
    try:
        assert get_json(s3, key, bucket)["state"] == "QUEUED"
        subprocess.run([TTS, "cancel", job], env=stack, check=True, capture_output=True, timeout=60)
        after = get_json(s3, key, bucket)
        assert after["state"] == "QUEUED", f"a job whose result exists was moved to {after['state']}"
    finally:
        w.proc.send_signal(signal.SIGCONT)
    final = wait_for_state(s3, job, bucket=bucket, worker=w, timeout_s=240)
    assert final["state"] == "COMPLETED", final
    assert len(versions(s3, bucket, f"results/{job}.json")) == 1


# 2 --------------------------------------------------------------------------------------------


def test_d2_an_s3_outage_shorter_than_the_retry_budget_fails_no_job(
    stack: dict[str, str],
    via: dict[str, str],
    fault_proxy: ProxyProcess,
    workers: Callable[..., WorkerProcess],
    s3: Any,
    sqs: Any,
) -> None:
    """Every S3 request for the job's status fails (its claim cannot be made) for half of
    TTS_RETRY_MAX_S, counted from the first failed delivery. The retry policy promises that an
    outage shorter than the budget never fails a job: while it lasts, the job's message never
    reaches the DLQ and the job never ends; once it is over, the job completes on its first
    attempt. (Before the fix a failed claim left its message with no backoff: five receives,
    one per visibility timeout, put it in the DLQ long before the budget was spent.)"""
    bucket, job, queue = stack["TTS_BUCKET"], "c2-outage", stack["TTS_QUEUE"]
    budget_s, visibility_s = 100, 5
    outage_s = budget_s / 2
    fault_proxy.add_rules([{"match": rf"/status/{job}\.json", "kind": "dropped", "times": -1}])
    w = workers(via, "a", retry_base_s=1, retry_max_s=budget_s, visibility_timeout_s=visibility_s)
    put_job(s3, bucket, job, short_manifest())
    # (the log line before the fix: "could not process ... leaving it for redelivery")
    wait_until(
        lambda: "could not claim the job" in w.log() or "could not process" in w.log(), "a failed claim", worker=w
    )
    started = time.monotonic()
    ended_early = None
    while time.monotonic() - started < outage_s:  # the fault's own length (the test's schedule)
        if _dlq_depth(sqs, queue) or get_json(s3, f"status/{job}.json", bucket):
            ended_early = "the job's message reached the DLQ (or the job moved) during the outage"
            break
        time.sleep(0.5)
    fault_proxy.remove_rules()
    assert ended_early is None, ended_early
    final = wait_for_state(s3, job, bucket=bucket, worker=w, timeout_s=240)
    assert final["state"] == "COMPLETED", final
    assert final["attempt"] == 1, final["history"]
    assert _dlq_depth(sqs, queue) == 0


# 3 --------------------------------------------------------------------------------------------


def test_d3_a_running_jobs_message_is_not_burned_into_the_dlq_when_its_extensions_fail(
    stack: dict[str, str],
    via: dict[str, str],
    fault_proxy: ProxyProcess,
    workers: Callable[..., WorkerProcess],
    holds: Holds,
    s3: Any,
    sqs: Any,
) -> None:
    """Worker A runs a job (held); every visibility extension A sends fails, while its lease (S3)
    is renewed. The job's message lapses again and again and is received (by A, which keeps it, or
    by B, which defers it): more receives than the queue's maxReceiveCount, and it never reaches
    the DLQ. A is then stopped (SIGTERM: the job is handed back, QUEUED) and the job completes
    through its own message, on B."""
    bucket, job, queue = stack["TTS_BUCKET"], "c3-burn", stack["TTS_QUEUE"]
    holds.hold(job, attempts=[1])
    a = workers(via, "a")
    put_job(s3, bucket, job, short_manifest())
    holds.wait_held(job, a)
    fault_proxy.arm(
        {"id": "c3", "op": "SQS ChangeMessageVisibilityBatch", "pid": a.proc.pid, "kind": "brownout", "count": 10**6}
    )
    b = workers(via, "b")
    max_receives = 5  # bootstrap's redrive policy

    def receives() -> int:
        return sum(
            1 for r in fault_proxy.trace() if r.get("op") == "SQS ReceiveMessage" and job in (r.get("jobs") or [])
        )

    def burned_or_received() -> str | None:
        if _dlq_depth(sqs, queue):
            return "dlq"
        return "received" if receives() > 2 * max_receives else None

    outcome = wait_until(burned_or_received, "the held job's message to come back repeatedly", worker=b)
    assert outcome == "received", f"the running job's own message was dead-lettered after {receives()} receives"
    assert fault_proxy.fired("c3")
    assert get_json(s3, f"status/{job}.json", bucket)["state"] == "PROCESSING"
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(timeout=120)
    final = wait_for_state(s3, job, bucket=bucket, worker=b, timeout_s=240)
    assert final["state"] == "COMPLETED", final
    assert final["attempt"] == 2, final["history"]
    assert _dlq_depth(sqs, queue) == 0


# 5 --------------------------------------------------------------------------------------------


def test_d5_the_reconciler_does_not_duplicate_a_backlogged_job(stack: dict[str, str], s3: Any, sqs: Any) -> None:
    """Two jobs submitted with no worker running: their S3 events wait in the queue (a backlog).
    Passes of the reconciler with its clock two hours on re-enqueue neither (the queue still
    holds messages that may carry them): the depth stays at two. A QUEUED job with no message
    at all (its event lost) is re-enqueued once the queue is empty, and only once."""
    from pipeline.config import Settings
    from pipeline.ops.reconcile import reconcile_once

    bucket, queue = stack["TTS_BUCKET"], stack["TTS_QUEUE"]
    for job in ("c5-a", "c5-b"):
        subprocess.run(
            [
                TTS,
                "submit",
                "--text",
                "Backlogged.",
                "--voice",
                "voices/alice.wav",
                "--ref-text",
                REF_TEXT,
                "--job-id",
                job,
            ],
            env=stack,
            check=True,
            capture_output=True,
            timeout=60,
        )
    # Both S3 events, and the s3:TestEvent that configuring the notification sent.
    wait_until(lambda: sum(queue_depth(sqs, queue)) >= 2, "both S3 events in the queue")
    backlog = sum(queue_depth(sqs, queue))
    settings = Settings(bucket=bucket, queue=queue)
    later = utcnow() + timedelta(hours=2)
    for _ in range(2):
        report = asyncio.run(reconcile_once(settings, older_than_s=3600, now=later))
        assert report.counts().get("reenqueued", 0) == 0, report.as_dict()
    assert sum(queue_depth(sqs, queue)) == backlog, "the reconciler sent copies of backlogged jobs"

    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    sqs.purge_queue(QueueUrl=url)  # both events lost: the jobs are QUEUED with no message
    wait_until(lambda: sum(queue_depth(sqs, queue)) == 0, "the queue to be empty")
    report = asyncio.run(reconcile_once(settings, older_than_s=3600, now=later))
    assert sorted(a["job_id"] for a in report.actions if a["action"] == "reenqueued") == ["c5-a", "c5-b"]
    report = asyncio.run(reconcile_once(settings, older_than_s=3600, now=later + timedelta(seconds=1)))
    assert report.counts().get("reenqueued", 0) == 0, report.as_dict()
    assert sum(queue_depth(sqs, queue)) == 2
