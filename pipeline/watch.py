"""A running job's heartbeat and its reasons to stop early.

While a job runs, one background task (``JobWatch.run``) on the event loop:

- renews the job's lease in its status and the SQS message's visibility every heartbeat interval
  (inference runs in a thread, so the loop stays free to beat);
- publishes progress (text chunks done/total) at most every ``progress_interval_s``;
- polls ``cancel/<job_id>`` for a cancellation request;
- after a shutdown request, gives the job ``shutdown_grace_s`` to finish, then asks it to release.

The synthesis thread learns about an abort through ``check()``, which the engine's per-chunk
callback and the worker between stages call: aborts are cooperative, at chunk boundaries, so the
GPU is never left in an undefined state and the worker process never has to be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from enum import Enum

from pipeline import keys
from pipeline.config import Settings
from pipeline.consumer import Message, Queue
from pipeline.contract import Progress
from pipeline.faults import NO_FAULTS, FaultHooks
from pipeline.state import Claim, Ledger, LostClaim
from pipeline.store import Store

log = logging.getLogger(__name__)

_TICK_S = 0.25


class AbortReason(Enum):
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    LOST_CLAIM = "lost claim"


class JobAborted(Exception):
    def __init__(self, reason: AbortReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class JobWatch:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        claim: Claim,
        queue: Queue,
        msg: Message,
        store: Store,
        stopping: asyncio.Event,
        faults: FaultHooks = NO_FAULTS,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.claim = claim
        self.queue = queue
        self.msg = msg
        self.store = store
        self.stopping = stopping
        self.faults = faults
        self.deadline = time.monotonic() + settings.job_timeout_s
        self.abort: AbortReason | None = None
        self._progress: tuple[int, int] | None = None
        self._published: tuple[int, int] | None = None

    # -- called from the synthesis thread and between stages --------------------------------

    def check(self) -> None:
        if self.abort is None and time.monotonic() > self.deadline:
            self.abort = AbortReason.TIMEOUT
        if self.abort is not None:
            raise JobAborted(self.abort)

    def on_chunk(self, done: int, total: int) -> None:
        self._progress = (done, total)
        self.check()
        if self.faults.enabled:
            self.faults.hold_at_chunk(self.claim.job_id, self.claim.status.attempt, done, total, self.check)

    # -- the background task ------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        now = time.monotonic()
        next_beat = now + s.heartbeat_interval_s
        next_progress = now
        next_cancel_poll = now + s.cancel_poll_s
        shutdown_at: float | None = None
        while self.abort is None:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            try:
                if now >= next_beat:
                    await self._beat()
                    next_beat = now + s.heartbeat_interval_s
                elif self._progress != self._published and now >= next_progress:
                    await self._publish_progress()
                    next_progress = now + s.progress_interval_s
                if now >= next_cancel_poll:
                    next_cancel_poll = now + s.cancel_poll_s
                    if await self.store.exists(keys.cancel_key(self.claim.job_id)):
                        log.info("cancellation requested")
                        self.abort = AbortReason.CANCELLED
            except LostClaim as e:
                log.warning("lost the job to another worker: %s", e)
                self.abort = AbortReason.LOST_CLAIM
            except Exception as e:  # a failed beat is retried next interval; the lease has slack
                log.warning("heartbeat failed: %s", e)
            if self.stopping.is_set() and self.abort is None:
                shutdown_at = shutdown_at or now + s.shutdown_grace_s
                if now >= shutdown_at:
                    log.info("shutdown grace of %.0fs over: releasing the job", s.shutdown_grace_s)
                    self.abort = AbortReason.SHUTDOWN

    async def _beat(self) -> None:
        await self.queue.set_visibility(self.msg, self.settings.visibility_timeout_s)
        await self._publish_progress()

    async def _publish_progress(self) -> None:
        progress = self._progress
        await self.ledger.renew(
            self.claim, Progress(chunks_done=progress[0], chunks_total=progress[1]) if progress else None
        )
        self._published = progress

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[JobWatch]:
        task = asyncio.create_task(self.run(), name=f"watch-{self.claim.job_id}")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
