"""Word alignment through the real ctc-forced-aligner on the tiny ONNX model, and its crash guard."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from pipeline.tts.align import Aligner, AlignmentImpossible

TEXT = "Hello world, this is a test of the pipeline."


def _noise(seconds: float, sr: int = 24000) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.1, int(seconds * sr)).astype(np.float32)


def test_one_timing_per_word_monotonic_inside_audio(aligner: Aligner) -> None:
    wave = _noise(3.0)
    spans = aligner.align(wave, 24000, TEXT)
    assert [s.word for s in spans] == TEXT.split()
    for prev, cur in itertools.pairwise(spans):
        assert prev.end <= cur.start
    assert all(0 <= s.start <= s.end <= 3.0 for s in spans)
    assert all(np.isfinite(s.score) for s in spans)


def test_digits_and_punctuation_words_still_get_a_slot(aligner: Aligner) -> None:
    text = "Call 555 now !"
    spans = aligner.align(_noise(2.0), 24000, text)
    assert [s.word for s in spans] == ["Call", "555", "now", "!"]


def test_text_without_letters_is_refused(aligner: Aligner) -> None:
    with pytest.raises(AlignmentImpossible, match="no letters"):
        aligner.align(_noise(2.0), 24000, "123 456 !!!")


def test_too_little_audio_is_refused_instead_of_aborting(aligner: Aligner) -> None:
    with pytest.raises(AlignmentImpossible, match="too short"):
        aligner.align(_noise(0.2), 24000, TEXT * 3)


def test_a_crash_in_the_aligner_process_costs_one_alignment_not_the_worker(aligner: Aligner) -> None:
    """Without the pre-check the C++ code aborts; it does so in the child process only."""
    with pytest.raises(AlignmentImpossible, match="crashed"):
        aligner.align(_noise(0.2), 24000, TEXT * 3, check=False)
    # A fresh child serves the next job.
    assert [s.word for s in aligner.align(_noise(3.0), 24000, TEXT)] == TEXT.split()


def test_the_guard_is_needed_unguarded_library_call_kills_the_process(tiny_bundle) -> None:
    """Proves the danger the guard exists for: the library's C++ aligner aborts the interpreter."""
    code = f"""
import numpy as np, onnxruntime as ort, ctc_forced_aligner as cfa
s = ort.InferenceSession({str(tiny_bundle / "aligner" / "model.onnx")!r})
em, stride = cfa.generate_emissions(s, np.zeros(3200, dtype=np.float32))
toks, _ = cfa.preprocess_text({TEXT * 3!r}, romanize=True, language="eng")
cfa.get_alignments(em, toks, cfa.Tokenizer())
print("survived")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "survived" not in proc.stdout
