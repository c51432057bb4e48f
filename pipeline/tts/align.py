"""Word timings with the PyPI ``ctc-forced-aligner`` (Deskpai's ONNX build) and a bundle's ONNX model.

Path: resample to 16 kHz -> ``generate_emissions`` -> ``preprocess_text`` (romanised, per language)
-> ``get_alignments`` -> ``get_spans`` -> ``postprocess_results``.

Guard, twice: the library's C++ CTC aligner *aborts the whole process* (``std::bad_alloc`` or an uncaught
``runtime_error``) when the token sequence needs more frames than the audio has (T < L + R, R being
adjacent repeated tokens). We compute the same targets the library will and refuse before calling
it, so such a job gets a warning instead of killing the worker; and the aligner runs in a child
process, so any other crash in native code costs one job its word timings, not the worker.

The default MMS aligner model is licensed CC-BY-NC 4.0; the aligner is a swappable bundle file.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.tts import audio as audio_utils

log = logging.getLogger(__name__)

ALIGN_SAMPLE_RATE = 16000


class AlignmentImpossible(ValueError):
    """Alignment cannot run on this input (too little audio for the text, or nothing to align)."""


@dataclass(frozen=True)
class WordSpan:
    word: str
    start: float
    end: float
    score: float


class Aligner:
    """Runs the aligner in a child process: whatever the C++ code does (abort, segfault, OOM), the
    worker survives, the job gets an ``ALIGNMENT_SKIPPED`` warning, and the next job gets a fresh
    child. The pre-check above keeps the known crash from happening at all."""

    def __init__(self, onnx_path: Path) -> None:
        self.onnx_path = onnx_path
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=1, mp_context=mp.get_context("spawn"), initializer=_child_init, initargs=(str(self.onnx_path),)
        )
        pool.submit(_child_ping).result()  # load the model now, not on the first job
        return pool

    def align(
        self, wave: np.ndarray, sample_rate: int, text: str, language: str = "eng", *, check: bool = True
    ) -> list[WordSpan]:
        """``check=False`` skips the pre-check (tests use it to prove the isolation holds)."""
        duration = len(wave) / sample_rate
        wave16 = audio_utils.resample(audio_utils.to_mono(wave), sample_rate, ALIGN_SAMPLE_RATE).astype(np.float32)
        with self._lock:
            try:
                results = self._pool.submit(_child_align, wave16, text, language, check).result()
            except BrokenProcessPool:
                log.error("aligner process died; starting a new one")
                self._pool = self._start()
                raise AlignmentImpossible("the aligner process crashed on this input") from None
        return _clean(results, duration)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


# -- child process -------------------------------------------------------------------------------

_session = None


def _child_init(onnx_path: str) -> None:
    global _session
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    _session = ort.InferenceSession(onnx_path, providers=providers)


def _child_ping() -> bool:
    return _session is not None


def _child_align(wave16: np.ndarray, text: str, language: str, check: bool) -> list[dict]:
    import ctc_forced_aligner as cfa

    tokens_starred, text_starred = cfa.preprocess_text(text, romanize=True, language=language)
    emissions, stride = cfa.generate_emissions(_session, wave16)
    tokenizer = cfa.Tokenizer()
    if check:
        check_alignable(emissions.shape[0], tokens_starred, tokenizer)
    segments, scores, blank = cfa.get_alignments(emissions, tokens_starred, tokenizer)
    spans = cfa.get_spans(tokens_starred, segments, blank)
    return cfa.postprocess_results(text_starred, spans, stride, scores)


def target_ids(tokens_starred: list[str], tokenizer: object) -> list[int]:
    """The target sequence ``get_alignments`` builds from the starred tokens (same rule)."""
    vocab = {k.lower(): v for k, v in tokenizer.get_vocab().items()}  # type: ignore[attr-defined]
    vocab["<star>"] = len(vocab)
    return [vocab[c] for c in " ".join(tokens_starred).split(" ") if c in vocab]


def check_alignable(frames: int, tokens_starred: list[str], tokenizer: object) -> None:
    targets = target_ids(tokens_starred, tokenizer)
    letters = [t for t in tokens_starred if t != "<star>" and t.strip()]
    if not letters:
        raise AlignmentImpossible("the text has no letters the aligner can place (only digits/punctuation?)")
    repeats = sum(1 for a, b in itertools.pairwise(targets) if a == b)
    if frames < len(targets) + repeats:
        raise AlignmentImpossible(
            f"audio too short to align: {frames} frames for {len(targets)} tokens (+{repeats} repeats)"
        )


def _clean(results: list[dict], duration: float) -> list[WordSpan]:
    """Clamp to the audio and make times non-decreasing (the library rounds its stride up)."""
    out: list[WordSpan] = []
    prev_end = 0.0
    for r in results:
        start = min(max(float(r["start"]), prev_end), duration)
        end = min(max(float(r["end"]), start), duration)
        out.append(WordSpan(word=str(r["text"]), start=round(start, 3), end=round(end, 3), score=float(r["score"])))
        prev_end = end
    return out
