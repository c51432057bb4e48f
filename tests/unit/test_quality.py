"""The quality gate's pure parts: policy, seeds, signal checks, error rates, the best try kept."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import Settings
from pipeline.jobs.contract import Manifest, QualitySpec
from pipeline.models.bundle import AlignerSpec, AsrSpec, Bundle, TtsSpec, VocoderSpec
from pipeline.runtime.faults import FaultHooks
from pipeline.worker import quality as q

SR = 24000


def _bundle(*, asr: bool = True, random_weights: bool = False) -> Bundle:
    return Bundle(
        name="b",
        version="1",
        random_weights=random_weights,
        tts=TtsSpec(arch={}, checkpoint="c", vocab="v"),
        vocoder=VocoderSpec(dir="voc"),
        aligner=AlignerSpec(model="a.onnx"),
        asr=AsrSpec(dir="asr") if asr else None,
    )


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, round(seconds * SR)).astype(np.float32)


# -- policy ----------------------------------------------------------------------------------------


def test_default_policy_transcribes_only_where_the_asr_model_is_real() -> None:
    s = Settings()
    real = q.resolve(s, None, _bundle())
    assert real == q.Policy(asr=True, max_wer=0.2, max_retries=2)
    # The tiny test bundle transcribes noise: signal checks only, by default (the suite's cost).
    assert q.resolve(s, None, _bundle(random_weights=True)) == q.Policy(asr=False, max_wer=None, max_retries=2)
    assert q.resolve(s, None, _bundle(asr=False)) == q.Policy(asr=False, max_wer=None, max_retries=2)
    assert q.resolve(s, True, _bundle()) == real


def test_jobs_and_workers_override_the_policy() -> None:
    s = Settings()
    assert q.resolve(s, False, _bundle()) is None
    assert q.resolve(Settings(quality=False), None, _bundle()) is None
    assert q.resolve(Settings(quality=False), QualitySpec(max_retries=1), _bundle()).max_retries == 1  # type: ignore[union-attr]
    # A job that sets max_wer is transcribed even on random weights; a worker may refuse ASR.
    asked = QualitySpec(max_wer=5.0, max_retries=0)
    assert q.resolve(s, asked, _bundle(random_weights=True)) == q.Policy(asr=True, max_wer=5.0, max_retries=0)
    assert q.resolve(Settings(quality_asr="off"), asked, _bundle()) == q.Policy(False, None, 0)
    assert q.resolve(Settings(quality_asr="on"), None, _bundle(random_weights=True)).asr  # type: ignore[union-attr]
    env = Settings(quality_max_wer=0.3, quality_max_retries=4)
    assert q.resolve(env, None, _bundle()) == q.Policy(asr=True, max_wer=0.3, max_retries=4)


def test_the_manifest_takes_false_true_or_an_object_and_nothing_else() -> None:
    assert Manifest.model_validate_json('{"text": "a", "quality": false}').quality is False
    m = Manifest.model_validate_json('{"text": "a", "quality": {"max_wer": 0.2, "max_retries": 2}}')
    assert m.quality == QualitySpec(max_wer=0.2, max_retries=2)
    for bad in ('{"max_wer": -1}', '{"max_retries": 9}', '{"threshold": 1}', '"yes"'):
        with pytest.raises(ValueError):
            Manifest.model_validate_json(f'{{"text": "a", "quality": {bad}}}')


def test_the_policy_tag_names_what_changes_the_kept_chunk() -> None:
    tags = {
        q.Policy(True, 0.2, 2).tag,
        q.Policy(True, 0.3, 2).tag,
        q.Policy(True, 0.2, 1).tag,
        q.Policy(False, None, 2).tag,
        q.Policy(False, None, 0).tag,
    }
    assert len(tags) == 5


def test_retry_seeds_are_a_function_of_job_seed_chunk_and_try() -> None:
    seeds = {(s, c, t): q.retry_seed(s, c, t) for s in (0, 7) for c in (0, 1, 2) for t in (1, 2)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**31 for v in seeds.values())
    assert q.retry_seed(7, 1, 2) == q.retry_seed(7, 1, 2) == seeds[(7, 1, 2)]


# -- signal checks ---------------------------------------------------------------------------------


def test_signal_checks() -> None:
    text = "This is a sentence of moderate length."
    rate = len(text.encode()) / 3.0  # the reference speaks this text in 3 voiced seconds
    good = _speech(3.0)
    assert q.signal_problems(good, SR, text, rate, 1.0) == []
    assert q.signal_problems(np.zeros(SR * 3, np.float32), SR, text, rate, 1.0) == ["silent"]
    assert q.signal_problems(np.zeros(0, np.float32), SR, text, rate, 1.0) == ["empty"]
    nan = good.copy()
    nan[100] = np.nan
    assert q.signal_problems(nan, SR, text, rate, 1.0) == ["non_finite"]
    clipped = good.copy()
    clipped[: SR // 10] = 1.0
    assert "clipping" in q.signal_problems(clipped, SR, text, rate, 1.0)
    gap = np.concatenate([_speech(1.0), np.zeros(round(2.5 * SR), np.float32), _speech(1.0, 1)])
    assert "long_silence" in q.signal_problems(gap, SR, text, rate, 1.0)
    edges = np.concatenate([np.zeros(round(2.5 * SR), np.float32), good])  # leading silence is not inner
    assert "long_silence" not in q.signal_problems(edges, SR, text, rate, 1.0)
    # Most of the chunk silent: the text was squeezed into a fraction of its time (skipped words).
    short = np.concatenate([_speech(0.5), np.zeros(round(1.5 * SR), np.float32)] * 2)
    assert "speech_rate" in q.signal_problems(short, SR, text, rate, 1.0)
    assert "speech_rate" not in q.signal_problems(good, SR, text, rate * 0.5, 2.0)  # twice as fast, asked
    assert q.signal_problems(_speech(0.3), SR, "A", rate, 1.0) == []  # too short to judge a rate


# -- error rates -----------------------------------------------------------------------------------


def test_error_rate_normalizes_the_transcript_like_the_text() -> None:
    assert q.error_rate("it costs three dollars fifty cents.", "It costs $3.50!", "eng") == (0.0, "wer")
    assert q.error_rate("hello there", "hello", "eng") == (0.5, "wer")
    assert q.error_rate("hello there", "hello there there there", "eng") == (1.0, "wer")
    assert q.error_rate("你好，世界。", "你好世界", "zho") == (0.0, "cer")
    assert q.error_rate("你好，世界。", "你好地界", "zho") == (0.25, "cer")
    assert q.error_rate("用iPhone拍照", "用 iphone 拍照", "eng")[1] == "cer"  # CJK in the text: characters
    score, metric = q.error_rate("hello", "\ufffd\ufffd\ufffd", "eng")  # random weights: garbage
    assert metric == "wer" and score == 1.0


# -- the gate --------------------------------------------------------------------------------------


class _Attempt:
    job_id = "job"
    number = 1

    class abort:
        event = asyncio.Event()

    def check(self) -> None:
        pass


def _settle(policy: q.Policy, first: np.ndarray, again: Any, faults: FaultHooks | None = None) -> Any:
    text = "This is a sentence of moderate length."
    gate = q.Gate(policy, None, _Attempt(), 7, SR, faults or FaultHooks(None))  # type: ignore[arg-type]
    return asyncio.run(gate.settle(1, text, "eng", 1.0, None, first, 8, again))


def test_a_failing_chunk_is_made_again_with_derived_seeds_and_the_best_try_is_kept() -> None:
    asked: list[int] = []

    async def again(seed: int) -> np.ndarray:
        asked.append(seed)
        return _speech(3.0, seed) if len(asked) == 2 else np.zeros(SR, np.float32)

    wave, verdict = _settle(q.Policy(False, None, 2), np.zeros(SR, np.float32), again)
    assert asked == [q.retry_seed(7, 1, 1), q.retry_seed(7, 1, 2)]
    assert verdict.tries == 3 and verdict.kept == 2 and verdict.seed == asked[1] and verdict.problems == []
    assert np.array_equal(wave, _speech(3.0, asked[1]))


def test_regenerations_stop_when_the_jobs_model_work_budget_is_spent() -> None:
    """Regenerations share TTS_MAX_MODEL_WORK with the plan: a manifest asking for many retries at
    an impossible threshold cannot multiply what a job costs."""
    asked: list[int] = []

    async def again(seed: int) -> np.ndarray:
        asked.append(seed)
        return np.zeros(SR, np.float32)  # never passes

    gate = q.Gate(q.Policy(False, None, 5), None, _Attempt(), 7, SR, FaultHooks(None))  # type: ignore[arg-type]
    gate.regen_left = 250  # room for two regenerations of cost 100
    text = "This is a sentence of moderate length."
    _, verdict = asyncio.run(gate.settle(1, text, "eng", 1.0, None, np.zeros(SR, np.float32), 8, again, 100))
    assert len(asked) == 2 and verdict.tries == 3 and gate.regen_left == 50 and not verdict.passed


def test_a_chunk_that_stays_bad_keeps_its_first_try_and_says_why() -> None:
    async def again(seed: int) -> np.ndarray:
        raise AssertionError("max_retries 0: never")

    _, verdict = _settle(q.Policy(False, None, 0), np.zeros(SR, np.float32), again)
    assert verdict.tries == 1 and verdict.kept == 0 and verdict.seed == 8 and verdict.problems == ["silent"]
    assert not verdict.passed


def test_a_passing_chunk_is_judged_once() -> None:
    async def again(seed: int) -> np.ndarray:
        raise AssertionError("passed: never")

    first = _speech(3.0)
    wave, verdict = _settle(q.Policy(False, None, 2), first, again)
    assert wave is first and verdict.tries == 1 and verdict.passed


def test_the_silence_hook_acts_only_where_told(tmp_path: Path) -> None:
    faults = FaultHooks(tmp_path)
    (tmp_path / "silence").mkdir()
    (tmp_path / "silence" / "job").write_text(json.dumps({"chunks": [1], "tries": [0]}))
    seeds: list[int] = []

    async def again(seed: int) -> np.ndarray:
        seeds.append(seed)
        return _speech(3.0, 5)

    _, verdict = _settle(q.Policy(False, None, 2), _speech(3.0), again, faults)
    assert verdict.tries == 2 and verdict.kept == 1 and verdict.passed
    (tmp_path / "silence" / "job").write_text(json.dumps({"chunks": [1], "tries": "all"}))
    _, verdict = _settle(q.Policy(False, None, 1), _speech(3.0), again, faults)
    assert verdict.tries == 2 and verdict.kept == 0 and verdict.problems == ["silent"]
    (tmp_path / "silence" / "job").write_text(json.dumps({"chunks": [0]}))
    _, verdict = _settle(q.Policy(False, None, 1), _speech(3.0), again, faults)
    assert verdict.tries == 1
    assert FaultHooks(None).chunk_audio("job", 1, 1, 0, "wave") == "wave"  # off without TTS_FAULT_DIR


def test_summary() -> None:
    from pipeline.jobs.contract import ChunkQuality

    chunks = [
        ChunkQuality(chunk=0, score=0.1, metric="wer", seed=1),
        ChunkQuality(chunk=1, score=0.5, metric="wer", tries=3, kept=1, seed=2, problems=["error_rate"]),
        ChunkQuality(chunk=2, score=0.0, metric="wer", tries=2, kept=1, seed=3),
    ]
    s = q.summary(q.Policy(True, 0.2, 2), chunks)
    assert (s.mean_score, s.worst_score, s.chunks_checked, s.chunks_regenerated, s.chunks_failed) == (0.2, 0.5, 3, 2, 1)
    assert q.summary(q.Policy(False, None, 2), [ChunkQuality(chunk=0, seed=1)]).mean_score is None


class _FailingAsr:
    """A batcher whose transcription calls fail (a device out of memory, say)."""

    def submit(self, work: Any) -> asyncio.Future[str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_exception(RuntimeError("CUDA out of memory"))
        return fut


def test_a_chunk_the_asr_could_not_transcribe_is_marked_not_passed() -> None:
    """A failed transcription must not read as a pass: the chunk is marked for a person."""

    async def again(seed: int) -> np.ndarray:
        raise AssertionError("max_retries 0: never")

    gate = q.Gate(q.Policy(True, 0.2, 0), _FailingAsr(), _Attempt(), 7, SR, FaultHooks(None))  # type: ignore[arg-type]
    text = "This is a sentence of moderate length."
    _, verdict = asyncio.run(gate.settle(1, text, "eng", 1.0, None, _speech(3.0), 8, again))
    assert verdict.problems == ["not_transcribed"] and verdict.transcript is None and not verdict.passed


def test_a_regeneration_whose_model_call_fails_keeps_the_best_try() -> None:
    """The chunk's first try is bad; its regeneration's model call fails (render turns that into
    ``JobFailed``, as for any chunk): the first try is kept, the gate says why, the job goes on."""
    from pipeline.worker.failures import JobFailed

    asked: list[int] = []

    async def again(seed: int) -> np.ndarray:
        asked.append(seed)
        raise JobFailed("SYNTHESIS_FAILED", "chunk 2/3: out of memory on cpu")

    gate = q.Gate(q.Policy(False, None, 2), None, _Attempt(), 7, SR, FaultHooks(None))  # type: ignore[arg-type]
    gate.regen_left = 1000
    text = "This is a sentence of moderate length."
    first = np.zeros(SR, np.float32)
    wave, verdict = asyncio.run(gate.settle(1, text, "eng", 1.0, None, first, 8, again, 100))
    assert asked == [q.retry_seed(7, 1, 1)]  # no second regeneration after a failed one
    assert wave is first and (verdict.tries, verdict.kept, verdict.seed) == (2, 0, 8)
    assert verdict.problems == ["silent"] and gate.regen_left == 900
    assert gate.regenerations_failed == [(1, "chunk 2/3: out of memory on cpu")]


@pytest.mark.parametrize("fault", ["unavailable", "stuck", "aborted", "lost claim"])
def test_a_worker_fault_during_a_regeneration_still_ends_the_attempt(fault: str) -> None:
    """Only the job's own synthesis error is absorbed: a batcher that runs no more work, a stuck
    model call, the attempt's abort (a lost claim included) propagate as before."""
    from pipeline.tts.batcher import BatcherUnavailable, ModelCallStuck
    from pipeline.worker.signals import AbortReason, JobAborted

    error = {
        "unavailable": BatcherUnavailable("the batcher stopped"),
        "stuck": ModelCallStuck("a synthesis model call ran past its deadline"),
        "aborted": JobAborted(AbortReason.CANCELLED),
        "lost claim": JobAborted(AbortReason.LOST_CLAIM),
    }[fault]

    async def again(seed: int) -> np.ndarray:
        raise error

    with pytest.raises(type(error)):
        _settle(q.Policy(False, None, 2), np.zeros(SR, np.float32), again)
