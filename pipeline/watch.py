"""One running job's lease, progress and reasons to stop early.

A ``JobWatch`` holds what a running job needs to know and publish; it has no task of its own.
The worker's single ``Heartbeat`` (``pipeline.heartbeat``) drives every watch in flight:

- ``renew()`` every heartbeat interval: pushes the job's lease forward in its status and publishes
  progress (text chunks done/total); the message's SQS visibility is extended by the heartbeat
  for all jobs at once;
- ``tick()`` every quarter second: publishes changed progress at most every
  ``progress_interval_s``, polls ``cancel/<job_id>``, ends the job at its timeout, and after a
  shutdown request gives it ``shutdown_grace_s`` to finish, then asks it to release.

The job learns about an abort through ``check()`` (between stages and at chunk boundaries) or by
awaiting ``aborted``: aborts are cooperative, so the GPU is never left in an undefined state and
the worker process never has to be killed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum

from pipeline import keys
from pipeline.config import Settings
from pipeline.consumer import Message
from pipeline.contract import Progress
from pipeline.state import Claim, Ledger
from pipeline.store import Store

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


class JobWatch:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        claim: Claim,
        msg: Message,
        store: Store,
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.claim = claim
        self.msg = msg
        self.store = store
        self.stopping = stopping
        now = time.monotonic()
        self.deadline = now + settings.job_timeout_s
        self.abort: AbortReason | None = None
        self.aborted = asyncio.Event()
        self._progress: tuple[int, int, int] | None = None
        self._published: tuple[int, int] | None = None
        self._next_progress = now
        self._next_cancel_poll = now + settings.cancel_poll_s
        self._shutdown_at: float | None = None

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    @property
    def attempt(self) -> int:
        return self.claim.status.attempt

    # -- the job's side -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``JobAborted`` if the job must stop. On the event loop, like everything here."""
        if self.abort is None and time.monotonic() > self.deadline:
            self.stop(AbortReason.TIMEOUT)
        if self.abort is not None:
            raise JobAborted(self.abort)

    def set_progress(self, done: int, total: int, reused: int = 0) -> None:
        self._progress = (done, total, reused)

    def stop(self, reason: AbortReason) -> None:
        if self.abort is None:
            self.abort = reason
        self.aborted.set()

    # -- the heartbeat's side -------------------------------------------------------------------

    async def renew(self) -> None:
        """Lease + progress, one conditional status write (raises LostClaim)."""
        progress = self._progress
        await self.ledger.renew(
            self.claim,
            Progress(
                chunks_done=progress[0],
                chunks_total=progress[1],
                chunks_reused=progress[2],
                chunks_prefix=keys.chunks_prefix(self.job_id),
            )
            if progress
            else None,
        )
        self._published = progress

    async def tick(self, now: float) -> None:
        s = self.settings
        if self.abort is not None:
            return
        if now > self.deadline:
            self.stop(AbortReason.TIMEOUT)
            return
        if self._progress != self._published and now >= self._next_progress:
            self._next_progress = now + s.progress_interval_s
            await self.renew()
        if now >= self._next_cancel_poll:
            self._next_cancel_poll = now + s.cancel_poll_s
            if await self.store.exists(keys.cancel_key(self.job_id)):
                log.info("cancellation requested")
                self.stop(AbortReason.CANCELLED)
                return
        if self.stopping.is_set():
            self._shutdown_at = self._shutdown_at or now + s.shutdown_grace_s
            if now >= self._shutdown_at:
                log.info("shutdown grace of %.0fs over: releasing the job", s.shutdown_grace_s)
                self.stop(AbortReason.SHUTDOWN)
