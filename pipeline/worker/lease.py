"""One heartbeat for every attempt in flight, in the style of dramatiq_sqs's ``Heartbeat``.

Every ``heartbeat_interval_s`` it extends the visibility of all in-flight messages with
``ChangeMessageVisibilityBatch`` (10 per request, the SQS limit) and renews each attempt's lease
(one conditional status PUT each, which also publishes progress). Every quarter second it checks
each attempt's deadline and shutdown grace, publishes changed progress early, and polls
cancellation (``pipeline.worker.signals``).

Nothing it waits for can hold anything else up. Each renewal, each cancel poll and the extension
run as tasks of their own (at most one of each per attempt, one extension for all), on S3 and SQS
clients of their own (not the ones uploading audio), with every attempt of every call bounded by
half the interval and all retries of a call by one interval (``Settings.calls("lease")``). A hung
call costs its own renewal, never another attempt's lease and never the next beat; the lease has
slack for several lost beats (``visibility_timeout_s`` >= 2 x interval, checked at start-up).

An attempt leaves the heartbeat (``tracking`` exits) before its message is acknowledged, and only
once its ending (final status, cleanup, notification) is done: the message stays invisible and
the lease alive until then. Leaving waits for an extension in progress that includes its message,
so an extension never lands after the attempt's own ``ChangeMessageVisibility`` or ``DeleteMessage``.

An attempt that was aborted (cancelled, timed out, released at shutdown) is renewed while it
winds down, but not forever: one that has not reached its ending ``abort_grace_s``
(``TTS_ABORT_GRACE_S``) after the abort is stuck in something that does not answer its abort, and
is *let go*: its lease and its message are no longer renewed, so both lapse within one visibility
timeout and another worker takes the job over. Whatever the stuck attempt writes later is
conditional on its claim and loses to the successor's.

``sick`` tells /healthz whether the heartbeat itself still runs (a loop that has not ticked for a
whole lease has let every lease lapse). Failing S3/SQS calls do not make it sick: a restart would
not cure an outage (docs/reliability.md, scenario 3b).

Messages waiting in the bulk lane's waiting room (``pipeline.worker.fair``: received, not started)
are extended by the same batch call (``wait``/``let_go``), whichever of the worker's queues they
came from (each message names its own): a dead worker's waiting messages reappear within one lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from pipeline.cloud.consumer import Message, Queue
from pipeline.jobs.state import Ledger, LostClaim
from pipeline.runtime.faults import NO_FAULTS, FaultHooks
from pipeline.runtime.logs import job_id_var
from pipeline.worker.attempt import Attempt
from pipeline.worker.signals import AbortReason

log = logging.getLogger(__name__)

TICK_S = 0.25


class Heartbeat:
    def __init__(
        self,
        queue: Queue,
        ledger: Ledger,
        visibility_timeout_s: float,
        interval_s: float,
        faults: FaultHooks = NO_FAULTS,
        abort_grace_s: float = 60.0,
    ) -> None:
        if not 0 < interval_s * 2 <= visibility_timeout_s:
            raise ValueError(
                f"heartbeat interval {interval_s:g}s must be at most half the visibility timeout "
                f"{visibility_timeout_s:g}s, so that one failed beat does not lapse a lease"
            )
        self.queue = queue  # the lease's own SQS client
        self.ledger = ledger  # ... and S3 client
        self.visibility_timeout_s = visibility_timeout_s
        self.interval_s = interval_s
        self.faults = faults
        self.abort_grace_s = abort_grace_s
        self._ticked = time.monotonic()  # the loop's last iteration (``sick``)
        self._let_go: set[int] = set()  # attempts aborted and unresponsive past the grace: not renewed
        self._attempts: dict[int, Attempt] = {}
        self._tasks: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._extension: asyncio.Task[None] | None = None
        self._extending: set[str] = set()  # message ids in the extension in flight
        self._waiting: dict[str, Message] = {}  # received, not started: kept invisible, no lease yet

    def wait(self, msg: Message) -> None:
        """Keep ``msg`` invisible while it waits for a job slot."""
        self._waiting[msg.id] = msg

    def unwait(self, msg: Message) -> None:
        """``msg`` starts now (its attempt, if any, is tracked from its claim on)."""
        self._waiting.pop(msg.id, None)

    async def let_go(self, msgs: list[Message]) -> None:
        """Stop extending ``msgs`` (to be handed back), and wait for an extension in flight that
        includes them: it must not land after their hand-back and hide them for a whole lease."""
        for m in msgs:
            self._waiting.pop(m.id, None)
        extension = self._extension
        if extension is not None and not extension.done() and self._extending & {m.id for m in msgs}:
            await asyncio.wait({extension})  # bounded: the extension has its own deadline

    @contextlib.asynccontextmanager
    async def tracking(self, attempt: Attempt) -> AsyncIterator[Attempt]:
        self._attempts[id(attempt)] = attempt
        try:
            yield attempt
        finally:
            self._attempts.pop(id(attempt), None)
            self._let_go.discard(id(attempt))
            for kind in ("renew", "cancel"):
                task = self._tasks.pop((id(attempt), kind), None)
                if task is not None:
                    task.cancel()
            extension = self._extension
            if extension is not None and not extension.done() and attempt.msg.id in self._extending:
                await asyncio.wait({extension})  # bounded: the extension has its own deadline

    async def run(self) -> None:
        next_beat = time.monotonic() + self.interval_s
        while True:
            await asyncio.sleep(TICK_S)
            self.faults.crash_point("heartbeat")
            now = time.monotonic()
            self._ticked = now
            attempts = list(self._attempts.values())
            if not attempts and not self._waiting:
                next_beat = now + self.interval_s
                continue
            beat = now >= next_beat
            for a in attempts:
                self._let_go_if_stuck(a, now)
            # An attempt that lost its claim keeps nothing alive (the job is another's); one let go
            # neither (it does not answer its abort).
            live = [a for a in attempts if a.abort.reason is not AbortReason.LOST_CLAIM and id(a) not in self._let_go]
            if beat and (live or self._waiting):
                next_beat = now + self.interval_s
                self._extend([a.msg for a in live] + list(self._waiting.values()))
            for a in live:
                if a.abort.reason is None and not a.ending:
                    a.deadline.tick(now)
                    a.shutdown.tick(now)
                    if a.cancel.due(now):
                        self._start(a, "cancel", a.cancel.poll(now))
                # Renewed until the attempt has ended, aborted or not (within the abort grace): its
                # ending runs under the lease.
                if beat or a.progress.due(now):
                    self._start(a, "renew", self._renew(a, now))

    def _let_go_if_stuck(self, attempt: Attempt, now: float) -> None:
        since = attempt.abort.since
        if since is None or attempt.ending or id(attempt) in self._let_go:
            return
        if attempt.abort.reason is AbortReason.LOST_CLAIM or now - since <= self.abort_grace_s:
            return
        self._let_go.add(id(attempt))
        token = job_id_var.set(attempt.job_id)
        try:
            log.error(
                "aborted (%s) %.0fs ago and still not ending (TTS_ABORT_GRACE_S=%g): its lease and message are "
                "no longer renewed; another worker takes the job over when they lapse",
                attempt.abort.reason.value if attempt.abort.reason else "?",
                now - since,
                self.abort_grace_s,
            )
        finally:
            job_id_var.reset(token)

    def sick(self) -> str | None:
        """Why the heartbeat makes the worker not live (None: it does not). Cheap, any thread."""
        idle = time.monotonic() - self._ticked
        if idle > self.visibility_timeout_s:
            return f"it last ran {idle:.0f}s ago, longer than a lease ({self.visibility_timeout_s:g}s)"
        return None

    def _start(self, attempt: Attempt, kind: str, step: Coroutine[Any, Any, None]) -> None:
        key = (id(attempt), kind)
        running = self._tasks.get(key)
        if running is not None and not running.done():
            step.close()  # the previous one is still at it: this beat's is skipped, not queued
            return
        self._tasks[key] = asyncio.create_task(self._guarded(attempt, kind, step), name=f"{kind}-{attempt.job_id}")

    async def _guarded(self, attempt: Attempt, kind: str, step: Coroutine[Any, Any, None]) -> None:
        """One attempt's step, logging with its job id; its errors stay its own."""
        job_id_var.set(attempt.job_id)
        try:
            async with asyncio.timeout(self.interval_s):
                await step
        except LostClaim as e:
            log.warning("lost the job to another worker: %s", e)
            attempt.abort.stop(AbortReason.LOST_CLAIM)
        except Exception as e:  # retried at the next beat; the lease has slack for it
            log.warning("%s failed: %s", "lease renewal" if kind == "renew" else "cancel poll", e or type(e).__name__)

    async def _renew(self, attempt: Attempt, now: float) -> None:
        value = attempt.progress.value
        await self.ledger.renew(attempt.claim, attempt.progress.document())
        attempt.progress.sent(value, now)

    def _extend(self, msgs: list[Message]) -> None:
        if self._extension is not None and not self._extension.done():
            return  # the previous beat's extension is still in flight
        self._extending = {m.id for m in msgs}

        async def extend() -> None:
            try:
                async with asyncio.timeout(self.interval_s):
                    failed = await self.queue.extend_visibility(msgs, self.visibility_timeout_s)
            except Exception as e:  # retried at the next beat; the lease has slack for it
                log.warning("visibility extension for %d message(s) failed: %s", len(msgs), e or type(e).__name__)
                return
            for msg_id, reason in failed.items():
                log.warning("visibility of message %s not extended: %s", msg_id, reason)

        self._extension = asyncio.create_task(extend(), name="visibility-extension")
