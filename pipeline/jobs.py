"""The job state machine: one S3 event record in, one outcome out.

    QUEUED --claim--> PROCESSING --> COMPLETED | FAILED | CANCELLED | EXPIRED
       ^                  |
       +----release-------+   (transient error: retry with backoff; shutdown: hand back)

Per job: claim it (conditional status write, ``pipeline.state``), run the stages
(``pipeline.stages``: inputs, synthesis through the shared batcher, alignment, encoding) under the
worker's heartbeat, publish (``pipeline.publish``: audio and subtitles, result), then the final
status. What becomes of the SQS message is returned as a ``Decision``: the message loop
(``pipeline.worker``) deletes it only after the outcome is durable, so a crash at any point
redelivers the job instead of losing it, and the claim makes the redelivery of a finished job a
no-op.

Bad input fails *that job* with a specific code; the worker keeps going. Errors that a retry may
cure (S3/SQS unavailable after our own retries) put the job back on the queue with a growing
delay; on the last delivery the queue's redrive policy allows, the job ends FAILED
(RETRIES_EXHAUSTED) and SQS moves the message to the DLQ.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pipeline import keys, metrics
from pipeline.aws import is_missing_resource, is_transient
from pipeline.chunks import ChunkStore
from pipeline.config import Settings
from pipeline.consumer import Message, Queue
from pipeline.contract import (
    ErrorCode,
    JobErrorInfo,
    JobState,
    JobStatus,
    ModelInfo,
    ResultWarning,
    StageTimings,
    WarningCode,
    utcnow,
)
from pipeline.events import ObjectCreated
from pipeline.heartbeat import Heartbeat
from pipeline.logs import job_id_var
from pipeline.notify import Notifier
from pipeline.publish import Outputs, Publisher
from pipeline.stages import JobFailed, Rendered, Stages
from pipeline.state import Claim, ClaimResult, Ledger, LostClaim
from pipeline.store import Store
from pipeline.tts.engine import Reference
from pipeline.watch import AbortReason, JobAborted, JobWatch

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
    LEAVE = "leave"  # another worker owns the job now; its own message carries it


@dataclass(frozen=True)
class Decision:
    ack: Ack
    delay_s: float = 0.0
    counted: bool = False  # this worker ran (or rejected) a job: what --max-jobs counts

    @staticmethod
    def combine(decisions: list[Decision]) -> Decision:
        counted = any(d.counted for d in decisions)
        retries = [d for d in decisions if d.ack is Ack.RETRY]
        if retries:
            return Decision(Ack.RETRY, min(d.delay_s for d in retries), counted)
        if any(d.ack is Ack.LEAVE for d in decisions):
            return Decision(Ack.LEAVE, counted=counted)
        return Decision(Ack.DELETE, counted=counted)


DELETE = Decision(Ack.DELETE)


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
        stages: Stages,
        heartbeat: Heartbeat,
        model: ModelInfo,
        stopping: asyncio.Event,
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.stages = stages
        self.heartbeat = heartbeat
        self.model = model
        self.stopping = stopping
        self.notifier = notifier
        self.ledger = Ledger(store, settings.worker_id, lease_s=settings.visibility_timeout_s)
        self.publisher = Publisher(settings, store, self.ledger, model, stages.faults)
        self.running: set[str] = set()  # job ids in flight in this worker

    async def process_record(self, record: ObjectCreated, msg: Message) -> Decision:
        if record.bucket != self.settings.bucket or not record.key.startswith(keys.INBOX):
            log.warning("ignoring event for s3://%s/%s (not this pipeline's inbox)", record.bucket, record.key)
            return DELETE
        try:
            job_id = keys.job_id_from_inbox_key(record.key)
        except keys.InvalidJobId as e:
            return await self._reject_key(e, record)
        token = job_id_var.set(job_id)
        try:
            if job_id in self.running:
                # A second delivery of a job this worker is running (a duplicate event, or its own
                # message after a missed beat): never run it twice, never delete it; look again later.
                log.info("job already running in this worker: delivery deferred")
                metrics.DEFERRED.inc()
                return Decision(Ack.RETRY, self.settings.visibility_timeout_s)
            self.running.add(job_id)
            try:
                return await self._process_job(job_id, record, msg)
            finally:
                self.running.discard(job_id)
                self.stages.chunked_jobs.discard(job_id)
        finally:
            job_id_var.reset(token)

    async def _reject_key(self, e: keys.InvalidJobId, record: ObjectCreated) -> Decision:
        job_id = e.status_key.removeprefix(keys.STATUS).removesuffix(".json")
        status = JobStatus.new(job_id, created_at=record.event_time)
        failed = status.moved_to(
            JobState.FAILED,
            worker=self.settings.worker_id,
            error=JobErrorInfo(code=ErrorCode.INVALID_JOB_ID, message=e.reason),
        )
        await self.store.put_json(e.status_key, failed)
        metrics.JOBS.labels(JobState.FAILED, ErrorCode.INVALID_JOB_ID).inc()
        await self.notifier.job_finished(failed)
        log.warning("rejected %s: %s (status at %s)", record.key, e.reason, e.status_key)
        return Decision(Ack.DELETE, counted=True)

    async def _process_job(self, job_id: str, record: ObjectCreated, msg: Message) -> Decision:
        outcome, claimed = await self.ledger.claim(job_id, record.event_time)
        if outcome is ClaimResult.DONE:
            assert isinstance(claimed, JobStatus)
            log.info("job already %s: duplicate delivery acknowledged", claimed.state)
            metrics.DUPLICATES.inc()
            return DELETE
        if outcome is ClaimResult.BUSY:
            # Held by a live lease. This may be a duplicate, or the holder's own message whose
            # visibility lapsed before its lease (e.g. the holder just died): never delete it;
            # look again when the lease would have expired.
            assert isinstance(claimed, JobStatus) and claimed.lease_expires_at is not None
            lease_left = (claimed.lease_expires_at - utcnow()).total_seconds()
            log.info("job held by %s for %.1fs more: delivery deferred", claimed.worker, lease_left)
            metrics.DEFERRED.inc()
            return Decision(Ack.RETRY, max(1.0, lease_left + 1.0))
        assert isinstance(claimed, Claim)
        status = claimed.status
        queue_wait_ms = max(0.0, (status.started_at - status.created_at).total_seconds() * 1000)  # type: ignore[operator]
        metrics.QUEUE_WAIT_SECONDS.observe(queue_wait_ms / 1000)
        log.info(
            "processing (attempt %d, delivery %d, waited %.0f ms)", status.attempt, msg.receive_count, queue_wait_ms
        )
        metrics.IN_FLIGHT.inc()
        try:
            decision = await self._attempt(claimed, msg, queue_wait_ms)
        except LostClaim as e:
            log.warning("lost the job to another worker (%s): stopping without publishing", e)
            decision = Decision(Ack.LEAVE)
        finally:
            metrics.IN_FLIGHT.dec()
        return Decision(decision.ack, decision.delay_s, counted=True)

    async def _attempt(self, claim: Claim, msg: Message, queue_wait_ms: float) -> Decision:
        s = self.settings
        age_s = (utcnow() - claim.status.created_at).total_seconds()
        if s.job_ttl_s is not None and age_s > s.job_ttl_s:
            await self._finish(
                claim, JobState.EXPIRED, note=f"dequeued {age_s:.0f}s after submission (TTL {s.job_ttl_s:g}s)"
            )
            return DELETE
        if await self.store.exists(keys.cancel_key(claim.job_id)):
            await self._finish(claim, JobState.CANCELLED, note="cancelled before start")
            return DELETE
        watch = JobWatch(s, self.ledger, claim, msg, self.store, self.stopping)
        try:
            async with self.heartbeat.tracking(watch):
                await self._run(claim, queue_wait_ms, watch)
        except JobAborted as e:
            return await self._aborted(claim, e.reason)
        except JobFailed as e:
            await self._finish(claim, JobState.FAILED, error=JobErrorInfo(code=e.code, message=e.message))
            return DELETE
        except LostClaim:
            raise
        except Exception as e:
            if is_missing_resource(e):  # bucket or queue deleted, LocalStack restarted empty
                raise LostClaim(f"{claim.job_id}: the job's bucket or queue is gone ({e})") from e
            if is_transient(e):
                return await self._transient(claim, msg, e)
            log.exception("unexpected error")
            await self._finish(
                claim,
                JobState.FAILED,
                error=JobErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=f"{type(e).__name__}: {e}"),
            )
            return DELETE
        return DELETE

    async def _run(self, claim: Claim, queue_wait_ms: float, watch: JobWatch) -> None:
        job_id = claim.job_id
        st = self.stages
        clock = _Clock()
        label = f"{self.model.name}/{self.model.version}"
        inputs = await clock.run("download", lambda: st.inputs(job_id))
        manifest = inputs.manifest
        seed = manifest.seed if manifest.seed is not None else derived_seed(job_id)
        watch.check()
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
                refs = await st.references(inputs, label)
                watch.check()
                return refs, await st.render(inputs, refs, seed, label, watch, Path(tmp), warnings)

            refs, rendered = await clock.run("synthesis", synthesis)
            for stage, ms in rendered.stage_ms.items():  # done inside synthesis, reported as their own
                clock.ms[stage] = clock.ms.get(stage, 0.0) + ms
                clock.ms["synthesis"] -= ms
            watch.check()
            first = inputs.voices[0]
            out = Outputs(
                manifest=manifest,
                rendered=rendered,
                ref_text=refs[0].text,
                ref_text_source="asr" if refs[0].text_source == "asr" else first.ref_text_source,
                ref_text_from_asr=refs[0].text_source == "asr" or first.ref_text_from_asr,
                voice_key=first.voice_key,
                normalized_text=inputs.analysis.normalized_text,
                seed=seed,
                warnings=warnings,
            )
            published = await self.publisher.publish(claim, out, clock.run, lambda: clock.timings(queue_wait_ms))
        note = None if published else "result already published"
        await self._finish(claim, JobState.COMPLETED, result_key=keys.result_key(job_id), note=note)

    # -- outcomes -------------------------------------------------------------------------------

    async def _aborted(self, claim: Claim, reason: AbortReason) -> Decision:
        if reason is AbortReason.LOST_CLAIM:
            raise LostClaim(claim.job_id)
        await self.publisher.remove_outputs(claim.job_id, claim.status.attempt)
        if reason is AbortReason.CANCELLED:
            await self._finish(claim, JobState.CANCELLED, note="cancelled while running")
            return DELETE
        if reason is AbortReason.TIMEOUT:
            msg = f"job exceeded TTS_JOB_TIMEOUT_S={self.settings.job_timeout_s:g}s"
            await self._finish(claim, JobState.FAILED, error=JobErrorInfo(code=ErrorCode.TIMEOUT, message=msg))
            return DELETE
        await self.ledger.release(claim, note=f"released by {self.settings.worker_id}: worker shutting down")
        log.info("released for another worker (shutdown)")
        return Decision(Ack.RETRY, 0)

    async def _transient(self, claim: Claim, msg: Message, e: Exception) -> Decision:
        s = self.settings
        metrics.RETRIES.inc()
        try:  # outputs this attempt uploaded before failing are named by no result
            await self.publisher.remove_outputs(claim.job_id, claim.status.attempt)
        except Exception as cleanup:  # S3 may still be down: the reconciler removes them later
            log.warning("could not remove this attempt's outputs: %s", cleanup)
        if self.queue.is_last_delivery(msg, s.max_attempts):
            message = f"gave up after {msg.receive_count} deliveries; last error: {type(e).__name__}: {e}"
            await self._finish(
                claim, JobState.FAILED, error=JobErrorInfo(code=ErrorCode.RETRIES_EXHAUSTED, message=message)
            )
            # With a DLQ, SQS moves the message there instead of delivering it again.
            return Decision(Ack.RETRY, 0) if self.queue.dlq_url else DELETE
        delay = min(s.retry_base_s * 2 ** (msg.receive_count - 1), s.retry_max_s) * random.uniform(0.8, 1.2)
        await self.ledger.release(claim, note=f"transient error, retry in {delay:.0f}s: {type(e).__name__}: {e}")
        log.warning("transient error (delivery %d): retry in %.0fs: %s", msg.receive_count, delay, e)
        return Decision(Ack.RETRY, delay)

    async def _finish(
        self,
        claim: Claim,
        state: JobState,
        *,
        error: JobErrorInfo | None = None,
        note: str | None = None,
        result_key: str | None = None,
    ) -> None:
        if state.terminal and (claim.job_id in self.stages.chunked_jobs or claim.status.attempt > 1):
            # Before the final status, so that a client seeing it never lists stale chunks. A
            # crash in between redelivers the job: a result is adopted, a failure fails again.
            # (An earlier attempt may have left chunks even if this one wrote none.)
            await self._remove_chunks(claim.job_id)
        status = await self.ledger.finish(claim, state, error=error, note=note, result_key=result_key)
        metrics.JOBS.labels(state, error.code if error else "").inc()
        if error:
            log.warning("%s: %s: %s", state, error.code, error.message)
        else:
            log.info("%s%s", state, f": {note}" if note else "")
        if state.terminal:
            await self.notifier.job_finished(status)

    async def _remove_chunks(self, job_id: str) -> None:
        """A finished job's durable chunks are replaced by its audio (or by nothing); if S3 fails
        here, the reconciler removes them later."""
        try:
            removed = await ChunkStore(self.store, job_id).remove_all()
        except Exception as e:
            log.warning("could not remove the job's chunks: %s", e)
            return
        if removed:
            log.info("removed %d chunk objects", removed)
