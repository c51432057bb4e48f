"""The batcher: the one owner of the model's device, shared by every job in flight.

Jobs hand it work items (a text chunk to synthesise, audio windows to score for alignment) and
await their results. One dispatcher task on the event loop forms batches and runs them, one at a
time, on a single thread ("model thread"): the GPU sees one call at a time, and a call can carry
chunks of many jobs. The shape is NVIDIA Triton's dynamic batcher:

- a batch closes when it holds ``max_batch`` items, or when its oldest item has waited
  ``max_wait_s`` (``TTS_BATCH_WAIT_MS``) for batch-mates; while one batch runs the next one fills,
  so under load batches close full without waiting;
- the most urgent priority present anchors the next batch (interactive jobs' chunks lead); within
  it, the oldest item of the tenant that has had the least model time lately (``Shares``:
  submitter, then requester; first come, first served within a tenant); only items that may share its model
  call join it (same ``kind`` and ``group``: nfe steps and CFG strength are one value per call),
  the more urgent first, then nearest in length, within ``max_length_ratio`` of each other
  (padding is wasted work and needs the attention mask);
- a call that fails is split in halves and each half retried, down to single items, so one bad
  item or an out-of-memory caused by one long item fails only its own job (the CUDA cache is
  emptied before the retry);
- ``cancel(owner)`` drops a job's queued items; items already in a running call finish and are
  discarded by the job;
- every model call has a deadline derived from its work (``Deadline``: a floor plus an allowance
  per second of audio its items make or read, ``Work.seconds``), watched from the event loop. A
  call past it cannot be interrupted and its thread cannot be reused: the batcher is *stuck*.
  It fails every future it holds with ``ModelCallStuck``, refuses new work, says so to
  ``/healthz`` (``sick``) and ``run`` raises: the worker hands its jobs back and exits non-zero
  (``pipeline.worker.loop``). A dispatcher that stops for any other reason fails every future it
  holds with ``BatcherUnavailable`` too. So every future a job awaits ends: with its result, its
  own error, or ``BatcherUnavailable`` (the job did nothing wrong: it goes back to the queue),
  within the deadlines of the calls before it and its own.

Per-job results never depend on batch-mates: the synthesis runner builds per-item noise and masks
padding (``pipeline.tts.sampler``); alignment windows have one fixed length.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.runtime import deadlines, metrics
from pipeline.runtime.deadlines import Deadline
from pipeline.runtime.faults import NO_FAULTS, FaultHooks
from pipeline.tts.shares import NOBODY, Shares, Tenant

log = logging.getLogger(__name__)

# runner(group, payloads) -> one result per payload, in order. Runs on the model thread.
Runner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]

BUSY_WINDOW_S = 60.0

# Work.priority: lower is more urgent (an int, so the batcher needs no job contract).
INTERACTIVE = 0
BULK = 1

# How often the dispatcher looks at a running call between two of its tries (a call that failed
# is retried in halves, each try with its own deadline).
_BETWEEN_TRIES_S = 0.5


class BatcherUnavailable(Exception):
    """The batcher runs no more work (its dispatcher stopped, or the model thread is stuck). Not
    the job's fault: a job that meets it is handed back, never failed."""


class ModelCallStuck(BatcherUnavailable):
    """A model call ran past its deadline: the model thread can neither be interrupted nor reused."""


@dataclass(frozen=True)
class Work:
    kind: str  # which runner: "synthesis" | "emissions" | "transcription" (the quality gate)
    group: Hashable  # items of one call must share it
    size: int  # length for grouping (frames, samples)
    owner: str  # the job: for cancellation and fault injection
    payload: Any
    attempt: int = 0  # the job's attempt (what the fault hooks' call log records)
    priority: int = BULK  # INTERACTIVE items anchor batches before any BULK item
    seconds: float = 0.0  # audio it makes or reads: its share of its call's deadline
    tenant: Tenant = NOBODY  # whose it is: the order within a priority (``Shares``)


# The place in the model's queue of the job the current task (and the threads it starts) works
# for: what the aligner's items, made deep in ctc-forced-aligner, carry. Set by the job's runner.
job_place: contextvars.ContextVar[tuple[int, Tenant]] = contextvars.ContextVar("job_place", default=(BULK, NOBODY))


@dataclass
class Metered:
    """What one job's items used of the model: its share of each call's time (by the audio each
    item made or read), and how many items of each kind ran."""

    seconds: float = 0.0
    items: dict[str, int] = field(default_factory=dict)


_METERED_JOBS = 4096  # jobs whose meters are kept until taken (a job that never takes its own: the oldest go)


@dataclass(frozen=True)
class _Running:
    """The model call in progress (written by the model thread, read by the event loop)."""

    kind: str
    items: int
    deadline_s: float
    until: float  # time.monotonic() past which it is stuck


@dataclass(eq=False)
class _Pending:
    work: Work
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        runners: Mapping[str, Runner],
        *,
        max_batch: int,
        max_wait_s: float,
        max_length_ratio: float = 2.0,
        executor: ThreadPoolExecutor | None = None,
        faults: FaultHooks = NO_FAULTS,
        deadline: Deadline = deadlines.MODEL,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or max_length_ratio < 1:
            raise ValueError("max_batch >= 1, max_wait_s >= 0 and max_length_ratio >= 1 are required")
        self.runners = dict(runners)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_length_ratio = max_length_ratio
        self.executor = executor or model_thread()
        self.faults = faults
        self.deadline = deadline
        self._running: _Running | None = None
        self._in_call: list[_Pending] = []  # the batch whose call runs now
        self._down: str | None = None  # why no more work runs (None: it does)
        self.stuck = False  # a model call is past its deadline: its thread is lost for good
        self._queue: list[_Pending] = []
        self._arrived = asyncio.Event()
        self._busy: collections.deque[tuple[float, float]] = collections.deque()  # (start, end)
        self._busy_lock = threading.Lock()  # read by the metrics server's thread
        self.calls = 0
        self.shares = Shares()  # who has had the model lately: the order within a priority
        self._meters: collections.OrderedDict[str, Metered] = collections.OrderedDict()  # by job
        metrics.MODEL_BUSY_FRACTION.set_function(self.busy_fraction)

    # -- the jobs' side -------------------------------------------------------------------------

    def submit(self, work: Work) -> asyncio.Future[Any]:
        if work.kind not in self.runners:
            raise ValueError(f"no runner for {work.kind!r}")
        pending = _Pending(work, asyncio.get_running_loop().create_future())
        if self._down is not None:  # nothing would ever run it
            _fail(pending, self._unavailable())
            return pending.future
        self._queue.append(pending)
        self._arrived.set()
        return pending.future

    def cancel(self, owner: str) -> int:
        """Drop ``owner``'s queued items (their futures are cancelled). Returns how many."""
        dropped = [p for p in self._queue if p.work.owner == owner]
        for p in dropped:
            self._queue.remove(p)
            p.future.cancel()
        return len(dropped)

    def queued(self) -> int:
        return len(self._queue)

    def take_meter(self, owner: str) -> Metered:
        """What ``owner``'s items have used since its meter was last taken (then it starts again)."""
        return self._meters.pop(owner, None) or Metered()

    def sick(self) -> str | None:
        """Why this batcher makes the worker not live (None: it does not). Cheap, any thread:
        the liveness probe asks it."""
        if self._down is not None:
            return self._down
        running = self._running
        if running is not None and time.monotonic() > running.until:
            return _late(running)
        return None

    # -- the dispatcher -------------------------------------------------------------------------

    async def run(self) -> None:
        """Form and run batches until cancelled, or until a model call is stuck (``ModelCallStuck``).
        However it ends, every future it still holds fails with ``BatcherUnavailable``."""
        try:
            await self._dispatch()
        except BaseException as e:
            if self._down is None:
                self._down = f"the batcher stopped ({type(e).__name__}: {e})" if str(e) else "the batcher stopped"
            for p in [*self._in_call, *self._queue]:
                _fail(p, self._unavailable())
            self._queue.clear()
            raise

    def _unavailable(self) -> BatcherUnavailable:
        assert self._down is not None
        return ModelCallStuck(self._down) if self.stuck else BatcherUnavailable(self._down)

    async def _dispatch(self) -> None:
        while True:
            self.faults.crash_point("batcher")
            self._queue = [p for p in self._queue if not p.future.done()]  # cancelled by their jobs
            if not self._queue:
                self._arrived.clear()
                await self._idle()
                continue
            anchor = self._anchor()
            batch = self._select(anchor)
            # Closed when the oldest item of its priority has waited max_wait_s (the anchor, chosen by
            # share, may be younger: each newcomer must not restart the wait of those before it).
            oldest = min(p.enqueued for p in self._queue if p.work.priority == anchor.work.priority)
            wait_s = oldest + self.max_wait_s - time.monotonic()
            if len(batch) < self.max_batch and wait_s > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), wait_s)
                continue  # choose again with whatever arrived
            for p in batch:
                self._queue.remove(p)
            await self._execute(batch)

    async def _idle(self) -> None:
        """Until work arrives (with fault hooks on, a look at them every quarter second too)."""
        if self.faults.root is None:
            await self._arrived.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), 0.25)

    def _anchor(self) -> _Pending:
        """The most urgent priority's oldest item of the tenant that has had the model least lately."""
        urgent = min(p.work.priority for p in self._queue)
        ranks: dict[Tenant, tuple[float, float]] = {}
        for p in self._queue:
            if p.work.priority == urgent and p.work.tenant not in ranks:
                ranks[p.work.tenant] = self.shares.rank(p.work.tenant)
        return min(
            (p for p in self._queue if p.work.priority == urgent),
            key=lambda p: (*ranks[p.work.tenant], p.enqueued),
        )

    def _select(self, anchor: _Pending) -> list[_Pending]:
        kind, group, size = anchor.work.kind, anchor.work.group, max(anchor.work.size, 1)
        mates = [p for p in self._queue if p is not anchor and p.work.kind == kind and p.work.group == group]
        mates.sort(key=lambda p: (p.work.priority, abs(p.work.size - size)))
        batch, lo, hi = [anchor], size, size
        for p in mates:
            if len(batch) >= self.max_batch:
                break
            s = max(p.work.size, 1)
            if max(hi, s) <= self.max_length_ratio * min(lo, s):
                batch.append(p)
                lo, hi = min(lo, s), max(hi, s)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        for p in batch:
            metrics.BATCH_WAIT_SECONDS.labels(p.work.kind).observe(started - p.enqueued)
        kind, group = batch[0].work.kind, batch[0].work.group
        works = [p.work for p in batch]
        self._in_call = batch
        try:
            call = loop.run_in_executor(self.executor, self._run_split, kind, group, works)
            results = await self._watch(call)
        except ModelCallStuck:
            raise  # ``run`` fails every future it holds, this batch's included
        except Exception as e:  # the executor itself failed: every item gets the error
            results = [e] * len(batch)
        finally:
            ended = time.monotonic()
            with self._busy_lock:
                self._busy.append((started, ended))
                self._prune(ended)  # here, not only when /metrics is read: metrics are off by default
            metrics.MODEL_BUSY_SECONDS.inc(ended - started)
            self._charge(works, ended - started)
        for p, result in zip(batch, results, strict=True):
            if p.future.done():  # cancelled while running: the job has moved on
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
        self._in_call = []  # only now: a dispatcher stopped before this fails them in ``run``

    def _charge(self, works: list[Work], seconds: float) -> None:
        """Each item's tenant had its part of the call (by the audio it makes or reads)."""
        total = sum(w.seconds for w in works)
        for w in works:
            share = seconds * (w.seconds / total if total > 0 else 1 / len(works))
            self.shares.charge(w.tenant, share)
            meter = self._meters.get(w.owner)
            if meter is None:
                meter = self._meters[w.owner] = Metered()
                while len(self._meters) > _METERED_JOBS:
                    self._meters.popitem(last=False)
            meter.seconds += share
            meter.items[w.kind] = meter.items.get(w.kind, 0) + 1

    async def _watch(self, call: asyncio.Future[list[Any]]) -> list[Any]:
        """``call``'s results, unless one of its tries runs past its deadline: then the model thread
        is stuck (nothing can interrupt it), and so is this batcher, for good."""
        while True:
            running = self._running
            now = time.monotonic()
            if running is not None and now > running.until:
                self.stuck = True
                self._down = _late(running)
                log.error("%s: the worker cannot go on", self._down)
                raise ModelCallStuck(self._down)
            timeout = running.until - now if running is not None else _BETWEEN_TRIES_S
            done, _ = await asyncio.wait({call}, timeout=timeout)
            if done:
                return call.result()

    def _run_split(self, kind: str, group: Hashable, works: list[Work]) -> list[Any]:
        """On the model thread: one call; on failure, halves, down to single items."""
        cpu = time.thread_time()
        try:
            return self._run_split_inner(kind, group, works)
        finally:
            metrics.MODEL_CPU_SECONDS.inc(time.thread_time() - cpu)

    def _run_split_inner(self, kind: str, group: Hashable, works: list[Work]) -> list[Any]:
        try:
            owners = {w.owner for w in works}
            self.calls += 1
            metrics.BATCH_SIZE.labels(kind).observe(len(works))
            metrics.BATCH_JOBS.labels(kind).observe(len(owners))
            results = self._call(kind, group, works)
            if len(results) != len(works):
                raise RuntimeError(f"{kind} runner returned {len(results)} results for {len(works)} items")
            return results
        except Exception as e:
            _free_device_memory(e)
            if len(works) == 1:
                return [e]
            metrics.BATCH_SPLITS.labels(kind).inc()
            log.warning(
                "%s call of %d items failed (%s: %s): retrying in halves", kind, len(works), type(e).__name__, e
            )
            mid = len(works) // 2
            return self._run_split_inner(kind, group, works[:mid]) + self._run_split_inner(kind, group, works[mid:])

    def _call(self, kind: str, group: Hashable, works: list[Work]) -> list[Any]:
        """One try, on the model thread, under its deadline (the fault hooks' stall counts)."""
        # The longest item, not the sum: a batch's items are computed together (one padded forward
        # pass per step), so a batch of 8 takes about as long as its longest item; summing gave a
        # GPU batch hours and let the job's own timeout fail its jobs before the worker noticed.
        deadline_s = self.deadline.of(max((w.seconds for w in works), default=0.0))
        self._running = _Running(kind, len(works), deadline_s, time.monotonic() + deadline_s)
        try:
            self.faults.before_model_call(kind, [(w.owner, w.attempt) for w in works])
            return list(self.runners[kind](group, [w.payload for w in works]))
        finally:
            self._running = None

    def busy_fraction(self) -> float:
        """Fraction of the last minute the model thread spent in calls."""
        now = time.monotonic()
        horizon = now - BUSY_WINDOW_S
        with self._busy_lock:
            self._prune(now)
            busy = sum(end - max(start, horizon) for start, end in self._busy)
        return min(1.0, busy / BUSY_WINDOW_S)

    def _prune(self, now: float) -> None:
        """Forget calls that ended before the window (holding ``_busy_lock``)."""
        horizon = now - BUSY_WINDOW_S
        while self._busy and self._busy[0][1] < horizon:
            self._busy.popleft()


def _late(running: _Running) -> str:
    return (
        f"a {running.kind} model call of {running.items} item(s) ran past its {running.deadline_s:.0f}s deadline "
        "(TTS_MODEL_DEADLINE_S + TTS_DEADLINE_PER_AUDIO_S per second of audio)"
    )


def _fail(pending: _Pending, error: BaseException) -> None:
    if pending.future.done():
        return
    pending.future.set_exception(error)
    pending.future.exception()  # retrieved: a job that gave up on it must not make the loop log it


def model_thread() -> ThreadPoolExecutor:
    """The single thread that runs model calls (compilation and warm-up included)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")


def _free_device_memory(exc: BaseException) -> None:
    if "out of memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
        return
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


async def settled(batcher: Batcher, work: Work, abort: asyncio.Event, check: Callable[[], None]) -> asyncio.Future[Any]:
    """Submit ``work`` to ``batcher`` and wait for its answer, or for ``abort`` (then ``check``
    raises, and the item, if not started, is dropped). Returns the answered future: its
    ``result()`` raises the call's own error, for the caller to judge apart from an abort."""
    fut = batcher.submit(work)
    aborted = asyncio.ensure_future(abort.wait())
    try:
        await asyncio.wait([fut, aborted], return_when=asyncio.FIRST_COMPLETED)
    finally:
        aborted.cancel()
    if not fut.done():
        fut.cancel()
    check()
    return fut
