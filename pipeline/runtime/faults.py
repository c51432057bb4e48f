"""Test and fault-injection hooks. Off unless the worker's own environment sets ``TTS_FAULT_DIR``.

Tests must make a job last *deterministically* (not "long enough" on this machine's CPU) to act
on it while it runs: cancel it, kill its worker, send SIGTERM, let its lease outlive the
visibility timeout. They do it by driving the worker through files in ``TTS_FAULT_DIR``, a local
directory of the worker process: no manifest field and no S3 object can turn any of this on.

``hold/<job_id>``
    Hold that job at a text-chunk boundary (no more of its chunks go to the model) until the file
    is removed. Its content is JSON (empty
    means ``{}``): ``after_chunks`` (default 0: before the first chunk; a job with fewer chunks is
    held after its last one) and ``attempts`` (default: every attempt; ``[1]`` lets a successor
    that takes the job over run freely). On arrival the worker writes ``held/<job_id>`` (JSON:
    ``job_id``, ``attempt``, ``worker``, ``chunks_done``, ``chunks_total``). A held job is still a
    running job: its heartbeat beats, its progress is published, and cancellation, the job timeout,
    shutdown and a lost lease end it exactly as they would between two chunks.
    With ``"at": "publish"`` the job is held instead in its publish step, after the claim was
    re-asserted and before anything is uploaded (marker with ``"at": "publish"``): the point
    where a test stops the worker (SIGSTOP) to let its lease lapse while it believes it owns the
    job. Publishing is not interruptible, so this hold ends only when the file is removed.
``oom/<job_id>``
    Every model call that carries one of this job's items raises an out-of-memory error, as a
    CUDA OOM would: the batcher splits the call and retries, so only this job fails. JSON (empty
    means ``{}``): ``after_items`` (default 0): that many of the job's items, counted in this worker
    as model calls carry them (a call retried in halves counts its items again), run first; a call
    whose items take the count past it fails. ``{"after_items": 1}`` on a one-chunk job: its chunk
    is synthesised, and the quality gate's regeneration of it runs out of memory.
``stall/<job_id>``
    Every model call that carries one of this job's items blocks on the model thread until the
    file is removed, as a hung CUDA kernel or driver call would: nothing on the worker's side can
    interrupt it. JSON (empty means ``{}``): ``attempts`` (default: every attempt; ``[1]`` lets a
    successor run freely). On arrival the worker writes ``stalled/<job_id>`` (``job_id``,
    ``attempt``, ``worker``, ``kind``). The call's deadline (``TTS_MODEL_DEADLINE_S``) counts the
    stall: past it the worker is not live, hands its jobs back and exits non-zero.
``silence/<job_id>``
    The quality gate (``pipeline.worker.quality``) sees silence instead of what the model made for
    some of that job's speech chunks: as a chunk the model botched, deterministically (the tiny test
    model's audio is noise, which no transcript can judge). JSON (empty means ``{}``): ``chunks``
    (0-based speech chunks, default ``[0]``), ``tries`` (which tries of them, default ``[0]``: the
    first try fails the signal check and a retry passes; ``"all"``: every try, so the chunk stays
    bad) and ``attempts`` (default: every attempt).
``hold/_startup``
    Hold the worker's start-up after its signal handlers are installed and the model cache is
    synced, before the engine loads; marker ``held/_startup``. A stop request ends the hold.
``crash/heartbeat``, ``crash/batcher``
    That background task of the worker raises at its next iteration, as a bug would: the worker
    must notice, stop taking work, hand its jobs back and exit non-zero.
``calls.jsonl`` (written, not read)
    One line per model call: ``worker``, ``kind`` and, per job in the call, its attempt and item
    count. The fault sweep counts from it how often the model ran each chunk of each attempt.

``TTS_FAULT_CHUNK_DELAY_S`` (needs no directory) adds a fixed sleep to every model call: a
slower model, for running the suite as if on a slower machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.05
STARTUP = "_startup"


class InjectedOutOfMemory(MemoryError):
    """Stands in for ``torch.OutOfMemoryError`` (``oom/<job_id>``)."""


class InjectedCrash(RuntimeError):
    """A background task's bug, on request (``crash/<task>``)."""


class FaultHooks:
    def __init__(self, root: Path | None, chunk_delay_s: float = 0.0, worker_id: str = "") -> None:
        self.root = root
        self.chunk_delay_s = chunk_delay_s
        self.worker_id = worker_id
        self._oom_items: dict[str, int] = {}  # items of each job with an oom/ file the model was given
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            log.warning("fault injection is ON (TTS_FAULT_DIR=%s): for tests only", root)
        if chunk_delay_s:
            log.warning("fault injection: every chunk is delayed by %.2fs (TTS_FAULT_CHUNK_DELAY_S)", chunk_delay_s)

    # -- holds ----------------------------------------------------------------------------------

    def _hold_spec(self, name: str) -> dict[str, Any] | None:
        return self._spec("hold", name)

    def _spec(self, folder: str, name: str) -> dict[str, Any] | None:
        """The JSON of ``<folder>/<name>`` (``{}`` if empty or not an object); None: no such file."""
        if self.root is None:
            return None
        try:
            text = (self.root / folder / name).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            spec = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            spec = {}
        return spec if isinstance(spec, dict) else {}

    def _held(self, name: str, **info: Any) -> None:
        self._mark("held", name, **info)

    def _mark(self, folder: str, name: str, **info: Any) -> None:
        assert self.root is not None
        held = self.root / folder
        held.mkdir(parents=True, exist_ok=True)
        tmp = held / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"worker": self.worker_id, **info}))
        tmp.replace(held / name)  # atomic: a test never reads a half-written marker

    def hold_point(self, job_id: str, attempt: int, total: int) -> int | None:
        """Chunks done at which this attempt of the job must hold (None: no hold pending)."""
        spec = self._hold_spec(job_id)
        if spec is None:
            return None
        if spec.get("at", "chunk") != "chunk" or not _for_attempt(spec, attempt):
            return None
        return min(int(spec.get("after_chunks", 0)), total)

    async def hold(self, job_id: str, attempt: int, done: int, total: int, check: Callable[[], None]) -> None:
        """Until ``hold/<job_id>`` is removed; ``check`` raises to abort the held job."""
        log.info("fault hook: holding at chunk %d/%d", done, total)
        self._held(job_id, job_id=job_id, attempt=attempt, chunks_done=done, chunks_total=total)
        await self._until_released(job_id, check)

    async def hold_before_publish(self, job_id: str, attempt: int) -> None:
        spec = self._hold_spec(job_id)
        if spec is None or spec.get("at") != "publish" or not _for_attempt(spec, attempt):
            return
        log.info("fault hook: holding before publishing")
        self._held(job_id, job_id=job_id, attempt=attempt, at="publish")
        await self._until_released(job_id, lambda: None)  # publishing is not interruptible

    async def _until_released(self, name: str, check: Callable[[], None]) -> None:
        """Polls a file, not an event: the releasing test is another process."""
        while self._hold_spec(name) is not None:
            check()
            await asyncio.sleep(POLL_S)
        log.info("fault hook: released")

    async def hold_at_startup(self, stopping: asyncio.Event) -> None:
        if self._hold_spec(STARTUP) is None:
            return
        log.info("fault hook: holding start-up")
        self._held(STARTUP, pid=os.getpid())
        while self._hold_spec(STARTUP) is not None:
            try:
                await asyncio.wait_for(stopping.wait(), POLL_S)  # a stop request ends the hold
                return
            except TimeoutError:
                continue

    # -- the quality gate ------------------------------------------------------------------------

    def chunk_audio(self, job_id: str, attempt: int, chunk: int, attempt_try: int, wave: Any) -> Any:
        """``wave``, or silence of its length where ``silence/<job_id>`` says so."""
        if self.root is None:
            return wave
        try:
            text = (self.root / "silence" / job_id).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return wave
        try:
            spec = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            spec = {}
        spec = spec if isinstance(spec, dict) else {}
        tries = spec.get("tries", [0])
        if not _for_attempt(spec, attempt) or chunk not in spec.get("chunks", [0]):
            return wave
        if tries != "all" and attempt_try not in tries:
            return wave
        log.info("fault hook: chunk %d try %d replaced by silence", chunk, attempt_try)
        return wave * 0.0

    # -- on the model thread -------------------------------------------------------------------

    def before_model_call(self, kind: str, items: list[tuple[str, int]]) -> None:
        """``items``: (job id, attempt) of each item in the call."""
        if self.chunk_delay_s:
            time.sleep(self.chunk_delay_s)
        if self.root is None:
            return
        counts: dict[str, dict[str, int]] = {}
        for job_id, attempt in items:
            per_job = counts.setdefault(job_id, {})
            per_job[str(attempt)] = per_job.get(str(attempt), 0) + 1
        line = json.dumps({"worker": self.worker_id, "kind": kind, "jobs": counts}) + "\n"
        with (self.root / "calls.jsonl").open("a") as f:  # one short append per call: atomic
            f.write(line)
        for job_id, per_attempt in counts.items():
            self._stall(kind, job_id, [int(a) for a in per_attempt])
        # A list, not a generator: every job's count moves, whichever fails the call.
        if any([self._oom(job_id, sum(per_attempt.values())) for job_id, per_attempt in counts.items()]):
            raise InjectedOutOfMemory("CUDA out of memory (injected by TTS_FAULT_DIR/oom)")

    def _oom(self, job_id: str, items: int) -> bool:
        """Whether ``oom/<job_id>`` fails this call, which carries ``items`` of the job's items."""
        spec = self._spec("oom", job_id)
        if spec is None:
            return False
        seen = self._oom_items.get(job_id, 0) + items
        self._oom_items[job_id] = seen
        return seen > int(spec.get("after_items", 0))

    def _stall(self, kind: str, job_id: str, attempts: list[int]) -> None:
        """Blocks this (model) thread while ``stall/<job_id>`` applies: a file, polled, because the
        releasing test is another process."""
        spec = self._spec("stall", job_id)
        if spec is None:
            return
        stalled = [a for a in attempts if _for_attempt(spec, a)]
        if not stalled:
            return
        log.warning("fault hook: %s model call stalled for job %s", kind, job_id)
        self._mark("stalled", job_id, job_id=job_id, attempt=stalled[0], kind=kind)
        while self._spec("stall", job_id) is not None:
            time.sleep(POLL_S)
        log.info("fault hook: model call for job %s released", job_id)

    # -- background tasks ----------------------------------------------------------------------

    def crash_point(self, task: str) -> None:
        if self.root is not None and (self.root / "crash" / task).exists():
            raise InjectedCrash(f"{task} crashed (injected by TTS_FAULT_DIR/crash/{task})")


def _for_attempt(spec: dict[str, Any], attempt: int) -> bool:
    attempts = spec.get("attempts")
    return attempts is None or attempt in attempts


NO_FAULTS = FaultHooks(None)
