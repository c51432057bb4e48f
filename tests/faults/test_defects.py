"""One test per defect of issue 17, each on the real stack and black-box (worker processes, the
fault proxy's points and trace, S3 object versions, queue depths, metrics), so that the same test
runs against the code before the fix, where it fails, and after it, where it passes.

The waits are hang guards: each test asserts on events it observes, never on a duration.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.faults.conftest import audio_key, put_job, short_manifest, versions
from tests.faults.proxy import ProxyProcess
from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    get_json,
    outputs_left,
    queue_depth,
    s3_event,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LONG_TEXT = "This is a sentence of moderate length. " * 12  # three chunks with the test voice


def _notifications(sqs: Any, sns: Any, topic_name: str) -> tuple[str, Callable[[], list[dict[str, Any]]]]:
    """An SNS topic and a queue subscribed to it; returns (topic ARN, read-all-so-far)."""
    arn = sns.create_topic(Name=topic_name)["TopicArn"]
    url = sqs.create_queue(QueueName=f"{topic_name}-sub")["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            seen.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return seen

    return arn, read


# 1 --------------------------------------------------------------------------------------------


def test_d1_a_final_status_write_failing_past_its_retries_keeps_the_audio_its_result_names(
    stack: dict[str, str],
    via: dict[str, str],
    fault_proxy: ProxyProcess,
    workers: Callable[..., WorkerProcess],
    s3: Any,
) -> None:
    """The result lands, then every try of the COMPLETED status write fails (a brownout past the
    client's retries). The job still ends COMPLETED, and the audio and subtitles its one result
    names exist, each in one version."""
    bucket, job = stack["TTS_BUCKET"], "d1-brownout"
    key = f"status/{job}.json"
    fault_proxy.arm(
        {"id": "d1", "job": job, "op": "S3 PutObject", "key": key, "state": "COMPLETED", "kind": "brownout"}
    )
    w = workers(via, "a")
    put_job(s3, bucket, job, short_manifest(subtitles=["srt"]))
    final = wait_for_state(s3, job, bucket=bucket, worker=w)
    assert fault_proxy.fired("d1"), "the brownout never happened"
    assert final["state"] == "COMPLETED", final
    result = get_json(s3, f"results/{job}.json", bucket)
    for uri in [result["audio"]["uri"], *result["subtitles"].values()]:
        named = uri.removeprefix(f"s3://{bucket}/")
        assert len(versions(s3, bucket, named)) == 1, f"{named} is gone or was written twice"
        assert s3.head_object(Bucket=bucket, Key=named)["ContentLength"] > 0
    assert len(versions(s3, bucket, f"results/{job}.json")) == 1


# 2 --------------------------------------------------------------------------------------------


def test_d2_a_hung_cancel_poll_delays_no_lease_renewal(
    stack: dict[str, str],
    via: dict[str, str],
    fault_proxy: ProxyProcess,
    workers: Callable[..., WorkerProcess],
    holds: Holds,
    s3: Any,
) -> None:
    """Two jobs held in one worker; every cancel poll of the first hangs (the answer never comes).
    While it hangs, the lease of the second job (and of the first) is renewed beat after beat:
    three renewals land after the first hung poll. Released, both complete on attempt 1."""
    bucket = stack["TTS_BUCKET"]
    w = workers(via, "a")
    for job in ("d2-hung", "d2-other"):
        holds.hold(job)
        put_job(s3, bucket, job, short_manifest())
        holds.wait_held(job, w)
    fault_proxy.arm(
        {"id": "d2", "job": "d2-hung", "op": "S3 HeadObject", "key": "cancel/d2-hung", "kind": "hang", "count": 10**6}
    )
    first = wait_until(lambda: fault_proxy.fired("d2"), "a cancel poll to hang", 60, w)

    def renewals_after(job: str) -> int:
        return sum(
            1
            for e in fault_proxy.trace()
            if e["seq"] > first["seq"]
            and e["op"] == "S3 PutObject"
            and e["keys"] == [f"status/{job}.json"]
            and e["state"] == "PROCESSING"
            and e["status"] == 200
        )

    # Hang guard well below what one hung call held the old heartbeat for (6 tries of 60 s).
    wait_until(lambda: renewals_after("d2-other") >= 3 and renewals_after("d2-hung") >= 3, "renewals", 120, w)
    for job in ("d2-hung", "d2-other"):
        holds.release(job)
    for job in ("d2-hung", "d2-other"):
        final = wait_for_state(s3, job, bucket=bucket, worker=w)
        assert final["state"] == "COMPLETED" and final["attempt"] == 1, final


# 3 --------------------------------------------------------------------------------------------


def test_d3_duplicates_of_a_running_job_are_dropped_not_bounced_to_the_dlq(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], holds: Holds, s3: Any, sqs: Any
) -> None:
    """A job is held in one of two workers; two duplicate messages for it arrive (an S3 event
    sent twice, a re-enqueue). Each is deleted when it meets the running job (in its own worker
    or through the other's lease check), so the queue holds only the job's own message and the
    DLQ stays empty; released, the job completes once."""
    bucket, job = stack["TTS_BUCKET"], "d3-dup"
    a, b = workers(stack, "a"), workers(stack, "b")
    holds.hold(job)
    put_job(s3, bucket, job, short_manifest())
    holds.wait_held(job)
    url = sqs.get_queue_url(QueueName=bucket)["QueueUrl"]
    for _ in range(2):
        sqs.send_message(QueueUrl=url, MessageBody=s3_event(bucket, f"inbox/{job}.json"))

    def dropped() -> bool:
        n = sum(w.metrics().get("tts_duplicate_deliveries_total", 0) for w in (a, b))
        return n >= 2 and queue_depth(sqs, bucket) == (0, 1)

    wait_until(dropped, "both duplicates deleted while the job runs", 120)
    assert sum(queue_depth(sqs, f"{bucket}-dlq")) == 0
    holds.release(job)
    final = wait_for_state(s3, job, bucket=bucket)
    assert final["state"] == "COMPLETED" and final["attempt"] == 1
    assert wait_until(lambda: queue_depth(sqs, bucket) == (0, 0), "the job's own message acknowledged", 60)


# 4 --------------------------------------------------------------------------------------------


def test_d4_a_job_cancelled_while_queued_and_one_the_reconciler_expires_are_notified(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], s3: Any, sqs: Any, tmp_path: Path
) -> None:
    """No worker runs: a submitted job is cancelled by the client (the status moves to
    CANCELLED at once), and a manifest whose event was lost is expired by the reconciler. Both
    final states reach the topic's subscriber, once each, whoever meets them first (the
    reconciler's pass, or the worker that meets the cancelled job's message when it starts)."""
    from pipeline.cloud.aws import sync_client

    bucket = stack["TTS_BUCKET"]
    topic, read = _notifications(sqs, sync_client("sns"), f"{bucket}-events")
    env = {**stack, "TTS_NOTIFY_TOPIC_ARN": topic}
    submit = [TTS, "submit", "--job-id", "d4-cancel", "--text", "Cancel me.", "--voice", "voices/alice.wav"]
    subprocess.run([*submit, "--ref-text", REF_TEXT, "--json"], env=env, check=True, capture_output=True)
    subprocess.run([TTS, "cancel", "d4-cancel"], env=env, check=True, capture_output=True)
    assert get_json(s3, "status/d4-cancel.json", bucket)["state"] == "CANCELLED"
    # A manifest with no status and no message (its event was lost), past the TTL of this run.
    s3.put_object(Bucket=bucket, Key="inbox/d4-expired.json", Body=json.dumps(short_manifest()).encode())
    out = subprocess.run(
        [TTS, "reconcile", "--older-than", "0"], env={**env, "TTS_JOB_TTL_S": "0.001"}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert get_json(s3, "status/d4-expired.json", bucket)["state"] == "EXPIRED"
    workers(env, "a")

    def both() -> list[dict[str, Any]] | None:
        got = read()
        return got if {n["job_id"] for n in got} >= {"d4-cancel", "d4-expired"} else None

    got = wait_until(both, "both notifications", 120)
    states = sorted((n["job_id"], n["state"]) for n in got)
    assert states == [("d4-cancel", "CANCELLED"), ("d4-expired", "EXPIRED")], states


# 5 --------------------------------------------------------------------------------------------


def test_d5_an_attempt_that_lost_its_lease_removes_nothing_of_its_successor(
    stack: dict[str, str], fault_proxy: ProxyProcess, s3: Any, tmp_path: Path
) -> None:
    """Worker a renders chunk 1 of 3 and is held; its status writes and its SQS calls stop
    reaching S3 and SQS (dropped), so worker b takes the job over, reuses chunk 1, renders
    chunk 2 and is held. Then a's next model call fails (an injected out-of-memory): a ends its
    attempt FAILED, which it cannot write, and it removes none of the chunks. Released, b
    completes the job, with a's chunk reused."""
    bucket, job = stack["TTS_BUCKET"], "d5-loser"
    env = {**stack, "AWS_ENDPOINT_URL": fault_proxy.endpoint}
    fast = {
        "visibility_timeout_s": 6,
        "heartbeat_interval_s": 1.5,
        "receive_wait_s": 1,
        "retry_base_s": 1,
        "retry_max_s": 5,
    }
    ha, hb = Holds(tmp_path / "fa"), Holds(tmp_path / "fb")
    a = start_worker(env, tmp_path / "a.log", **fast, **ha.settings)
    wait_ready(a)
    ha.hold(job, after_chunks=1, attempts=[1])
    put_job(s3, bucket, job, short_manifest(text=LONG_TEXT, seed=3))
    ha.wait_held(job, a)
    # a is cut off from its status and the queue (it still reads and writes chunks).
    for op in ("S3 PutObject", "SQS ChangeMessageVisibilityBatch", "SQS ChangeMessageVisibility", "SQS ReceiveMessage"):
        key = f"status/{job}.json" if op == "S3 PutObject" else None
        fault_proxy.arm({"id": f"d5-{op}", "pid": a.proc.pid, "op": op, "key": key, "kind": "dropped", "count": 10**6})
    hb.hold(job, after_chunks=2, attempts=[2])
    b = start_worker(env, tmp_path / "b.log", **fast, **hb.settings)
    try:
        wait_ready(b)
        hb.wait_held(job, b)
        chunks = sorted(
            o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"outputs/{job}/chunks/")["Contents"]
        )
        assert len(chunks) == 4, chunks  # two chunks, audio + record each
        (ha.root / "oom").mkdir(exist_ok=True)
        (ha.root / "oom" / job).write_text("")
        ha.release(job)
        wait_until(lambda: a.metrics().get("tts_jobs_in_flight", 1) == 0, "a to give up its attempt", 120, a)
        left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"outputs/{job}/chunks/")["Contents"])
        assert left == chunks, "the attempt that lost the job removed its successor's chunks"
        hb.release(job)
        final = wait_for_state(s3, job, bucket=bucket, worker=b)
        assert final["state"] == "COMPLETED" and final["attempt"] == 2, final
        assert get_json(s3, f"results/{job}.json", bucket)["chunks_reused"] == 1  # a's chunk
    finally:
        stop_worker(b)
        stop_worker(a)


def test_d5_a_cancelled_jobs_chunks_go_in_one_request_while_its_message_is_still_held(
    stack: dict[str, str],
    via: dict[str, str],
    fault_proxy: ProxyProcess,
    workers: Callable[..., WorkerProcess],
    holds: Holds,
    s3: Any,
) -> None:
    """A three-chunk job is cancelled after two chunks. Removing its chunks is held back (the
    answer hangs): meanwhile the heartbeat keeps extending the message's visibility, because the
    ending runs under the lease, after the final status. A second job, cancelled the same way
    without faults, has its chunks removed in one DeleteObjects request."""
    bucket = stack["TTS_BUCKET"]
    w = workers(via, "a", call_timeout_s=5)
    for op in ("S3 DeleteObjects", "S3 DeleteObject"):  # the batch, or the one-by-one removal
        fault_proxy.arm({"id": f"d5b-{op}", "job": "d5-cancel", "op": op, "kind": "hang", "hang_s": 30})

    def cancel_held(job: str) -> None:
        holds.hold(job, after_chunks=2)
        put_job(s3, bucket, job, short_manifest(text=LONG_TEXT))
        holds.wait_held(job, w)
        s3.put_object(Bucket=bucket, Key=f"cancel/{job}", Body=b"")

    cancel_held("d5-cancel")
    hung = wait_until(
        lambda: fault_proxy.fired("d5b-S3 DeleteObjects") or fault_proxy.fired("d5b-S3 DeleteObject"),
        "the chunk removal to hang",
        60,
        w,
    )
    assert get_json(s3, "status/d5-cancel.json", bucket)["state"] == "CANCELLED"  # final before the removal

    def extended_meanwhile() -> int:
        trace = fault_proxy.trace()
        ops = ("SQS ChangeMessageVisibilityBatch",)
        return sum(1 for e in trace if e["seq"] > hung["seq"] and e["op"] in ops and "d5-cancel" in e["jobs"])

    wait_until(lambda: extended_meanwhile() >= 2, "the message kept in flight during the removal", 60, w)
    cancel_held("d5-plain")
    for job in ("d5-cancel", "d5-plain"):
        final = wait_for_state(s3, job, bucket=bucket, worker=w)
        assert final["state"] == "CANCELLED" and final["attempt"] == 1, final
        assert outputs_left(s3, job, [], bucket=bucket) == []
    removals = [e for e in fault_proxy.trace() if "d5-plain" in e["jobs"] and e["op"].startswith("S3 Delete")]
    assert [e["op"] for e in removals] == ["S3 DeleteObjects"] and len(removals[0]["keys"]) == 4, removals


# 6 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["heartbeat", "batcher"])
def test_d6_a_dead_background_task_stops_the_worker_and_hands_its_job_back(
    task: str, stack: dict[str, str], workers: Callable[..., WorkerProcess], holds: Holds, s3: Any
) -> None:
    """The heartbeat (or the batcher) of a worker holding a job dies. The worker does not stay
    ready with the job hanging: it hands the job back (QUEUED) and exits non-zero; another
    worker completes the job."""
    bucket, job = stack["TTS_BUCKET"], f"d6-{task}"
    a = workers(stack, "a")
    holds.hold(job, attempts=[1])
    put_job(s3, bucket, job, short_manifest())
    holds.wait_held(job, a)
    (holds.root / "crash").mkdir(exist_ok=True)
    (holds.root / "crash" / task).write_text("")
    code = a.proc.wait(timeout=120)
    assert code not in (0, None), a.log()[-2000:]
    released = get_json(s3, f"status/{job}.json", bucket)
    assert released["state"] == "QUEUED" and released["attempt"] == 1, released
    (holds.root / "crash" / task).unlink()
    b = workers(stack, "b")
    final = wait_for_state(s3, job, bucket=bucket, worker=b)
    assert final["state"] == "COMPLETED" and final["attempt"] == 2, final


# 7 --------------------------------------------------------------------------------------------


def test_d7_no_process_outlives_a_worker_killed_with_sigkill(stack: dict[str, str], tmp_path: Path, s3: Any) -> None:
    """kill -9 of a worker: its aligner process, its text front-end's process (started by its first
    job; issue 25) and multiprocessing's resource tracker exit too, instead of running on,
    reparented to init."""
    w = start_worker(stack, tmp_path / "w.log")
    wait_ready(w)
    before = {c.pid for c in psutil.Process(w.proc.pid).children(recursive=True)}
    assert before, "the worker has no aligner process"
    put_job(s3, stack["TTS_BUCKET"], "d7-text", short_manifest())
    assert wait_for_state(s3, "d7-text", bucket=stack["TTS_BUCKET"], worker=w)["state"] == "COMPLETED"
    children = psutil.Process(w.proc.pid).children(recursive=True)
    assert {c.pid for c in children} - before, "the job started no text front-end process"
    w.proc.send_signal(signal.SIGKILL)
    w.proc.wait()

    def gone() -> bool:
        return not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    wait_until(gone, f"the killed worker's children {[c.pid for c in children]} to exit", 60)


# 8 --------------------------------------------------------------------------------------------


def test_d8_a_job_whose_result_exists_is_not_rendered_again(
    stack: dict[str, str], via: dict[str, str], fault_proxy: ProxyProcess, tmp_path: Path, s3: Any
) -> None:
    """The worker is killed right after its result landed (before the final status). The worker
    that takes the job over finds the result and completes the job without rendering it again:
    no chunk synthesised, none even reassembled from the durable chunks."""
    bucket, job = stack["TTS_BUCKET"], "d8-adopt"
    fast = {"visibility_timeout_s": 6, "heartbeat_interval_s": 1.5, "receive_wait_s": 1}
    a = start_worker(via, tmp_path / "a.log", **fast)
    wait_ready(a)
    fault_proxy.arm({"id": "d8", "job": job, "op": "S3 PutObject", "key": f"results/{job}.json", "kind": "kill"})
    put_job(s3, bucket, job, short_manifest(text=LONG_TEXT))
    a.proc.wait(timeout=300)
    assert fault_proxy.fired("d8") and a.proc.returncode == -signal.SIGKILL
    b = start_worker(via, tmp_path / "b.log", **fast)
    try:
        wait_ready(b)
        final = wait_for_state(s3, job, bucket=bucket, worker=b)
        assert final["state"] == "COMPLETED" and final["attempt"] == 2, final
        m = b.metrics()
        rendered = {src: m.get(f'tts_chunks_total{{source="{src}"}}', 0.0) for src in ("synthesized", "reused")}
        # Neither synthesised nor reassembled from the durable chunks: nothing rendered at all.
        assert rendered == {"synthesized": 0, "reused": 0}, f"the job was rendered again: {rendered}"
        assert len(versions(s3, bucket, audio_key(s3, job, bucket))) == 1
    finally:
        stop_worker(b)


# 9 and 10 are unit tests: tests/unit/test_batcher.py (the busy history) and tests/unit/test_infra.py
# (the worker's policy and outputs/*), with the trace-derived policy check in tests/faults/test_policies.py.
