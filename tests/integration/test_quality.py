"""The quality gate end to end: real stack, tiny bundle, one worker with the fault hooks on.

The tiny model's audio is noise and its Whisper hears noise, so nothing here depends on what the
models say: a chunk is made bad by the ``silence/<job_id>`` fault hook (the gate sees silence for
that try), and transcription is asked for with a threshold nothing can fail (``max_wer: 100``) to
show that it happens, through the batcher, without changing the audio. Calls are counted by kind in
the hooks' ``calls.jsonl``.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from pipeline.tts.engine import F5Engine, SynthesisRequest
from pipeline.worker.quality import retry_seed
from tests.helpers import (
    REF_TEXT,
    WorkerProcess,
    aws,
    drop_manifest,
    get_json,
    reference_voice,
    reference_voice_path,
    start_console,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
)

pytestmark = pytest.mark.integration

NAME = "quality"
TEXT = "This is a sentence of moderate length. " * 12  # three chunks with the test voice
SEED = 11


@pytest.fixture(scope="module")
def env(make_stack: Any) -> dict[str, str]:
    e = make_stack(NAME)
    aws(e, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return e


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quality-faults")
    (root / "silence").mkdir()
    return root


@pytest.fixture(scope="module")
def worker(env: dict[str, str], faults: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(env, tmp_path_factory.mktemp("quality-worker") / "worker.log", fault_dir=str(faults))
    wait_ready(w)
    yield w
    assert stop_worker(w) == 0, w.log()[-3000:]


def _run(
    env: dict[str, str], s3: Any, worker: WorkerProcess, tmp_path: Path, job: str, **fields: Any
) -> dict[str, Any]:
    manifest = {"text": TEXT, "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 4, "seed": SEED, **fields}
    drop_manifest(env, tmp_path, job, manifest, bucket=NAME)
    status = wait_for_state(s3, job, bucket=NAME, worker=worker)
    assert status["state"] == "COMPLETED", (status, worker.log()[-3000:])
    result = get_json(s3, f"results/{job}.json", NAME)
    assert result is not None
    return result


def _calls(faults: Path, job: str) -> dict[str, int]:
    """Model calls that carried an item of ``job``, by kind."""
    out: dict[str, int] = {}
    for line in (faults / "calls.jsonl").read_text().splitlines():
        call = json.loads(line)
        if job in call["jobs"]:
            out[call["kind"]] = out.get(call["kind"], 0) + 1
    return out


def _codes(result: dict[str, Any]) -> set[str]:
    return {w["code"] for w in result["warnings"]}


def test_a_silent_chunk_is_made_again_with_a_derived_seed_and_the_result_records_its_tries(
    env: dict[str, str], s3: Any, worker: WorkerProcess, faults: Path, tmp_path: Path
) -> None:
    """Default policy on the tiny bundle: signal checks only, no ASR call. Chunk 1's first try is
    silence: it fails the signal check, is synthesised again and passes."""
    (faults / "silence" / "qg-retry").write_text(json.dumps({"chunks": [1], "tries": [0]}))
    result = _run(env, s3, worker, tmp_path, "qg-retry")
    quality = result["quality"]
    assert result["chunks"] == 3 and quality["chunks_checked"] == 3
    assert quality["transcribed"] is False and quality["max_wer"] is None and quality["mean_score"] is None
    assert (quality["chunks_regenerated"], quality["chunks_failed"]) == (1, 0)
    first, second, third = quality["chunks"]
    assert (first["tries"], first["kept"], first["seed"]) == (1, 0, SEED)
    assert (second["tries"], second["kept"], second["seed"]) == (2, 1, retry_seed(SEED, 1, 1))
    assert second["problems"] == [] and third["seed"] == SEED + 2
    assert second["start"] < second["end"] <= third["start"] + 0.2
    assert "QUALITY_BELOW_THRESHOLD" not in _codes(result)
    calls = _calls(faults, "qg-retry")
    assert calls.get("synthesis", 0) == 4 and "transcription" not in calls  # 3 chunks + 1 retry, no ASR
    # What it cost (issue 28): the same counts, from the batcher's meter, on the result.
    usage = result["usage"]
    assert (usage["chunks_synthesized"], usage["chunks_regenerated"], usage["transcriptions"]) == (4, 1, 0)
    assert usage["model_s"] > 0 and usage["audio_s"] == result["audio"]["duration_s"]
    assert usage["characters"] == len(result["normalized_text"]) > 0
    # The durable chunk record carries the verdict.
    listed = s3.list_objects_v2(Bucket=NAME, Prefix="outputs/qg-retry/chunks/").get("Contents", [])
    records = [json.loads(s3.get_object(Bucket=NAME, Key=o["Key"])["Body"].read()) for o in listed]
    records = [r for r in records if isinstance(r, dict) and r.get("ordinal") == 1]
    if records:  # chunks are removed once the result exists; when still listed they carry it
        assert records[0]["quality"]["tries"] == 2


def test_a_chunk_that_stays_bad_completes_the_job_with_a_warning(
    env: dict[str, str], s3: Any, worker: WorkerProcess, faults: Path, tmp_path: Path
) -> None:
    (faults / "silence" / "qg-bad").write_text(json.dumps({"chunks": [2], "tries": "all"}))
    result = _run(env, s3, worker, tmp_path, "qg-bad", quality={"max_retries": 0})
    quality = result["quality"]
    assert (quality["max_retries"], quality["chunks_regenerated"], quality["chunks_failed"]) == (0, 0, 1)
    assert quality["chunks"][2]["problems"] == ["silent"] and quality["chunks"][2]["tries"] == 1
    assert [c["problems"] for c in quality["chunks"][:2]] == [[], []]
    warning = next(w for w in result["warnings"] if w["code"] == "QUALITY_BELOW_THRESHOLD")
    assert "chunk 3" in warning["message"]
    assert _calls(faults, "qg-bad").get("synthesis") == 3


def test_a_regeneration_whose_model_call_fails_keeps_the_first_try_and_completes_the_job(
    env: dict[str, str], s3: Any, worker: WorkerProcess, faults: Path, tmp_path: Path
) -> None:
    """A one-chunk job: its first try is silence (the gate asks for a regeneration) and the
    regeneration's model call runs out of memory (``oom/<job_id>`` after the job's first item). The
    chunk keeps its first try, the job completes, and the warning says what happened."""
    job = "qg-regen-oom"
    (faults / "silence" / job).write_text(json.dumps({"chunks": [0], "tries": [0]}))
    (faults / "oom").mkdir(exist_ok=True)
    (faults / "oom" / job).write_text(json.dumps({"after_items": 1}))
    result = _run(env, s3, worker, tmp_path, job, text="This is a sentence of moderate length.")
    quality = result["quality"]
    assert result["chunks"] == 1 and (quality["chunks_regenerated"], quality["chunks_failed"]) == (1, 1)
    [chunk] = quality["chunks"]
    assert (chunk["tries"], chunk["kept"], chunk["seed"], chunk["problems"]) == (2, 0, SEED, ["silent"])
    warning = next(w for w in result["warnings"] if w["code"] == "QUALITY_BELOW_THRESHOLD")
    assert "regeneration failed for chunk 1" in warning["message"] and "out of memory" in warning["message"]
    assert _calls(faults, job) == {"synthesis": 2}  # the chunk, then its regeneration (which failed)


def test_the_console_marks_the_chunk_that_stayed_bad(
    env: dict[str, str], s3: Any, worker: WorkerProcess, faults: Path, tmp_path: Path
) -> None:
    """A person listens to the marked chunks only: the job page lists them, with a seek button."""
    sync_api = pytest.importorskip("playwright.sync_api")
    (faults / "silence" / "qg-page").write_text(json.dumps({"chunks": [1], "tries": "all"}))
    _run(env, s3, worker, tmp_path, "qg-page", quality={"max_retries": 0})
    proc, url = start_console(env, tmp_path / "console.log")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium")
            page = browser.new_page()
            page.goto(f"{url}/jobs/qg-page")
            marked = page.locator("#quality li.bad-chunk")
            sync_api.expect(marked).to_have_count(1, timeout=60_000)
            assert marked.get_attribute("data-chunk") == "1"
            assert "silent" in marked.inner_text()
            browser.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_transcription_runs_through_the_batcher_and_leaves_the_audio_as_it_was_alone(
    env: dict[str, str], s3: Any, worker: WorkerProcess, faults: Path, engine: F5Engine, tmp_path: Path
) -> None:
    """A job asking for ASR (a threshold noise cannot fail) is transcribed chunk by chunk, each a
    "transcription" call on the model thread; its audio is what the same manifest gives alone,
    without the gate. ``quality: false`` makes no check and no ASR call."""
    asr = _run(env, s3, worker, tmp_path, "qg-asr", quality={"max_wer": 100.0})
    off = _run(env, s3, worker, tmp_path, "qg-off", quality=False)
    assert off["quality"] is None
    assert _calls(faults, "qg-off") == {"synthesis": 3}
    assert _calls(faults, "qg-asr") == {"synthesis": 3, "transcription": 3}
    q = asr["quality"]
    assert q["transcribed"] is True and q["max_wer"] == 100.0 and q["chunks_failed"] == 0
    assert all(c["metric"] == "wer" and c["score"] is not None and c["transcript"] is not None for c in q["chunks"])
    assert q["worst_score"] == max(c["score"] for c in q["chunks"])

    wave, sr, text = reference_voice()
    ref = engine.prepare_reference(wave, sr, text)
    [alone] = engine.synthesize([SynthesisRequest(reference=ref, text=TEXT, nfe_step=4, seed=SEED)])
    for job in ("qg-asr", "qg-off"):
        got, _ = sf.read(io.BytesIO(s3.get_object(Bucket=NAME, Key=f"outputs/{job}/attempt-1.wav")["Body"].read()))
        assert len(got) == len(alone.audio)
        assert np.abs(got - np.clip(alone.audio, -1, 1)).max() <= 2 / 32768


def test_a_resumed_job_reuses_its_chunks_with_their_verdicts_and_plans_the_same_seeds(
    make_stack: Any, s3: Any, faults: Path, tmp_path: Path
) -> None:
    """Chunk 0 fails its first try and is kept from the second; the worker is killed (-9) after two
    chunks. The successor reuses both durable chunks with their verdicts (chunk 0 is not judged
    again: with the hook gone it would now pass on its first try) and synthesises only chunk 2,
    with the seed an uninterrupted run gives it."""
    import signal

    name = "quality-resume"
    env = make_stack(name)
    aws(env, "s3", "cp", str(reference_voice_path()), f"s3://{name}/voices/alice.wav")
    job = "qg-resume"
    (faults / "silence" / job).write_text(json.dumps({"chunks": [0], "tries": [0]}))
    (faults / "hold").mkdir(exist_ok=True)
    (faults / "hold" / job).write_text(json.dumps({"after_chunks": 2, "attempts": [1]}))
    settings = {"fault_dir": str(faults), "visibility_timeout_s": 5, "heartbeat_interval_s": 1}
    w1 = start_worker(env, tmp_path / "w1.log", **settings)
    w2 = None
    try:
        wait_ready(w1)
        manifest = {"text": TEXT, "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 4, "seed": SEED}
        drop_manifest(env, tmp_path, job, manifest, bucket=name)
        marker = faults / "held" / job
        from tests.helpers import wait_until

        wait_until(lambda: marker.exists(), f"{job} held", 600, w1)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=name, Prefix=f"outputs/{job}/chunks/")["Contents"]]
        records = [json.loads(s3.get_object(Bucket=name, Key=k)["Body"].read()) for k in keys if k.endswith(".json")]
        assert sorted((r["ordinal"], r["quality"]["tries"], r["quality"]["kept"]) for r in records) == [
            (0, 2, 1),
            (1, 1, 0),
        ]
        w1.proc.send_signal(signal.SIGKILL)
        w1.proc.wait()
        (faults / "silence" / job).unlink()
        marker.unlink()
        w2 = start_worker(env, tmp_path / "w2.log", **settings)
        wait_ready(w2)
        status = wait_for_state(s3, job, bucket=name, worker=w2, timeout_s=600)
        assert status["state"] == "COMPLETED" and status["attempt"] == 2, status
        result = get_json(s3, f"results/{job}.json", name)
        assert result is not None and result["chunks_reused"] == 2
        chunks = result["quality"]["chunks"]
        assert [(c["tries"], c["kept"], c["seed"]) for c in chunks] == [
            (2, 1, retry_seed(SEED, 0, 1)),
            (1, 0, SEED + 1),
            (1, 0, SEED + 2),
        ]
        assert result["quality"]["chunks_regenerated"] == 1
        second = {}
        for line in (faults / "calls.jsonl").read_text().splitlines():
            call = json.loads(line)
            if job in call["jobs"] and "2" in call["jobs"][job]:
                second[call["kind"]] = second.get(call["kind"], 0) + call["jobs"][job]["2"]
        assert second == {"synthesis": 1}  # only chunk 2, once
    finally:
        (faults / "hold" / job).unlink(missing_ok=True)
        for w in (w1, w2):
            if w is not None and w.proc.poll() is None:
                stop_worker(w)
