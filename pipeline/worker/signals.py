"""Why a running attempt must stop early, and what it tells the world while it runs: one small
class per role, driven by the heartbeat (``pipeline.worker.lease``), none with a task of its own.

- ``Abort``: the one reason to stop, set once; the job learns it through ``check()`` (between
  stages and at chunk boundaries) or by awaiting ``event``. Aborts are cooperative, so the GPU is
  never left in an undefined state and the process never has to be killed.
- ``Deadline``: ``TTS_JOB_TIMEOUT_S`` from the attempt's start.
- ``ShutdownGrace``: after a stop request, ``TTS_SHUTDOWN_GRACE_S`` to finish, then hand back.
- ``CancelPoll``: ``cancel/<job_id>`` looked at every ``TTS_CANCEL_POLL_S``.
- ``Progress``: chunks done/total, published with the lease (``JobLease``) when it changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum

from pipeline.cloud.store import Store
from pipeline.jobs import keys
from pipeline.jobs.contract import Progress as ProgressDoc

log = logging.getLogger(__name__)


class AbortReason(Enum):
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    LOST_CLAIM = "lost claim"


class JobAborted(Exception):
    def __init__(self, reason: AbortReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class Abort:
    def __init__(self) -> None:
        self.reason: AbortReason | None = None
        self.since: float | None = None  # time.monotonic() of the first stop: the heartbeat's abort grace
        self.event = asyncio.Event()

    def stop(self, reason: AbortReason) -> None:
        if self.reason is None:
            self.reason = reason
            self.since = time.monotonic()
        self.event.set()

    def check(self) -> None:
        """Raise ``JobAborted`` if the attempt must stop."""
        if self.reason is not None:
            raise JobAborted(self.reason)


class Deadline:
    def __init__(self, abort: Abort, timeout_s: float) -> None:
        self.abort = abort
        self.at = time.monotonic() + timeout_s

    def tick(self, now: float) -> None:
        if now > self.at:
            self.abort.stop(AbortReason.TIMEOUT)


class ShutdownGrace:
    def __init__(self, abort: Abort, stopping: asyncio.Event, grace_s: float) -> None:
        self.abort = abort
        self.stopping = stopping
        self.grace_s = grace_s
        self._at: float | None = None

    def tick(self, now: float) -> None:
        if not self.stopping.is_set():
            return
        self._at = self._at if self._at is not None else now + self.grace_s
        if now >= self._at and self.abort.reason is None:
            log.info("shutdown grace of %.0fs over: releasing the job", self.grace_s)
            self.abort.stop(AbortReason.SHUTDOWN)

    def now(self) -> None:
        """Hand back at once (the worker cannot go on: a background task died)."""
        self.abort.stop(AbortReason.SHUTDOWN)


class CancelPoll:
    def __init__(self, abort: Abort, store: Store, job_id: str, interval_s: float) -> None:
        self.abort = abort
        self.store = store  # the lease's client: a slow data call never delays a poll
        self.job_id = job_id
        self.interval_s = interval_s
        self.next_at = time.monotonic() + interval_s

    def due(self, now: float) -> bool:
        return now >= self.next_at and self.abort.reason is None

    async def poll(self, now: float) -> None:
        self.next_at = now + self.interval_s
        if await self.store.exists(keys.cancel_key(self.job_id)):
            log.info("cancellation requested")
            self.abort.stop(AbortReason.CANCELLED)


class Progress:
    """Chunks done of total, as the render loop reports them."""

    def __init__(self, job_id: str, interval_s: float) -> None:
        self.job_id = job_id
        self.interval_s = interval_s
        self.value: tuple[int, int, int] | None = None
        self.published: tuple[int, int, int] | None = None
        self._next_at = time.monotonic()

    def set(self, done: int, total: int, reused: int = 0) -> None:
        if self.value is None and total <= 1:
            # "0 of 1 chunks" tells a client nothing PROCESSING does not: a one-chunk job (most
            # jobs) publishes progress on the interval only, which it usually finishes before.
            self._next_at = max(self._next_at, time.monotonic() + self.interval_s)
        self.value = (done, total, reused)

    def due(self, now: float) -> bool:
        """Changed since last published, and not published within the interval."""
        return self.value != self.published and now >= self._next_at

    def document(self) -> ProgressDoc | None:
        if self.value is None:
            return None
        done, total, reused = self.value
        return ProgressDoc(
            chunks_done=done, chunks_total=total, chunks_reused=reused, chunks_prefix=keys.chunks_prefix(self.job_id)
        )

    def sent(self, value: tuple[int, int, int] | None, now: float) -> None:
        self.published = value
        self._next_at = now + self.interval_s
