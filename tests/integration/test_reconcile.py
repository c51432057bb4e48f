"""The reconciler on real S3 and SQS (LocalStack): orphaned manifests, stuck and dead-lettered
jobs, expiry, orphan outputs; safe next to another reconciler (the conditional writes decide).

Each test has a bucket + queue + DLQ of its own whose S3 notification has been *removed* (as if
someone replaced the bucket's notification configuration): nothing reaches the queue unless the
reconciler sends it. Thresholds are 0 (everything unchanged "for long enough") or the clock is
moved forward: no test waits for time to pass."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.jobs.contract import JobState, JobStatus, utcnow
from pipeline.ops.reconcile import reconcile_once
from tests.helpers import (
    REF_TEXT,
    TTS,
    aws,
    drop_manifest,
    get_json,
    queue_depth,
    reference_voice_path,
    s3_event,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(request: pytest.FixtureRequest, make_stack: Any, s3: Any, sqs: Any) -> dict[str, str]:
    name = "rc-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    env = make_stack(name)
    s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={})
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])  # the s3:TestEvent
    return env


def _settings(env: dict[str, str], **kw: Any) -> Settings:
    return Settings(bucket=env["TTS_BUCKET"], queue=env["TTS_QUEUE"], **kw)


def _depths(sqs: Any, name: str) -> tuple[int, int]:
    """(main queue, DLQ): visible + in flight."""
    return sum(queue_depth(sqs, name)), sum(queue_depth(sqs, f"{name}-dlq"))


def _put_status(s3: Any, bucket: str, status: JobStatus) -> None:
    s3.put_object(Bucket=bucket, Key=f"status/{status.job_id}.json", Body=status.model_dump_json().encode())


def _processing(job_id: str, *, attempt: int, lease_from_now: timedelta, created_ago: timedelta) -> JobStatus:
    now = utcnow()
    status = JobStatus.new(job_id, created_at=now - created_ago)
    for i in range(attempt):
        status = status.moved_to(JobState.PROCESSING, worker=f"w-{i}", lease_s=60)
    return status.model_copy(update={"lease_expires_at": now + lease_from_now})


def _dead_letter(sqs: Any, name: str, job_id: str) -> None:
    url = sqs.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=s3_event(name, f"inbox/{job_id}.json"))


def _by_job(*reports: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for report in reports:
        for a in report.actions:
            out.setdefault(a["job_id"], []).append(a["action"])
    return out


def test_a_manifest_whose_event_was_lost_is_reenqueued_once_and_completes(
    stack: dict[str, str], s3: Any, sqs: Any, tmp_path: Path
) -> None:
    """The notification is gone: the manifest sits in inbox/ with no status and no message. Two
    reconcilers at once re-enqueue it exactly once (one QUEUED status, one message); a worker then
    completes it; a later pass finds nothing to do."""
    name = stack["TTS_BUCKET"]
    aws(stack, "s3", "cp", str(reference_voice_path()), f"s3://{name}/voices/alice.wav")
    manifest = {"text": "Found again.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2}
    drop_manifest(stack, tmp_path, "lost-event", manifest, bucket=name)
    assert _depths(sqs, name) == (0, 0) and get_json(s3, "status/lost-event.json", name) is None

    async def twice() -> list[Any]:
        # One clock for both, a minute on: the manifest is stale, whatever either one writes is not.
        s, now = _settings(stack), utcnow() + timedelta(seconds=60)
        return list(await asyncio.gather(*(reconcile_once(s, older_than_s=30, now=now) for _ in range(2))))

    reports = asyncio.run(twice())
    assert _by_job(*reports) == {"lost-event": ["reenqueued"]}
    assert _depths(sqs, name) == (1, 0)
    queued = get_json(s3, "status/lost-event.json", name)
    assert queued["state"] == "QUEUED" and "re-enqueued by the reconciler" in queued["history"][-1]["note"]

    w = start_worker(stack, tmp_path / "worker.log")
    try:
        wait_ready(w)
        final = wait_for_state(s3, "lost-event", bucket=name, worker=w)
    finally:
        assert stop_worker(w) == 0
    assert final["state"] == "COMPLETED", final
    assert [h["state"] for h in final["history"]] == ["QUEUED", "PROCESSING", "COMPLETED"]
    again = asyncio.run(reconcile_once(_settings(stack), older_than_s=0))
    assert _by_job(again) == {} and _depths(sqs, name) == (0, 0)


def test_stuck_and_dead_lettered_jobs_end_with_specific_codes(stack: dict[str, str], s3: Any, sqs: Any) -> None:
    """Each stuck shape ends the documented way: DLQ + PROCESSING -> WORKER_CRASHED, DLQ + QUEUED
    -> RETRIES_EXHAUSTED, DLQ + a live lease -> untouched, a lease lapsed long ago -> re-enqueued
    (attempts left) or WORKER_CRASHED (none left), a QUEUED job past the TTL -> EXPIRED. DLQ
    messages stay for `dlq redrive`; a second pass (the command) finds nothing more to do."""
    name = stack["TTS_BUCKET"]
    long_ago, day = timedelta(hours=2), timedelta(days=1)
    shapes = {
        "dlq-crashed": _processing("dlq-crashed", attempt=5, lease_from_now=-long_ago, created_ago=day),
        "dlq-queued": JobStatus.new("dlq-queued", created_at=utcnow() - day),
        "dlq-live": _processing("dlq-live", attempt=1, lease_from_now=timedelta(minutes=10), created_ago=day),
        "lapsed-retry": _processing("lapsed-retry", attempt=1, lease_from_now=-long_ago, created_ago=day),
        "lapsed-crashed": _processing("lapsed-crashed", attempt=5, lease_from_now=-long_ago, created_ago=day),
        "queued-too-old": JobStatus.new("queued-too-old", created_at=utcnow() - timedelta(days=8)),
    }
    for status in shapes.values():
        _put_status(s3, name, status)
    for job in ("dlq-crashed", "dlq-queued", "dlq-live"):
        _dead_letter(sqs, name, job)
    assert _depths(sqs, name) == (0, 3)

    assert _by_job(asyncio.run(reconcile_once(_settings(stack), older_than_s=0))) == {
        "dlq-crashed": ["failed_worker_crashed"],
        "dlq-queued": ["failed_retries_exhausted"],
        "lapsed-retry": ["reenqueued"],
        "lapsed-crashed": ["failed_worker_crashed"],
        "queued-too-old": ["expired"],
    }
    after = {job: get_json(s3, f"status/{job}.json", name) for job in shapes}
    codes = {job: (s["state"], (s["error"] or {}).get("code")) for job, s in after.items()}
    assert codes == {
        "dlq-crashed": ("FAILED", "WORKER_CRASHED"),
        "dlq-queued": ("FAILED", "RETRIES_EXHAUSTED"),
        "dlq-live": ("PROCESSING", None),
        "lapsed-retry": ("QUEUED", None),
        "lapsed-crashed": ("FAILED", "WORKER_CRASHED"),
        "queued-too-old": ("EXPIRED", None),
    }
    assert "dlq redrive" in after["dlq-queued"]["error"]["message"]
    assert _depths(sqs, name) == (1, 3)  # lapsed-retry's new message; the DLQ keeps its three

    # The command prints the same report as JSON; a second pass has nothing left to do.
    out = subprocess.run([TTS, "reconcile", "--older-than", "600"], env=stack, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["scanned"]["dlq"] == 3 and report["scanned"]["status"] == len(shapes)
    assert report["counts"] == {}


def test_only_a_jobs_own_dead_letter_ends_it_and_a_result_completes_it_notified_once(
    stack: dict[str, str], s3: Any, sqs: Any
) -> None:
    """The claim names the job's own message. A duplicate's dead letter next to a job waiting for
    its retry (QUEUED) or about to be taken over (a lapsed lease) ends nothing; the job's own dead
    letter ends it RETRIES_EXHAUSTED; a job whose result exists but whose final status write was
    lost ends COMPLETED. The two jobs it ends reach the topic's subscriber, once each, and a second
    pass publishes nothing more."""
    from pipeline.cloud.aws import sync_client

    name = stack["TTS_BUCKET"]
    sns = sync_client("sns")
    topic = sns.create_topic(Name=f"{name}-events")["TopicArn"]
    sub = sqs.create_queue(QueueName=f"{name}-sub")["QueueUrl"]
    sub_arn = sqs.get_queue_attributes(QueueUrl=sub, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sub_arn, Attributes={"RawMessageDelivery": "true"})
    dlq = sqs.get_queue_url(QueueName=f"{name}-dlq")["QueueUrl"]
    day, long_ago = timedelta(days=1), timedelta(hours=2)

    def dead_letter(job: str) -> str:
        return sqs.send_message(QueueUrl=dlq, MessageBody=s3_event(name, f"inbox/{job}.json"))["MessageId"]

    for job in ("dup-queued", "dup-lapsed"):
        dead_letter(job)  # a duplicate: not the message the claim names
    queued = JobStatus.new("dup-queued", created_at=utcnow() - day).model_copy(update={"message_id": "its-own"})
    _put_status(s3, name, queued)
    lapsed = _processing("dup-lapsed", attempt=1, lease_from_now=-long_ago, created_ago=day)
    _put_status(s3, name, lapsed.model_copy(update={"message_id": "its-own"}))
    own = JobStatus.new("own-dead", created_at=utcnow() - day)
    _put_status(s3, name, own.model_copy(update={"message_id": dead_letter("own-dead")}))
    _put_status(s3, name, _processing("half-done", attempt=1, lease_from_now=-long_ago, created_ago=day))
    result = {"audio": {"uri": f"s3://{name}/outputs/half-done/attempt-1.wav"}, "subtitles": {}}
    s3.put_object(Bucket=name, Key="results/half-done.json", Body=json.dumps(_result(result)).encode())
    s3.put_object(Bucket=name, Key="outputs/half-done/attempt-1.wav", Body=b"audio")

    settings = _settings(stack, notify_topic_arn=topic)
    report = asyncio.run(reconcile_once(settings, older_than_s=0))
    actions = _by_job(report)
    # With --older-than 0 both look stuck (re-enqueued: harmless, the claims dedupe), but the
    # duplicate's dead letter fails neither.
    assert actions == {
        "dup-queued": ["reenqueued"],
        "dup-lapsed": ["reenqueued"],
        "own-dead": ["failed_retries_exhausted", "notified"],
        "half-done": ["completed_from_result", "notified"],
    }, actions
    states = {j: get_json(s3, f"status/{j}.json", name) for j in ("dup-queued", "own-dead", "half-done")}
    assert states["dup-queued"]["state"] == "QUEUED"
    assert (states["own-dead"]["state"], states["own-dead"]["error"]["code"]) == ("FAILED", "RETRIES_EXHAUSTED")
    assert states["half-done"]["state"] == "COMPLETED" and states["half-done"]["result_key"] == "results/half-done.json"
    assert all(states[j]["notified_at"] for j in ("own-dead", "half-done"))
    assert "notified" not in json.dumps(_by_job(asyncio.run(reconcile_once(settings, older_than_s=0))))

    def notes() -> list[tuple[str, str]]:
        got = []
        while msgs := sqs.receive_message(QueueUrl=sub, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages"):
            for m in msgs:
                doc = json.loads(m["Body"])
                got.append((doc["job_id"], doc["state"]))
                sqs.delete_message(QueueUrl=sub, ReceiptHandle=m["ReceiptHandle"])
        return got

    assert sorted(notes()) == [("half-done", "COMPLETED"), ("own-dead", "FAILED")]


def test_a_manifest_never_seen_past_the_ttl_is_expired(stack: dict[str, str], s3: Any, sqs: Any) -> None:
    """The clock moved 8 days on: a manifest that never got a status ends EXPIRED, nothing sent."""
    name = stack["TTS_BUCKET"]
    s3.put_object(Bucket=name, Key="inbox/too-late.json", Body=b'{"text": "x", "voice": "voices/a.wav"}')
    later = utcnow() + timedelta(days=8)
    report = asyncio.run(reconcile_once(_settings(stack), older_than_s=0, scan_all=True, now=later))
    assert _by_job(report) == {"too-late": ["expired"]}
    status = JobStatus.model_validate(get_json(s3, "status/too-late.json", name))
    assert status.state is JobState.EXPIRED and "past the TTL" in (status.history[-1].note or "")
    assert _depths(sqs, name) == (0, 0)


def test_outputs_no_result_names_are_removed(stack: dict[str, str], s3: Any) -> None:
    """Attempt 1 died between upload and result; attempt 2 won: attempt 1's outputs go, attempt
    2's stay. A cancelled job's leftovers go; a running job's outputs stay."""
    name = stack["TTS_BUCKET"]
    for key in (
        "won/attempt-1.wav",
        "won/attempt-1.srt",
        "won/attempt-2.wav",
        "gone/attempt-1.wav",
        "busy/attempt-1.wav",
    ):
        s3.put_object(Bucket=name, Key=f"outputs/{key}", Body=b"audio")
    result = {"audio": {"uri": f"s3://{name}/outputs/won/attempt-2.wav"}, "subtitles": {}}
    s3.put_object(Bucket=name, Key="results/won.json", Body=json.dumps(_result(result)).encode())
    _put_status(s3, name, JobStatus.new("gone").moved_to(JobState.CANCELLED))
    _put_status(s3, name, _processing("busy", attempt=1, lease_from_now=timedelta(minutes=5), created_ago=timedelta()))

    report = asyncio.run(reconcile_once(_settings(stack), older_than_s=0))
    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=name, Prefix="outputs/").get("Contents", []))
    assert left == ["outputs/busy/attempt-1.wav", "outputs/won/attempt-2.wav"]
    assert _by_job(report) == {"gone": ["outputs_removed"], "won": ["outputs_removed"]}


def _result(fields: dict[str, Any]) -> dict[str, Any]:
    """A result document with the fields the reconciler reads (the rest filled in validly)."""
    now = utcnow().isoformat()
    audio = {"url": "http://x", "url_expires_at": now, "format": "wav", "sample_rate": 24000, "duration_s": 1.0}
    return {
        "job_id": "won",
        "audio": {**audio, "bytes": 5, **fields["audio"]},
        "word_timings": None,
        "subtitles": fields["subtitles"],
        "text": "x",
        "ref_text": "x",
        "ref_text_source": "manifest",
        "voice_key": "voices/a.wav",
        "seed": 1,
        "chunks": 1,
        "model": {"name": "m", "version": "v", "random_weights": True, "device": "cpu"},
        "worker": "w",
        "timings_ms": {k: 0 for k in ("queue_wait", "download", "synthesis", "alignment", "encode", "upload", "total")},
        "completed_at": now,
    }


def test_the_queue_keeps_messages_longer_than_the_ttl(stack: dict[str, str], sqs: Any) -> None:
    """Bootstrap sets SQS's maximum retention (its default, 4 days, is shorter than the 7-day TTL);
    the worker reads it at start-up and refuses a TTL longer than it."""
    from pipeline.cloud.consumer import Queue
    from pipeline.worker import ConfigError, check_retention

    name = stack["TTS_QUEUE"]
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]

    async def resolved() -> Queue:
        async with Queue.open(name) as queue:
            return queue

    queue = asyncio.run(resolved())
    assert queue.retention_s == 14 * 86400
    check_retention(Settings(), queue)  # the default 7-day TTL fits
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"MessageRetentionPeriod": str(4 * 86400)})
    queue = asyncio.run(resolved())
    with pytest.raises(ConfigError, match="MessageRetentionPeriod"):
        check_retention(Settings(), queue)


def test_the_command_runs_a_pass_per_period_until_stopped(stack: dict[str, str], s3: Any, sqs: Any) -> None:
    """`reconcile --every` (the compose service's mode): one JSON line per pass, pass after pass
    until stopped; the first pass re-enqueues the orphan manifest."""
    name = stack["TTS_BUCKET"]
    s3.put_object(Bucket=name, Key="inbox/periodic.json", Body=b'{"text": "x", "voice": "voices/a.wav"}')
    proc = subprocess.Popen(
        [TTS, "reconcile", "--older-than", "0", "--every", "0.2"], env=stack, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        reports = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert reports[0]["counts"] == {"reenqueued": 1}
    assert [r["scanned"]["inbox"] for r in reports] == [1, 1, 1]
    assert _depths(sqs, name)[0] >= 1 and get_json(s3, "status/periodic.json", name)["state"] == "QUEUED"
