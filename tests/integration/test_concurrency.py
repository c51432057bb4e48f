"""Several jobs in one worker: they run at once, share model calls, and stay independent.

Cross-job batching is made deterministic, not likely: jobs are held before their first chunk
until all are in flight, and the worker's batch wait is so long that a model call closes only
when it is full (``max_batch`` = exactly the number of chunks released), so the released jobs'
chunks must meet in one call whatever the machine's speed.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from pipeline.tts.engine import F5Engine, SynthesisRequest
from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    aws,
    drop_manifest,
    get_json,
    outputs_left,
    reference_voice,
    reference_voice_path,
    s3_event,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

NAME = "concurrency"
TEXT = "This is a sentence of moderate length. " * 20  # five chunks with the test voice
CHUNKS = 5
NEVER_MS = 600_000  # batch wait: a call closes when full, never on time


@pytest.fixture(scope="module")
def env(make_stack: Any) -> dict[str, str]:
    e = make_stack(NAME)
    aws(e, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return e


@pytest.fixture
def workers(env: dict[str, str], holds: Holds, tmp_path: Path) -> Iterator[Any]:
    """start(**settings): a worker on this module's queue obeying this test's holds."""
    started: list[WorkerProcess] = []

    def start(**settings: Any) -> WorkerProcess:
        w = start_worker(env, tmp_path / f"worker{len(started)}.log", **{**holds.settings, **settings})
        started.append(w)
        wait_ready(w)
        return w

    yield start
    for w in started:
        assert stop_worker(w) == 0, w.log()[-3000:]


def _manifest(**fields: Any) -> dict[str, Any]:
    return {"text": TEXT, "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 4, "seed": 11, **fields}


def _status(s3: Any, job_id: str) -> dict[str, Any]:
    return get_json(s3, f"status/{job_id}.json", NAME) or {}


def _histogram(metrics: dict[str, float], name: str) -> dict[str, float]:
    """{le: cumulative count} of a histogram's synthesis series."""
    prefix = f'{name}_bucket{{kind="synthesis",le="'
    return {k[len(prefix) : -2]: v for k, v in metrics.items() if k.startswith(prefix)}


def _hold_all(holds: Holds, env: dict[str, str], tmp_path: Path, jobs: list[str], **fields: Any) -> None:
    for job in jobs:
        holds.hold(job)  # before the first chunk
        drop_manifest(env, tmp_path, job, _manifest(**fields), bucket=NAME)


def test_jobs_run_at_once_share_a_model_call_and_one_can_be_cancelled(
    env: dict[str, str], workers: Any, holds: Holds, s3: Any, engine: F5Engine, tmp_path: Path
) -> None:
    """Three jobs in flight in one worker; one is cancelled while the others wait; the other two
    are released together and their chunks meet in one model call. Only the cancelled job ends
    CANCELLED; the others complete with the audio each would have had alone."""
    w = workers(max_jobs_in_flight=3, max_batch=2 * CHUNKS, batch_wait_ms=NEVER_MS)
    jobs = ["cc-a", "cc-b", "cc-c"]
    _hold_all(holds, env, tmp_path, jobs)
    held = [holds.wait_held(j, w) for j in jobs]
    assert {h["worker"] for h in held} == {_status(s3, "cc-a")["worker"]}  # one worker holds all three
    assert all(_status(s3, j)["state"] == "PROCESSING" for j in jobs)

    subprocess.run([TTS, "cancel", "cc-b"], env=env, check=True, capture_output=True)
    assert wait_for_state(s3, "cc-b", bucket=NAME, worker=w)["state"] == "CANCELLED"
    for j in jobs:
        holds.release(j)
    done = {j: wait_for_state(s3, j, bucket=NAME, worker=w) for j in ("cc-a", "cc-c")}
    assert all(s["state"] == "COMPLETED" for s in done.values()), done
    assert outputs_left(s3, "cc-b", [], bucket=NAME) == []

    jobs_per_call = _histogram(w.metrics(), "tts_batch_jobs")
    assert jobs_per_call["+Inf"] - jobs_per_call["1.0"] >= 1, jobs_per_call  # a call carried both jobs

    # The same manifest alone, in this process: the batched job's audio is the same (WAV is PCM16).
    wave, sr, text = reference_voice()
    ref = engine.prepare_reference(wave, sr, text)
    [alone] = engine.synthesize([SynthesisRequest(reference=ref, text=TEXT, nfe_step=4, seed=11)])
    batched, _ = sf.read(io.BytesIO(s3.get_object(Bucket=NAME, Key="outputs/cc-a/attempt-1.wav")["Body"].read()))
    assert len(batched) == len(alone.audio)
    assert np.abs(batched - np.clip(alone.audio, -1, 1)).max() <= 2 / 32768


def test_an_out_of_memory_in_a_shared_call_fails_only_its_job(
    env: dict[str, str], workers: Any, holds: Holds, s3: Any, tmp_path: Path
) -> None:
    """Three jobs' chunks in one model call; every call carrying job B's chunks runs out of memory
    (injected): the batcher splits and retries, B ends FAILED with SYNTHESIS_FAILED, A and C
    complete, and the worker goes on."""
    w = workers(max_jobs_in_flight=3, max_batch=3 * CHUNKS, batch_wait_ms=NEVER_MS)
    jobs = ["oom-a", "oom-b", "oom-c"]
    (holds.root / "oom").mkdir(exist_ok=True)
    (holds.root / "oom" / "oom-b").touch()
    _hold_all(holds, env, tmp_path, jobs)
    for j in jobs:
        holds.wait_held(j, w)
    for j in jobs:
        holds.release(j)
    done = {j: wait_for_state(s3, j, bucket=NAME, worker=w) for j in jobs}
    assert done["oom-a"]["state"] == done["oom-c"]["state"] == "COMPLETED", done
    assert done["oom-b"]["state"] == "FAILED" and done["oom-b"]["error"]["code"] == "SYNTHESIS_FAILED"
    assert "out of memory" in done["oom-b"]["error"]["message"]
    m = w.metrics()
    assert m['tts_batch_splits_total{kind="synthesis"}'] >= 1
    assert _histogram(m, "tts_batch_jobs")["+Inf"] - _histogram(m, "tts_batch_jobs")["2.0"] >= 1  # 3 jobs met


def test_max_jobs_counts_jobs_not_deliveries(
    env: dict[str, str], workers: Any, s3: Any, sqs: Any, tmp_path: Path
) -> None:
    """A duplicate delivery of a finished job does not count towards --max-jobs."""
    first = workers(max_jobs_in_flight=2)
    drop_manifest(env, tmp_path, "mj-done", _manifest(text="Done once."), bucket=NAME)
    assert wait_for_state(s3, "mj-done", bucket=NAME, worker=first)["state"] == "COMPLETED"
    assert stop_worker(first) == 0

    url = sqs.get_queue_url(QueueName=NAME)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=s3_event(NAME, "inbox/mj-done.json"))
    w = start_worker(env, tmp_path / "max-jobs.log", "--max-jobs", "1", max_jobs_in_flight=2)
    wait_ready(w)
    wait_until(
        lambda: w.metrics().get("tts_duplicate_deliveries_total", 0) >= 1, "the duplicate acknowledged", worker=w
    )
    assert w.proc.poll() is None  # a duplicate is not a job
    drop_manifest(env, tmp_path, "mj-new", _manifest(text="A new job."), bucket=NAME)
    assert w.proc.wait(timeout=300) == 0, w.log()[-3000:]
    assert _status(s3, "mj-new")["state"] == "COMPLETED"
    assert "worker exiting after 1 job(s)" in w.log()
