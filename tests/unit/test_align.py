"""Word alignment through the real ctc-forced-aligner on the tiny ONNX model, and its crash guard."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from pipeline.runtime.deadlines import ALIGNER as ALIGNER_DEADLINE
from pipeline.runtime.deadlines import Deadline
from pipeline.tts.align import (
    Aligner,
    AlignmentImpossible,
    AlignmentTimedOut,
    BatchedEmitter,
    ctc_runner,
    load_ctc_model,
)
from pipeline.tts.batcher import Batcher

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


# -- the torch path (GPU workers): the same model as transformers weights, windows via the batcher --


@pytest.fixture
def torch_aligners(tiny_bundle: Path) -> Iterator[Any]:
    """make(max_batch, max_wait_s) -> (aligner, batcher): emissions from the bundle's transformers
    weights through a real batcher on its own event loop (as in the worker: loop + model thread)."""
    from pipeline.models.bundle import Bundle

    bundle = Bundle.load(tiny_bundle)
    assert bundle.aligner.torch_dir is not None
    model = load_ctc_model(tiny_bundle / bundle.aligner.torch_dir, "cpu")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    made: list[tuple[Aligner, Any]] = []

    def make(max_batch: int = 8, max_wait_s: float = 0) -> tuple[Aligner, Batcher]:
        async def start() -> tuple[Batcher, asyncio.Task[None]]:
            batcher = Batcher({"emissions": ctc_runner(model)}, max_batch=max_batch, max_wait_s=max_wait_s)
            return batcher, asyncio.create_task(batcher.run())

        batcher, task = asyncio.run_coroutine_threadsafe(start(), loop).result()
        aligner = Aligner(None, BatchedEmitter(batcher, loop))
        made.append((aligner, task))
        return aligner, batcher

    yield make

    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    for aligner, task in made:
        aligner.close()
        asyncio.run_coroutine_threadsafe(stop(task), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def test_torch_emissions_equal_the_onnx_model_and_give_the_same_timings(
    aligner: Aligner, torch_aligners: Any, tiny_bundle: Path
) -> None:
    import ctc_forced_aligner as cfa
    import onnxruntime as ort

    torch_side, batcher = torch_aligners()
    wave16 = np.random.default_rng(1).normal(0, 0.1, 16000 * 65).astype(np.float32)  # three windows
    session = ort.InferenceSession(str(tiny_bundle / "aligner" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_em, onnx_stride = cfa.generate_emissions(session, wave16)
    torch_em, torch_stride = torch_side.emitter(wave16)  # type: ignore[misc]
    assert torch_em.shape == onnx_em.shape and torch_stride == onnx_stride
    assert np.abs(torch_em - onnx_em).max() < 1e-4
    assert batcher.calls >= 1
    wave = _noise(3.0)
    ours, theirs = torch_side.align(wave, 24000, TEXT), aligner.align(wave, 24000, TEXT)
    assert [(w.word, w.start, w.end) for w in ours] == [(w.word, w.start, w.end) for w in theirs]
    assert np.allclose([w.score for w in ours], [w.score for w in theirs], atol=1e-4)


def test_alignment_windows_of_several_jobs_share_a_model_call(torch_aligners: Any) -> None:
    """Every window has the same length, so windows of different jobs batch without padding and
    each job's emissions are the ones it gets alone. The batcher closes a call only when it holds
    all three jobs' windows (max_batch 3, no time limit), so they must meet in one call."""
    alone_side, _ = torch_aligners()
    waves = [np.random.default_rng(i).normal(0, 0.1, 16000 * (3 + 4 * i)).astype(np.float32) for i in range(3)]
    alone = [alone_side.emitter(w)[0] for w in waves]  # type: ignore[misc]
    together_side, batcher = torch_aligners(max_batch=3, max_wait_s=3600)
    with ThreadPoolExecutor(3) as pool:  # three jobs' alignment threads at once
        together = list(pool.map(lambda w: together_side.emitter(w)[0], waves))  # type: ignore[misc]
    assert batcher.calls == 1
    for a, b in zip(alone, together, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-5


# -- deadlines (issue 25, defect 3): a stuck child is killed and replaced ------------------------


@pytest.fixture
def own_aligner(tiny_bundle: Path) -> Iterator[Aligner]:
    """An aligner of this test's own (the session's is shared): its child may be stopped here."""
    from pipeline.models.bundle import Bundle

    a = Aligner(tiny_bundle / Bundle.load(tiny_bundle).aligner.model)
    yield a
    for pid in a.child_pids():  # whatever the test left stopped must not outlive it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    a.close()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_stopped_aligner_child_is_killed_at_the_deadline_and_replaced(own_aligner: Aligner) -> None:
    """The child is stopped (SIGSTOP) while idle, so the next call can only end by its deadline
    (one second here): the chunk gets AlignmentTimedOut (no word timings, an ALIGNMENT_SKIPPED
    warning for the job), the stopped child is killed, and a new one aligns the next call."""
    [stopped] = own_aligner.child_pids()
    os.kill(stopped, signal.SIGSTOP)
    own_aligner.deadline = Deadline(1.0, 0.0)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(own_aligner.align, _noise(3.0), 24000, TEXT)
        with pytest.raises(AlignmentTimedOut, match="deadline"):
            call.result(timeout=120)  # a hang guard: only the aligner's own deadline may end the call
    assert _gone(stopped)
    [fresh] = own_aligner.child_pids()
    assert fresh != stopped
    own_aligner.deadline = ALIGNER_DEADLINE
    assert [s.word for s in own_aligner.align(_noise(3.0), 24000, TEXT)] == TEXT.split()
    assert own_aligner.sick() is None


def test_close_does_not_wait_for_a_stopped_child(own_aligner: Aligner) -> None:
    """A worker stopping with its aligner child stopped (or hung) still exits: close() kills the
    child instead of waiting for a goodbye it would never send."""
    [stopped] = own_aligner.child_pids()
    os.kill(stopped, signal.SIGSTOP)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(own_aligner.close).result(timeout=120)  # hang guard
    assert _gone(stopped)


def test_alignment_windows_take_their_jobs_place_in_the_model_queue() -> None:
    """Issue 27: the windows the aligner scores were all bulk items, so an interactive job's
    alignment waited behind every bulk chunk queued before it (first come, first served among
    bulk), and they were nobody's for the fair share. They carry the job's place now: the priority
    and tenant its runner set (``job_place``), read in the aligner's thread."""
    import contextvars

    from pipeline.tts.batcher import INTERACTIVE, job_place
    from pipeline.tts.shares import Tenant

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    works: list[Any] = []

    class Capture:
        def submit(self, work: Any) -> asyncio.Future[Any]:
            works.append(work)
            done = loop.create_future()
            done.set_result(np.zeros((3, 4), dtype=np.float32))
            return done

    try:
        emitter = BatchedEmitter(Capture(), loop)  # type: ignore[arg-type]
        tenant = Tenant("AWS:AIDAEXAMPLE", "door-abc")
        ctx = contextvars.copy_context()
        ctx.run(job_place.set, (INTERACTIVE, tenant))
        out = ctx.run(emitter.run, ["logits"], {"input_values": np.zeros((2, 16000), dtype=np.float32)})
        assert out[0].shape == (2, 3, 4)
        assert [(w.kind, w.priority, w.tenant) for w in works] == [("emissions", INTERACTIVE, tenant)] * 2
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
