"""Word timings with the PyPI ``ctc-forced-aligner`` (Deskpai's ONNX build) and a bundle's CTC model.

Path: resample to 16 kHz -> ``generate_emissions`` -> ``preprocess_text`` (romanised, per language)
-> ``get_alignments`` -> ``get_spans`` -> ``postprocess_results``.

Two ways to score the audio (``generate_emissions``, the expensive part: a 300 M-parameter model
over fixed 34 s windows):

- **onnx** (CPU workers, CI): onnxruntime on the CPU, inside the aligner's child process.
- **torch** (GPU workers): the same model as transformers weights (the bundle's
  ``aligner.torch_dir``) on the model's device. ``generate_emissions`` itself still cuts the windows
  and assembles the emissions; its ``session.run`` goes to the batcher (``pipeline.tts.batcher``), which
  scores windows of several jobs in one call (every window has the same length, so a job's
  emissions cannot depend on its batch-mates). Measured for a model of this size: 0.02 s per 10 s
  of audio on an H100 in fp16, vs 0.6-1.9 s on CPU.

Guard, twice: the library's C++ CTC aligner *aborts the whole process* (``std::bad_alloc`` or an uncaught
``runtime_error``) when the token sequence needs more frames than the audio has (T < L + R, R being
adjacent repeated tokens). We compute the same targets the library will and refuse before calling
it, so such a job gets a warning instead of killing the worker; and the aligner runs in a child
process, so any other crash in native code costs one job its word timings, not the worker.

A hang costs no more than a crash: every call to the child has a deadline derived from the audio
(``Deadline``: ``TTS_ALIGNER_DEADLINE_S`` + ``TTS_DEADLINE_PER_AUDIO_S`` per second); past it the
child is killed and a new one started for the next call, and the chunk gets no word timings
(``AlignmentTimedOut``, an ``ALIGNMENT_SKIPPED`` warning). Calls share one child, one at a time: a
call waits for the one before it at most that call's deadline.

The default MMS aligner model is licensed CC-BY-NC 4.0; the aligner is a swappable bundle file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.runtime import deadlines
from pipeline.runtime.deadlines import Deadline
from pipeline.tts import audio as audio_utils

if TYPE_CHECKING:
    from pipeline.tts.batcher import Batcher

log = logging.getLogger(__name__)

ALIGN_SAMPLE_RATE = 16000
# A new child loads the aligner's model (1.2 GB for the real one) before it serves: bounded too,
# generously, so that a child that cannot start is an error instead of a hang.
START_TIMEOUT_S = 300.0
# How long past its deadline a call may still look "running" before /healthz says the aligner is
# stuck: the waiting thread kills the child at the deadline, this only covers it being late.
_LATE_KILL_S = 10.0


class AlignmentImpossible(ValueError):
    """Alignment cannot run on this input (too little audio for the text, or nothing to align)."""


class AlignmentTimedOut(AlignmentImpossible):
    """The aligner's child did not answer within the call's deadline: it was killed (a new one
    serves the next call), and this chunk gets no word timings."""


@dataclass(frozen=True)
class WordSpan:
    word: str
    start: float
    end: float
    score: float


# Scores 16 kHz audio: (emissions T x 32, stride ms), ctc-forced-aligner's generate_emissions shape.
Emitter = Callable[[np.ndarray], tuple[np.ndarray, int]]


class Aligner:
    """Runs the native aligner in a child process: whatever the C++ code does (abort, segfault, OOM),
    the worker survives, the job gets an ``ALIGNMENT_SKIPPED`` warning, and the next job gets a fresh
    child. The pre-check above keeps the known crash from happening at all.

    Without an ``emitter`` the child also scores the audio with the ONNX model (onnxruntime, CPU);
    with one (``BatchedEmitter``, the torch path) the calling thread scores it and the child only
    aligns."""

    def __init__(
        self,
        onnx_path: Path | None,
        emitter: Emitter | None = None,
        *,
        threads: int | None = None,
        deadline: Deadline = deadlines.ALIGNER,
    ) -> None:
        """``threads``: onnxruntime's intra-op threads (None: its default, one per core)."""
        if onnx_path is None and emitter is None:
            raise ValueError("an aligner needs an ONNX model or an emitter")
        self.onnx_path = onnx_path if emitter is None else None
        self.emitter = emitter
        self.threads = threads
        self.deadline = deadline
        self._lock = threading.Lock()
        self._until: float | None = None  # the running call's deadline (time.monotonic())
        self._closed = False
        self._pool: ProcessPoolExecutor | None = self._start()

    @property
    def backend(self) -> str:
        return "onnx-cpu" if self.emitter is None else "torch"

    def _start(self) -> ProcessPoolExecutor:
        onnx = str(self.onnx_path) if self.onnx_path else None
        pool = ProcessPoolExecutor(
            max_workers=1, mp_context=mp.get_context("spawn"), initializer=_child_init, initargs=(onnx, self.threads)
        )
        try:
            pool.submit(_child_ping).result(timeout=START_TIMEOUT_S)  # load the model now, not on the first job
        except BaseException:
            _kill(pool)
            raise
        return pool

    def child_pids(self) -> list[int]:
        """The child's process id (a list: none while it is being replaced)."""
        pool = self._pool
        return [p.pid for p in list((getattr(pool, "_processes", None) or {}).values()) if p.pid is not None]

    def align(
        self, wave: np.ndarray, sample_rate: int, text: str, language: str = "eng", *, check: bool = True
    ) -> list[WordSpan]:
        """``check=False`` skips the pre-check (tests use it to prove the isolation holds)."""
        duration = len(wave) / sample_rate
        deadline_s = self.deadline.of(duration)
        wave16 = audio_utils.resample(audio_utils.to_mono(wave), sample_rate, ALIGN_SAMPLE_RATE).astype(np.float32)
        emissions = self.emitter(wave16) if self.emitter is not None else None  # outside the child's lock
        with self._lock:  # held at most one call's deadline (and a replacement's start)
            if self._closed:
                raise AlignmentImpossible("the aligner is closed (the worker is stopping)")
            if self._pool is None:  # the last replacement failed to start: try again
                self._replace(kill=False)
            assert self._pool is not None
            future = self._pool.submit(_child_align, wave16, text, language, check, emissions)
            self._until = time.monotonic() + deadline_s
            try:
                results = future.result(timeout=deadline_s)
            except BrokenProcessPool:
                self._until = None
                if self._closed:
                    raise AlignmentImpossible("the aligner is closed (the worker is stopping)") from None
                log.error("aligner process died; starting a new one")
                self._replace(kill=False)
                raise AlignmentImpossible("the aligner process crashed on this input") from None
            except TimeoutError:
                if future.done():  # the child's own TimeoutError, not ours
                    raise
                self._until = None
                log.error("aligner process did not answer within %.0fs: killing it, starting a new one", deadline_s)
                self._replace(kill=True)
                raise AlignmentTimedOut(
                    f"the aligner did not finish within its {deadline_s:.0f}s deadline (TTS_ALIGNER_DEADLINE_S + "
                    "TTS_DEADLINE_PER_AUDIO_S per second of audio) and was restarted"
                ) from None
            finally:
                self._until = None
        return _clean(results, duration)

    def _replace(self, *, kill: bool) -> None:
        """A new child for the next call (holding ``_lock``). One that cannot start leaves none:
        the aligner says so to /healthz, and the next call tries again."""
        if self._closed:  # close() has stopped (or is stopping) it: nothing to replace it for
            raise AlignmentImpossible("the aligner is closed (the worker is stopping)")
        old, self._pool = self._pool, None
        if old is not None:
            if kill:
                _kill(old)
            old.shutdown(wait=False, cancel_futures=True)
        try:
            self._pool = self._start()
        except Exception as e:
            log.error("could not start a new aligner process: %s", e)
            raise AlignmentImpossible("the aligner process could not be restarted") from None

    def sick(self) -> str | None:
        """Why the aligner makes the worker not live (None: it does not). Cheap, any thread."""
        until = self._until
        if until is not None and time.monotonic() > until + _LATE_KILL_S:
            return "its process is past its call's deadline and was not stopped"
        if self._pool is None and not self._closed and not self._lock.locked():
            return "it has no process (the last one could not be started)"
        return None

    def close(self) -> None:
        """Stops the child without waiting for a call or a handshake: it holds nothing to save, and
        a child that is stuck (or stopped) would never answer one."""
        self._closed = True
        pool = self._pool
        if pool is not None:
            _kill(pool)
            pool.shutdown(wait=True, cancel_futures=True)


def _kill(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's processes (a stopped or hung one too). ``_processes`` is the executor's
    own record of them; the pool then sees them die, fails their futures and reaps them."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.kill()


# -- child process -------------------------------------------------------------------------------

_session = None
_PARENT_POLL_S = 0.5


def _child_init(onnx_path: str | None, threads: int | None = None) -> None:
    global _session
    _die_with_parent()
    import ctc_forced_aligner  # noqa: F401  (loads the native extension now, not on the first job)

    if onnx_path is None:
        return  # emissions come from the parent (torch path)
    import onnxruntime as ort

    # No spinning: its threads would busy-wait after every call, on cores the worker's event loop
    # and model share (measured: half the aligner's CPU per short job, docs/benchmarks.md).
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    _session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def _die_with_parent() -> None:
    """A worker killed with SIGKILL (OOM killer, kill -9, a node drain without cgroup kill) cannot
    stop its children: this one watches for being orphaned and exits, so no aligner (hundreds of
    MB with the real model) outlives its worker. multiprocessing's resource tracker exits with it
    (it ends when the last process holding its pipe is gone)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_ping() -> bool:
    return True


def _child_align(
    wave16: np.ndarray, text: str, language: str, check: bool, scored: tuple[np.ndarray, int] | None
) -> list[dict]:
    import ctc_forced_aligner as cfa

    tokens_starred, text_starred = cfa.preprocess_text(text, romanize=True, language=language)
    emissions, stride = scored if scored is not None else cfa.generate_emissions(_session, wave16)
    tokenizer = cfa.Tokenizer()
    if check:
        check_alignable(emissions.shape[0], tokens_starred, tokenizer)
    segments, scores, blank = cfa.get_alignments(emissions, tokens_starred, tokenizer)
    spans = cfa.get_spans(tokens_starred, segments, blank)
    return cfa.postprocess_results(text_starred, spans, stride, scores)


# -- the torch path ----------------------------------------------------------------------------


def load_ctc_model(torch_dir: Path, device: str) -> Any:
    """The aligner's transformers Wav2Vec2ForCTC, on ``device`` (fp16 on CUDA), ready for scoring."""
    import torch
    from transformers import Wav2Vec2ForCTC
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return Wav2Vec2ForCTC.from_pretrained(str(torch_dir), dtype=dtype).to(device).eval()


def ctc_runner(model: Any) -> Callable[[Any, Sequence[np.ndarray]], list[np.ndarray]]:
    """Batcher runner (kind "emissions"): windows of equal length -> one logits array per window."""
    import torch

    param = next(model.parameters())

    def run(_group: Any, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            batch = torch.from_numpy(np.stack(windows)).to(device=param.device, dtype=param.dtype)
            logits = model(batch).logits.float().cpu().numpy()
        return list(logits)

    return run


class BatchedEmitter:
    """ctc-forced-aligner's ``generate_emissions`` with a stand-in for its ONNX session: each window it
    asks the session to score becomes a batcher item (kind "emissions"), so windows of several jobs
    share model calls. Called from a worker thread; the batcher lives on the event loop."""

    def __init__(self, batcher: Batcher, loop: asyncio.AbstractEventLoop) -> None:
        self.batcher = batcher
        self.loop = loop

    def __call__(self, wave16: np.ndarray) -> tuple[np.ndarray, int]:
        import ctc_forced_aligner as cfa

        return cfa.generate_emissions(self, wave16)

    def run(self, output_names: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The part of ``onnxruntime.InferenceSession`` that ``generate_emissions`` uses."""
        from pipeline.runtime.logs import job_id_var
        from pipeline.tts.batcher import Work, job_place

        owner = job_id_var.get()  # copied into this thread by asyncio.to_thread
        priority, tenant = job_place.get()  # likewise: an interactive job's windows are interactive

        async def score(window: np.ndarray) -> np.ndarray:
            seconds = len(window) / ALIGN_SAMPLE_RATE
            work = Work(
                "emissions", "ctc", len(window), owner, window, priority=priority, seconds=seconds, tenant=tenant
            )
            return await self.batcher.submit(work)

        windows = inputs["input_values"]
        futures = [asyncio.run_coroutine_threadsafe(score(w), self.loop) for w in windows]
        # No timeout of its own: the batcher ends every future it holds, with a result, an error or
        # BatcherUnavailable, within the deadlines of the model calls before it and its own; and
        # a job that leaves cancels its queued windows (``Batcher.cancel``), which ends these.
        return [np.stack([f.result() for f in futures])]


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
