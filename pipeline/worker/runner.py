"""The job state machine: one S3 event record in, one outcome out.

    QUEUED --claim--> PROCESSING --> COMPLETED | FAILED | CANCELLED | EXPIRED
       ^                  |
       +----release-------+   (transient error: retry with backoff; shutdown: hand back)

A delivery is first told apart: a job this worker is running already (its own message again:
kept, with the fresh receipt handle; another message: a duplicate, dropped), a job that has ended
(acknowledged, after publishing any notification it is still owed), a job whose live lease is
held through another message (a duplicate, dropped) or through this one (its holder may have
died: looked at again when the lease would lapse). Otherwise the claim makes an ``Attempt``
(``pipeline.worker.attempt``), which runs under the heartbeat (``pipeline.worker.lease``):

1. an attempt after the first looks for a result an earlier one published (then it only ends
   the job: nothing is rendered twice);
2. the TTL and a cancel request are checked, then inputs (``inputs``), references and rendering
   (``render``), then publishing (``publish``): outputs, then the result, the commit point;
3. the ending, still under the heartbeat (the lease renewed, the message invisible): the final
   status, conditional on the claim (a worker that lost the job writes nothing and removes
   nothing), then what the job no longer needs is removed (``pipeline.jobs.outputs``), then the
   notification (``pipeline.cloud.notify``). Or, for a shutdown or a transient error with deliveries
   left, the job is handed back (QUEUED) with a delay.

What becomes of the SQS message is returned as a ``Decision``: the loop (``pipeline.worker.loop``)
deletes it only once the outcome is durable, so a crash at any point redelivers the job instead of
losing it, and a final status makes the redelivery of a finished job a no-op.

Bad input fails *that job* with a specific code; the worker keeps going. Errors that a retry may
cure (S3/SQS unavailable past our own retries) hand the job back with a growing delay; on the
last delivery the queue's redrive policy allows, the job ends FAILED (RETRIES_EXHAUSTED), unless
its result exists: then it is COMPLETED, whatever the error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pipeline.cloud.aws import describe, is_access_denied, is_missing_resource, is_transient
from pipeline.cloud.consumer import Message, Queue
from pipeline.cloud.events import ObjectCreated
from pipeline.cloud.notify import Notifier, ensure_notified, record_in
from pipeline.cloud.store import PreconditionFailed, Store
from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import (
    ErrorCode,
    JobErrorInfo,
    JobState,
    JobStatus,
    ModelInfo,
    Priority,
    ResultWarning,
    StageTimings,
    WarningCode,
    utcnow,
)
from pipeline.jobs.outputs import JobOutputs
from pipeline.jobs.state import ClaimResult, Ledger, LostClaim, Seen
from pipeline.runtime import metrics
from pipeline.runtime.logs import job_id_var
from pipeline.text.sandbox import TextSandboxUnavailable
from pipeline.tts.batcher import BatcherUnavailable, ModelCallStuck, job_place
from pipeline.tts.engine import Reference
from pipeline.worker.attempt import Attempt, ResultState
from pipeline.worker.backoff import retry_delay
from pipeline.worker.failures import JobFailed
from pipeline.worker.fair import submitter_of
from pipeline.worker.inputs import Inputs
from pipeline.worker.lease import Heartbeat
from pipeline.worker.publish import Outputs, Publisher
from pipeline.worker.render import Rendered, Renderer
from pipeline.worker.signals import AbortReason, JobAborted

log = logging.getLogger(__name__)
T = TypeVar("T")


def derived_seed(job_id: str) -> int:
    """A manifest without a seed gets one from its job id: random across jobs, the same for every
    attempt of one job, so a retried job finds the chunks its earlier attempt made durable."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") % 2**31


class Ack(Enum):
    """What to do with the SQS message once its records are handled."""

    DELETE = "delete"  # the job reached a final state (or was never ours to run)
    RETRY = "retry"  # make it visible again after a delay
    LEAVE = "leave"  # not this delivery's to act on (another worker owns the job, or S3 failed
    # before anything could be recorded): its visibility lapses and SQS delivers it again
    KEEP = "keep"  # the attempt running in this worker holds this message: it acknowledges it
    REQUEUE = "requeue"  # put it back as a copy of the same identity, hidden for the delay (no receive counted)


@dataclass(frozen=True)
class Decision:
    ack: Ack
    delay_s: float = 0.0
    counted: bool = False  # this worker ran (or rejected) a job: what --max-jobs counts
    message: Message | None = None  # the delivery to act on, if not the one handled (a fresh handle)

    @staticmethod
    def combine(decisions: list[Decision]) -> Decision:
        counted = any(d.counted for d in decisions)
        message = next((d.message for d in decisions if d.message is not None), None)
        retries = [d for d in decisions if d.ack in (Ack.RETRY, Ack.REQUEUE)]
        if retries:
            ack = Ack.REQUEUE if any(d.ack is Ack.REQUEUE for d in retries) else Ack.RETRY
            return Decision(ack, min(d.delay_s for d in retries), counted, message)
        for ack in (Ack.KEEP, Ack.LEAVE):
            if any(d.ack is ack for d in decisions):
                return Decision(ack, counted=counted, message=message)
        return Decision(Ack.DELETE, counted=counted, message=message)


DELETE = Decision(Ack.DELETE)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ends: a final state, or QUEUED (handed back, to come back after ``delay_s``)."""

    state: JobState
    error: JobErrorInfo | None = None
    note: str | None = None
    delay_s: float = 0.0
    # Handed back through no fault of the job (a shutdown, a stuck model call, a dead text
    # process): its message goes back as a copy, so the hand-back costs no delivery of the job's.
    requeue: bool = False


def _failed(code: ErrorCode | str, message: str) -> Outcome:
    return Outcome(JobState.FAILED, error=JobErrorInfo(code=str(code), message=message))


class _CancelledBeforeStart(Exception):
    """The cancel marker was there when the attempt started."""


@dataclass
class _Clock:
    """Per-stage stopwatch for result.timings_ms."""

    started: float = field(default_factory=time.perf_counter)
    ms: dict[str, float] = field(default_factory=dict)

    async def run(self, stage: str, fn: Callable[[], Awaitable[T]]) -> T:
        t0 = time.perf_counter()
        try:
            return await fn()
        finally:
            elapsed = time.perf_counter() - t0
            self.ms[stage] = self.ms.get(stage, 0.0) + elapsed * 1000
            metrics.STAGE_SECONDS.labels(stage).observe(elapsed)

    def timings(self, queue_wait_ms: float) -> StageTimings:
        stages = ("download", "synthesis", "alignment", "encode", "upload")
        return StageTimings(
            queue_wait=round(queue_wait_ms, 1),
            total=round((time.perf_counter() - self.started) * 1000, 1),
            **{s: round(self.ms.get(s, 0.0), 1) for s in stages},
        )


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: Queue,
        lease: Heartbeat,
        lease_store: Store,
        inputs: Inputs,
        renderer: Renderer,
        model: ModelInfo,
        stopping: asyncio.Event,
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.lease = lease
        self.lease_store = lease_store
        self.inputs = inputs
        self.renderer = renderer
        self.model = model
        self.stopping = stopping
        self.notifier = notifier
        # The attempt's own status writes share the claim's lock with the heartbeat's renewals: all
        # their retries must fit in what the lease has left after one beat, or a slow write would
        # hold renewals back until the lease lapsed.
        own_writes = settings.calls("worker").with_deadline(
            settings.visibility_timeout_s - settings.heartbeat_interval_s
        )
        self.ledger = Ledger(store.with_calls(own_writes), settings.worker_id, lease_s=settings.visibility_timeout_s)
        self.publisher = Publisher(settings, store, self.ledger, model, renderer.faults)
        self.attempts: dict[str, Attempt] = {}  # job id -> the attempt running in this worker
        self._claiming: dict[str, str] = {}  # job id -> message id, while a claim is being made
        self._handing_back: str | None = None  # why every job goes back (``hand_back_all``)

    def hand_back_all(self, why: str | None = None) -> None:
        """The worker cannot go on (a background task died, a model call is stuck): every attempt
        releases its job now; ``why`` goes into the status history."""
        self._handing_back = why
        for attempt in self.attempts.values():
            attempt.shutdown.now()

    async def process_record(self, record: ObjectCreated, msg: Message) -> Decision:
        if record.bucket != self.settings.bucket or keys.inbox_of(record.key) is None:
            log.warning("ignoring event for s3://%s/%s (not this pipeline's inbox)", record.bucket, record.key)
            return DELETE
        try:
            job_id = keys.job_id_from_inbox_key(record.key)
        except keys.InvalidJobId as e:
            return await self._reject_key(e, record)
        token = job_id_var.set(job_id)
        try:
            running = self.attempts.get(job_id)
            if running is not None:
                return self._delivered_again(running, msg)
            if job_id in self._claiming:  # two deliveries in one receive batch: one claim
                return self._claim_in_progress(self._claiming[job_id], msg)
            self._claiming[job_id] = msg.identity  # before the first await: no second claim can start
            return await self._deliver(job_id, record, msg)
        finally:
            job_id_var.reset(token)

    # -- deliveries ----------------------------------------------------------------------------

    def _delivered_again(self, running: Attempt, msg: Message) -> Decision:
        if msg.identity == running.msg.identity:
            if self._near_dead_letter(msg):
                # Its extensions keep failing (throttled): one more lapse would move the message
                # to the DLQ under a running job. A copy of the same identity, hidden for a lease,
                # starts the count afresh; the attempt runs on, and meets the copy as this one.
                log.warning("the running attempt's message came back %d times: put back as a copy", msg.receive_count)
                running.msg = msg  # the handle SQS honours, should the copy not be sent
                return Decision(Ack.REQUEUE, self.settings.visibility_timeout_s)
            # Its own message, visible again (beats missed it): the attempt keeps it, with the
            # receipt handle of this delivery, the one SQS now honours.
            running.msg = msg
            log.info("the running attempt's message was delivered again: kept in flight")
            return Decision(Ack.KEEP)
        log.info("duplicate delivery of a job running in this worker (message %s): dropped", msg.id)
        metrics.DUPLICATES.inc()
        return DELETE

    def _near_dead_letter(self, msg: Message) -> bool:
        """Whether ``msg`` has one receive left before the queue's redrive policy dead-letters it
        (one early: a copy costs a send, a dead letter under a running job costs the job)."""
        limit = self.queue.max_receive_count or self.settings.max_attempts
        return msg.receive_count >= limit - 1

    def _claim_in_progress(self, claiming: str, msg: Message) -> Decision:
        if msg.identity != claiming:
            log.info("duplicate delivery of a job being claimed in this worker (message %s): dropped", msg.id)
            metrics.DUPLICATES.inc()
            return DELETE
        return Decision(Ack.RETRY, 1.0)  # the same message again, mid-claim: look again shortly

    async def _deliver(self, job_id: str, record: ObjectCreated, msg: Message) -> Decision:
        try:
            priority = keys.inbox_of(record.key)  # the inbox is the job's effective priority
            outcome, found = await self.ledger.claim(job_id, record.event_time, msg.identity, priority)
        except Exception as e:
            if not is_transient(e):
                raise
            # Nothing recorded (S3 unreachable past the client's retries): the delivery counts
            # against the queue's maxReceiveCount all the same, so it waits as a retry would.
            delay = self._backoff(msg)
            log.warning("could not claim the job (%s): its message comes back in %.0fs", describe(e), delay)
            return Decision(Ack.RETRY, delay)
        finally:
            self._claiming.pop(job_id, None)
        if isinstance(found, Seen):
            if outcome is ClaimResult.DONE:
                return await self._done(found, msg)
            return self._busy(found, msg)
        attempt = Attempt.start(self.settings, found, msg, self.lease_store, self.stopping)
        status = found.status
        queue_wait_ms = max(0.0, (status.started_at - status.created_at).total_seconds() * 1000)  # type: ignore[operator]
        metrics.QUEUE_WAIT_SECONDS.observe(queue_wait_ms / 1000)
        log.info(
            "processing (attempt %d, delivery %d, waited %.0f ms)", attempt.number, msg.receive_count, queue_wait_ms
        )
        self.attempts[job_id] = attempt
        metrics.IN_FLIGHT.inc()
        try:
            async with self.lease.tracking(attempt):
                outcome_ = await self._outcome(attempt, queue_wait_ms)
                decision = await self._conclude(attempt, outcome_) if outcome_ is not None else Decision(Ack.LEAVE)
        finally:
            metrics.IN_FLIGHT.dec()
            if self.attempts.get(job_id) is attempt:
                del self.attempts[job_id]
        return replace(decision, counted=True, message=attempt.msg)

    async def _done(self, seen: Seen, msg: Message) -> Decision:
        log.info("job already %s: duplicate delivery acknowledged", seen.status.state)
        metrics.DUPLICATES.inc()
        try:
            await ensure_notified(
                self.notifier, seen.status, record_in(self.store, keys.status_key(seen.status.job_id), seen.etag)
            )
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("could not publish the notification the job is owed (%s): its message comes back", e)
            return Decision(Ack.RETRY, self._backoff(msg))
        return DELETE

    def _busy(self, seen: Seen, msg: Message) -> Decision:
        status = seen.status
        # (msg.id too: a worker of the release before identities recorded a copy's own id)
        if status.message_id is not None and status.message_id not in (msg.identity, msg.id):
            # The job's own message (the one its holder claimed with) carries it: this is a
            # duplicate (an S3 event sent twice, a re-enqueue). Dropped, so it cannot bounce
            # into the DLQ while the job runs.
            log.info("duplicate delivery (held by %s through message %s): dropped", status.worker, status.message_id)
            metrics.DUPLICATES.inc()
            return DELETE
        # The holder's own message, visible again: the holder may have just died, or its visibility
        # extensions failed for a whole timeout (throttling) while it runs. Look again when its
        # lease would have lapsed, through a copy of the same identity: hiding this delivery would
        # count a receive per lease towards the DLQ for as long as the holder runs, and take the
        # message from the holder's receipt handle (SQS honours the newest).
        assert status.lease_expires_at is not None
        lease_left = (status.lease_expires_at - utcnow()).total_seconds()
        log.info("job held by %s for %.1fs more: delivery deferred", status.worker, lease_left)
        metrics.DEFERRED.inc()
        return Decision(Ack.REQUEUE, max(1.0, lease_left + 1.0))

    async def _reject_key(self, e: keys.InvalidJobId, record: ObjectCreated) -> Decision:
        job_id = e.status_key.removeprefix(keys.STATUS).removesuffix(".json")
        status = JobStatus.new(job_id, created_at=record.event_time).moved_to(
            JobState.FAILED,
            worker=self.settings.worker_id,
            error=JobErrorInfo(code=ErrorCode.INVALID_JOB_ID, message=e.reason),
        )
        try:
            etag: str | None = await self.store.put_json(e.status_key, status, if_none_match=True)
            metrics.JOBS.labels(JobState.FAILED, ErrorCode.INVALID_JOB_ID).inc()
            log.warning("rejected %s: %s (status at %s)", record.key, e.reason, e.status_key)
        except PreconditionFailed:  # rejected before (a redelivery): the first verdict stands
            found, etag = await self.store.get_model_etag(e.status_key, JobStatus)
            status = found or status
        await ensure_notified(self.notifier, status, record_in(self.store, e.status_key, etag))
        return Decision(Ack.DELETE, counted=True)

    # -- an attempt ----------------------------------------------------------------------------

    async def _outcome(self, attempt: Attempt, queue_wait_ms: float) -> Outcome | None:
        """Run the attempt; its outcome (None: the claim was lost, nothing more may be written)."""
        try:
            return await self._attempt(attempt, queue_wait_ms)
        except JobAborted as e:
            return self._aborted(e.reason)
        except JobFailed as e:
            return _failed(e.code, e.message)
        except LostClaim as e:
            log.warning("lost the job to another worker (%s): stopping without publishing", e)
            return None
        except BatcherUnavailable as e:  # the worker's fault (a stuck model call), not the job's
            log.warning("the model is unavailable (%s): handing the job back", e)
            why = (
                "its model call is stuck past its deadline" if isinstance(e, ModelCallStuck) else "its batcher stopped"
            )
            return Outcome(JobState.QUEUED, note=f"released by {self.settings.worker_id}: {why}", requeue=True)
        except TextSandboxUnavailable as e:  # the worker's text process failed, not the job's text
            log.warning("the text front-end is unavailable (%s): handing the job back", e)
            return Outcome(JobState.QUEUED, note=f"released by {self.settings.worker_id}: {e}", requeue=True)
        except Exception as e:
            if is_missing_resource(e):  # bucket or queue deleted, LocalStack restarted empty
                log.warning("the job's bucket or queue is gone (%s): stopping without publishing", e)
                return None
            if attempt.result is ResultState.KNOWN:
                return Outcome(JobState.COMPLETED)  # the result exists: nothing after it can undo that
            if is_transient(e):
                return self._transient(attempt, e)
            if is_access_denied(e):  # the operator has a grant to add; the log has AWS's own words
                log.error("access denied: %s", e)
                return _failed(
                    ErrorCode.ACCESS_DENIED,
                    f"the worker was refused access ({describe(e)}): its IAM role lacks a permission this job needs",
                )
            log.exception("unexpected error")
            return _failed(
                ErrorCode.INTERNAL_ERROR,
                f"internal error in the worker ({type(e).__name__}); its log has the details under this job id",
            )

    async def _attempt(self, attempt: Attempt, queue_wait_ms: float) -> Outcome:
        s = self.settings
        job_id = attempt.job_id
        if attempt.number > 1:  # an earlier attempt may have published before its worker lost the answer
            named = await JobOutputs(self.store, job_id).named()
            if named is not None:
                attempt.result_known(named)
                return Outcome(JobState.COMPLETED, note="result already published by an earlier attempt")
        age_s = (utcnow() - attempt.claim.status.created_at).total_seconds()
        if s.job_ttl_s is not None and age_s > s.job_ttl_s:
            return Outcome(JobState.EXPIRED, note=f"dequeued {age_s:.0f}s after submission (TTL {s.job_ttl_s:g}s)")
        # The cancel marker is looked for while the inputs download (one round trip less before
        # the model); it decides before anything they tell, as when it was looked for first.
        cancel = asyncio.ensure_future(self.store.exists(keys.cancel_key(job_id)))
        try:
            published = await self._run(attempt, queue_wait_ms, cancel)
        except _CancelledBeforeStart:
            return Outcome(JobState.CANCELLED, note="cancelled before start")
        finally:
            if not cancel.done():
                cancel.cancel()
            elif not cancel.cancelled():
                cancel.exception()  # retrieved: an error here was the attempt's to raise, not the loop's to log
        return Outcome(JobState.COMPLETED, note=None if published else "result already published")

    async def _run(self, attempt: Attempt, queue_wait_ms: float, cancel: asyncio.Future[bool]) -> bool:
        job_id = attempt.job_id
        clock = _Clock()
        label = f"{self.model.name}/{self.model.version}"
        priority = attempt.claim.status.priority or Priority.bulk
        try:
            inputs = await clock.run("download", lambda: self.inputs.read(job_id, attempt.check, priority))
        except JobFailed:
            if await cancel:
                raise _CancelledBeforeStart from None
            raise
        if await cancel:
            raise _CancelledBeforeStart
        inputs.submitter = submitter_of(attempt.msg)
        job_place.set((inputs.batch_priority, inputs.tenant))  # for the items made in threads (alignment)
        manifest = inputs.manifest
        seed = manifest.seed if manifest.seed is not None else derived_seed(job_id)
        attempt.check()
        warnings: list[ResultWarning] = []
        if self.model.random_weights:
            warnings.append(
                ResultWarning(
                    code=WarningCode.RANDOM_WEIGHTS,
                    message="model bundle has random weights (test bundle): the audio is noise",
                )
            )
        with tempfile.TemporaryDirectory(prefix=f"tts-{job_id}-") as tmp:

            async def synthesis() -> tuple[list[Reference], Rendered]:
                refs = await self.renderer.references(inputs, label, attempt)
                attempt.check()
                return refs, await self.renderer.render(inputs, refs, seed, label, attempt, Path(tmp), warnings)

            self.renderer.batcher.take_meter(job_id)  # from zero: nothing of an earlier attempt here
            refs, rendered = await clock.run("synthesis", synthesis)
            metered = self.renderer.batcher.take_meter(job_id)
            for stage, ms in rendered.stage_ms.items():  # done inside synthesis, reported as their own
                clock.ms[stage] = clock.ms.get(stage, 0.0) + ms
                clock.ms["synthesis"] -= ms
            attempt.check()
            first = inputs.voices[0]
            out = Outputs(
                manifest=manifest,
                rendered=rendered,
                ref_text=refs[0].text,
                ref_text_source="asr" if refs[0].text_source == "asr" else first.ref_text_source,
                ref_text_from_asr=refs[0].text_source == "asr" or first.ref_text_from_asr,
                voice_key=first.voice_key,
                normalized_text=inputs.analysis.normalized_text,
                languages=inputs.analysis.languages,
                seed=seed,
                warnings=warnings,
                metered=metered,
            )
            return await self.publisher.publish(attempt, out, clock.run, lambda: clock.timings(queue_wait_ms))

    def _aborted(self, reason: AbortReason) -> Outcome | None:
        if reason is AbortReason.LOST_CLAIM:
            log.warning("lost the job to another worker: stopping without publishing")
            return None
        if reason is AbortReason.CANCELLED:
            return Outcome(JobState.CANCELLED, note="cancelled while running")
        if reason is AbortReason.TIMEOUT:
            return _failed(ErrorCode.TIMEOUT, f"job exceeded TTS_JOB_TIMEOUT_S={self.settings.job_timeout_s:g}s")
        why = self._handing_back or "worker shutting down"
        return Outcome(JobState.QUEUED, note=f"released by {self.settings.worker_id}: {why}", requeue=True)

    def _transient(self, attempt: Attempt, e: Exception) -> Outcome:
        s, msg = self.settings, attempt.msg
        metrics.RETRIES.inc()
        what = describe(e)  # AWS's message text stays in the log
        if self.queue.is_last_delivery(msg, s.max_attempts):
            return _failed(
                ErrorCode.RETRIES_EXHAUSTED, f"gave up after {msg.receive_count} deliveries; last error: {what}"
            )
        delay = self._backoff(msg)
        log.warning("transient error (delivery %d): retry in %.0fs: %s", msg.receive_count, delay, e)
        return Outcome(JobState.QUEUED, note=f"transient error, retry in {delay:.0f}s: {what}", delay_s=delay)

    def _backoff(self, msg: Message) -> float:
        """How long ``msg`` waits after a delivery a transient fault spoiled (``backoff``)."""
        s = self.settings
        deliveries = self.queue.max_receive_count or s.max_attempts
        return retry_delay(msg, base_s=s.retry_base_s, budget_s=s.retry_max_s, max_deliveries=deliveries)

    # -- endings -------------------------------------------------------------------------------

    async def _conclude(self, attempt: Attempt, outcome: Outcome) -> Decision:
        attempt.ending = True
        if outcome.state is JobState.QUEUED:
            return await self._release(attempt, outcome)
        try:
            outcome = await self._as_committed(attempt, outcome)
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("could not look for the job's result (%s): ending left to a later delivery", e)
            return Decision(Ack.RETRY, self._backoff(attempt.msg))
        return await self._end(attempt, outcome)

    async def _as_committed(self, attempt: Attempt, outcome: Outcome) -> Outcome:
        """A job whose result exists is COMPLETED, whatever else went wrong: an attempt that sent
        a result without hearing back looks before ending the job any other way."""
        if outcome.state is JobState.COMPLETED:
            return outcome
        if attempt.result is ResultState.NONE and attempt.number == 1:
            return outcome  # no result can exist: none was sent, and no earlier attempt ran
        named = (
            attempt.named
            if attempt.result is ResultState.KNOWN
            else await JobOutputs(self.store, attempt.job_id).named()
        )
        if named is None:
            return outcome
        attempt.result_known(named)
        why = outcome.error.message if outcome.error else outcome.note
        return Outcome(JobState.COMPLETED, note=f"result published; then: {why}")

    async def _end(self, attempt: Attempt, outcome: Outcome) -> Decision:
        claim = attempt.claim
        completed = outcome.state is JobState.COMPLETED
        try:
            status = await self.ledger.finish(
                claim,
                outcome.state,
                error=outcome.error,
                note=outcome.note,
                result_key=keys.result_key(claim.job_id) if completed else None,
            )
        except LostClaim as e:
            log.warning("lost the job to another worker (%s): stopping without publishing", e)
            return Decision(Ack.LEAVE)
        except Exception as e:
            if not is_transient(e):
                raise
            return await self._not_ended(attempt, e)
        metrics.JOBS.labels(outcome.state, outcome.error.code if outcome.error else "").inc()
        if outcome.error:
            log.warning("%s: %s: %s", outcome.state, outcome.error.code, outcome.error.message)
        else:
            log.info("%s%s", outcome.state, f": {outcome.note}" if outcome.note else "")
        await self._remove_unneeded(attempt, completed)
        try:
            await ensure_notified(self.notifier, status, lambda marked: self.ledger.record(claim, marked))
        except LostClaim:
            pass  # someone else (a redelivery, the reconciler) recorded it first: it was published
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("could not publish the job's notification (%s): its message comes back for it", e)
            return Decision(Ack.RETRY, self._backoff(attempt.msg))
        if outcome.error and outcome.error.code == ErrorCode.RETRIES_EXHAUSTED and self.queue.dlq_url:
            return Decision(Ack.RETRY, 0)  # SQS moves it to the DLQ instead of delivering it again
        return DELETE

    async def _remove_unneeded(self, attempt: Attempt, completed: bool) -> None:
        """After the final status: the job can no longer be taken over, so nothing removed here can
        be a live successor's. A failure is left to the reconciler."""
        try:
            await JobOutputs(self.store, attempt.job_id).after_end(
                attempt.named if completed else None, known=attempt.number == 1, written=attempt.wrote
            )
        except Exception as e:
            log.warning("could not remove the job's unneeded outputs (the reconciler will): %s", e)

    async def _not_ended(self, attempt: Attempt, e: Exception) -> Decision:
        """The final status could not be written (S3 failing past our retries). Nothing is removed:
        a result, if any, names what this attempt uploaded. The job is handed back if S3 lets us;
        either way its message comes back, and the next attempt ends it (adopting the result)."""
        delay = self._backoff(attempt.msg)
        log.warning("could not write the final status (%s): the job comes back in %.0fs", e, delay)
        try:
            await self.ledger.release(attempt.claim, note=f"final status not written: {describe(e)}")
        except LostClaim:
            return Decision(Ack.LEAVE)
        except Exception as again:
            if not is_transient(again):
                raise
        return Decision(Ack.RETRY, delay)

    async def _release(self, attempt: Attempt, outcome: Outcome) -> Decision:
        try:
            await JobOutputs(self.store, attempt.job_id).after_release(
                attempt.uploaded, result_sent=attempt.result is not ResultState.NONE
            )
        except Exception as e:
            log.warning("could not remove this attempt's outputs (the reconciler will, once the job ends): %s", e)
        try:
            await self.ledger.release(attempt.claim, note=outcome.note or "released")
        except LostClaim:
            return Decision(Ack.LEAVE)
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("could not hand the job back (%s): it comes back when its lease lapses", e)
        else:
            log.info("released for another attempt: %s", outcome.note)
        if outcome.requeue:
            # Hidden until any long poll of this (stopping) worker that SQS may still hold has ended.
            return Decision(Ack.REQUEUE, max(outcome.delay_s, self.settings.receive_wait_s + 1))
        return Decision(Ack.RETRY, outcome.delay_s)
