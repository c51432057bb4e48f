"""Issue 25, defect 3: every wait has a deadline, and a stuck part is a sick worker, not a stuck job.

Real LocalStack, real worker processes. The stuck parts are made stuck deterministically: the
aligner's child is stopped with SIGSTOP before the job reaches it, a model call is held by the
``stall/<job_id>`` fault hook, an attempt is held where it cannot answer its abort (``hold`` with
``"at": "publish"``). Only a deadline can end each of those waits; every assertion is on something
observed (states, status history, lease timestamps, queue depths, /healthz, exit codes, processes).
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.jobs.contract import JobStatus, utcnow
from pipeline.worker.serve import EXIT_MODEL_STUCK
from tests.helpers import (
    REF_TEXT,
    Holds,
    WorkerProcess,
    aws,
    get_json,
    http_request,
    queue_depth,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration


def _stack(make_stack: Any, name: str) -> dict[str, str]:
    env = make_stack(name)
    aws(env, "s3", "cp", str(reference_voice_path()), f"s3://{name}/voices/alice.wav")
    return env


def _put_job(s3: Any, bucket: str, job_id: str, **fields: Any) -> None:
    manifest = {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2}
    s3.put_object(Bucket=bucket, Key=f"inbox/{job_id}.json", Body=json.dumps({**manifest, **fields}).encode())


def _aligner_children(w: WorkerProcess) -> list[psutil.Process]:
    """The worker's aligner process: a spawned child that has onnxruntime loaded (the worker's
    other children are multiprocessing's resource tracker and the text front-end's process, which
    is spawned the same way but never loads onnxruntime)."""
    out = []
    for child in psutil.Process(w.proc.pid).children():
        try:
            if "spawn_main" not in " ".join(child.cmdline()) or child.status() == psutil.STATUS_ZOMBIE:
                continue
            if any("onnxruntime" in m.path for m in child.memory_maps()):
                out.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _probe(w: WorkerProcess, path: str) -> tuple[int, bytes]:
    code, body, _ = http_request(f"http://127.0.0.1:{w.metrics_port}{path}")
    return code, body


def _codes(result: dict[str, Any]) -> list[str]:
    return [warning["code"] for warning in result["warnings"]]


def test_a_stopped_aligner_child_is_killed_and_replaced_and_its_job_completes(
    make_stack: Any, s3: Any, tmp_path: Path
) -> None:
    """The aligner's child is stopped (SIGSTOP) while idle; the next job's alignment can then only
    end by its deadline (TTS_ALIGNER_DEADLINE_S=10, nothing per second of audio). The job does
    not stay PROCESSING: it completes without word timings for that chunk (ALIGNMENT_SKIPPED,
    naming the deadline), the stopped child is gone, a new one took its place, and the worker's
    next job is aligned by it."""
    bucket = "liveness-aligner"
    stack = _stack(make_stack, bucket)
    w = start_worker(stack, tmp_path / "worker.log", aligner_deadline_s=10, deadline_per_audio_s=0)
    stopped: psutil.Process | None = None
    try:
        wait_ready(w)
        [stopped] = _aligner_children(w)
        stopped.suspend()  # SIGSTOP
        _put_job(s3, bucket, "aligner-stopped")
        status = wait_for_state(s3, "aligner-stopped", bucket=bucket, worker=w)
        assert status["state"] == "COMPLETED" and status["attempt"] == 1, status
        result = get_json(s3, "results/aligner-stopped.json", bucket)
        assert result is not None and "ALIGNMENT_SKIPPED" in _codes(result), result["warnings"]
        skipped = next(x for x in result["warnings"] if x["code"] == "ALIGNMENT_SKIPPED")
        assert "deadline" in skipped["message"], skipped
        assert result["word_timings"] == []

        assert not stopped.is_running() or stopped.status() == psutil.STATUS_ZOMBIE
        [fresh] = wait_until(lambda: _aligner_children(w), "a new aligner process", 120, w)
        assert fresh.pid != stopped.pid

        _put_job(s3, bucket, "aligner-after")
        status = wait_for_state(s3, "aligner-after", bucket=bucket, worker=w)
        assert status["state"] == "COMPLETED", status
        result = get_json(s3, "results/aligner-after.json", bucket)
        assert result is not None and "ALIGNMENT_SKIPPED" not in _codes(result), result["warnings"]
        assert [x["word"] for x in result["word_timings"]] == ["Short", "and", "sweet."]
        assert _probe(w, "/healthz") == (200, b"ok\n")
    finally:
        if stopped is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                stopped.resume()  # a worker that never killed it must still be able to stop
        assert stop_worker(w) == 0, w.log()[-3000:]


def test_a_model_call_past_its_deadline_makes_the_worker_not_live_and_hands_its_job_back(
    make_stack: Any, s3: Any, holds: Holds, tmp_path: Path
) -> None:
    """A job's model call is held on the model thread (``stall/<job_id>``, attempt 1) past its
    deadline (TTS_MODEL_DEADLINE_S=10). The worker is not live (/healthz 503 naming the model call,
    /readyz 503), hands the job back (QUEUED, not FAILED: the job did nothing wrong) and exits with
    EXIT_MODEL_STUCK; a second worker completes it. A bystander job held in its publish step keeps
    the first worker from exiting until the test has looked at its probes."""
    bucket = "liveness-model"
    stack = _stack(make_stack, bucket)
    a = start_worker(
        stack, tmp_path / "a.log", model_deadline_s=10, deadline_per_audio_s=0, abort_grace_s=600, **holds.settings
    )
    b: WorkerProcess | None = None
    try:
        wait_ready(a)
        assert _probe(a, "/healthz") == (200, b"ok\n")
        holds.hold("bystander", at="publish", attempts=[1])
        _put_job(s3, bucket, "bystander")
        holds.wait_held("bystander", a)

        (holds.root / "stall").mkdir(exist_ok=True)
        (holds.root / "stall" / "model-stalled").write_text(json.dumps({"attempts": [1]}))
        _put_job(s3, bucket, "model-stalled")
        wait_until(lambda: (holds.root / "stalled" / "model-stalled").exists(), "the model call stalled", 120, a)

        def not_live() -> bytes | None:
            code, body = _probe(a, "/healthz")
            return body if code == 503 else None

        body = wait_until(not_live, "/healthz to fail", 120, a)
        assert b"model call" in body and b"deadline" in body, body
        assert _probe(a, "/readyz")[0] == 503
        back = wait_for_state(s3, "model-stalled", bucket=bucket, worker=a, states=("QUEUED", "FAILED", "COMPLETED"))
        assert back["state"] == "QUEUED" and back["attempt"] == 1, back
        assert "deadline" in back["history"][-1]["note"], back["history"]

        holds.release("bystander")
        assert a.proc.wait(timeout=120) == EXIT_MODEL_STUCK, a.log()[-3000:]

        b = start_worker(stack, tmp_path / "b.log", **holds.settings)
        wait_ready(b)
        final = wait_for_state(s3, "model-stalled", bucket=bucket, worker=b)
        assert final["state"] == "COMPLETED" and final["attempt"] == 2, final
        # The bystander was aborted too (hand back): released once its hold ended, b completes it.
        assert wait_for_state(s3, "bystander", bucket=bucket, worker=b)["state"] == "COMPLETED"
    finally:
        holds.release("bystander")
        stop_worker(a)
        if b is not None:
            assert stop_worker(b) == 0, b.log()[-3000:]


def test_an_aborted_attempt_that_does_not_answer_is_let_go(
    make_stack: Any, s3: Any, sqs: Any, holds: Holds, tmp_path: Path
) -> None:
    """SIGTERM with no shutdown grace aborts a job held in its publish step, which does not answer
    an abort. Past TTS_ABORT_GRACE_S=1 its lease and message are no longer renewed: the lease
    written in its status lapses, the message becomes visible again, the worker exits (0) without
    it, and a second worker takes the job over and completes it."""
    bucket = "liveness-abort"
    stack = _stack(make_stack, bucket)
    timings = {"visibility_timeout_s": 6, "heartbeat_interval_s": 1}
    a = start_worker(stack, tmp_path / "a.log", shutdown_grace_s=0, abort_grace_s=1, **timings, **holds.settings)
    b: WorkerProcess | None = None
    try:
        wait_ready(a)
        holds.hold("unanswering", at="publish", attempts=[1])
        _put_job(s3, bucket, "unanswering")
        holds.wait_held("unanswering", a)
        a.proc.send_signal(signal.SIGTERM)

        def lapsed() -> JobStatus | None:
            status = JobStatus.model_validate(get_json(s3, "status/unanswering.json", bucket))
            assert status.state == "PROCESSING", status
            return status if status.lease_expires_at is not None and status.lease_expires_at < utcnow() else None

        status = wait_until(lapsed, "the aborted attempt's lease to lapse", 120)
        assert status.attempt == 1
        assert a.proc.wait(timeout=120) == 0, a.log()[-3000:]
        wait_until(lambda: queue_depth(sqs, bucket) == (1, 0), "its message visible again", 120)

        b = start_worker(stack, tmp_path / "b.log", **timings, **holds.settings)
        final = wait_for_state(s3, "unanswering", bucket=bucket, worker=b)
        assert final["state"] == "COMPLETED" and final["attempt"] == 2, final
    finally:
        holds.release("unanswering")
        stop_worker(a)
        if b is not None:
            assert stop_worker(b) == 0, b.log()[-3000:]
