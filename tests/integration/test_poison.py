"""Poison pills on the real stack (issue 25): no message takes a worker down.

One bucket/queue/DLQ of its own and one worker for the module. Each test sends one class of bad
message while a job of its own is held mid-run on that worker, and checks that the message is
parked in the DLQ with its reason (``tts-reason``), that the worker is still up, and that the held
job then completes on its first attempt (it was never handed back). The DLQ tools and the
reconciler are then run with the dead letters present. More classes of bad input belong here:
one test function per class, using ``bad_message_parked``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    aws,
    drop_manifest,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

NAME = "poison"


@pytest.fixture(scope="module")
def env(make_stack: Any) -> dict[str, str]:
    e = make_stack(NAME)
    aws(e, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return e


@pytest.fixture(scope="module")
def pholds(tmp_path_factory: pytest.TempPathFactory) -> Holds:
    return Holds(tmp_path_factory.mktemp("pholds"))


@pytest.fixture(scope="module")
def pworker(env: dict[str, str], pholds: Holds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(env, tmp_path_factory.mktemp("pworker") / "worker.log", heartbeat_interval_s=1, **pholds.settings)
    wait_ready(w)
    yield w
    # Still the worker the module started, and it stops cleanly: nothing above took it down.
    assert stop_worker(w) == 0, w.log()[-3000:]


def _queue_url(sqs: Any, name: str) -> str:
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def _parked(sqs: Any, source_id: str) -> dict[str, str] | None:
    """The DLQ message a worker parked for the message ``source_id``: its attributes, or None.
    Looked at with visibility 0, so it stays there for the next look (and the next test)."""
    resp = sqs.receive_message(
        QueueUrl=_queue_url(sqs, f"{NAME}-dlq"),
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        VisibilityTimeout=0,
        WaitTimeSeconds=1,
    )
    for m in resp.get("Messages", []):
        attrs = {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}
        if attrs.get("tts-source-message-id") == source_id:
            return attrs
    return None


def bad_message_parked(
    env: dict[str, str], s3: Any, sqs: Any, worker: WorkerProcess, holds: Holds, tmp_path: Path, job: str, body: str
) -> dict[str, str]:
    """Send ``body`` to the job queue while ``job`` runs (held before its first chunk) on ``worker``;
    returns the parked message's attributes once it is in the DLQ. The worker must stay up, and
    the held job must then complete on its first attempt."""
    holds.hold(job)  # before its first chunk: claimed, leased, its message in hand
    manifest = {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2}
    drop_manifest(env, tmp_path, job, manifest, bucket=NAME)
    holds.wait_held(job, worker)
    before = worker.metrics().get("tts_unrecognised_messages_total", 0)

    sent = sqs.send_message(QueueUrl=_queue_url(sqs, NAME), MessageBody=body)["MessageId"]
    attrs = wait_until(lambda: _parked(sqs, sent), "the bad message parked in the DLQ", worker=worker)
    assert worker.proc.poll() is None, worker.log()[-3000:]
    assert worker.metrics()["tts_unrecognised_messages_total"] == before + 1

    holds.release(job)
    final = wait_for_state(s3, job, bucket=NAME, worker=worker)
    assert (final["state"], final["attempt"]) == ("COMPLETED", 1), final  # never handed back
    return attrs


def _s3_event(key: Any) -> str:
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-11-25T01:02:03Z",
        "s3": {"bucket": {"name": NAME}, "object": {"key": key}},
    }
    return json.dumps({"Records": [record]})


def test_an_s3_event_with_a_wrong_type_is_parked_and_the_worker_goes_on(
    env: dict[str, str], s3: Any, sqs: Any, pworker: WorkerProcess, pholds: Holds, tmp_path: Path
) -> None:
    """The message that took a worker down on the real stack: an S3 event whose key is 123
    (AttributeError out of the parser, through the bulk lane's fair share, and the worker exited
    handing back every job it held)."""
    attrs = bad_message_parked(env, s3, sqs, pworker, pholds, tmp_path, "poison-key-123", _s3_event(123))
    assert "not an S3 event notification" in attrs["tts-reason"] and "s3.object.key" in attrs["tts-reason"]


def test_a_recursion_bomb_is_parked_and_the_worker_goes_on(
    env: dict[str, str], s3: Any, sqs: Any, pworker: WorkerProcess, pholds: Holds, tmp_path: Path
) -> None:
    """``[`` x 100,000: RecursionError out of json.loads, not a JSONDecodeError."""
    attrs = bad_message_parked(env, s3, sqs, pworker, pholds, tmp_path, "poison-bomb", "[" * 100_000)
    assert "nested too deeply" in attrs["tts-reason"]


@pytest.mark.parametrize("planted", [b"not json", b'{"state": 7}', b"[" * 100_000])
def test_a_job_whose_status_document_is_unreadable_still_runs_and_ends(
    env: dict[str, str], s3: Any, pworker: WorkerProcess, tmp_path: Path, planted: bytes
) -> None:
    """A status document that is not one (planted, corrupted) used to stop every claim: the job was
    never run nor ended, its message went to the DLQ, and every reconcile pass reported an error for
    it. The claim now starts the job over the unreadable version and the history says so."""
    job = f"poison-status-{len(planted)}"
    s3.put_object(Bucket=NAME, Key=f"status/{job}.json", Body=planted)
    manifest = {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2}
    drop_manifest(env, tmp_path, job, manifest, bucket=NAME)
    final = wait_for_state(s3, job, bucket=NAME, worker=pworker)
    assert final["state"] == "COMPLETED", final
    assert any("unreadable" in (h.get("note") or "") for h in final["history"]), final["history"]
    assert pworker.proc.poll() is None


def test_a_finished_job_whose_status_is_corrupted_is_not_rendered_again(
    env: dict[str, str], s3: Any, pworker: WorkerProcess, tmp_path: Path
) -> None:
    """Claimed over an unreadable status, a job whose result exists (it had completed) is a later
    attempt: it adopts the result and ends COMPLETED with the outputs it names, never rendering
    again nor ending some other way beside a result."""
    job = "poison-status-done"
    manifest = {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2}
    drop_manifest(env, tmp_path, job, manifest, bucket=NAME)
    assert wait_for_state(s3, job, bucket=NAME, worker=pworker)["state"] == "COMPLETED"
    result = json.loads(s3.get_object(Bucket=NAME, Key=f"results/{job}.json")["Body"].read())
    s3.put_object(Bucket=NAME, Key=f"status/{job}.json", Body=b"garbage")
    drop_manifest(env, tmp_path, job, manifest, bucket=NAME)  # delivered again
    final = wait_until(
        lambda: (d := _status(s3, job)) and d.get("state") == "COMPLETED" and d["attempt"] >= 2 and d,
        "the job to end again",
        worker=pworker,
    )
    notes = [h.get("note") or "" for h in final["history"]]
    assert any("unreadable" in n for n in notes) and any("already published" in n for n in notes), notes
    again = json.loads(s3.get_object(Bucket=NAME, Key=f"results/{job}.json")["Body"].read())
    assert again == result  # the same result: nothing was rendered again
    audio = result["audio"]["uri"].removeprefix(f"s3://{NAME}/")
    assert s3.head_object(Bucket=NAME, Key=audio)["ContentLength"] > 0


def _status(s3: Any, job: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=NAME, Key=f"status/{job}.json")["Body"].read())
    except (s3.exceptions.NoSuchKey, ValueError):
        return None


def test_the_dlq_tools_and_the_reconciler_report_unreadable_dead_letters(
    env: dict[str, str], sqs: Any, pworker: WorkerProcess
) -> None:
    """Dead letters that are no S3 event (one parked by the worker, with its ``tts-reason``; two as
    if they had reached the DLQ by maxReceiveCount, with none: what the old worker's crash loop
    left) are one entry each in ``dlq list`` and in the reconciler's report; neither command fails
    because of them."""
    sent = sqs.send_message(QueueUrl=_queue_url(sqs, NAME), MessageBody=_s3_event(None))["MessageId"]
    wait_until(lambda: _parked(sqs, sent), "the bad message parked in the DLQ", worker=pworker)
    dlq = _queue_url(sqs, f"{NAME}-dlq")
    for body in (_s3_event(123), "[" * 100_000):
        sqs.send_message(QueueUrl=dlq, MessageBody=body)

    listed = subprocess.run([TTS, "dlq", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    unreadable = [e for e in entries if e["jobs"] is None]
    assert len(unreadable) >= 3 and all(e["unreadable"] for e in unreadable), entries
    assert any(e["reason"] and "s3.object.key" in e["reason"] for e in unreadable), entries  # parked by the worker

    done = subprocess.run([TTS, "reconcile"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["counts"].get("dead_letter_unreadable", 0) == len(unreadable), report
    assert "error" not in report["counts"], report
    assert pworker.proc.poll() is None


def test_the_reconciler_reports_a_corrupt_status_with_nothing_to_run_and_goes_on(
    env: dict[str, str], s3: Any, pworker: WorkerProcess
) -> None:
    """A status document that is not one, for a job with no manifest (nothing a worker could claim
    over): one item of the report (``status_unreadable``), not an error on every pass."""
    s3.put_object(Bucket=NAME, Key="status/poison-status-alone.json", Body=b"{not a status")
    done = subprocess.run([TTS, "reconcile", "--older-than", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert "error" not in report["counts"], report
    assert next(a for a in report["actions"] if a["job_id"] == "poison-status-alone")["action"] == "status_unreadable"
