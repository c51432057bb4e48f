"""The fault suite: real LocalStack, real worker processes, the tiny model.

Each test measures what it proves and records the figures for docs/reliability.md
(`make reliability` regenerates the page from them).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.jobs.contract import ErrorCode
from tests.faults.conftest import audio_key, generations, queue_drained, versions, visible_outputs
from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    drop_manifest,
    get_json,
    outputs_left,
    queue_depth,
    reference_voice_path,
    s3_event,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LONG_TEXT = "This is a sentence of moderate length. " * 20  # five chunks with the test voice


def _manifest(**fields: Any) -> dict[str, Any]:
    return {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2, **fields}


def _put_job(s3: Any, bucket: str, job_id: str, manifest: dict[str, Any] | bytes) -> None:
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    s3.put_object(Bucket=bucket, Key=f"inbox/{job_id}.json", Body=body)


def _pid(worker_id: str) -> int:
    return int(worker_id.rsplit("-", 1)[1])


def _wait_all(s3: Any, bucket: str, job_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline and len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id not in done:
                status = get_json(s3, f"status/{job_id}.json", bucket)
                if status and status["state"] in ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED"):
                    done[job_id] = status
        time.sleep(0.5)
    return done


# 1 -------------------------------------------------------------------------------------------


def test_kill_9_mid_synthesis_then_another_worker_completes_the_job_once(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], holds: Holds, s3: Any, record: Any, tmp_path: Path
) -> None:
    """kill -9 of a worker holding three jobs mid-synthesis (each held after chunk 1 of 5): a second
    worker takes each job over when its lease lapses and completes it; the versioned bucket holds
    exactly one audio object version and one result version per job."""
    bucket = stack["TTS_BUCKET"]
    a = workers(stack, "a")
    jobs = ["kill9-a", "kill9-b", "kill9-c"]
    for job in jobs:
        holds.hold(job, after_chunks=1, attempts=[1])  # the successor's attempts run freely
        drop_manifest(stack, tmp_path, job, _manifest(text=LONG_TEXT, nfe_step=16), bucket=bucket)
    held = [holds.wait_held(job, a) for job in jobs]
    assert all(_pid(h["worker"]) == a.proc.pid for h in held)  # all three in flight in one worker
    b = workers(stack, "b")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    killed_at = time.monotonic()
    final = {job: wait_for_state(s3, job, bucket=bucket, timeout_s=300, worker=b) for job in jobs}
    recovery_s = time.monotonic() - killed_at

    assert all(f["state"] == "COMPLETED" for f in final.values()), final
    assert all(f["attempt"] == 2 and _pid(f["worker"]) == b.proc.pid for f in final.values())
    assert all(any("took over from" in (h["note"] or "") for h in f["history"]) for f in final.values())
    audio_versions = {job: len(versions(s3, bucket, audio_key(s3, job, bucket))) for job in jobs}
    result_versions = {job: len(versions(s3, bucket, f"results/{job}.json")) for job in jobs}
    assert set(audio_versions.values()) == {1} and set(result_versions.values()) == {1}
    assert all(generations(s3, bucket, job) == 1 for job in jobs)
    record(
        jobs=len(jobs),
        jobs_in_flight_on_the_killed_worker=len(held),
        killed_at_progress={"chunks_done": held[0]["chunks_done"], "chunks_total": held[0]["chunks_total"]},
        recovery_seconds=round(recovery_s, 1),
        audio_versions=sum(audio_versions.values()),
        result_versions=sum(result_versions.values()),
        lost=sum(1 for f in final.values() if f["state"] != "COMPLETED"),
        duplicated=sum(1 for j in jobs if audio_versions[j] > 1 or result_versions[j] > 1),
    )


# 2 -------------------------------------------------------------------------------------------


def test_same_manifest_delivered_three_times_to_two_workers_generates_once(
    stack: dict[str, str],
    workers: Callable[..., WorkerProcess],
    holds: Holds,
    s3: Any,
    sqs: Any,
    record: Any,
    tmp_path: Path,
) -> None:
    """The same manifest uploaded three times (three S3 events) plus a duplicated SQS message, with
    two workers consuming concurrently; the job is held until every other message has met the
    claim (told apart by message id and dropped while the job runs, so none can bounce into the
    DLQ): one generation, one result, one audio version, every duplicate acknowledged."""
    bucket = stack["TTS_BUCKET"]
    a, b = workers(stack, "a"), workers(stack, "b")
    job = "dup3"
    manifest = _manifest(text=LONG_TEXT[:200], nfe_step=8)
    holds.hold(job)
    for _ in range(3):
        drop_manifest(stack, tmp_path, job, manifest, bucket=bucket)
    sqs.send_message(
        QueueUrl=sqs.get_queue_url(QueueName=bucket)["QueueUrl"], MessageBody=s3_event(bucket, f"inbox/{job}.json")
    )
    holds.wait_held(job)
    dropped_while_held = wait_until(
        lambda: (n := sum(w.metrics().get("tts_duplicate_deliveries_total", 0) for w in (a, b))) >= 3 and n,
        "the three other deliveries dropped as duplicates while the job is held",
    )
    holds.release(job)
    final = wait_for_state(s3, job, bucket=bucket, timeout_s=300)
    assert final["state"] == "COMPLETED"
    assert queue_drained(sqs, bucket, timeout_s=300), "duplicate deliveries were not all acknowledged"

    duplicates = sum(w.metrics().get("tts_duplicate_deliveries_total", 0) for w in (a, b))
    assert duplicates == 3
    assert generations(s3, bucket, job) == 1
    assert len(versions(s3, bucket, f"results/{job}.json")) == 1
    assert len(versions(s3, bucket, audio_key(s3, job, bucket))) == 1
    assert [h["state"] for h in final["history"]] == ["QUEUED", "PROCESSING", "COMPLETED"]
    result_versions = len(versions(s3, bucket, f"results/{job}.json"))
    record(
        manifest_uploads=len(versions(s3, bucket, f"inbox/{job}.json")),
        generations=generations(s3, bucket, job),
        duplicates_dropped_while_held=int(dropped_while_held),
        duplicates_acknowledged=int(duplicates),
        lost=int(final["state"] != "COMPLETED"),
        duplicated=int(result_versions > 1),
    )


def test_a_worker_paused_past_its_lease_cannot_overwrite_the_successors_outputs(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], holds: Holds, s3: Any, record: Any
) -> None:
    """Worker a is stopped (SIGSTOP) in its publish step, after its last lease check and before
    uploading; its lease lapses; worker b takes the job over and completes it; a is resumed
    (SIGCONT) and uploads. The result names b's audio, which has one version; a's upload went to
    its own attempt's key and was removed when a's result write lost; a ends its attempt without
    writing anything else ("lost the job")."""
    bucket, job = stack["TTS_BUCKET"], "paused"
    holds.hold(job, at="publish", attempts=[1])
    a = workers(stack, "a")
    _put_job(s3, bucket, job, _manifest())  # no seed: each attempt draws its own, so audio differs
    held = holds.wait_held(job, a)
    assert held["at"] == "publish" and held["attempt"] == 1
    a.proc.send_signal(signal.SIGSTOP)
    try:
        holds.release(job)  # a cannot see this until it is resumed
        b = workers(stack, "b")
        final = wait_for_state(s3, job, bucket=bucket, worker=b, timeout_s=300)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: "lost the job to another worker" in a.log() or None, "a's attempt to end", worker=a)

    assert final["state"] == "COMPLETED" and final["attempt"] == 2 and _pid(final["worker"]) == b.proc.pid
    named = audio_key(s3, job, bucket)
    assert visible_outputs(s3, bucket, job) == [named]  # a's upload is gone, b's is untouched
    assert len(versions(s3, bucket, named)) == 1
    assert named == f"outputs/{job}/attempt-2.wav"
    assert generations(s3, bucket, job) == 2  # a did upload (to attempt-1), after b had finished
    assert len(versions(s3, bucket, f"results/{job}.json")) == 1
    after = get_json(s3, f"status/{job}.json", bucket)
    assert after == final  # a wrote nothing once it lost: the status is b's COMPLETED
    assert a.proc.poll() is None  # and a keeps running
    result_versions = len(versions(s3, bucket, f"results/{job}.json"))
    record(
        attempts=final["attempt"],
        audio_uploads=generations(s3, bucket, job),
        outputs_left=len(visible_outputs(s3, bucket, job)),
        versions_of_the_named_audio=len(versions(s3, bucket, named)),
        result_versions=result_versions,
        lost=int(final["state"] != "COMPLETED"),
        duplicated=int(result_versions > 1 or visible_outputs(s3, bucket, job) != [named]),
    )


# 3 -------------------------------------------------------------------------------------------


def test_transient_failures_on_20_percent_of_calls(
    stack: dict[str, str],
    workers: Callable[..., WorkerProcess],
    proxy: Callable[..., tuple[str, Path]],
    s3: Any,
    sqs: Any,
    record: Any,
) -> None:
    """Two workers whose every S3 and SQS call (model sync included) goes through a proxy that
    fails 20 % of them (503s and connection resets before LocalStack; 503s and bodies cut short
    after it acted): all 30 jobs complete, none is lost, none is published twice (one result
    version; the only outputs left are the ones its result names). Two more jobs prove the
    job-level paths ran: one whose result upload fails 7 times in a row (more than the client's
    own retries) completes on a later attempt; one whose result upload always fails ends FAILED
    RETRIES_EXHAUSTED with its message in the DLQ and no outputs left."""
    bucket = stack["TTS_BUCKET"]
    endpoint, stats_file = proxy(0.2)
    _rules(
        endpoint,
        [
            {"match": rf"^PUT /{bucket}/results/retried\.json", "kind": "dropped", "times": 7},
            {"match": rf"^PUT /{bucket}/results/doomed\.json", "kind": "dropped", "times": -1},
        ],
    )
    env = {**stack, "AWS_ENDPOINT_URL": endpoint}
    a, b = workers(env, "a"), workers(env, "b")
    jobs = [f"flaky-{i:03d}" for i in range(30)]
    t0 = time.monotonic()
    for job in [*jobs, "retried", "doomed"]:
        _put_job(s3, bucket, job, _manifest(text=f"Job {job} under fire."))
    done = _wait_all(s3, bucket, [*jobs, "retried"], timeout_s=900)
    elapsed = time.monotonic() - t0
    # doomed's message reaches the DLQ after maxReceiveCount receives. Receives whose answer the
    # proxy lost count too, so its worker may never see the last one and leave it QUEUED: the
    # reconciler (run as operators do, past the proxy) ends it either way.
    dlq_depth = wait_until(lambda: _depth(sqs, f"{bucket}-dlq") or None, "doomed's message in the DLQ", 900)
    reconciled: dict[str, int] = {}  # what the reconciler did to end doomed
    cleaned: set[str] = set()  # jobs whose outputs it removed

    def reconcile_doomed() -> dict[str, Any] | None:
        # Its worker may still be in an attempt (a live lease: the reconciler leaves it alone).
        out = subprocess.run([TTS, "reconcile", "--older-than", "0"], env=stack, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        for a in json.loads(out.stdout)["actions"]:
            if a["action"] == "outputs_removed":
                cleaned.add(a["job_id"])
            else:
                reconciled[a["action"]] = reconciled.get(a["action"], 0) + 1
        status = get_json(s3, "status/doomed.json", bucket)
        return status if status and status["state"] in ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED") else None

    done["doomed"] = wait_until(reconcile_doomed, "doomed to end", 600)
    stats = json.loads(stats_file.read_text())

    completed = [j for j in jobs if done.get(j, {}).get("state") == "COMPLETED"]
    assert sorted(completed) == jobs, {j: s["state"] for j, s in done.items() if s["state"] != "COMPLETED"}
    result_versions = {j: len(versions(s3, bucket, f"results/{j}.json")) for j in [*jobs, "retried"]}
    assert set(result_versions.values()) == {1}, result_versions
    leaked = {
        j: v
        for j in [*jobs, "retried"]
        if (v := outputs_left(s3, j, [audio_key(s3, j, bucket)], bucket=bucket)) != [audio_key(s3, j, bucket)]
    }
    assert not leaked, leaked
    assert stats["faults"] >= 0.1 * stats["requests"]  # the faults really happened
    assert all(stats.get(f"faults.{k}", 0) > 0 for k in ("dropped", "reset", "lost", "truncated")), stats

    retried, doomed = done["retried"], done["doomed"]
    assert retried["state"] == "COMPLETED" and retried["attempt"] >= 2, retried
    assert doomed["state"] == "FAILED" and doomed["error"]["code"] == "RETRIES_EXHAUSTED", doomed
    assert outputs_left(s3, "doomed", [], bucket=bucket) == [] and get_json(s3, "results/doomed.json", bucket) is None
    assert dlq_depth == 1 and reconciled in ({}, {"failed_retries_exhausted": 1}), reconciled
    # Files of doomed's earlier attempts (each sent a result that never landed, so none could tell
    # they were unneeded) are the reconciler's to remove; every job that completed cleaned up itself.
    assert cleaned <= {"doomed"}, cleaned
    job_retries = sum(w.metrics().get("tts_job_retries_total", 0) for w in (a, b))
    assert job_retries >= (retried["attempt"] - 1) + (doomed["attempt"] - 1) > 0
    gens = {j: generations(s3, bucket, j) for j in jobs}
    record(
        jobs=len(jobs) + 2,
        requests=stats["requests"],
        faults_injected=stats["faults"],
        faults_by_kind={k: stats.get(f"faults.{k}", 0) for k in ("dropped", "reset", "lost", "truncated")},
        completed=len(completed) + int(retried["state"] == "COMPLETED"),
        lost=len(jobs) - len(completed),
        duplicated=sum(1 for v in result_versions.values() if v > 1) + len(leaked),
        uploads_redone_by_a_later_attempt=sum(n - 1 for n in gens.values()) + generations(s3, bucket, "retried") - 1,
        job_level_retries=int(job_retries),
        retried_job_attempts=retried["attempt"],
        doomed_job_attempts=doomed["attempt"],
        dlq_messages=dlq_depth,
        doomed_job_ended_by="reconciler" if reconciled else "its worker",
        seconds=round(elapsed, 1),
    )


def _depth(sqs: Any, queue: str) -> int:
    return sum(queue_depth(sqs, queue))


def _rules(endpoint: str, rules: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(f"{endpoint}/_fault/rules", data=json.dumps(rules).encode(), method="PUT")
    urllib.request.urlopen(req, timeout=10).read()


async def test_connection_resets_and_truncated_bodies_are_retried(
    stack: dict[str, str], proxy: Callable[..., tuple[str, Path]], record: Any
) -> None:
    """The project's S3 and SQS clients, through the proxy with targeted faults: an upload whose
    connection is reset twice, a download whose body is cut in half twice (after LocalStack
    served it), an SQS send reset once and answered-then-lost once. Each call succeeds on its
    own retries with the right bytes, and the proxy saw every fault."""
    from pipeline.cloud.consumer import Queue
    from pipeline.cloud.store import Store

    bucket = stack["TTS_BUCKET"]
    endpoint, stats_file = proxy(0.0)
    _rules(
        endpoint,
        [
            {"match": rf"^PUT /{bucket}/probe/reset\.bin", "kind": "reset", "times": 2},
            {"match": rf"^GET /{bucket}/probe/reset\.bin", "kind": "truncated", "times": 2},
            {"match": r"^POST /", "kind": "reset", "times": 1},
            {"match": r"^POST /", "kind": "lost", "times": 1},
        ],
    )
    payload = bytes(range(256)) * 4096  # 1 MiB
    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        async with Store.open(bucket) as store:
            await store.put_bytes("probe/reset.bin", payload)
            assert await store.get_bytes("probe/reset.bin") == payload
        async with Queue.open(stack["TTS_QUEUE"]) as queue:  # resolve: the 2 POST faults hit it
            await queue.send("probe")
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved or ""
    stats = json.loads(stats_file.read_text())
    assert stats.get("faults.reset", 0) == 3 and stats.get("faults.truncated", 0) == 2, stats
    assert stats.get("faults.lost", 0) == 1, stats
    record(
        resets=stats["faults.reset"],
        truncated_bodies=stats["faults.truncated"],
        lost_answers=stats["faults.lost"],
    )


def test_an_s3_and_sqs_outage_does_not_stop_the_worker(
    stack: dict[str, str],
    workers: Callable[..., WorkerProcess],
    holds: Holds,
    proxy: Callable[..., tuple[str, Path]],
    s3: Any,
    sqs: Any,
    record: Any,
) -> None:
    """A job is in flight (held after chunk 1 of 5) when every S3/SQS call starts failing, until
    the worker has seen its receive loop fail twice (beyond the client's own retries; longer than
    the 6 s lease, so its heartbeat fails too). The worker keeps running; once the endpoint is
    back, the job in flight completes once (its own redelivered message is deferred, never run
    twice) and the next job is processed."""
    bucket = stack["TTS_BUCKET"]
    endpoint, _ = proxy(0.0)
    w = workers({**stack, "AWS_ENDPOINT_URL": endpoint}, "a")

    def set_rate(rate: float) -> None:
        req = urllib.request.Request(f"{endpoint}/_fault/rate", data=str(rate).encode(), method="PUT")
        urllib.request.urlopen(req, timeout=5).read()

    holds.hold("during-outage", after_chunks=1)
    _put_job(s3, bucket, "during-outage", _manifest(text=LONG_TEXT))
    holds.wait_held("during-outage", w)
    in_flight = w.metrics()["tts_jobs_in_flight"]
    assert in_flight == 1
    set_rate(1.0)
    t0 = time.monotonic()
    wait_until(lambda: w.log().count("receive failed") >= 2, "two failed receive rounds", worker=w)
    set_rate(0.0)
    outage_s = time.monotonic() - t0
    assert w.proc.poll() is None, w.log()[-3000:]
    holds.release("during-outage")
    _put_job(s3, bucket, "after-outage", _manifest())
    final = {j: wait_for_state(s3, j, bucket=bucket, worker=w) for j in ("during-outage", "after-outage")}
    assert all(f["state"] == "COMPLETED" for f in final.values()), final
    assert final["during-outage"]["attempt"] == 1
    assert queue_drained(sqs, bucket, timeout_s=300)
    gens = {j: generations(s3, bucket, j) for j in final}
    result_versions = {j: len(versions(s3, bucket, f"results/{j}.json")) for j in final}
    assert set(gens.values()) == {1} and set(result_versions.values()) == {1}, (gens, result_versions)
    assert w.proc.poll() is None
    record(
        jobs=len(final),
        jobs_in_flight_when_the_outage_began=int(in_flight),
        outage_seconds=round(outage_s, 1),
        failed_receive_rounds=w.log().count("receive failed"),
        worker_still_running=w.proc.poll() is None,
        lost=sum(1 for f in final.values() if f["state"] != "COMPLETED"),
        duplicated=sum(1 for j in final if gens[j] > 1 or result_versions[j] > 1),
    )


def _wipe(s3: Any, sqs: Any, name: str) -> None:
    """What a LocalStack restart without persistence does to a stack: everything gone."""
    for queue in (name, f"{name}-dlq"):
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"])
    listing = s3.list_object_versions(Bucket=name)
    doomed = [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])
    ]
    for i in range(0, len(doomed), 1000):
        s3.delete_objects(Bucket=name, Delete={"Objects": doomed[i : i + 1000]})
    s3.delete_bucket(Bucket=name)


def test_the_bucket_and_queue_vanishing_mid_job_does_not_stop_the_worker(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], holds: Holds, s3: Any, sqs: Any, record: Any
) -> None:
    """LocalStack restarted without its state, mid-job: with a job held after chunk 1, the bucket
    (every object version) and both queues are deleted. The worker keeps running and unready,
    waiting for the queue; bootstrap re-creates the resources (LocalStack's init hook does this
    on a restart); the worker consumes again, a new job completes, and the job that was in flight
    (its status gone with the bucket) stops as a lost claim without writing anything."""
    bucket = stack["TTS_BUCKET"]
    w = workers(stack, "a")
    holds.hold("in-flight", after_chunks=1)
    _put_job(s3, bucket, "in-flight", _manifest(text=LONG_TEXT))
    holds.wait_held("in-flight", w)
    _wipe(s3, sqs, bucket)
    wait_until(lambda: "is gone" in w.log() or None, "the worker noticing that its queue is gone", worker=w)
    ready_while_gone = _ready(w)
    subprocess.run([TTS, "bootstrap"], env=stack, check=True, capture_output=True)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="voices/alice.wav", Body=reference_voice_path().read_bytes())
    wait_until(lambda: "exists again" in w.log() or None, "the worker consuming again", worker=w)
    holds.release("in-flight")
    _put_job(s3, bucket, "after-restart", _manifest())
    after = wait_for_state(s3, "after-restart", bucket=bucket, worker=w)
    wait_until(lambda: "[in-flight] lost the job" in w.log() or None, "the in-flight job to stop", worker=w)

    assert after["state"] == "COMPLETED", after
    assert ready_while_gone is False and _ready(w) is True
    assert w.proc.poll() is None
    leftovers = [
        k for k in ("status/in-flight.json", "results/in-flight.json") if get_json(s3, k, bucket) is not None
    ] + visible_outputs(s3, bucket, "in-flight")
    assert leftovers == []
    record(
        jobs=1,  # the one submitted after the restart; the in-flight one was wiped with its manifest
        worker_still_running=w.proc.poll() is None,
        ready_while_the_queue_was_gone=ready_while_gone,
        after_restart=after["state"],
        objects_written_for_the_wiped_job=len(leftovers),
        lost=int(after["state"] != "COMPLETED"),
    )


def _ready(w: WorkerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/readyz", timeout=5):
            return True
    except urllib.error.HTTPError:
        return False


# 4 -------------------------------------------------------------------------------------------


def _wav(wave: np.ndarray, sr: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def _voices(s3: Any, bucket: str) -> None:
    """Nasty reference files next to the good one."""
    s3.put_object(Bucket=bucket, Key="voices/notes.wav", Body=b"These are my notes, not audio." * 20)
    s3.put_object(Bucket=bucket, Key="voices/empty.wav", Body=b"")
    s3.put_object(Bucket=bucket, Key="voices/no-samples.wav", Body=_wav(np.zeros(0, np.float32), 24000))
    s3.put_object(Bucket=bucket, Key="voices/hour.flac", Body=_wav(np.zeros(3600 * 8000, np.int16), 8000, fmt="FLAC"))
    s3.put_object(Bucket=bucket, Key="voices/huge.wav", Body=b"\0" * (26 * 1024 * 1024))
    nan = np.full(24000, np.nan, np.float32)
    s3.put_object(Bucket=bucket, Key="voices/nan.wav", Body=_wav(nan, 24000, subtype="FLOAT"))
    s3.put_object(Bucket=bucket, Key="voices/blip.wav", Body=_wav(np.zeros(2400, np.float32), 24000))
    good = s3.get_object(Bucket=bucket, Key="voices/alice.wav")["Body"].read()
    wave, sr = sf.read(io.BytesIO(good), dtype="float32")
    stereo48 = np.stack([wave, wave], axis=1)
    s3.put_object(Bucket=bucket, Key="voices/über voice+1.mp3", Body=_wav(stereo48, sr, subtype=None, fmt="MP3"))


V = "voices/alice.wav"
# (job id, manifest bytes, expected state, expected code)
CORPUS: list[tuple[str, bytes, str, str | None]] = [
    ("c01-not-json", b"{", "FAILED", "INVALID_JSON"),
    ("c02-empty-file", b"", "FAILED", "INVALID_JSON"),
    ("c03-bom-garbage", b"\xef\xbb\xbf{nope", "FAILED", "INVALID_JSON"),
    ("c04-utf16", json.dumps({"text": "hi", "voice": V}).encode("utf-16"), "FAILED", "INVALID_JSON"),
    ("c05-latin1", '{"text": "caf\xe9", "voice": "voices/alice.wav"}'.encode("latin-1"), "FAILED", "INVALID_JSON"),
    ("c06-deep-nesting", b"[" * 50000 + b"]" * 50000, "FAILED", "INVALID_JSON"),
    ("c07-nested-20k", b"[" * 20000 + b"]" * 20000, "FAILED", "INVALID_JSON"),
    ("c08-array", b"[1, 2, 3]", "FAILED", "INVALID_MANIFEST"),
    ("c09-string", b'"speak this"', "FAILED", "INVALID_MANIFEST"),
    ("c10-null", b"null", "FAILED", "INVALID_MANIFEST"),
    ("c11-no-text", json.dumps({"voice": V}).encode(), "FAILED", "INVALID_MANIFEST"),
    ("c12-text-number", json.dumps({"text": 42, "voice": V}).encode(), "FAILED", "INVALID_MANIFEST"),
    ("c13-text-empty", json.dumps({"text": "", "voice": V}).encode(), "FAILED", "INVALID_MANIFEST"),
    ("c14-text-blank", json.dumps({"text": " \n\t ", "voice": V}).encode(), "FAILED", "INVALID_MANIFEST"),
    ("c15-text-huge", json.dumps({"text": "la " * 34000, "voice": V}).encode(), "FAILED", "TEXT_TOO_LONG"),
    ("c16-manifest-huge", json.dumps({"text": "a" * 1_100_000, "voice": V}).encode(), "FAILED", "MANIFEST_TOO_LARGE"),
    (
        "c17-control-chars",
        json.dumps({"text": "bell\x07and\x00nul", "voice": V}).encode(),
        "FAILED",
        "INVALID_MANIFEST",
    ),
    ("c18-punctuation", json.dumps({"text": "?!... -- ;;", "voice": V}).encode(), "FAILED", "TEXT_NOT_SPEAKABLE"),
    ("c19-speed-negative", json.dumps({"text": "hi", "voice": V, "speed": -1}).encode(), "FAILED", "INVALID_MANIFEST"),
    ("c20-speed-string", json.dumps({"text": "hi", "voice": V, "speed": "1.0"}).encode(), "FAILED", "INVALID_MANIFEST"),
    # NaN is no JSON (RFC 8259): refused as such since issue 25 (it was INVALID_MANIFEST).
    ("c21-speed-nan", b'{"text": "hi", "voice": "voices/alice.wav", "speed": NaN}', "FAILED", "INVALID_JSON"),
    ("c22-nfe-huge", json.dumps({"text": "hi", "voice": V, "nfe_step": 10**9}).encode(), "FAILED", "INVALID_MANIFEST"),
    ("c23-seed-float", json.dumps({"text": "hi", "voice": V, "seed": 1.5}).encode(), "FAILED", "INVALID_MANIFEST"),
    (
        "c24-format-exe",
        json.dumps({"text": "hi", "voice": V, "output_format": "exe"}).encode(),
        "FAILED",
        "INVALID_MANIFEST",
    ),
    (
        "c25-unknown-field",
        json.dumps({"text": "hi", "voice": V, "emotion": "joy"}).encode(),
        "FAILED",
        "INVALID_MANIFEST",
    ),
    ("c26-voice-object", json.dumps({"text": "hi", "voice": {"key": V}}).encode(), "FAILED", "INVALID_MANIFEST"),
    (
        "c27-ref-text-huge",
        json.dumps({"text": "hi", "voice": V, "ref_text": "x" * 5000}).encode(),
        "FAILED",
        "INVALID_MANIFEST",
    ),
    ("c28-no-voice", json.dumps({"text": "hi"}).encode(), "FAILED", "VOICE_REQUIRED"),
    (
        "c29-voice-missing",
        json.dumps({"text": "hi", "voice": "voices/ghost.wav"}).encode(),
        "FAILED",
        "VOICE_NOT_FOUND",
    ),
    (
        "c30-voice-text-file",
        json.dumps({"text": "hi", "voice": "voices/notes.wav"}).encode(),
        "FAILED",
        "VOICE_UNREADABLE",
    ),
    (
        "c31-voice-zero-bytes",
        json.dumps({"text": "hi", "voice": "voices/empty.wav"}).encode(),
        "FAILED",
        "VOICE_UNREADABLE",
    ),
    (
        "c32-voice-no-samples",
        json.dumps({"text": "hi", "voice": "voices/no-samples.wav"}).encode(),
        "FAILED",
        "VOICE_TOO_SHORT",
    ),
    (
        "c33-voice-one-hour",
        json.dumps({"text": "hi", "voice": "voices/hour.flac"}).encode(),
        "FAILED",
        "VOICE_TOO_LONG",
    ),
    ("c34-voice-26mb", json.dumps({"text": "hi", "voice": "voices/huge.wav"}).encode(), "FAILED", "VOICE_TOO_LARGE"),
    ("c35-voice-nan", json.dumps({"text": "hi", "voice": "voices/nan.wav"}).encode(), "FAILED", "VOICE_UNREADABLE"),
    ("c36-voice-blip", json.dumps({"text": "hi", "voice": "voices/blip.wav"}).encode(), "FAILED", "VOICE_TOO_SHORT"),
    ("c37-traversal", json.dumps({"text": "hi", "voice": "../../etc/passwd"}).encode(), "FAILED", "INVALID_VOICE_KEY"),
    (
        "c38-traversal-inside",
        json.dumps({"text": "hi", "voice": "voices/../inbox/c01-not-json.json"}).encode(),
        "FAILED",
        "INVALID_VOICE_KEY",
    ),
    (
        "c39-other-bucket",
        json.dumps({"text": "hi", "voice": "s3://not-ours/voices/a.wav"}).encode(),
        "FAILED",
        "VOICE_OUTSIDE_BUCKET",
    ),
    (
        "c40-http-voice",
        json.dumps({"text": "hi", "voice": "http://169.254.169.254/latest"}).encode(),
        "FAILED",
        "INVALID_VOICE_KEY",
    ),
    (
        "c41-voice-is-a-model",
        json.dumps({"text": "hi", "voice": "models/f5tts-tiny/latest"}).encode(),
        "FAILED",
        "INVALID_VOICE_KEY",
    ),
    (
        "c42-bad-language",
        json.dumps({"text": "hi", "voice": V, "language": "english"}).encode(),
        "FAILED",
        "INVALID_MANIFEST",
    ),
    (
        "c43-subtitles-twice",
        json.dumps({"text": "hi", "voice": V, "subtitles": ["srt", "srt"]}).encode(),
        "FAILED",
        "INVALID_MANIFEST",
    ),
    # Tolerated on purpose: a BOM, digits only (F5-TTS speaks digits; no letters to align), a unicode
    # voice key with a space and a plus, a stereo 48 kHz MP3 reference.
    ("c44-bom-valid", b"\xef\xbb\xbf" + json.dumps(_manifest()).encode(), "COMPLETED", None),
    ("c45-digits-only", json.dumps(_manifest(text="12345 67890")).encode(), "COMPLETED", None),
    ("c46-unicode-voice", json.dumps(_manifest(voice="voices/über voice+1.mp3")).encode(), "COMPLETED", None),
]


def test_bad_input_corpus_each_fails_with_a_specific_code_and_the_worker_stays_up(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], s3: Any, record: Any, tmp_path: Path
) -> None:
    """46 hand-written manifests (43 nasty, 3 tolerated on purpose) plus a job with a unicode key
    containing a space and a plus; then a good job still completes."""
    bucket = stack["TTS_BUCKET"]
    _voices(s3, bucket)
    w = workers(stack, "a")
    for job_id, body, _, _ in CORPUS:
        _put_job(s3, bucket, job_id, body)
    drop_manifest(stack, tmp_path, "über job+1", _manifest(), bucket=bucket)
    done = _wait_all(s3, bucket, [c[0] for c in CORPUS], timeout_s=300)
    bad_key = wait_for_state(s3, "über job+1", bucket=bucket, worker=w)

    got = {j: (s["state"], (s.get("error") or {}).get("code")) for j, s in done.items()}
    expected = {j: (state, code) for j, _, state, code in CORPUS}
    assert got == expected
    assert all(s["error"]["message"] for s in done.values() if s["state"] == "FAILED")
    assert (bad_key["state"], bad_key["error"]["code"]) == ("FAILED", "INVALID_JOB_ID")
    # Digits are read out (normalization) before alignment: real word timings, nothing skipped.
    digits = get_json(s3, "results/c45-digits-only.json", bucket)
    assert "ALIGNMENT_SKIPPED" not in [x["code"] for x in digits["warnings"]]
    assert digits["word_timings"] and all(w["end"] > w["start"] for w in digits["word_timings"])

    _put_job(s3, bucket, "good-after-corpus", _manifest())
    assert wait_for_state(s3, "good-after-corpus", bucket=bucket, worker=w)["state"] == "COMPLETED"
    assert w.proc.poll() is None
    record(
        manifests=len(CORPUS) + 1,
        failed_with_specific_code=sum(1 for s, _ in got.values() if s == "FAILED") + int(bad_key["state"] == "FAILED"),
        tolerated_and_completed=sum(1 for s, _ in got.values() if s == "COMPLETED"),
        codes=sorted({c for _, c in got.values() if c} | {bad_key["error"]["code"]}),
        worker_still_running=w.proc.poll() is None,
        lost=len(CORPUS) + 1 - len(done) - int(bad_key["state"] in ("COMPLETED", "FAILED")),
    )


@pytest.fixture(scope="module")
def fuzz_env(make_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pipeline.cloud.aws import sync_client
    from tests.faults.conftest import FAST, FIGURES_DIR
    from tests.helpers import aws, reference_voice_path, start_worker, stop_worker, wait_ready

    env = make_stack("f-fuzz")
    sync_client("s3").put_bucket_versioning(Bucket="f-fuzz", VersioningConfiguration={"Status": "Enabled"})
    aws(env, "s3", "cp", str(reference_voice_path()), "s3://f-fuzz/voices/alice.wav")
    w = start_worker(env, tmp_path_factory.mktemp("fuzz") / "worker.log", **FAST)
    wait_ready(w)
    yield env, w
    code = stop_worker(w)
    assert code == 0
    if _fuzz_count["failures"] or not _fuzz_count["outcomes"]:
        return  # figures only from a run whose examples all passed
    s3 = sync_client("s3")
    jobs = [f"fuzz-{i:04d}" for i in range(1, _fuzz_count["n"] + 1)]
    final = {j: get_json(s3, f"status/{j}.json", "f-fuzz") for j in jobs}
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / "test_fuzzed_manifests_end_in_a_final_state_with_a_known_code.json").write_text(
        json.dumps(
            {
                "test": "test_fuzzed_manifests_end_in_a_final_state_with_a_known_code",
                "doc": test_fuzzed_manifests_end_in_a_final_state_with_a_known_code.__doc__,
                "jobs": len(jobs),
                "lost": sum(1 for st_ in final.values() if st_ is None or st_["state"] not in ("COMPLETED", "FAILED")),
                "duplicated": sum(1 for j in jobs if len(versions(s3, "f-fuzz", f"results/{j}.json")) > 1),
                "worker_exit_code": code,
                "outcomes": dict(sorted(_fuzz_count["outcomes"].items())),
            },
            indent=2,
        )
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_fields = {
    "text": st.text(max_size=60) | _json_values,
    "voice": st.sampled_from(["voices/alice.wav", "voices/ghost.wav", "s3://f-fuzz/voices/alice.wav", ""])
    | _json_values,
    "ref_text": st.sampled_from(["", REF_TEXT]) | st.text(max_size=30),
    "speed": st.floats(min_value=0.2, max_value=5) | _json_values,
    "nfe_step": st.integers(min_value=-2, max_value=12) | _json_values,
    "cfg_strength": st.floats(min_value=-1, max_value=11),
    "seed": st.integers(min_value=-5, max_value=2**32),
    "output_format": st.sampled_from(["wav", "flac", "mp3", "ogg", "aiff", ""]),
    "word_timings": st.booleans() | _json_values,
    "subtitles": st.lists(st.sampled_from(["srt", "vtt", "ass"]), max_size=3),
    "remove_silence": st.booleans(),
    "language": st.sampled_from(["eng", "deu", "xx", "ENG"]),
    "bogus": _json_values,
}
_wild = st.fixed_dictionaries({}, optional=_fields)
# Mostly-valid manifests too, so that the fuzz reaches synthesis, voices and alignment, not only
# the schema: printable text in any script, valid ranges, voices that may or may not exist.
_plausible = st.fixed_dictionaries(
    {
        "text": st.text(st.characters(categories=("L", "N", "P", "Zs", "S")), min_size=1, max_size=60),
        "voice": st.sampled_from(["voices/alice.wav", "voices/ghost.wav", "s3://f-fuzz/voices/alice.wav"]),
    },
    optional={
        "ref_text": st.sampled_from(["", REF_TEXT]),
        "speed": st.floats(min_value=0.25, max_value=4),
        "nfe_step": st.integers(min_value=1, max_value=6),
        "seed": st.integers(min_value=0, max_value=2**31 - 1),
        "output_format": st.sampled_from(["wav", "flac", "mp3", "ogg"]),
        "word_timings": st.booleans(),
        "subtitles": st.lists(st.sampled_from(["srt", "vtt"]), max_size=2, unique=True),
        "remove_silence": st.booleans(),
        "language": st.sampled_from(["eng", "deu", "fra"]),
    },
)
_manifests = st.one_of(_plausible, _plausible, _wild)
_fuzz_count: dict[str, Any] = {"n": 0, "failures": 0, "outcomes": {}}


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(doc=_manifests)
def test_fuzzed_manifests_end_in_a_final_state_with_a_known_code(fuzz_env: Any, s3: Any, doc: dict[str, Any]) -> None:
    """Hypothesis-generated manifests (valid fields with wild values, wrong types, unknown keys):
    each ends COMPLETED or FAILED with a documented error code; the worker stays up."""
    _, w = fuzz_env
    _fuzz_count["n"] += 1
    job = f"fuzz-{_fuzz_count['n']:04d}"
    try:
        _put_job(s3, "f-fuzz", job, doc)
        status = wait_for_state(s3, job, bucket="f-fuzz", timeout_s=120, worker=w)
        assert status["state"] in ("COMPLETED", "FAILED"), status
        if status["state"] == "FAILED":
            assert status["error"]["code"] in {c.value for c in ErrorCode} - {"INTERNAL_ERROR"}, status["error"]
            assert status["error"]["message"]
        assert w.proc.poll() is None
    except BaseException:
        _fuzz_count["failures"] += 1
        raise
    outcome = status["state"] if status["state"] == "COMPLETED" else status["error"]["code"]
    _fuzz_count["outcomes"][outcome] = _fuzz_count["outcomes"].get(outcome, 0) + 1


# 5 -------------------------------------------------------------------------------------------


def _rss_mb(w: WorkerProcess) -> float:
    proc = psutil.Process(w.proc.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


@pytest.mark.timeout(3600)  # 200 jobs: a hang guard sized for a machine several times slower than CI's
def test_load_200_jobs_two_workers_none_lost_none_duplicated_memory_flat(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], s3: Any, record: Any
) -> None:
    """200 jobs across two workers: all COMPLETED, zero lost, zero generated twice; each worker's
    RSS (with its aligner process) after the run within 10 % of its RSS after warm-up."""
    bucket = stack["TTS_BUCKET"]
    a, b = workers(stack, "a"), workers(stack, "b")
    warm = [f"warm-{i}" for i in range(8)]
    for job in warm:
        _put_job(s3, bucket, job, _manifest(text=f"Warm up {job}, please."))
    assert all(s["state"] == "COMPLETED" for s in _wait_all(s3, bucket, warm, 300).values())
    rss_warm = {"a": _rss_mb(a), "b": _rss_mb(b)}

    jobs = [f"load-{i:03d}" for i in range(200)]
    t0 = time.monotonic()
    for i, job in enumerate(jobs):
        _put_job(s3, bucket, job, _manifest(text=f"Load test job {i}, a short sentence.", seed=i))
    done = _wait_all(s3, bucket, jobs, timeout_s=1500)
    elapsed = time.monotonic() - t0
    rss_after = {"a": _rss_mb(a), "b": _rss_mb(b)}

    completed = [j for j, s in done.items() if s["state"] == "COMPLETED"]
    assert len(completed) == len(jobs)
    gens = {j: generations(s3, bucket, j) for j in jobs}
    audio_versions = {j: len(versions(s3, bucket, audio_key(s3, j, bucket))) for j in jobs}
    result_versions = {j: len(versions(s3, bucket, f"results/{j}.json")) for j in jobs}
    assert set(gens.values()) == set(audio_versions.values()) == set(result_versions.values()) == {1}
    per_worker = {"a": 0, "b": 0}
    for s in done.values():
        per_worker["a" if _pid(s["worker"]) == a.proc.pid else "b"] += 1
    assert min(per_worker.values()) > 0
    for k in rss_warm:
        assert rss_after[k] <= rss_warm[k] * 1.10, (k, rss_warm, rss_after)
    record(
        jobs=len(jobs),
        completed=len(completed),
        lost=len(jobs) - len(completed),
        duplicated=sum(1 for j in jobs if gens[j] > 1 or audio_versions[j] > 1 or result_versions[j] > 1),
        audio_versions=sum(audio_versions.values()),
        result_versions=sum(result_versions.values()),
        seconds=round(elapsed, 1),
        jobs_per_second=round(len(jobs) / elapsed, 2),
        jobs_per_worker=per_worker,
        rss_mb_after_warmup={k: round(v) for k, v in rss_warm.items()},
        rss_mb_after_run={k: round(v) for k, v in rss_after.items()},
        rss_growth_percent={k: round(100 * (rss_after[k] / rss_warm[k] - 1), 1) for k in rss_warm},
    )


# 6 -------------------------------------------------------------------------------------------


def test_sigterm_mid_job_with_short_grace_releases_the_job_to_another_worker(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], holds: Holds, s3: Any, record: Any, tmp_path: Path
) -> None:
    """SIGTERM with a 1 s grace period while three jobs are held mid-synthesis in one worker: it
    hands every job back (QUEUED, visible again at once) and exits 0; a second worker completes
    them."""
    bucket = stack["TTS_BUCKET"]
    a = workers(stack, "a", shutdown_grace_s=1)
    jobs = ["sigterm-release-a", "sigterm-release-b", "sigterm-release-c"]
    for job in jobs:
        holds.hold(job, after_chunks=1, attempts=[1])
        drop_manifest(stack, tmp_path, job, _manifest(text=LONG_TEXT, nfe_step=16), bucket=bucket)
    for job in jobs:
        holds.wait_held(job, a)
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=120) == 0, a.log()[-3000:]
    exit_s = time.monotonic() - t0
    for job in jobs:
        released = get_json(s3, f"status/{job}.json", bucket)
        assert released["state"] == "QUEUED" and "worker shutting down" in released["history"][-1]["note"]
        # No attempt outputs; the chunk it finished stays durable (audio + record) for the next attempt.
        left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"outputs/{job}/").get("Contents", [])]
        assert len(left) == 2 and all(k.startswith(f"outputs/{job}/chunks/00000-") for k in left), left
    b = workers(stack, "b")
    final = {job: wait_for_state(s3, job, bucket=bucket, worker=b, timeout_s=300) for job in jobs}
    assert all(f["state"] == "COMPLETED" and f["attempt"] == 2 for f in final.values()), final
    assert all(generations(s3, bucket, job) == 1 for job in jobs)
    assert all(get_json(s3, f"results/{job}.json", bucket)["chunks_reused"] == 1 for job in jobs)
    assert all(
        outputs_left(s3, job, [audio_key(s3, job, bucket)], bucket=bucket) == [audio_key(s3, job, bucket)]
        for job in jobs
    )
    record(
        outcome="released",
        jobs=len(jobs),
        worker_exit_seconds=round(exit_s, 1),
        exit_code=a.proc.returncode,
        lost=sum(1 for f in final.values() if f["state"] != "COMPLETED"),
        duplicated=sum(1 for j in jobs if len(versions(s3, bucket, f"results/{j}.json")) > 1),
    )


def test_sigterm_mid_job_with_enough_grace_finishes_the_job_then_exits(
    stack: dict[str, str], workers: Callable[..., WorkerProcess], holds: Holds, s3: Any, record: Any, tmp_path: Path
) -> None:
    """SIGTERM while a job is held mid-synthesis, with a grace period it cannot outlast (600 s):
    the worker receives nothing more (a job submitted after the signal stays queued), finishes the
    job in hand once released, and exits 0; the queued job is completed by the next worker."""
    bucket = stack["TTS_BUCKET"]
    a = workers(stack, "a", shutdown_grace_s=600)
    job = "sigterm-finish"
    holds.hold(job, after_chunks=1)
    drop_manifest(stack, tmp_path, job, _manifest(text=LONG_TEXT, nfe_step=4), bucket=bucket)
    holds.wait_held(job, a)
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stop requested: receiving no more messages" in a.log(), "the stop request logged", worker=a)
    _put_job(s3, bucket, "after-sigterm", _manifest())
    holds.release(job)
    assert a.proc.wait(timeout=300) == 0, a.log()[-3000:]
    exit_s = time.monotonic() - t0
    final = get_json(s3, f"status/{job}.json", bucket)
    assert final["state"] == "COMPLETED" and final["attempt"] == 1 and _pid(final["worker"]) == a.proc.pid
    assert (get_json(s3, "status/after-sigterm.json", bucket) or {}).get("state", "QUEUED") == "QUEUED"
    b = workers(stack, "b")
    after = wait_for_state(s3, "after-sigterm", bucket=bucket, worker=b)
    assert after["state"] == "COMPLETED" and _pid(after["worker"]) == b.proc.pid
    record(
        outcome="finished",
        jobs=2,
        worker_exit_seconds=round(exit_s, 1),
        exit_code=a.proc.returncode,
        lost=sum(1 for st in (final, after) if st["state"] != "COMPLETED"),
        duplicated=sum(1 for j in (job, "after-sigterm") if len(versions(s3, bucket, f"results/{j}.json")) > 1),
    )
