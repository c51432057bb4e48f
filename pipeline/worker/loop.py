"""The message loop: a bounded number of SQS messages in hand, each handled by its own task, and
the worker's background tasks (the heartbeat, the batcher) under supervision.

Acknowledgement policy: a message is deleted only once its job's outcome is durable (or it was
never ours to run), made visible again after a delay for a retry, left alone when another worker
owns the job, and kept in flight when the attempt running here already holds it. A stop request
(SIGTERM/SIGINT) ends receiving at once; jobs in hand get ``TTS_SHUTDOWN_GRACE_S`` to finish, then
hand themselves back; the process exits 0.

Supervision: if a background task ends (a bug; they never return), jobs would hang with the
worker still ready. Instead the worker turns unready, stops receiving, hands every job in hand
back at once, and raises: the process exits non-zero and its orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from pipeline import metrics
from pipeline.aws import is_missing_resource, is_transient
from pipeline.config import Settings
from pipeline.consumer import Message, Queue
from pipeline.events import UnrecognisedMessage, parse_message_body
from pipeline.worker.runner import Ack, Decision, JobRunner

log = logging.getLogger(__name__)

RECEIVE_BACKOFF_S = 5.0


class BackgroundTaskDied(RuntimeError):
    """A task the worker cannot run without (heartbeat, batcher) ended."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        runner: JobRunner,
        background: dict[str, Coroutine[Any, Any, None]],
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.runner = runner
        self._background = background  # name -> coroutine that must run as long as the worker
        self._stopping = stopping or asyncio.Event()
        self.jobs_done = 0  # jobs this worker ran or rejected; duplicates and deferrals do not count
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None

    async def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Consume until stopped, ``max_jobs`` jobs are done, or idle for ``idle_exit_s``."""
        supervised = {asyncio.create_task(coro, name=name) for name, coro in self._background.items()}
        self._background = {}
        watcher = asyncio.create_task(self._supervise(supervised), name="supervisor")
        try:
            try:
                await self._receive_loop(max_jobs, idle_exit_s)
            except Exception as e:  # the loop itself failed: the jobs in hand go back before we exit
                self._die(e, hand_back=True)
            if self._tasks:
                log.info("waiting for %d message(s) in hand", len(self._tasks))
                # Their endings still need the heartbeat and the clients: both outlive this wait.
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in (*supervised, watcher):
                task.cancel()
            await asyncio.gather(*supervised, watcher, return_exceptions=True)
        if self._fatal is not None:
            raise self._fatal
        if self._stopping.is_set():
            log.info("stop requested: no more messages will be received")
        return self.jobs_done

    async def _supervise(self, tasks: set[asyncio.Task[None]]) -> None:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        error = task.exception() if not task.cancelled() else None
        self._die(BackgroundTaskDied(f"{task.get_name()} stopped: {error!r}"), hand_back=True)

    def _die(self, error: BaseException, *, hand_back: bool) -> None:
        """Stop taking work and raise ``error`` once the jobs in hand are done; ``hand_back``: they
        cannot be done (no heartbeat, no model), so they release their jobs at once."""
        if self._fatal is not None:
            return
        self._fatal = error
        log.error("%s: stopping%s", error, f", handing back {len(self.runner.attempts)} job(s)" if hand_back else "")
        metrics.set_ready(False)
        self._stopping.set()
        if hand_back:
            self.runner.hand_back_all()

    async def _receive_loop(self, max_jobs: int | None, idle_exit_s: float | None) -> None:
        s = self.settings
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            room = s.max_jobs_in_flight - len(self._tasks)
            if max_jobs is not None:
                room = min(room, max_jobs - self.jobs_done - len(self._tasks))
                if self.jobs_done >= max_jobs:
                    return
            if room <= 0:  # full (or the last countable jobs are in hand): wait for one to end
                await self._wait_for({*self._tasks})
                continue
            wait_s = s.receive_wait_s
            if idle_exit_s is not None and not self._tasks:
                remaining = idle_exit_s - (time.monotonic() - idle_since)
                if remaining <= 0:
                    log.info("idle for %.0fs: exiting", idle_exit_s)
                    return
                wait_s = max(0, min(wait_s, int(remaining + 0.999)))
            metrics.RECEIVES.inc()
            receive = asyncio.create_task(
                self.queue.receive(max_messages=min(room, 10), wait_s=wait_s, visibility_s=s.visibility_timeout_s)
            )
            await self._wait_for({receive})
            if not receive.done():
                # Shutting down: a poll cancelled before it answered leaves its messages queued;
                # any SQS handed out as it was cancelled come back after one visibility timeout.
                receive.cancel()
                return
            try:
                messages = receive.result()
            except Exception as e:
                if is_missing_resource(e):
                    await self._queue_gone(e)
                    continue
                if not is_transient(e):
                    raise
                # SQS unreachable even after our retries: keep the worker, try again shortly.
                log.warning("receive failed: %s; retrying in %.0fs", e, RECEIVE_BACKOFF_S)
                await asyncio.sleep(RECEIVE_BACKOFF_S)
                continue
            for msg in messages:
                task = asyncio.create_task(self._handle(msg), name=f"message-{msg.id}")
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            if messages or self._tasks:
                idle_since = time.monotonic()

    async def _queue_gone(self, e: Exception) -> None:
        """The queue no longer exists (deleted; a LocalStack restarted without its state). Exiting
        would only restart the worker into the same situation, minus its loaded model: wait,
        unready, until it exists again (re-created by bootstrap), then consume as before. Jobs in
        hand find their status gone and stop without publishing (a lost claim)."""
        log.error("queue %s is gone (%s): waiting for it to be created again", self.queue.name, e)
        metrics.set_ready(False)
        await asyncio.sleep(RECEIVE_BACKOFF_S)
        try:
            await self.queue.resolve()
        except Exception as again:
            if not (is_missing_resource(again) or is_transient(again)):
                raise
            return
        log.info("queue %s exists again: consuming", self.queue.name)
        metrics.set_ready(True)

    async def _wait_for(self, tasks: set[asyncio.Task]) -> None:
        """Until one of ``tasks`` ends or a stop is requested."""
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a job's failure (those end in a status): stop taking work and re-raise it.
            self._die(task.exception(), hand_back=False)  # type: ignore[arg-type]

    async def _handle(self, msg: Message) -> None:
        try:
            await self.handle_message(msg)
        except Exception as e:
            if not is_transient(e):
                raise
            # Could not acknowledge (SQS unreachable): the message comes back; its job's status
            # makes the redelivery a no-op if the job had finished.
            log.warning("message %s left for redelivery: %s", msg.id, e)

    async def handle_message(self, msg: Message) -> None:
        try:
            parsed = parse_message_body(msg.body)
        except UnrecognisedMessage as e:
            # Not ours to interpret and not ours to drop: park it in the DLQ for an operator.
            metrics.UNRECOGNISED_MESSAGES.inc()
            moved = await self.queue.dead_letter(msg, f"not an S3 event notification: {e}")
            log.error("message %s is not an S3 event (%s); %s", msg.id, e, "moved to the DLQ" if moved else "left")
            return
        if parsed.test_event:
            log.info("s3:TestEvent received (notification configured); deleting it")
            await self.queue.delete(msg)
            return
        decisions = []
        for record in parsed.created:
            try:
                decisions.append(await self.runner.process_record(record, msg))
            except Exception as e:
                # Could not even record the outcome (S3 down after retries): the message comes back.
                log.exception("could not process %s: %s; leaving it for redelivery", record.key, e)
                decisions.append(Decision(Ack.LEAVE))
        decision = Decision.combine(decisions)
        if decision.counted:
            self.jobs_done += 1
        target = decision.message or msg  # an attempt's message may have a fresher receipt handle
        if decision.ack is Ack.DELETE:
            await self.queue.delete(target)
        elif decision.ack is Ack.RETRY:
            await self.queue.set_visibility(target, decision.delay_s)
