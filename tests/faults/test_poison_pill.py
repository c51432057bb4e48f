"""Issue 25: the poison-pill scenario on the real stack. Two workers each hold a job mid-way
(the fault hooks hold them at a chunk boundary, so "while they run" does not depend on this
machine's speed); then every class of bad input arrives on both lanes: malformed S3 events, a
recursion bomb, a body that is not JSON, a manifest whose lexicon makes the text front-end's work
explode, and one long "word". The checker then looks only at what was recorded:

- both held jobs end COMPLETED on their first attempt, and no version of their status documents
  was written after the lease the version before it granted (S3 object versions: a lapse would
  let another worker take the job over);
- both workers are still running and ready (``/readyz``);
- every bad message is parked in the DLQ with its reason, and every bad manifest ends FAILED with
  a code that names what is wrong with it (never a code that blames the worker);
- ``tts-pipeline dlq list`` and ``tts-pipeline reconcile`` exit 0 with those dead letters present.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.faults.conftest import short_manifest
from tests.helpers import (
    TTS,
    Holds,
    WorkerProcess,
    http_request,
    queue_depth,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LONG_TEXT = "This is a sentence of moderate length. " * 12  # three chunks with the test voice
# Leases long enough that a loaded CI machine's scheduling noise is not a lapse, short enough that
# a front-end step holding the GIL for tens of seconds (the defect) is one.
LEASE = {"visibility_timeout_s": 12, "heartbeat_interval_s": 3, "receive_wait_s": 1, "retry_base_s": 1}
# Far below the default, so the lexicon bomb's text is over budget (not rendered for minutes).
BUDGET = {"max_spoken_chars": 20_000}
WORKER_FAULTS = {"JOB_TOO_COSTLY", "TEXT_NOT_SPEAKABLE", "TEXT_TOO_LONG", "INVALID_LEXICON", "INVALID_MANIFEST"}


def _bad_messages(bucket: str) -> list[str]:
    def event(obj: Any, identity: Any = None) -> str:
        record = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}}}
        record["s3"]["object"] = obj
        if identity is not None:
            record["userIdentity"] = identity
        return json.dumps({"Records": [record]})

    return [
        event({"key": 123}),  # a number where S3 writes a string
        event({"key": None}),
        event(["not", "an", "object"]),
        event({"key": "inbox/pp-missing.json", "size": "big"}),
        "[" * 100_000,  # json's recursion limit
        "not json at all",
    ]


def _odd_but_readable(bucket: str) -> str:
    """An S3 event whose uploader is not an object: it only decides whose turn the message is, so
    it is read (the anonymous submitter's) and its job handled like any other (here: no manifest)."""
    record = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "userIdentity": "not an object"}
    record["s3"] = {"bucket": {"name": bucket}, "object": {"key": "inbox/pp-odd.json"}}
    return json.dumps({"Records": [record]})


def _lexicon_bomb() -> dict[str, Any]:
    """1,000 entries of 200 characters that almost match a text of 100,000: an alternation regex
    tries each entry at every word (~50 s holding the GIL on a busy 2-core machine)."""
    entries = {f"{'a ' * 98}b{i:03d}": "x" for i in range(1000)}
    return short_manifest(text="a " * 49_999 + "a.", lexicon=entries)


def _status_versions(s3: Any, bucket: str, job: str) -> list[tuple[datetime, dict[str, Any]]]:
    key = f"status/{job}.json"
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    out = []
    for v in sorted((v for v in listed if v["Key"] == key), key=lambda v: v["LastModified"]):
        body = s3.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()
        out.append((v["LastModified"], json.loads(body)))
    return out


def _lease_lapses(versions: list[tuple[datetime, dict[str, Any]]]) -> list[str]:
    """Writes that came after the lease the PROCESSING version before them granted (S3's
    LastModified has one-second resolution: a second of slack)."""
    lapses = []
    for (_, before), (at, after) in itertools.pairwise(versions):
        if before["state"] != "PROCESSING" or not before.get("lease_expires_at"):
            continue
        granted = datetime.fromisoformat(before["lease_expires_at"].replace("Z", "+00:00"))
        if at > granted + timedelta(seconds=1):
            lapses.append(f"{after['state']} written at {at.isoformat()}, lease ended {granted.isoformat()}")
    return lapses


def _ready(w: WorkerProcess) -> bool:
    return w.proc.poll() is None and http_request(f"http://127.0.0.1:{w.metrics_port}/readyz")[0] == 200


def test_poison_pills_take_no_worker_down_and_hold_no_job(
    stack: dict[str, str], workers: Any, holds: Holds, s3: Any, sqs: Any
) -> None:
    bucket, queue = stack["TTS_BUCKET"], stack["TTS_QUEUE"]
    settings = {**LEASE, **BUDGET}
    # w1 takes one bulk job and no more (so the second goes to w2); both lanes of both workers
    # then see the bad input.
    w1: WorkerProcess = workers(stack, "w1", max_jobs_in_flight=1, bulk_lookahead=0, **settings)
    holds.hold("pp-held-1", after_chunks=1)
    s3.put_object(Bucket=bucket, Key="inbox/pp-held-1.json", Body=json.dumps(short_manifest(text=LONG_TEXT)).encode())
    holds.wait_held("pp-held-1", w1)
    w2: WorkerProcess = workers(stack, "w2", **settings)
    holds.hold("pp-held-2", after_chunks=1)
    s3.put_object(Bucket=bucket, Key="inbox/pp-held-2.json", Body=json.dumps(short_manifest(text=LONG_TEXT)).encode())
    holds.wait_held("pp-held-2", w2)

    bad = _bad_messages(bucket)
    for name in (queue, f"{queue}-interactive"):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        for body in [*bad, _odd_but_readable(bucket)]:
            sqs.send_message(QueueUrl=url, MessageBody=body)
    manifests = {
        "pp-lexicon-bomb": _lexicon_bomb(),
        "pp-long-word": short_manifest(text="." * 99_999 + "a"),
    }
    for job, manifest in manifests.items():
        for inbox in ("inbox", "inbox-interactive"):
            s3.put_object(Bucket=bucket, Key=f"{inbox}/{job}-{inbox}.json", Body=json.dumps(manifest).encode())

    parked = 2 * len(bad)
    wait_until(lambda: queue_depth(sqs, f"{queue}-dlq")[0] >= parked, "every bad message parked", 120)
    for job in manifests:
        for inbox in ("inbox", "inbox-interactive"):
            final = wait_for_state(s3, f"{job}-{inbox}", bucket=bucket, timeout_s=600)
            assert final["state"] == "FAILED", final
            assert final["error"]["code"] in WORKER_FAULTS, final["error"]
    assert _ready(w1), w1.log()[-3000:]
    assert _ready(w2), w2.log()[-3000:]

    holds.release("pp-held-1")
    holds.release("pp-held-2")
    for job in ("pp-held-1", "pp-held-2"):
        final = wait_for_state(s3, job, bucket=bucket)
        assert final["state"] == "COMPLETED" and final["attempt"] == 1, final
        versions = _status_versions(s3, bucket, job)
        assert [v for _, v in versions if v["state"] == "PROCESSING"], "no PROCESSING version recorded"
        assert not _lease_lapses(versions), _lease_lapses(versions)
        assert {v["attempt"] for _, v in versions if v["state"] == "PROCESSING"} == {1}
    assert w1.proc.poll() is None and w2.proc.poll() is None

    listed = subprocess.run([TTS, "dlq", "list", "--max", "50"], env=stack, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    entries = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert len(entries) >= parked, entries
    assert all(e["reason"] for e in entries), entries  # each says why it was parked
    reconciled = subprocess.run([TTS, "reconcile", "--older-than", "0"], env=stack, capture_output=True, text=True)
    assert reconciled.returncode == 0, reconciled.stderr[-2000:]
