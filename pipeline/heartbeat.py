"""One heartbeat for every job in flight, in the style of dramatiq_sqs's ``Heartbeat``.

A worker runs up to ``TTS_MAX_JOBS_IN_FLIGHT`` jobs at once. Rather than one timer per job, one
task beats for all of them: every ``heartbeat_interval_s`` it extends the visibility of *all*
in-flight messages with ``ChangeMessageVisibilityBatch`` (10 per request, the SQS limit) and
renews each job's lease in its status object (S3 has no batch write: one conditional PUT each,
concurrently). Between beats it ticks every job's watch: progress, cancellation, timeout, shutdown
grace (``pipeline.watch``).

Invariants are checked when it is built, not discovered in production: a beat must come well
inside the visibility timeout, so that one failed beat (an S3 or SQS hiccup) does not lapse a
lease and hand a healthy job to a second worker.

A job leaves the heartbeat (``untrack``) before its message is acknowledged; ``untrack`` waits
for a batch call in progress, so a visibility extension can never land after the job's own
``ChangeMessageVisibility(delay)`` or ``DeleteMessage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from pipeline.consumer import Queue
from pipeline.logs import job_id_var
from pipeline.state import LostClaim
from pipeline.watch import AbortReason, JobWatch

log = logging.getLogger(__name__)

TICK_S = 0.25


class Heartbeat:
    def __init__(self, queue: Queue, visibility_timeout_s: float, interval_s: float) -> None:
        if not 0 < interval_s * 2 <= visibility_timeout_s:
            raise ValueError(
                f"heartbeat interval {interval_s:g}s must be at most half the visibility timeout "
                f"{visibility_timeout_s:g}s, so that one failed beat does not lapse a lease"
            )
        self.queue = queue
        self.visibility_timeout_s = visibility_timeout_s
        self.interval_s = interval_s
        self._watches: dict[int, JobWatch] = {}
        self._beating = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._watches)

    @contextlib.asynccontextmanager
    async def tracking(self, watch: JobWatch) -> AsyncIterator[JobWatch]:
        self._watches[id(watch)] = watch
        try:
            yield watch
        finally:
            async with self._beating:  # no extension in flight once the caller acknowledges
                self._watches.pop(id(watch), None)

    async def run(self) -> None:
        next_beat = time.monotonic() + self.interval_s
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            watches = list(self._watches.values())
            if not watches:
                next_beat = now + self.interval_s
                continue
            if now >= next_beat:
                next_beat = now + self.interval_s
                await self._beat(watches)
            await asyncio.gather(*(_as(w, functools.partial(w.tick, now), "tick") for w in watches))

    async def _beat(self, watches: list[JobWatch]) -> None:
        async with self._beating:
            try:
                failed = await self.queue.extend_visibility([w.msg for w in watches], self.visibility_timeout_s)
            except Exception as e:  # retried at the next beat; the lease has slack for it
                log.warning("visibility extension for %d message(s) failed: %s", len(watches), e)
            else:
                for msg_id, reason in failed.items():
                    log.warning("visibility of message %s not extended: %s", msg_id, reason)
        await asyncio.gather(*(_as(w, w.renew, "lease renewal") for w in watches))


async def _as(watch: JobWatch, step: Callable[[], Awaitable[None]], what: str) -> None:
    """Run one watch's step in a context that logs with its job id; its errors stay its own."""
    job_id_var.set(watch.job_id)
    try:
        await step()
    except LostClaim as e:
        log.warning("lost the job to another worker: %s", e)
        watch.stop(AbortReason.LOST_CLAIM)
    except Exception as e:  # a failed beat is retried next interval; the lease has slack
        log.warning("%s failed: %s", what, e)
