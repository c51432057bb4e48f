"""The message loop: a bounded number of SQS messages in hand, each handled by its own task, and
the worker's background tasks (the heartbeat, the batcher) under supervision.

Two lanes. The interactive lane (``<queue>-interactive``) has a receive loop and a room of its own
(``TTS_INTERACTIVE_MAX_IN_FLIGHT``, on top of ``TTS_MAX_JOBS_IN_FLIGHT``): its messages start as
soon as they arrive and never wait behind bulk work for a receive slot. The bulk lane receives
ahead into a waiting room (``TTS_BULK_LOOKAHEAD``, ``pipeline.worker.fair``) and starts its next
job round-robin across submitters. Without the interactive queue (an old deployment) the worker
says so once and runs the bulk lane only. Every acknowledgement goes to the queue its message
came from (``Message.queue_url``).

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

from pipeline.cloud.aws import is_missing_resource, is_transient
from pipeline.cloud.consumer import Message, Queue
from pipeline.cloud.events import UnrecognisedMessage, parse_message_body
from pipeline.config import Settings
from pipeline.runtime import metrics
from pipeline.tts.batcher import ModelCallStuck
from pipeline.worker.fair import WaitingRoom, submitter_of
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
        interactive: Queue | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.interactive = interactive  # the interactive lane's queue; None: bulk only
        self.runner = runner
        self._background = background  # name -> coroutine that must run as long as the worker
        self._stopping = stopping or asyncio.Event()
        self.jobs_done = 0  # jobs this worker ran or rejected; duplicates and deferrals do not count
        self._tasks: set[asyncio.Task[None]] = set()  # every message in hand
        self._bulk: set[asyncio.Task[None]] = set()  # ... of them, the bulk lane's
        self._fast: set[asyncio.Task[None]] = set()  # ... and the interactive lane's
        self._waiting = WaitingRoom()
        self._idle_since = time.monotonic()
        self._fatal: BaseException | None = None

    async def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Consume until stopped, ``max_jobs`` jobs are done, or idle for ``idle_exit_s``."""
        supervised = {asyncio.create_task(coro, name=name) for name, coro in self._background.items()}
        self._background = {}
        watcher = asyncio.create_task(self._supervise(supervised), name="supervisor")
        try:
            try:
                await self._lanes(max_jobs, idle_exit_s)
            except Exception as e:  # the loop itself failed: the jobs in hand go back before we exit
                self._die(e, hand_back=True)
            await self._hand_back_waiting()
            if self._tasks:
                log.info("waiting for %d message(s) in hand", len(self._tasks))
                # Their endings still need the heartbeat and the clients: both outlive this wait.
                await self._drain()
        finally:
            for task in (*supervised, watcher):
                task.cancel()
            await asyncio.gather(*supervised, watcher, return_exceptions=True)
        if self._fatal is not None:
            raise self._fatal
        if self._stopping.is_set():
            log.info("stop requested: no more messages will be received")
        return self.jobs_done

    async def _drain(self) -> None:
        """Wait for the messages in hand, but not forever: each attempt is aborted by its job
        timeout, the shutdown grace, or at once when the worker cannot go on; one that has not
        ended ``TTS_ABORT_GRACE_S`` after that is let go by the heartbeat, and an ending's own
        writes fit in a lease. A task still running past all of that does not answer: its lease
        and message lapse, another worker takes its job over, and this worker exits without it."""
        s = self.settings
        if self._fatal is not None:
            abort_s = 0.0
        elif self._stopping.is_set():
            abort_s = min(s.job_timeout_s, s.shutdown_grace_s)
        else:  # --max-jobs / --idle-exit: the jobs in hand run to their end
            abort_s = s.job_timeout_s
        bound = abort_s + s.abort_grace_s + s.visibility_timeout_s + s.heartbeat_interval_s
        _, stuck = await asyncio.wait(self._tasks, timeout=bound)
        if not stuck:
            return
        log.error(
            "%d message(s) still in hand %.0fs after the stop, past their abort grace: exiting without them "
            "(their leases lapse; another worker takes their jobs over)",
            len(stuck),
            bound,
        )
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)

    async def _supervise(self, tasks: set[asyncio.Task[None]]) -> None:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        error = task.exception() if not task.cancelled() else None
        # The note each job handed back gets, in our words (the error itself goes to the log).
        why = (
            "its model call is stuck past its deadline (TTS_MODEL_DEADLINE_S)"
            if isinstance(error, ModelCallStuck)
            else f"the worker's {task.get_name()} stopped"
        )
        self._die(BackgroundTaskDied(f"{task.get_name()} stopped: {error!r}"), hand_back=True, why=why)

    def _die(self, error: BaseException, *, hand_back: bool, why: str | None = None) -> None:
        """Stop taking work and raise ``error`` once the jobs in hand are done; ``hand_back``: they
        cannot be done (no heartbeat, no model), so they release their jobs at once (``why``: the
        note their status history gets)."""
        if self._fatal is not None:
            return
        self._fatal = error
        log.error("%s: stopping%s", error, f", handing back {len(self.runner.attempts)} job(s)" if hand_back else "")
        metrics.set_ready(False)
        self._stopping.set()
        if hand_back:
            self.runner.hand_back_all(why)

    async def _lanes(self, max_jobs: int | None, idle_exit_s: float | None) -> None:
        """The bulk lane decides when the worker stops receiving; the interactive one runs beside it."""
        if self.interactive is None:
            await self._bulk_loop(max_jobs, idle_exit_s)
            return
        fast = asyncio.create_task(self._interactive_loop(max_jobs), name="interactive-lane")
        fast.add_done_callback(self._lane_done)
        try:
            await self._bulk_loop(max_jobs, idle_exit_s)
        finally:
            # A poll cancelled before it answered leaves its messages queued; any SQS handed out
            # as it was cancelled come back after one visibility timeout.
            fast.cancel()
            await asyncio.gather(fast, return_exceptions=True)

    def _lane_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._die(task.exception(), hand_back=True)  # type: ignore[arg-type]

    def _budget(self, max_jobs: int | None) -> int:
        """Messages ``--max-jobs`` still lets this worker take (every lane's, waiting ones included)."""
        if max_jobs is None:
            return 1 << 30
        return max_jobs - self.jobs_done - len(self._tasks) - len(self._waiting)

    async def _bulk_loop(self, max_jobs: int | None, idle_exit_s: float | None) -> None:
        s = self.settings
        while not self._stopping.is_set():
            if max_jobs is not None and self.jobs_done >= max_jobs:
                return
            room = s.max_jobs_in_flight + s.bulk_lookahead - len(self._bulk) - len(self._waiting)
            room = min(room, self._budget(max_jobs))
            if room <= 0:  # full (or the last countable jobs are in hand): wait for one to end
                await self._wait_for({*self._tasks})
                continue
            wait_s = s.receive_wait_s
            if idle_exit_s is not None and not self._tasks and not len(self._waiting):
                remaining = idle_exit_s - (time.monotonic() - self._idle_since)
                if remaining <= 0:
                    log.info("idle for %.0fs: exiting", idle_exit_s)
                    return
                wait_s = max(0, min(wait_s, int(remaining + 0.999)))
            messages = await self._receive(self.queue, room, wait_s)
            if messages is None:
                return
            for msg in messages:
                self._waiting.add(msg, submitter_of(msg))
                self.runner.lease.wait(msg)  # invisible while it waits, like any message in hand
            self._start_waiting()
            if messages or self._tasks:
                self._idle_since = time.monotonic()

    async def _interactive_loop(self, max_jobs: int | None) -> None:
        """Receive interactive messages whenever this lane has room, and start them at once."""
        s = self.settings
        assert self.interactive is not None
        if self.interactive.url is None and not await self._find_lane(self.interactive):
            return
        while not self._stopping.is_set():
            room = min(s.interactive_max_in_flight - len(self._fast), self._budget(max_jobs))
            if room <= 0:
                await self._wait_for({*self._fast} or {*self._tasks})
                continue
            messages = await self._receive(self.interactive, room, s.receive_wait_s)
            if messages is None:
                return
            for msg in messages:
                self._spawn(msg, self._fast)
            if messages:
                self._idle_since = time.monotonic()

    async def _find_lane(self, queue: Queue) -> bool:
        """Resolve the interactive queue that SQS did not answer for at start-up; False when it
        turns out not to exist (bulk lane only) or the worker stops first."""
        while not self._stopping.is_set():
            try:
                await queue.resolve()
                log.info("queue %s found: the interactive lane is consuming", queue.name)
                return True
            except Exception as e:
                if is_missing_resource(e):
                    log.warning("queue %s does not exist: bulk lane only", queue.name)
                    return False
                if not is_transient(e):
                    raise
                await asyncio.sleep(RECEIVE_BACKOFF_S)
        return False

    async def _receive(self, queue: Queue, room: int, wait_s: int) -> list[Message] | None:
        """One poll of ``queue``; [] after an error it waited out; None when stopping."""
        metrics.RECEIVES.inc()
        receive = asyncio.create_task(
            queue.receive(max_messages=min(room, 10), wait_s=wait_s, visibility_s=self.settings.visibility_timeout_s)
        )
        await self._wait_for({receive})
        if not receive.done():
            # Shutting down: a poll cancelled before it answered leaves its messages queued;
            # any SQS handed out as it was cancelled come back after one visibility timeout.
            receive.cancel()
            return None
        try:
            return receive.result()
        except Exception as e:
            if is_missing_resource(e):
                await self._queue_gone(queue, e)
                return []
            if not is_transient(e):
                raise
            # SQS unreachable even after our retries: keep the worker, try again shortly.
            log.warning("receive failed (%s): %s; retrying in %.0fs", queue.name, e, RECEIVE_BACKOFF_S)
            await asyncio.sleep(RECEIVE_BACKOFF_S)
            return []

    def _start_waiting(self) -> None:
        """Start waiting bulk messages while the bulk lane has room: the next submitter's turn."""
        while not self._stopping.is_set() and len(self._bulk) < self.settings.max_jobs_in_flight:
            msg = self._waiting.next()
            if msg is None:
                return
            self.runner.lease.unwait(msg)
            self._spawn(msg, self._bulk)

    def _spawn(self, msg: Message, lane: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(self._handle(msg), name=f"message-{msg.id}")
        self._tasks.add(task)
        lane.add(task)
        task.add_done_callback(self._task_done)

    async def _hand_back_waiting(self) -> None:
        """Messages still waiting go back to their queue at once, for any worker, as new messages:
        made visible again they would count one more receive each time a worker stops (a rolling
        deploy, scale-in), and a backlog that outlives five of them would reach the DLQ unrun."""
        msgs = self._waiting.take_all()
        if not msgs:
            return
        await self.runner.lease.let_go(msgs)
        log.info("handing back %d waiting message(s)", len(msgs))
        try:
            # Hidden until any long poll of ours that SQS may still hold open has ended.
            done = await self.queue.requeue(msgs, delay_s=self.settings.receive_wait_s + 1)
        except Exception as e:  # not lost: they come back when their visibility lapses
            log.warning("could not hand back %d waiting message(s) (%s): they return within a lease", len(msgs), e)
            return
        if done < len(msgs):
            log.warning("%d waiting message(s) not handed back: they return within a lease", len(msgs) - done)

    async def _queue_gone(self, queue: Queue, e: Exception) -> None:
        """The queue no longer exists (deleted; a LocalStack restarted without its state). Exiting
        would only restart the worker into the same situation, minus its loaded model: wait,
        unready, until it exists again (re-created by bootstrap), then consume as before. Jobs in
        hand find their status gone and stop without publishing (a lost claim). The interactive
        queue gone leaves the worker ready: its bulk lane still serves."""
        main = queue is self.queue
        log.error("queue %s is gone (%s): waiting for it to be created again", queue.name, e)
        if main:
            metrics.set_ready(False)
        await asyncio.sleep(RECEIVE_BACKOFF_S)
        try:
            await queue.resolve()
        except Exception as again:
            if not (is_missing_resource(again) or is_transient(again)):
                raise
            return
        log.info("queue %s exists again: consuming", queue.name)
        if main:
            metrics.set_ready(True)

    async def _wait_for(self, tasks: set[asyncio.Task]) -> None:
        """Until one of ``tasks`` ends or a stop is requested."""
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._fast.discard(task)
        if task in self._bulk:
            self._bulk.discard(task)
            self._start_waiting()  # its slot goes to the next submitter's waiting message
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a job's failure (those end in a status): stop taking work and re-raise it.
            self._die(task.exception(), hand_back=False)  # type: ignore[arg-type]

    async def _handle(self, msg: Message) -> None:
        try:
            await self.handle_message(msg)
        except Exception as e:
            if is_missing_resource(e):
                # The queue was deleted (or re-created: a new queue, other receipts) while the job
                # ran: there is no delivery left to acknowledge. The job's status is the record;
                # the receive loop waits for the queue to exist again (``_queue_gone``).
                log.warning("message %s not acknowledged: its queue is gone (%s)", msg.id, e)
                return
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
        elif decision.ack is Ack.REQUEUE and not await self.queue.requeue([target], decision.delay_s):
            await self.queue.set_visibility(target, decision.delay_s)  # no copy sent: hidden as before
