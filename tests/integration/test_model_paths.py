"""The GPU worker's model paths, run on the CPU: torch.compile with its on-disk cache, warm-up
before readiness, and word timings scored by the torch aligner through the batcher.

Observed, never timed: the compile cache is judged by inductor's own FX-graph cache hit and miss
counters (``tts_compile_cache_events_total``), not by how long a start took.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    REF_TEXT,
    aws,
    drop_manifest,
    get_json,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
)

pytestmark = pytest.mark.integration

NAME = "model-paths"


@pytest.fixture(scope="module")
def env(make_stack: Any) -> dict[str, str]:
    e = make_stack(NAME)
    aws(e, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return e


def _job(text: str) -> dict[str, Any]:
    return {"text": text, "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 4}


def _cache_events(metrics: dict[str, float]) -> tuple[float, float]:
    hits = metrics.get('tts_compile_cache_events_total{event="hit"}', 0)
    misses = metrics.get('tts_compile_cache_events_total{event="miss"}', 0)
    return hits, misses


def test_a_compiled_worker_warms_up_before_ready_and_its_second_start_does_not_compile_again(
    env: dict[str, str], s3: Any, tmp_path: Path
) -> None:
    cache = tmp_path / "model-cache"  # its own, so the compile cache starts empty
    # One batch shape: inductor's C++ build on two CPU cores costs ~40 s a shape, and what is tested
    # (compiled before ready, cached next to the model, found again) does not depend on how many.
    settings = {"compile": "default", "max_batch": 1, "cache_dir": str(cache)}
    env = {k: v for k, v in env.items() if k != "TORCHINDUCTOR_CACHE_DIR"}

    first = start_worker(env, tmp_path / "first.log", **settings)
    try:
        wait_ready(first, timeout_s=900)
        assert "(compile default, aligner onnx-cpu)" in first.log()
        hits, misses = _cache_events(first.metrics())
        assert misses > 0, (hits, misses)  # compiled during warm-up, before ready
        drop_manifest(env, tmp_path, "compiled-1", _job("Compiled and warm."), bucket=NAME)
        assert wait_for_state(s3, "compiled-1", bucket=NAME, worker=first)["state"] == "COMPLETED"
    finally:
        assert stop_worker(first) == 0, first.log()[-3000:]
    assert list((cache / "compile").iterdir()), "no compile artefacts next to the model cache"

    second = start_worker(env, tmp_path / "second.log", **settings)
    try:
        wait_ready(second, timeout_s=900)
        hits, misses = _cache_events(second.metrics())
        assert hits > 0 and misses == 0, (hits, misses)
    finally:
        assert stop_worker(second) == 0, second.log()[-3000:]


def test_word_timings_scored_by_the_torch_aligner_in_a_worker(env: dict[str, str], s3: Any, tmp_path: Path) -> None:
    """TTS_ALIGNER=torch (what a GPU worker does by default): windows go through the batcher,
    the native aligner still runs in its own process; the job gets word timings and subtitles."""
    w = start_worker(env, tmp_path / "torch-aligner.log", aligner="torch")
    try:
        wait_ready(w)
        assert "aligner torch)" in w.log()
        job = {**_job("Every word gets its own timing here."), "subtitles": ["srt"]}
        drop_manifest(env, tmp_path, "torch-aligned", job, bucket=NAME)
        assert wait_for_state(s3, "torch-aligned", bucket=NAME, worker=w)["state"] == "COMPLETED"
        result = get_json(s3, "results/torch-aligned.json", NAME)
        assert [t["word"] for t in result["word_timings"]] == job["text"].split()
        assert "srt" in result["subtitles"]
        assert w.metrics()['tts_batch_size_count{kind="emissions"}'] >= 1
    finally:
        assert stop_worker(w) == 0, w.log()[-3000:]
