"""The F5-TTS engine, running the real f5-tts code on the tiny random bundle.

Random weights produce noise, so these check structure: sample rate, the duration rule, chunking,
seeds, finiteness, and the ASR path for an empty reference text.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.tts import audio
from pipeline.tts.engine import (
    HOP_LENGTH,
    SAMPLE_RATE,
    EngineError,
    F5Engine,
    Reference,
    SynthesisRequest,
    _sentence_end,
    duration_frames,
)
from pipeline.tts.sampler import Item
from tests.helpers import reference_voice


@pytest.fixture(scope="module")
def ref(engine: F5Engine) -> Reference:
    wave, sr, text = reference_voice()
    return engine.prepare_reference(wave, sr, text)


def test_reference_is_prepared_as_f5_tts_does(ref: Reference) -> None:
    assert ref.sample_rate == SAMPLE_RATE
    assert ref.audio.ndim == 1 and 0 < len(ref.audio) <= 12.1 * SAMPLE_RATE
    assert ref.text_source == "manifest"
    # f5-tts ends the reference text with sentence punctuation and a space.
    assert ref.text == "Some call me nature, others call me mother nature. "


@pytest.mark.parametrize(
    ("text", "speed"),
    [
        ("Hello world, this is a test of the pipeline.", 1.0),
        ("Hello world, this is a test of the pipeline.", 1.7),
        ("Hello world, this is a test of the pipeline.", 0.5),
        ("Hi there.", 1.0),  # < 10 bytes: f5-tts switches to speed 0.3
    ],
)
def test_output_duration_follows_f5_tts_duration_rule(
    engine: F5Engine, ref: Reference, text: str, speed: float
) -> None:
    [out] = engine.synthesize([SynthesisRequest(reference=ref, text=text, speed=speed, nfe_step=4, seed=1)])
    assert out.sample_rate == 24000 and out.chunks == [text]
    expected = duration_frames(len(ref.audio), ref.text, text, speed) * HOP_LENGTH
    assert len(out.audio) == expected
    assert out.audio.dtype == np.float32 and np.all(np.isfinite(out.audio))


def test_faster_speed_means_shorter_audio(engine: F5Engine, ref: Reference) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    slow, fast = engine.synthesize(
        [
            SynthesisRequest(reference=ref, text=text, speed=0.8, nfe_step=4, seed=1),
            SynthesisRequest(reference=ref, text=text, speed=2.0, nfe_step=4, seed=1),
        ]
    )
    assert len(fast.audio) < len(slow.audio)


def test_seed_makes_output_reproducible(engine: F5Engine, ref: Reference) -> None:
    req = SynthesisRequest(reference=ref, text="Reproducible output, please.", nfe_step=4, seed=123)
    a, b = engine.synthesize([req, req])
    [c] = engine.synthesize([SynthesisRequest(reference=ref, text=req.text, nfe_step=4, seed=124)])
    assert np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, c.audio)


def test_long_text_is_chunked_and_cross_faded(engine: F5Engine, ref: Reference) -> None:
    sentence = "This sentence is one of many that make a long paragraph for chunking. "
    text = sentence * 8
    chunks = engine.chunks(ref, text, 1.0)
    assert len(chunks) > 1
    progress: list[tuple[int, int]] = []
    [out] = engine.synthesize(
        [SynthesisRequest(reference=ref, text=text, nfe_step=2, seed=5)], progress=lambda d, t: progress.append((d, t))
    )
    assert out.chunks == chunks
    assert progress == [(i, len(chunks)) for i in range(len(chunks) + 1)]
    per_chunk = [duration_frames(len(ref.audio), ref.text, c, 1.0) * HOP_LENGTH for c in chunks]
    fade = int(0.15 * SAMPLE_RATE)
    assert len(out.audio) == sum(per_chunk) - fade * (len(chunks) - 1)


def test_empty_ref_text_is_transcribed_by_the_bundle_asr(engine: F5Engine) -> None:
    wave, sr, _ = reference_voice()
    ref = engine.prepare_reference(wave, sr, "")
    assert ref.text_source == "asr"
    assert ref.text.strip()  # tiny random Whisper: garbage, but a transcript
    # Cached: the same voice is not transcribed twice in a process.
    assert engine.prepare_reference(wave, sr, "") is ref


def test_a_reference_is_transcribed_as_f5_tts_transcribes_it(engine: F5Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine never lets f5-tts's ``preprocess_ref_audio_text`` run its ``transcribe()`` (it
    runs in the caller's thread; the worker transcribes on the model thread, through the batcher).
    Its own call (``pipeline.tts.asr``) gives the transcript f5-tts gives, in f5-tts's form."""
    monkeypatch.setattr(engine, "_refs", OrderedDict())  # transcribed now, not taken from the cache
    wave, sr, _ = reference_voice()
    ours = engine.prepare_reference(wave, sr, "")
    ui = engine._ui
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ref.wav"  # what the engine hands f5-tts
        sf.write(src, audio.resample(audio.to_mono(wave), sr, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
        md5 = hashlib.md5(src.read_bytes()).hexdigest()
        processed = None
        try:
            processed, theirs = ui.preprocess_ref_audio_text(str(src), "", show_info=lambda _: None)
            assert ours.text == theirs and ours.text_source == "asr"
            for given in ("Hello", "Hello.", "Hello. ", "你好。"):  # its rule for a transcript's end
                assert _sentence_end(given) == ui.preprocess_ref_audio_text(str(src), given, show_info=print)[1]
        finally:
            ui._ref_audio_cache.pop(md5, None)
            ui._ref_text_cache.pop(md5, None)
            if processed is not None:  # f5-tts's own temporary file
                Path(processed).unlink(missing_ok=True)


def test_reference_cache_is_keyed_by_text_too(engine: F5Engine, ref: Reference) -> None:
    wave, sr, text = reference_voice()
    assert engine.prepare_reference(wave, sr, text) is ref
    other = engine.prepare_reference(wave, sr, "Another transcript.")
    assert other is not ref and other.text.startswith("Another transcript.")


def test_resampled_reference(engine: F5Engine) -> None:
    wave, sr, text = reference_voice()
    ref16 = engine.prepare_reference(audio.resample(wave, sr, 16000), 16000, text)
    assert ref16.sample_rate == SAMPLE_RATE


def test_no_asr_in_bundle_means_clear_error(engine: F5Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine._ui, "asr_pipe", None)
    wave, sr, _ = reference_voice()
    with pytest.raises(EngineError) as info:
        engine.prepare_reference(wave[: sr * 2], sr, "")
    assert info.value.code == "TRANSCRIPTION_FAILED"


# -- batching across jobs ------------------------------------------------------------------------

MIXED = [
    "Hello world, this is a test.",
    "A much longer sentence that takes quite a bit more time to say out loud, surely.",
    "Short one here.",
]
# fp32 on CPU: batched and alone agree to ~1e-6 (different matmul shapes). Attending to padding
# instead moves short items by ~1e-3 on the tiny bundle: the tolerance separates the two.
BATCH_TOL = 2e-5


def _items(ref: Reference, texts: list[str], seed: int = 100) -> list[Item]:
    return [Item(ref.audio, ref.text, t, 1.0, seed + i) for i, t in enumerate(texts)]


def test_one_item_matches_upstream_infer_batch_process(engine: F5Engine, ref: Reference) -> None:
    """Our sampler at batch 1 is f5-tts's own inference, sample for sample, for the same seed."""
    import torch

    [item] = _items(ref, MIXED[:1], seed=42)
    torch.manual_seed(42)
    upstream, _, _ = next(
        engine._ui.infer_batch_process(
            (torch.from_numpy(ref.audio).unsqueeze(0), SAMPLE_RATE),
            ref.text,
            [item.text],
            engine.model,
            engine.vocoder,
            progress=None,
            nfe_step=6,
            cfg_strength=2.0,
            sway_sampling_coef=-1.0,
            speed=1.0,
            device="cpu",
        )
    )
    [ours] = engine.run_batch([item], 6, 2.0)
    np.testing.assert_array_equal(ours, upstream)


def test_a_job_audio_does_not_depend_on_its_batch_mates(engine: F5Engine, ref: Reference) -> None:
    items = _items(ref, MIXED)
    alone = [engine.run_batch([it], 6, 2.0)[0] for it in items]
    batched = engine.run_batch(items, 6, 2.0)
    reordered = engine.run_batch(items[::-1], 6, 2.0)[::-1]
    for a, b, c in zip(alone, batched, reordered, strict=True):
        assert len(a) == len(b) == len(c)
        assert np.abs(a - b).max() < BATCH_TOL and np.abs(a - c).max() < BATCH_TOL


def test_without_the_padding_mask_batch_mates_would_leak_into_short_items(engine: F5Engine, ref: Reference) -> None:
    """The control for the test above: it can fail. Attention over padding (what the shipped
    F5TTS_v1_Base config does in a mixed-length batch) changes every item shorter than the longest."""
    items = _items(ref, MIXED)
    alone = [engine.run_batch([it], 6, 2.0)[0] for it in items]
    unmasked = engine.run_batch(items, 6, 2.0, attn_mask=False)
    longest = max(range(len(items)), key=lambda i: items[i].frames)
    for i, (a, b) in enumerate(zip(alone, unmasked, strict=True)):
        if i == longest:
            assert np.abs(a - b).max() < BATCH_TOL  # no padding, nothing to leak
        else:
            assert np.abs(a - b).max() > 20 * BATCH_TOL


def test_each_item_has_its_own_noise(engine: F5Engine, ref: Reference) -> None:
    """Same text, two seeds, one call: different audio; the same seed twice: identical audio
    (f5-tts's CFM.sample would give every item of a call the same seed)."""
    a, b, c = engine.run_batch([Item(ref.audio, ref.text, MIXED[0], 1.0, s) for s in (7, 8, 7)], 6, 2.0)
    assert np.abs(a - b).max() > 1e-3
    assert np.abs(a - c).max() < BATCH_TOL


def test_synthesize_in_batches_equals_chunk_by_chunk(engine: F5Engine, ref: Reference) -> None:
    text = "This sentence is one of many that make a long paragraph for chunking. " * 6
    req = SynthesisRequest(reference=ref, text=text, nfe_step=4, seed=9)
    [one_by_one] = engine.synthesize([req])
    [batched] = engine.synthesize([req], max_batch=8)
    assert len(one_by_one.chunks) > 1 and len(one_by_one.audio) == len(batched.audio)
    assert np.abs(one_by_one.audio - batched.audio).max() < BATCH_TOL


def test_padding_mask_attention_equals_f5_tts_masked_attention(engine: F5Engine) -> None:
    """The installed processor passes a broadcast key mask (fast kernel) where f5-tts expands it
    (slow path); the attention it computes is the same."""
    import warnings

    import torch
    from f5_tts.model.modules import AttnProcessor

    dit = engine.model.transformer
    block = dit.transformer_blocks[0]
    ours = block.attn.processor
    assert type(ours) is not AttnProcessor and isinstance(ours, AttnProcessor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = AttnProcessor(attn_mask_enabled=True)
    x = torch.randn(3, 40, dit.dim)
    mask = torch.arange(40)[None] < torch.tensor([40, 31, 17])[:, None]
    rope = dit.rotary_embed.forward_from_seq_len(40)
    ours.attn_mask_enabled = True
    try:
        with torch.no_grad():
            a, b = ours(block.attn, x, mask=mask, rope=rope), theirs(block.attn, x, mask=mask, rope=rope)
    finally:
        ours.attn_mask_enabled = False
    assert torch.allclose(a, b, atol=1e-6)
