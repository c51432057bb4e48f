"""Publishing a finished job: audio and subtitles, then the result, in that order.

The order is the exactly-once guarantee's last half (the claim in ``pipeline.state`` is the
first): outputs are durable before the result names them, the result is written with
``If-None-Match: *`` so the first result is the only result, and only then does the job state
machine write COMPLETED and the worker delete the message. Before uploading, the claim is
re-asserted (a worker paused past its lease must not overwrite a successor's outputs), and a
result that exists already is adopted instead of replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from pipeline import keys
from pipeline.config import Settings
from pipeline.contract import (
    AudioInfo,
    JobResult,
    Manifest,
    ModelInfo,
    ResultWarning,
    StageTimings,
    SubtitleFormat,
    WordTiming,
    utcnow,
)
from pipeline.faults import NO_FAULTS, FaultHooks
from pipeline.stages import Rendered
from pipeline.state import Claim, Ledger
from pipeline.store import PreconditionFailed, Store
from pipeline.tts import subtitles

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
    seed: int
    warnings: list[ResultWarning]

    @property
    def words(self) -> list[WordTiming]:
        return self.rendered.words


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
        claim: Claim,
        out: Outputs,
        timed: Callable[[str, Callable[[], Awaitable[T]]], Awaitable[T]],
        timings: Callable[[], StageTimings],
    ) -> bool:
        """Upload (as stage "upload" of ``timed``) and write the result, whose ``timings_ms`` are read
        once the upload is done. False: a result existed already (adopt it, discard ours)."""
        job_id, attempt = claim.job_id, claim.status.attempt
        # Publishing is not interruptible. Re-assert the claim first: a worker that lost its lease
        # does not even start uploading (one paused after this point is handled by the keys).
        await self.ledger.renew(claim)
        if await self.store.exists(keys.result_key(job_id)):
            return False
        await self.faults.hold_before_publish(job_id, attempt)
        audio_key = keys.output_key(job_id, attempt, out.manifest.output_format.value)
        subs = await timed("upload", lambda: self.upload(job_id, attempt, out, audio_key))
        url = await self.store.presign_get(audio_key, self.settings.presign_expiry_s)
        result = self._result(job_id, out, audio_key, url, subs, timings())
        # Audio and subtitles are durable before the result names them; If-None-Match makes the
        # first result the only result.
        try:
            await self.store.put_json(keys.result_key(job_id), result, if_none_match=True)
        except PreconditionFailed:
            existing = await self.store.get_model(keys.result_key(job_id), JobResult)
            if existing is None or existing.completed_at != result.completed_at:
                # Another attempt's result won: what we uploaded is named by nothing.
                log.warning("another attempt published first: removing this attempt's outputs")
                await self.remove_outputs(job_id, attempt)
                return False
        log.info(
            "result published: %.2fs of audio, timings %s",
            result.audio.duration_s,
            {k: round(v) for k, v in result.timings_ms.model_dump().items()},
        )
        return True

    async def upload(self, job_id: str, attempt: int, out: Outputs, audio_key: str) -> dict[SubtitleFormat, str]:
        await self.store.put_file(audio_key, out.rendered.path, out.rendered.content_type)
        subs: dict[SubtitleFormat, str] = {}
        if not out.words:  # alignment skipped (warning recorded): no subtitles to write
            return subs
        for fmt in out.manifest.subtitles:
            key = keys.output_key(job_id, attempt, fmt.value)
            await self.store.put_bytes(key, subtitles.render(fmt.value, out.words).encode(), _SUB_TYPES[fmt.value])
            subs[fmt] = keys.s3_uri(self.settings.bucket, key)
        return subs

    async def remove_outputs(self, job_id: str, attempt: int) -> None:
        """This attempt's outputs only: another attempt's may be what the result names."""
        for key in await self.store.list_keys(keys.attempt_outputs_prefix(job_id, attempt)):
            await self.store.delete(key)

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
        return JobResult(
            job_id=job_id,
            audio=AudioInfo(
                uri=keys.s3_uri(self.settings.bucket, audio_key),
                url=url,
                url_expires_at=utcnow() + timedelta(seconds=expires),
                format=manifest.output_format,
                sample_rate=r.sample_rate,
                duration_s=round(r.samples / r.sample_rate, 4),
                bytes=r.path.stat().st_size,
            ),
            word_timings=r.words if manifest.word_timings else None,
            sentences=r.sentences if manifest.word_timings and r.words else None,
            segments=r.segments or None,
            pauses=r.pauses,
            subtitles=subs,
            text=manifest.full_text,
            normalized_text=out.normalized_text,
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
            completed_at=utcnow(),
        )
