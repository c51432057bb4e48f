"""The work of one job, stage by stage: inputs, synthesis, alignment, encoding.

Each stage either returns its product or raises ``JobFailed`` with a specific error code (bad
input, a failed model call) or ``JobAborted`` (cancelled, timed out, shut down, lost). What to do
with those outcomes is the job state machine's business (``pipeline.jobs``); publishing is
``pipeline.publish``'s.

Synthesis goes through the batcher (``pipeline.batcher``): a job feeds it its text chunks, at most
``max_batch`` at a time so that a long text cannot crowd out other jobs, and records progress as
chunks come back. Everything else runs off the event loop in threads, so heartbeats, other jobs'
downloads and the next batch's assembly overlap the model's work.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from pipeline import keys
from pipeline.batcher import Batcher, Work
from pipeline.config import Settings
from pipeline.contract import (
    ErrorCode,
    Manifest,
    ManifestError,
    ResultWarning,
    WarningCode,
    WordTiming,
    parse_manifest,
)
from pipeline.faults import NO_FAULTS, FaultHooks
from pipeline.store import NotFound, Store, TooLarge
from pipeline.tts import audio as audio_utils
from pipeline.tts.align import AlignmentImpossible
from pipeline.tts.engine import EngineError, Reference, SynthesisRequest, SynthesisResult
from pipeline.tts.voices import VoiceLibrary, VoiceRecord
from pipeline.watch import JobWatch

if TYPE_CHECKING:
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine
    from pipeline.tts.sampler import Item

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """Ends a job FAILED with ``code``: permanent for this manifest, never retried."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


def fail(code: ErrorCode | str, message: str) -> NoReturn:
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


class Stages:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        engine: F5Engine,
        aligner: Aligner,
        batcher: Batcher,
        faults: FaultHooks = NO_FAULTS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.aligner = aligner
        self.batcher = batcher
        self.faults = faults
        self.voices = VoiceLibrary(store)

    # -- inputs ---------------------------------------------------------------------------------

    async def inputs(self, job_id: str) -> JobInputs:
        s = self.settings
        try:
            raw = await self.store.get_bytes(keys.manifest_key(job_id), max_bytes=s.max_manifest_bytes)
        except NotFound:
            fail(ErrorCode.MANIFEST_NOT_FOUND, f"{keys.manifest_key(job_id)} no longer exists")
        except TooLarge as e:
            fail(ErrorCode.MANIFEST_TOO_LARGE, f"manifest is {e.size} bytes; the limit is {e.limit}")
        try:
            manifest = parse_manifest(raw)
        except ManifestError as e:
            fail(e.code, e.message)
        _check_text(manifest.text, s.max_text_chars)
        voice = manifest.voice or s.default_voice
        if not voice:
            fail(ErrorCode.VOICE_REQUIRED, "manifest names no voice and the worker has no TTS_DEFAULT_VOICE")
        library = await self.voices.get(voice)  # a library name ("alice") before a plain key
        if library is not None:
            vkey = library[0].audio_key
        else:
            try:
                vkey = keys.voice_key(voice, s.bucket, s.voice_prefixes)
            except keys.VoiceRefError as e:
                fail(e.code, e.message)
        try:
            data = await self.store.get_bytes(vkey, max_bytes=s.max_voice_bytes)
        except NotFound:
            fail(ErrorCode.VOICE_NOT_FOUND, f"voice {voice!r}: no library voice and no object s3://{s.bucket}/{vkey}")
        except TooLarge as e:
            fail(ErrorCode.VOICE_TOO_LARGE, f"voice is {e.size} bytes; the limit is {e.limit}")
        wave, sr = await asyncio.to_thread(_decode_voice, data, s.min_voice_seconds, s.max_voice_seconds)
        if not manifest.ref_text.strip() and library is not None and library[0].ref_text:
            record = library[0]
            return JobInputs(
                manifest, vkey, wave, sr, record.ref_text, "voice_library", library, record.ref_text_source == "asr"
            )
        return JobInputs(manifest, vkey, wave, sr, manifest.ref_text, "manifest", library)

    # -- synthesis ------------------------------------------------------------------------------

    async def reference(self, inputs: JobInputs, model_label: str) -> Reference:
        try:
            ref = await asyncio.to_thread(
                self.engine.prepare_reference, inputs.wave, inputs.sample_rate, inputs.ref_text
            )
        except EngineError as e:
            fail(e.code, str(e))
        if ref.text_source == "asr" and inputs.library is not None:
            await self._remember_transcript(inputs.library, ref.text, model_label)
        return ref

    async def synthesize(self, request: SynthesisRequest, watch: JobWatch) -> SynthesisResult:
        """The job's chunks through the batcher, ``max_batch`` in flight at a time."""
        try:
            items = await asyncio.to_thread(self.engine.plan, request)
        except EngineError as e:
            fail(e.code, str(e))
        total = len(items)
        waves: list[np.ndarray | None] = [None] * total
        in_flight: dict[asyncio.Future[np.ndarray], int] = {}
        next_i = done = 0
        watch.set_progress(0, total)
        try:
            while True:
                watch.check()
                hold_at = self.faults.hold_point(watch.job_id, watch.attempt, total)
                if hold_at == done and not in_flight:  # test hook: stopped at a chunk boundary
                    await self.faults.hold(watch.job_id, watch.attempt, done, total, watch.check)
                    continue
                if done == total:
                    break
                while next_i < total and len(in_flight) < self.batcher.max_batch and next_i != hold_at:
                    in_flight[self._submit(request, items[next_i], watch.job_id)] = next_i
                    next_i += 1
                aborted = asyncio.ensure_future(watch.aborted.wait())
                finished, _ = await asyncio.wait([*in_flight, aborted], return_when=asyncio.FIRST_COMPLETED)
                aborted.cancel()
                watch.check()
                for fut in finished:
                    if fut in in_flight:
                        i = in_flight.pop(fut)  # type: ignore[call-overload]
                        waves[i] = _chunk_result(fut, i, total, self.engine.device)  # type: ignore[arg-type]
                        done += 1
                watch.set_progress(done, total)
        finally:
            if in_flight:  # aborted or failed: give the model's time to other jobs
                self.batcher.cancel(watch.job_id)
                for fut in in_flight:
                    fut.cancel()
        try:
            return await asyncio.to_thread(self.engine.assemble, request, items, waves)  # type: ignore[arg-type]
        except EngineError as e:
            fail(e.code, str(e))

    def _submit(self, request: SynthesisRequest, item: Item, owner: str) -> asyncio.Future[np.ndarray]:
        group = (request.nfe_step, request.cfg_strength)
        return self.batcher.submit(Work("synthesis", group, item.frames, owner, item))

    async def _remember_transcript(self, library: tuple[VoiceRecord, str], text: str, by: str) -> None:
        """First transcription of a library voice: store it so no job anywhere runs ASR on it again."""
        record, etag = library
        saved = await self.voices.save_transcript(record.name, etag, text, by)
        log.info(
            "voice %s: transcript %s", record.name, "stored" if saved and saved.ref_text == text.strip() else "kept"
        )

    # -- alignment and encoding -----------------------------------------------------------------

    async def align(
        self, manifest: Manifest, wave: np.ndarray, sr: int, warnings: list[ResultWarning]
    ) -> list[WordTiming]:
        try:
            spans = await asyncio.to_thread(self.aligner.align, wave, sr, manifest.text, manifest.language)
        except AlignmentImpossible as e:
            warnings.append(ResultWarning(code=WarningCode.ALIGNMENT_SKIPPED, message=str(e)))
            log.warning("alignment skipped: %s", e)
            return []
        return [WordTiming(word=s.word, start=s.start, end=s.end, score=round(s.score, 4)) for s in spans]

    async def encode(self, manifest: Manifest, wave: np.ndarray, sr: int) -> tuple[bytes, str]:
        try:
            return await asyncio.to_thread(audio_utils.encode, wave, sr, manifest.output_format.value)
        except Exception as e:
            fail(ErrorCode.ENCODE_FAILED, f"encoding {manifest.output_format.value} failed: {e}")


def _chunk_result(fut: asyncio.Future[np.ndarray], i: int, total: int, device: str) -> np.ndarray:
    """A chunk's waveform, or the job's failure: out-of-memory, shape errors and the like fail this
    job only (the batcher has already retried the chunk alone)."""
    try:
        return fut.result()
    except EngineError as e:
        fail(e.code, str(e))
    except MemoryError as e:  # torch.OutOfMemoryError is a RuntimeError; MemoryError: host RAM, injected
        fail(ErrorCode.SYNTHESIS_FAILED, f"chunk {i + 1}/{total}: out of memory on {device}: {e}")
    except (RuntimeError, ValueError) as e:
        oom = "out of memory" in str(e).lower()
        what = f"out of memory on {device}" if oom else f"{type(e).__name__}"
        fail(ErrorCode.SYNTHESIS_FAILED, f"chunk {i + 1}/{total}: synthesis failed: {what}: {e}")


def _check_text(text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        fail(ErrorCode.TEXT_TOO_LONG, f"text has {len(text)} characters; the limit is {max_chars}")
    if not any(c.isalnum() for c in text):
        fail(ErrorCode.TEXT_NOT_SPEAKABLE, "text has no letters or digits to speak")
    bad = [c for c in text if ord(c) < 32 and c not in "\t\n\r"]
    if bad:
        fail(ErrorCode.INVALID_MANIFEST, f"text contains control characters {sorted({hex(ord(c)) for c in bad})}")


def _decode_voice(data: bytes, min_s: float, max_s: float) -> tuple[np.ndarray, int]:
    try:
        info = audio_utils.probe(data)
    except audio_utils.AudioDecodeError as e:
        fail(ErrorCode.VOICE_UNREADABLE, f"voice: {e}")
    if info.duration_s > max_s:
        fail(ErrorCode.VOICE_TOO_LONG, f"voice is {info.duration_s:.1f}s; the limit is {max_s:g}s")
    if info.duration_s < min_s:
        fail(ErrorCode.VOICE_TOO_SHORT, f"voice is {info.duration_s:.2f}s; at least {min_s:g}s is needed")
    try:
        return audio_utils.decode(data)
    except audio_utils.AudioDecodeError as e:
        fail(ErrorCode.VOICE_UNREADABLE, f"voice: {e}")
