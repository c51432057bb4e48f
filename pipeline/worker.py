"""The worker: consume S3 events from SQS and run each job through its states.

    QUEUED --claim--> PROCESSING --> COMPLETED | FAILED | CANCELLED | EXPIRED
       ^                  |
       +----release-------+   (transient error: retry with backoff; shutdown: hand back)

Per job: claim it (conditional status write, ``pipeline.state``), read + validate the manifest,
fetch the reference voice, synthesise (F5-TTS, off the event loop), align words, encode, then
publish in this order: audio (and subtitles), result, final status. The SQS message is deleted only
after that, so a crash at any point redelivers the job instead of losing it, and the claim makes
the redelivery of a finished job a no-op.

Bad input fails *that job* with a specific code; the worker keeps going. Errors that a retry may
cure (S3/SQS unavailable after our own retries) put the job back on the queue with a growing
delay; on the last delivery the queue's redrive policy allows, the job ends FAILED
(RETRIES_EXHAUSTED) and SQS moves the message to the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, NoReturn, TypeVar

import numpy as np

from pipeline import keys, metrics
from pipeline.aws import is_transient
from pipeline.config import Settings
from pipeline.consumer import Message, Queue
from pipeline.contract import (
    AudioInfo,
    ErrorCode,
    JobErrorInfo,
    JobResult,
    JobState,
    JobStatus,
    Manifest,
    ManifestError,
    ModelInfo,
    ResultWarning,
    StageTimings,
    SubtitleFormat,
    WarningCode,
    WordTiming,
    parse_manifest,
    utcnow,
)
from pipeline.events import ObjectCreated, UnrecognisedMessage, parse_message_body
from pipeline.faults import FaultHooks
from pipeline.logs import job_id_var
from pipeline.notify import Notifier
from pipeline.state import Claim, ClaimResult, Ledger, LostClaim
from pipeline.store import NotFound, PreconditionFailed, Store, TooLarge, open_store
from pipeline.tts import audio as audio_utils
from pipeline.tts import subtitles
from pipeline.tts.align import AlignmentImpossible
from pipeline.tts.engine import EngineError, Reference, SynthesisRequest, SynthesisResult
from pipeline.tts.voices import VoiceLibrary, VoiceRecord
from pipeline.watch import AbortReason, JobAborted, JobWatch

if TYPE_CHECKING:
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobFailed(Exception):
    """Ends a job FAILED with ``code``: permanent for this manifest, never retried."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


def _fail(code: ErrorCode | str, message: str) -> NoReturn:
    raise JobFailed(code, message)


@dataclass
class JobInputs:
    manifest: Manifest
    voice_key: str
    wave: np.ndarray
    sample_rate: int
    ref_text: str  # what the engine gets: the manifest's, the library's, or "" (transcribe)
    ref_text_source: str  # "manifest" | "voice_library" | "asr" (decided before synthesis)
    library: tuple[VoiceRecord, str] | None = None  # (record, etag) for a library voice
    ref_text_from_asr: bool = False  # the library's stored transcript came from an earlier ASR run


class Ack(Enum):
    """What to do with the SQS message once its records are handled."""

    DELETE = "delete"  # the job reached a final state (or was never ours to run)
    RETRY = "retry"  # make it visible again after a delay
    LEAVE = "leave"  # another worker owns the job now; its own message carries it


@dataclass(frozen=True)
class Decision:
    ack: Ack
    delay_s: float = 0.0

    @staticmethod
    def combine(decisions: list[Decision]) -> Decision:
        retries = [d for d in decisions if d.ack is Ack.RETRY]
        if retries:
            return Decision(Ack.RETRY, min(d.delay_s for d in retries))
        if any(d.ack is Ack.LEAVE for d in decisions):
            return Decision(Ack.LEAVE)
        return Decision(Ack.DELETE)


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

    def total_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: Queue,
        engine: F5Engine,
        aligner: Aligner,
        stopping: asyncio.Event | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.engine = engine
        self.aligner = aligner
        self.model_info = ModelInfo(
            name=engine.bundle.name,
            version=engine.bundle.version,
            random_weights=engine.bundle.random_weights,
            device=engine.device,
        )
        self.jobs_done = 0
        self._stopping = stopping or asyncio.Event()
        self.ledger = Ledger(store, settings.worker_id, lease_s=settings.visibility_timeout_s)
        self.voices = VoiceLibrary(store)
        self.notifier = notifier or Notifier(None, None, settings.bucket)
        self.faults = FaultHooks(settings.fault_dir, settings.fault_chunk_delay_s, settings.worker_id)

    # ----------------------------------------------------------------------------------------
    # Loop
    # ----------------------------------------------------------------------------------------

    async def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Consume until stopped, ``max_jobs`` jobs are done, or the queue was empty ``idle_exit_s``."""
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            if max_jobs is not None and self.jobs_done >= max_jobs:
                break
            wait_s = self.settings.receive_wait_s
            if idle_exit_s is not None:
                remaining = idle_exit_s - (time.monotonic() - idle_since)
                if remaining <= 0:
                    log.info("idle for %.0fs: exiting", idle_exit_s)
                    break
                wait_s = max(0, min(wait_s, int(remaining + 0.999)))
            metrics.RECEIVES.inc()
            receive = asyncio.create_task(
                self.queue.receive(max_messages=1, wait_s=wait_s, visibility_s=self.settings.visibility_timeout_s)
            )
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not receive.done():
                receive.cancel()  # shutting down: anything it would have received stays queued
                break
            # A stop that arrives while a job runs lets the job finish (its message is deleted only
            # when its outputs are durable), then the loop ends.
            try:
                messages = receive.result()
            except Exception as e:
                if not is_transient(e):
                    raise
                # SQS unreachable even after our retries: keep the worker, try again shortly.
                log.warning("receive failed: %s; retrying in %.0fs", e, _RECEIVE_BACKOFF_S)
                await asyncio.sleep(_RECEIVE_BACKOFF_S)
                continue
            for msg in messages:
                try:
                    await self.handle_message(msg)
                except Exception as e:
                    if not is_transient(e):
                        raise
                    # Could not acknowledge (SQS unreachable): the message comes back; its job's
                    # status makes the redelivery a no-op if the job had finished.
                    log.warning("message %s left for redelivery: %s", msg.id, e)
                idle_since = time.monotonic()
        if self._stopping.is_set():
            log.info("stop requested: no more messages will be received")
        return self.jobs_done

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
                decisions.append(await self.process_record(record, msg))
            except Exception as e:
                # Could not even record the outcome (S3 down after retries): the message comes back.
                log.exception("could not process %s: %s; leaving it for redelivery", record.key, e)
                decisions.append(Decision(Ack.LEAVE))
        decision = Decision.combine(decisions)
        if decision.ack is Ack.DELETE:
            await self.queue.delete(msg)
        elif decision.ack is Ack.RETRY:
            await self.queue.set_visibility(msg, decision.delay_s)

    # ----------------------------------------------------------------------------------------
    # One job
    # ----------------------------------------------------------------------------------------

    async def process_record(self, record: ObjectCreated, msg: Message) -> Decision:
        if record.bucket != self.settings.bucket or not record.key.startswith(keys.INBOX):
            log.warning("ignoring event for s3://%s/%s (not this pipeline's inbox)", record.bucket, record.key)
            return DELETE
        try:
            job_id = keys.job_id_from_inbox_key(record.key)
        except keys.InvalidJobId as e:
            return await self._reject_key(e, record)
        token = job_id_var.set(job_id)
        metrics.IN_FLIGHT.inc()
        try:
            return await self.process_job(job_id, record, msg)
        finally:
            metrics.IN_FLIGHT.dec()
            job_id_var.reset(token)
            self.jobs_done += 1

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
        self.jobs_done += 1
        return DELETE

    async def process_job(self, job_id: str, record: ObjectCreated, msg: Message) -> Decision:
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
        try:
            return await self._attempt(claimed, msg, queue_wait_ms)
        except LostClaim as e:
            log.warning("lost the job to another worker (%s): stopping without publishing", e)
            return Decision(Ack.LEAVE)

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
        watch = JobWatch(s, self.ledger, claim, self.queue, msg, self.store, self._stopping, self.faults)
        try:
            async with watch.running():
                await self._run(claim, queue_wait_ms, watch)
        except JobAborted as e:
            return await self._aborted(claim, e.reason)
        except JobFailed as e:
            await self._finish(claim, JobState.FAILED, error=JobErrorInfo(code=e.code, message=e.message))
            return DELETE
        except LostClaim:
            raise
        except Exception as e:
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

    async def _aborted(self, claim: Claim, reason: AbortReason) -> Decision:
        if reason is AbortReason.LOST_CLAIM:
            raise LostClaim(claim.job_id)
        await self._remove_outputs(claim.job_id)
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
        status = await self.ledger.finish(claim, state, error=error, note=note, result_key=result_key)
        metrics.JOBS.labels(state, error.code if error else "").inc()
        if error:
            log.warning("%s: %s: %s", state, error.code, error.message)
        else:
            log.info("%s%s", state, f": {note}" if note else "")
        if state.terminal:
            await self.notifier.job_finished(status)

    async def _remove_outputs(self, job_id: str) -> None:
        for key in await self.store.list_keys(f"{keys.OUTPUTS}{job_id}."):
            await self.store.delete(key)

    async def _run(self, claim: Claim, queue_wait_ms: float, watch: JobWatch) -> None:
        job_id = claim.job_id
        clock = _Clock()
        inputs = await clock.run("download", lambda: self._inputs(job_id))
        manifest = inputs.manifest
        seed = manifest.seed if manifest.seed is not None else random.randrange(2**31)
        watch.check()
        ref, synth = await clock.run("synthesis", lambda: self._synthesize(inputs, seed, watch))
        watch.check()
        warnings: list[ResultWarning] = []
        if self.model_info.random_weights:
            warnings.append(
                ResultWarning(
                    code=WarningCode.RANDOM_WEIGHTS,
                    message="model bundle has random weights (test bundle): the audio is noise",
                )
            )
        words: list[WordTiming] = []
        if manifest.needs_alignment:
            words = await clock.run(
                "alignment", lambda: self._align(manifest, synth.audio, synth.sample_rate, warnings)
            )
        encoded, content_type = await clock.run(
            "encode", lambda: self._encode(manifest, synth.audio, synth.sample_rate)
        )
        watch.check()
        # Publishing is not interruptible. Re-assert the claim first: a worker that lost its lease
        # (paused longer than the visibility timeout) must not overwrite a successor's outputs.
        await self.ledger.renew(claim)
        if await self.store.exists(keys.result_key(job_id)):
            await self._adopt_result(claim)
            return
        audio_key = keys.output_key(job_id, manifest.output_format.value)
        subs = await clock.run(
            "upload", lambda: self._upload(job_id, manifest, audio_key, encoded, content_type, words)
        )
        expires = self.settings.presign_expiry_s
        result = JobResult(
            job_id=job_id,
            audio=AudioInfo(
                uri=keys.s3_uri(self.settings.bucket, audio_key),
                url=await self.store.presign_get(audio_key, expires),
                url_expires_at=utcnow() + timedelta(seconds=expires),
                format=manifest.output_format,
                sample_rate=synth.sample_rate,
                duration_s=round(len(synth.audio) / synth.sample_rate, 4),
                bytes=len(encoded),
            ),
            word_timings=words if manifest.word_timings else None,
            subtitles=subs,
            text=manifest.text,
            ref_text=ref.text,
            ref_text_source="asr" if ref.text_source == "asr" else inputs.ref_text_source,
            ref_text_from_asr=ref.text_source == "asr" or inputs.ref_text_from_asr,
            voice_key=inputs.voice_key,
            seed=seed,
            chunks=len(synth.chunks),
            model=self.model_info,
            worker=self.settings.worker_id,
            timings_ms=_timings(clock, queue_wait_ms),
            warnings=warnings,
            completed_at=utcnow(),
        )
        # Audio and subtitles are durable before the result names them; If-None-Match makes the
        # first result the only result.
        try:
            await self.store.put_json(keys.result_key(job_id), result, if_none_match=True)
        except PreconditionFailed:
            existing = await self.store.get_model(keys.result_key(job_id), JobResult)
            if existing is None or existing.completed_at != result.completed_at:
                await self._adopt_result(claim)
                return
        log.info(
            "result published: %.2fs of audio, timings %s",
            result.audio.duration_s,
            {k: round(v) for k, v in result.timings_ms.model_dump().items()},
        )
        await self._finish(claim, JobState.COMPLETED, result_key=keys.result_key(job_id))

    async def _adopt_result(self, claim: Claim) -> None:
        """A result exists already (an earlier attempt published it, then died before its status):
        it is the job's result, and this attempt's work is discarded."""
        await self._finish(
            claim, JobState.COMPLETED, result_key=keys.result_key(claim.job_id), note="result already published"
        )

    async def _upload(
        self,
        job_id: str,
        manifest: Manifest,
        audio_key: str,
        encoded: bytes,
        content_type: str,
        words: list[WordTiming],
    ) -> dict[SubtitleFormat, str]:
        await self.store.put_bytes(audio_key, encoded, content_type)
        subs: dict[SubtitleFormat, str] = {}
        if not words:  # alignment skipped (warning recorded): no subtitles to write
            return subs
        for fmt in manifest.subtitles:
            key = keys.output_key(job_id, fmt.value)
            await self.store.put_bytes(key, subtitles.render(fmt.value, words).encode(), _SUB_TYPES[fmt.value])
            subs[fmt] = keys.s3_uri(self.settings.bucket, key)
        return subs

    # -- stages ------------------------------------------------------------------------------

    async def _inputs(self, job_id: str) -> JobInputs:
        s = self.settings
        try:
            raw = await self.store.get_bytes(keys.manifest_key(job_id), max_bytes=s.max_manifest_bytes)
        except NotFound:
            _fail(ErrorCode.MANIFEST_NOT_FOUND, f"{keys.manifest_key(job_id)} no longer exists")
        except TooLarge as e:
            _fail(ErrorCode.MANIFEST_TOO_LARGE, f"manifest is {e.size} bytes; the limit is {e.limit}")
        try:
            manifest = parse_manifest(raw)
        except ManifestError as e:
            _fail(e.code, e.message)
        _check_text(manifest.text, s.max_text_chars)
        voice = manifest.voice or s.default_voice
        if not voice:
            _fail(ErrorCode.VOICE_REQUIRED, "manifest names no voice and the worker has no TTS_DEFAULT_VOICE")
        library = await self.voices.get(voice)  # a library name ("alice") before a plain key
        if library is not None:
            vkey = library[0].audio_key
        else:
            try:
                vkey = keys.voice_key(voice, s.bucket)
            except keys.VoiceRefError as e:
                _fail(e.code, e.message)
        try:
            data = await self.store.get_bytes(vkey, max_bytes=s.max_voice_bytes)
        except NotFound:
            _fail(ErrorCode.VOICE_NOT_FOUND, f"voice {voice!r}: no library voice and no object s3://{s.bucket}/{vkey}")
        except TooLarge as e:
            _fail(ErrorCode.VOICE_TOO_LARGE, f"voice is {e.size} bytes; the limit is {e.limit}")
        wave, sr = await asyncio.to_thread(_decode_voice, data, s.min_voice_seconds, s.max_voice_seconds)
        if not manifest.ref_text.strip() and library is not None and library[0].ref_text:
            record = library[0]
            return JobInputs(
                manifest, vkey, wave, sr, record.ref_text, "voice_library", library, record.ref_text_source == "asr"
            )
        return JobInputs(manifest, vkey, wave, sr, manifest.ref_text, "manifest", library)

    async def _synthesize(self, inputs: JobInputs, seed: int, watch: JobWatch) -> tuple[Reference, SynthesisResult]:
        manifest = inputs.manifest
        try:
            ref = await asyncio.to_thread(
                self.engine.prepare_reference, inputs.wave, inputs.sample_rate, inputs.ref_text
            )
            if ref.text_source == "asr" and inputs.library is not None:
                await self._remember_transcript(inputs.library, ref.text)
            request = SynthesisRequest(
                reference=ref,
                text=manifest.text,
                speed=manifest.speed,
                nfe_step=manifest.nfe_step,
                cfg_strength=manifest.cfg_strength,
                seed=seed,
                remove_silence=manifest.remove_silence,
            )
            [synth] = await asyncio.to_thread(self.engine.synthesize, [request], watch.on_chunk)
        except EngineError as e:
            _fail(e.code, str(e))
        except (RuntimeError, ValueError, MemoryError) as e:  # torch OOM and shape errors included
            _fail(ErrorCode.SYNTHESIS_FAILED, f"synthesis failed: {type(e).__name__}: {e}")
        return ref, synth

    async def _remember_transcript(self, library: tuple[VoiceRecord, str], text: str) -> None:
        """First transcription of a library voice: store it so no job anywhere runs ASR on it again."""
        record, etag = library
        by = f"{self.model_info.name}/{self.model_info.version}"
        saved = await self.voices.save_transcript(record.name, etag, text, by)
        log.info(
            "voice %s: transcript %s", record.name, "stored" if saved and saved.ref_text == text.strip() else "kept"
        )

    async def _align(
        self, manifest: Manifest, wave: np.ndarray, sr: int, warnings: list[ResultWarning]
    ) -> list[WordTiming]:
        try:
            spans = await asyncio.to_thread(self.aligner.align, wave, sr, manifest.text, manifest.language)
        except AlignmentImpossible as e:
            warnings.append(ResultWarning(code=WarningCode.ALIGNMENT_SKIPPED, message=str(e)))
            log.warning("alignment skipped: %s", e)
            return []
        return [WordTiming(word=s.word, start=s.start, end=s.end, score=round(s.score, 4)) for s in spans]

    async def _encode(self, manifest: Manifest, wave: np.ndarray, sr: int) -> tuple[bytes, str]:
        try:
            return await asyncio.to_thread(audio_utils.encode, wave, sr, manifest.output_format.value)
        except Exception as e:
            _fail(ErrorCode.ENCODE_FAILED, f"encoding {manifest.output_format.value} failed: {e}")


_RECEIVE_BACKOFF_S = 5.0
_SUB_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt"}


def _timings(clock: _Clock, queue_wait_ms: float) -> StageTimings:
    stages = ("download", "synthesis", "alignment", "encode", "upload")
    return StageTimings(
        queue_wait=round(queue_wait_ms, 1),
        total=round(clock.total_ms(), 1),
        **{s: round(clock.ms.get(s, 0.0), 1) for s in stages},
    )


def _check_text(text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        _fail(ErrorCode.TEXT_TOO_LONG, f"text has {len(text)} characters; the limit is {max_chars}")
    if not any(c.isalnum() for c in text):
        _fail(ErrorCode.TEXT_NOT_SPEAKABLE, "text has no letters or digits to speak")
    bad = [c for c in text if ord(c) < 32 and c not in "\t\n\r"]
    if bad:
        _fail(ErrorCode.INVALID_MANIFEST, f"text contains control characters {sorted({hex(ord(c)) for c in bad})}")


def _decode_voice(data: bytes, min_s: float, max_s: float) -> tuple[np.ndarray, int]:
    try:
        info = audio_utils.probe(data)
    except audio_utils.AudioDecodeError as e:
        _fail(ErrorCode.VOICE_UNREADABLE, f"voice: {e}")
    if info.duration_s > max_s:
        _fail(ErrorCode.VOICE_TOO_LONG, f"voice is {info.duration_s:.1f}s; the limit is {max_s:g}s")
    if info.duration_s < min_s:
        _fail(ErrorCode.VOICE_TOO_SHORT, f"voice is {info.duration_s:.2f}s; at least {min_s:g}s is needed")
    try:
        return audio_utils.decode(data)
    except audio_utils.AudioDecodeError as e:
        _fail(ErrorCode.VOICE_UNREADABLE, f"voice: {e}")


async def serve(settings: Settings, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
    """Start-up (sync the bundle, load the engine once) then consume. Returns jobs processed."""
    from pipeline.models.cache import ModelCache
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine

    t0 = time.perf_counter()
    # Signals first: a SIGTERM during start-up (scale-in, deploy) must end the process cleanly too.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
    announce = asyncio.create_task(_announce_stop(stopping, settings.shutdown_grace_s))
    cache = ModelCache.for_settings(settings)
    report = await asyncio.to_thread(cache.sync, settings.model_name, settings.model_version)
    t_sync = time.perf_counter()
    await FaultHooks(settings.fault_dir).hold_at_startup(stopping)
    if stopping.is_set():
        log.info("stop requested during start-up: exiting before loading the model")
        announce.cancel()
        return 0
    engine = await asyncio.to_thread(F5Engine.load, report.path, settings.device)
    aligner = await asyncio.to_thread(Aligner, report.path / report.bundle.aligner.model)
    t_load = time.perf_counter()
    phases = {**report.seconds, "load": t_load - t_sync, "total": t_load - t0}
    for phase, seconds in phases.items():
        metrics.COLD_START_SECONDS.labels(phase).set(seconds)
    if report.bundle.random_weights:
        log.warning("!!! model bundle %s has RANDOM WEIGHTS: its audio is noise (test bundle) !!!", report.bundle.name)
    liveness = asyncio.create_task(_liveness())
    try:
        async with (
            open_store(settings) as store,
            Notifier.open(settings.notify_topic_arn, settings.bucket) as notifier,
            Queue.open(settings.queue, resolve=False) as queue,
        ):
            if not await _resolve_queue(queue, stopping):
                log.info("stop requested during start-up: exiting before consuming")
                return 0
            worker = Worker(settings, store, queue, engine, aligner, stopping, notifier)
            log.info(
                "worker %s ready: model %s/%s (%s cache, %d files fetched) on %s; cold start %s",
                settings.worker_id,
                report.bundle.name,
                report.bundle.version,
                "warm" if report.warm else "cold",
                len(report.files_fetched),
                engine.device,
                " ".join(f"{k}={v:.2f}s" for k, v in phases.items()),
            )
            metrics.set_ready(True)
            return await worker.run(max_jobs=max_jobs, idle_exit_s=idle_exit_s)
    finally:
        metrics.set_ready(False)
        liveness.cancel()
        announce.cancel()
        aligner.close()


async def _announce_stop(stopping: asyncio.Event, grace_s: float) -> None:
    await stopping.wait()
    log.info("stop requested: receiving no more messages; the job in hand has %gs to finish", grace_s)


async def _resolve_queue(queue: Queue, stopping: asyncio.Event) -> bool:
    """Look the queue up once SQS answers: an outage at start-up waits instead of crashing."""
    while not stopping.is_set():
        try:
            await queue.resolve()
            return True
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("queue %s unreachable (%s); retrying in %.0fs", queue.name, e, _RECEIVE_BACKOFF_S)
            await asyncio.sleep(_RECEIVE_BACKOFF_S)
    return False


async def _liveness() -> None:
    """Proves to /healthz that the event loop runs (inference is off-loop, so it always should)."""
    while True:
        metrics.beat()
        await asyncio.sleep(5)
