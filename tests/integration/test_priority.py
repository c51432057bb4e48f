"""Issue 19: the interactive lane, fair share among bulk submitters, EventBridge-shaped events,
and bootstrap of both lanes. Real LocalStack, real worker subprocess; every wait is on an observed
event (a hold marker, a queue depth, a status), never on how long a job takes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.jobs.contract import utcnow
from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    aws,
    get_json,
    queue_depth,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

LANES = "prio-lanes"
FAIR = "prio-fair"
MANIFEST = {"text": "One short sentence.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2}


@pytest.fixture
def start(holds: Holds, tmp_path: Path) -> Iterator[Any]:
    """start(env, **settings): a ready worker obeying this test's holds; stopped (exit 0) after."""
    started: list[WorkerProcess] = []

    def run(env: dict[str, str], **settings: Any) -> WorkerProcess:
        w = start_worker(env, tmp_path / f"worker{len(started)}.log", **{**holds.settings, **settings})
        started.append(w)
        wait_ready(w)
        return w

    yield run
    for w in started:
        assert stop_worker(w) == 0, w.log()[-3000:]


def _stack(make_stack: Any, name: str) -> dict[str, str]:
    env = make_stack(name)
    aws(env, "s3", "cp", str(reference_voice_path()), f"s3://{name}/voices/alice.wav")
    return env


def _put(s3: Any, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(MANIFEST).encode())


def _status(s3: Any, bucket: str, job: str) -> dict[str, Any]:
    return get_json(s3, f"status/{job}.json", bucket) or {}


def test_bootstrap_makes_both_lanes_idempotently(make_stack: Any, sqs: Any, s3: Any) -> None:
    env = make_stack(LANES)  # bootstrapped once here
    again = subprocess.run([TTS, "bootstrap"], env=env, capture_output=True, text=True, check=True)
    assert "nothing to change" in again.stdout + again.stderr, again.stdout + again.stderr
    dlqs = set()
    for name in (LANES, f"{LANES}-interactive"):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        policy = json.loads(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
        )
        dlqs.add(policy["deadLetterTargetArn"])
    assert len(dlqs) == 1 and next(iter(dlqs)).endswith(f":{LANES}-dlq")  # one DLQ for both lanes
    configs = s3.get_bucket_notification_configuration(Bucket=LANES)["QueueConfigurations"]
    by_prefix = {
        next(r["Value"] for r in c["Filter"]["Key"]["FilterRules"] if r["Name"].lower() == "prefix"): c["QueueArn"]
        for c in configs
    }
    assert {p: a.rsplit(":", 1)[-1] for p, a in by_prefix.items()} == {
        "inbox/": LANES,
        "inbox-interactive/": f"{LANES}-interactive",
    }


def test_an_interactive_job_completes_while_bulk_work_is_held(
    make_stack: Any, holds: Holds, start: Any, s3: Any, sqs: Any
) -> None:
    """A bulk job held by the fault hooks, two more bulk jobs filling the worker's room and its
    look-ahead behind it: an interactive job dropped later completes while the bulk one is held."""
    env = _stack(make_stack, LANES)
    worker = start(env, max_jobs_in_flight="1", bulk_lookahead="2", interactive_max_in_flight="1")
    holds.hold("bulk-0")
    _put(s3, LANES, "inbox/bulk-0.json")
    holds.wait_held("bulk-0", worker)
    for n in (1, 2):
        _put(s3, LANES, f"inbox/bulk-{n}.json")
    wait_until(lambda: queue_depth(sqs, LANES) == (0, 3), "the bulk messages in the worker's hands", 60, worker)
    _put(s3, LANES, "inbox-interactive/live-1.json")
    done = wait_for_state(s3, "live-1", worker=worker, bucket=LANES)
    assert done["state"] == "COMPLETED" and done["priority"] == "interactive"
    assert holds.held("bulk-0") is not None and _status(s3, LANES, "bulk-0")["state"] == "PROCESSING"
    assert _status(s3, LANES, "bulk-1").get("state") in (None, "QUEUED")  # still waiting its turn
    holds.release("bulk-0")
    for n in range(3):
        status = wait_for_state(s3, f"bulk-{n}", worker=worker, bucket=LANES)
        assert status["state"] == "COMPLETED" and status["priority"] == "bulk"
    # Every message, from either queue, was acknowledged to the queue it came from.
    wait_until(lambda: queue_depth(sqs, LANES) == (0, 0), "the bulk queue drained", 60, worker)
    wait_until(lambda: queue_depth(sqs, f"{LANES}-interactive") == (0, 0), "the interactive queue drained", 60)


def _direct(bucket: str, key: str, principal: str) -> str:
    """An S3 notification as S3 sends it, with the uploader's principal."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": utcnow().isoformat().replace("+00:00", "Z"),
        "userIdentity": {"principalId": principal},
        "s3": {"bucket": {"name": bucket}, "object": {"key": key}},
    }
    return json.dumps({"Records": [record]})


def _eventbridge(bucket: str, key: str, requester: str) -> str:
    """The same upload as S3 sends it through EventBridge (key not URL-encoded)."""
    return json.dumps(
        {
            "version": "0",
            "id": f"eb-{key}",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "000000000000",
            "time": utcnow().isoformat().replace("+00:00", "Z"),
            "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": bucket},
                "object": {"key": key, "size": 10, "etag": "x", "sequencer": "01"},
                "request-id": "r",
                "requester": requester,
                "reason": "PutObject",
            },
        }
    )


def test_a_second_submitter_is_served_in_turn_and_eventbridge_events_run_jobs(
    make_stack: Any, holds: Holds, start: Any, s3: Any, sqs: Any
) -> None:
    """Submitter A's backlog is queued, then B's two jobs (sent as EventBridge events): B's jobs
    start interleaved with A's, not after them. LocalStack gives every upload one principal, so
    the uploads' own notifications are switched off and the events, with their principals, go
    straight to the real queue for the real manifests."""
    env = _stack(make_stack, FAIR)
    s3.put_bucket_notification_configuration(Bucket=FAIR, NotificationConfiguration={})
    url = sqs.get_queue_url(QueueName=FAIR)["QueueUrl"]
    a_jobs, b_jobs = [f"a-{n}" for n in range(6)], ["b-0", "b-1"]
    for job in a_jobs + b_jobs:
        _put(s3, FAIR, f"inbox/{job}.json")
    worker = start(env, max_jobs_in_flight="1", bulk_lookahead="16")
    holds.hold("a-0")
    sqs.send_message(QueueUrl=url, MessageBody=_direct(FAIR, "inbox/a-0.json", "AWS:client-a"))
    holds.wait_held("a-0", worker)
    for job in a_jobs[1:]:
        sqs.send_message(QueueUrl=url, MessageBody=_direct(FAIR, f"inbox/{job}.json", "AWS:client-a"))
    for job in b_jobs:
        sqs.send_message(QueueUrl=url, MessageBody=_eventbridge(FAIR, f"inbox/{job}.json", "client-b"))
    # All eight in the worker's hands (one running, seven waiting) before A's first job goes on.
    wait_until(lambda: queue_depth(sqs, FAIR) == (0, 8), "every message received", 60, worker)
    holds.release("a-0")
    started = {}
    for job in a_jobs + b_jobs:
        status = wait_for_state(s3, job, worker=worker, bucket=FAIR)
        assert status["state"] == "COMPLETED", status
        started[job] = status["started_at"]
    order = sorted(started, key=lambda j: started[j])
    assert order == ["a-0", "a-1", "b-0", "a-2", "b-1", "a-3", "a-4", "a-5"], order


def test_a_stopping_worker_hands_its_waiting_messages_back_as_new_ones(
    make_stack: Any, holds: Holds, tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """A message that only waited must not creep towards the DLQ: handed back on SIGTERM, it is
    received next with a receive count of 1. So is the job in hand's (issue 26): a hand-back that
    is not the job's fault puts back a copy of the same identity, costing none of its deliveries."""
    name = "prio-handback"
    env = _stack(make_stack, name)
    jobs = [f"hb{i}" for i in range(4)]
    for job in jobs:
        holds.hold(job)  # whichever starts first is held; the rest wait in the look-ahead
    worker = start_worker(env, tmp_path / "worker.log", **holds.settings, max_jobs_in_flight="1", shutdown_grace_s="1")
    wait_ready(worker)
    for job in jobs:
        _put(s3, name, f"inbox/{job}.json")
    held = wait_until(lambda: next((j for j in jobs if holds.held(j)), None), "a job held", worker=worker)
    wait_until(lambda: queue_depth(sqs, name) == (0, 4), "all four messages in the worker's hands", worker=worker)
    assert stop_worker(worker) == 0, worker.log()[-3000:]
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    counts: dict[str, int] = {}

    def receive_all() -> bool:
        for m in sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
        ).get("Messages", []):
            key = json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"]
            job = key.removeprefix("inbox/").removesuffix(".json")
            assert job not in counts, f"{job} is on the queue twice"
            counts[job] = int(m["Attributes"]["ApproximateReceiveCount"])
        return len(counts) == 4

    wait_until(receive_all, "the four messages back on the queue")
    # In hand: handed back as a copy (hidden until the stopping worker's own long poll has ended);
    # waited: put back as new messages. None counts a receive.
    assert counts.pop(held) == 1
    assert set(counts.values()) == {1}, counts
    assert "handing back 3 waiting message(s)" in worker.log()
