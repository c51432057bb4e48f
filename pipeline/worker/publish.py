"""Publishing a finished job: audio and subtitles, then the result, in that order.

The order is the exactly-once guarantee's last half (the claim in ``pipeline.jobs.state`` is the
first): outputs are durable before the result names them, and the result is written with
``If-None-Match: *``, so the first result is the only result. The result is the commit point:
from the moment it exists the job is COMPLETED, whatever happens to the status write after it,
and the outputs it names are never removed (``pipeline.jobs.outputs``).

Before uploading, the claim is re-asserted (a worker paused past its lease must not even start).
Each output is created once (``Store.put_new``): a retry that meets what its own lost try wrote is
not a second version. A result that exists already (an earlier attempt's, whose worker lost the
answer) is adopted instead of replaced; the attempt's record of what it sent and what it knows
(``Attempt.result``) tells the runner what its ending may remove.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from pipeline.cloud.store import PreconditionFailed, Store
from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import (
    AudioInfo,
    JobResult,
    Manifest,
    ModelInfo,
    Priority,
    ResultWarning,
    StageTimings,
    SubtitleFormat,
    Usage,
    WordTiming,
    utcnow,
)
from pipeline.jobs.outputs import named_keys, unneeded
from pipeline.jobs.state import Ledger
from pipeline.runtime import metrics
from pipeline.runtime.faults import NO_FAULTS, FaultHooks
from pipeline.tts import subtitles
from pipeline.tts.batcher import Metered
from pipeline.worker.attempt import Attempt, ResultState
from pipeline.worker.render import Rendered

log = logging.getLogger(__name__)
T = TypeVar("T")

_SUB_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt"}


@dataclass
class Outputs:
    """Everything a finished job publishes, as the stages produced it."""

    manifest: Manifest
    rendered: Rendered
    ref_text: str
    ref_text_source: str
    ref_text_from_asr: bool
    voice_key: str
    normalized_text: str
    languages: dict[str, int]
    seed: int
    warnings: list[ResultWarning]
    metered: Metered = field(default_factory=Metered)  # the attempt's model use (the batcher's meter)

    @property
    def words(self) -> list[WordTiming]:
        return self.rendered.words

    def usage(self, audio_s: float) -> Usage:
        items, quality = self.metered.items, self.rendered.quality
        return Usage(
            characters=len(self.normalized_text),
            audio_s=audio_s,
            model_s=round(self.metered.seconds, 3),
            chunks_synthesized=items.get("synthesis", 0),
            chunks_regenerated=quality.chunks_regenerated if quality else 0,
            transcriptions=items.get("transcription", 0),
        )


def _observe(attempt: Attempt, lane: str, audio_s: float) -> None:
    """The figures a fleet is sized by (docs/operations.md): audio made, real-time factor, and time
    to first audio for a job whose audio is one piece (a job of several chunks had it at chunk 1)."""
    on_worker = time.monotonic() - attempt.started
    metrics.AUDIO_SECONDS.labels(lane).inc(audio_s)
    if audio_s > 0:
        metrics.REAL_TIME_FACTOR.observe(on_worker / audio_s)
    if not attempt.first_audio:
        attempt.first_audio = True
        metrics.FIRST_AUDIO_SECONDS.labels(lane).observe(on_worker)


class Publisher:
    def __init__(
        self, settings: Settings, store: Store, ledger: Ledger, model: ModelInfo, faults: FaultHooks = NO_FAULTS
    ) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.model = model
        self.faults = faults

    async def publish(
        self,
        attempt: Attempt,
        out: Outputs,
        timed: Callable[[str, Callable[[], Awaitable[T]]], Awaitable[T]],
        timings: Callable[[], StageTimings],
    ) -> bool:
        """Upload (as stage "upload" of ``timed``) and write the result, whose ``timings_ms`` are read
        once the upload is done. False: a result existed already (adopted; ours is discarded)."""
        job_id, number = attempt.job_id, attempt.number
        # Re-assert the claim first: a worker that lost its lease does not even start uploading. One
        # paused after this point uploads to its own attempt's keys; its result can then only land
        # before a successor's (which adopts it) or be refused by it (If-None-Match).
        # A claim written less than one heartbeat interval ago (at most half the lease, the slack
        # the heartbeat itself relies on) cannot have lapsed yet: a short job skips that PUT.
        if not attempt.claim.written_within(self.settings.heartbeat_interval_s):
            await self.ledger.renew(attempt.claim)
        await self.faults.hold_before_publish(job_id, number)
        audio_key = keys.output_key(job_id, number, out.manifest.output_format.value)
        subs = await timed("upload", lambda: self.upload(attempt, out, audio_key))
        url = await self.store.presign_get(audio_key, self.settings.presign_expiry_s)
        result = self._result(job_id, out, audio_key, url, subs, timings())
        # The last look before the commit point: a lost claim (seen by the heartbeat during a long
        # upload) or a cancel stops here, with nothing named yet.
        attempt.check()
        attempt.result = ResultState.SENT  # from here on, the result may exist whatever we hear back
        try:
            await self.store.put_json(keys.result_key(job_id), result, if_none_match=True)
        except PreconditionFailed:
            existing = await self.store.get_model(keys.result_key(job_id), JobResult)
            if existing is None:
                raise  # it vanished under us: nothing to adopt (the job is retried)
            attempt.result_known(named_keys(existing, self.settings.bucket))
            if existing.audio.uri != result.audio.uri:
                log.warning("another attempt published first: adopting its result")
                await self._discard(attempt)
                return False
            # Our own write, whose answer was lost and retried into the 412.
        else:
            attempt.result_known(named_keys(result, self.settings.bucket))
        log.info(
            "result published: %.2fs of audio, timings %s",
            result.audio.duration_s,
            {k: round(v) for k, v in result.timings_ms.model_dump().items()},
        )
        _observe(attempt, (attempt.claim.status.priority or Priority.bulk).value, result.audio.duration_s)
        return True

    async def _discard(self, attempt: Attempt) -> None:
        """Another attempt's result won: what this one uploaded is named by nothing, for good (a
        result is never replaced), so it can go now, claim or no claim."""
        garbage = unneeded(attempt.uploaded, named=attempt.named, ended=True)
        try:
            await self.store.delete_many(garbage)
        except Exception as e:
            log.warning("could not remove this attempt's outputs (the reconciler will): %s", e)
        attempt.uploaded.difference_update(garbage)

    async def upload(self, attempt: Attempt, out: Outputs, audio_key: str) -> dict[SubtitleFormat, str]:
        attempt.uploaded.add(audio_key)  # before the PUT: a lost answer may still have landed
        await self.store.put_file_new(audio_key, out.rendered.path, out.rendered.content_type)
        subs: dict[SubtitleFormat, str] = {}
        if not out.words:  # alignment skipped (warning recorded): no subtitles to write
            return subs
        for fmt in out.manifest.subtitles:
            key = keys.output_key(attempt.job_id, attempt.number, fmt.value)
            attempt.uploaded.add(key)
            body = subtitles.render(fmt.value, out.words).encode()
            await self.store.put_new(key, body, _SUB_TYPES[fmt.value])
            subs[fmt] = keys.s3_uri(self.settings.bucket, key)
        return subs

    def _result(
        self,
        job_id: str,
        out: Outputs,
        audio_key: str,
        url: str,
        subs: dict[SubtitleFormat, str],
        timings: StageTimings,
    ) -> JobResult:
        expires = self.settings.presign_expiry_s
        manifest = out.manifest
        r = out.rendered
        duration_s = round(r.samples / r.sample_rate, 4)
        return JobResult(
            job_id=job_id,
            audio=AudioInfo(
                uri=keys.s3_uri(self.settings.bucket, audio_key),
                url=url,
                url_expires_at=utcnow() + timedelta(seconds=expires),
                format=manifest.output_format,
                sample_rate=r.sample_rate,
                duration_s=duration_s,
                bytes=r.path.stat().st_size,
            ),
            word_timings=r.words if manifest.word_timings else None,
            sentences=r.sentences if manifest.word_timings and r.words else None,
            segments=r.segments or None,
            pauses=r.pauses,
            subtitles=subs,
            text=manifest.full_text,
            normalized_text=out.normalized_text,
            languages=out.languages,
            ref_text=out.ref_text,
            ref_text_source=out.ref_text_source,
            ref_text_from_asr=out.ref_text_from_asr,
            voice_key=out.voice_key,
            seed=out.seed,
            chunks=r.chunks,
            chunks_reused=r.reused,
            model=self.model,
            worker=self.settings.worker_id,
            timings_ms=timings,
            warnings=out.warnings,
            quality=r.quality,
            usage=out.usage(duration_s),
            completed_at=utcnow(),
        )
