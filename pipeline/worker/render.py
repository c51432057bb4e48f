"""Rendering one job: reference preparation, then synthesis, alignment and encoding, chunk by chunk.

Rendering walks the job's pieces (``pipeline.text.script``: chunks of speech and pauses) in order.
Chunks go through the batcher (``pipeline.tts.batcher``), at most ``max_batch`` of a job in flight so a
long text cannot crowd out other jobs. Each finished chunk is aligned on its own (word timings
shifted into the job's timeline, so alignment cost and memory stay per chunk), made durable in S3
(``pipeline.jobs.chunks``: listen early, resume after a crash) and streamed into the output file
(``pipeline.tts.assembler``): memory stays bounded however long the text. Chunks an earlier
attempt made durable are reused instead of synthesised. Everything else runs off the event loop in
threads, so heartbeats, other jobs' downloads and the next batch's assembly overlap the model.

A stage either returns its product or raises ``JobFailed`` (a specific error code: a failed model
call, audio the model could not make) or ``JobAborted`` (the attempt's signals); what becomes of
the job is the runner's business (``pipeline.worker.runner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pipeline.cloud.store import Store
from pipeline.config import Settings
from pipeline.jobs import chunks as chunk_io
from pipeline.jobs.chunks import ChunkRecord, ChunkSpec, ChunkStore
from pipeline.jobs.contract import (
    ChunkQuality,
    ErrorCode,
    PauseTiming,
    Priority,
    QualitySummary,
    ResultWarning,
    SegmentTiming,
    SentenceTiming,
    WarningCode,
    WordTiming,
)
from pipeline.runtime import memory, metrics
from pipeline.runtime.faults import NO_FAULTS, FaultHooks
from pipeline.text import script, zh
from pipeline.text.script import Piece
from pipeline.tts import sampler
from pipeline.tts.align import AlignmentImpossible
from pipeline.tts.assembler import StreamingAssembler
from pipeline.tts.batcher import Batcher, BatcherUnavailable, Work, settled
from pipeline.tts.engine import (
    CROSS_FADE_S,
    SAMPLE_RATE,
    EngineError,
    Reference,
    chunk_budget,
    transcription_failed,
)
from pipeline.tts.shares import Tenant
from pipeline.tts.voices import VoiceError, VoiceLibrary, VoiceRecord
from pipeline.worker import budget, quality
from pipeline.worker.attempt import Attempt
from pipeline.worker.failures import fail
from pipeline.worker.inputs import JobInputs, VoiceInput

if TYPE_CHECKING:
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

# Long jobs give freed chunk buffers back to the OS every this many chunks (pipeline/runtime/memory.py).
TRIM_EVERY = 8


@dataclass
class Rendered:
    """A job's audio (a file on disk, streamed there chunk by chunk) and its speech marks."""

    path: Path
    samples: int
    sample_rate: int
    content_type: str
    words: list[WordTiming]
    sentences: list[SentenceTiming]
    segments: list[SegmentTiming]
    pauses: list[PauseTiming]
    chunks: int
    reused: int
    stage_ms: dict[str, float] = field(default_factory=dict)  # alignment/encode/upload inside synthesis
    quality: QualitySummary | None = None  # the quality gate's verdicts (None: gate off)


class Renderer:
    """The model side of a job: reference preparation and the render loop, through the batcher."""

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
        # Clips being transcribed now (sha256 -> its lock, and how many preparations hold or want it).
        self._transcriptions: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # -- synthesis ------------------------------------------------------------------------------

    async def references(self, inputs: JobInputs, model_label: str, attempt: Attempt) -> list[Reference]:
        """One per ``inputs.voices``; prepared once per distinct (clip content, transcript), with
        the attempt's ``check`` between preparations (each may be an ASR run)."""
        prepared: dict[tuple[str, str], Reference] = {}
        refs = []
        for voice in inputs.voices:
            ref = prepared.get((voice.sha256, voice.ref_text))
            if ref is None:
                attempt.check()
                try:
                    ref = await self._reference(voice, attempt, inputs.batch_priority, inputs.tenant)
                except EngineError as e:
                    fail(e.code, f"voice {voice.name!r}: {e}" if inputs.dialogue else str(e))
                prepared[(voice.sha256, voice.ref_text)] = ref
                if ref.text_source == "asr" and voice.library is not None:
                    await self._remember_transcript(voice.library, ref.text, model_label)
            refs.append(ref)
        return refs

    async def _reference(self, voice: VoiceInput, attempt: Attempt, priority: int, tenant: Tenant) -> Reference:
        """A voice's reference. Clipping and trimming run in a thread (CPU only); a voice without a
        transcript is transcribed by the bundle's ASR model on the model thread, as a
        ``transcription`` item through the batcher like the quality gate's: one thread owns the
        device, and the ASR pipeline object is shared with the gate (``pipeline.tts.asr``). One
        transcription of a clip at a time in this worker: a job that needs the same clip meanwhile
        waits for the engine's cache instead of transcribing it again."""
        async with self._transcribing(voice.sha256 if not voice.ref_text.strip() else None):
            step = await asyncio.to_thread(self.engine.begin_reference, voice.wave, voice.sample_rate, voice.ref_text)
            if isinstance(step, Reference):
                return step
            work = Work(
                "transcription", None, 1, attempt.job_id, step.asr_audio, attempt.number, priority, step.seconds, tenant
            )
            answer = await settled(self.batcher, work, attempt.abort.event, attempt.check)
            try:
                transcript = str(answer.result())
            except BatcherUnavailable:
                raise  # the worker's fault, not the voice's: the job goes back to the queue
            except Exception as e:  # the model call failed (out of memory, say): this job's
                raise transcription_failed(e) from e
            return self.engine.finish_reference(step, transcript)

    @contextlib.asynccontextmanager
    async def _transcribing(self, clip: str | None) -> AsyncIterator[None]:
        """Held while ``clip`` (its sha256; None: nothing to transcribe) is being prepared."""
        if clip is None:
            yield
            return
        entry = self._transcriptions.setdefault(clip, (asyncio.Lock(), [0]))
        entry[1][0] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1][0] -= 1
            if not entry[1][0]:
                del self._transcriptions[clip]

    async def render(
        self,
        inputs: JobInputs,
        refs: list[Reference],
        seed: int,
        model_label: str,
        attempt: Attempt,
        workdir: Path,
        warnings: list[ResultWarning],
    ) -> Rendered:
        """Every piece in order: durable chunks reused, the rest synthesised through the batcher
        (``max_batch`` of this job's chunks in flight, so a long text cannot crowd out other jobs),
        each new chunk aligned and made durable, and the audio streamed to a file."""
        # An interactive job's first chunk is short: its first audio exists after a fraction of a
        # full chunk's model time (the API streams it at once). Planned from the inbox the job was
        # dropped in, so every attempt plans the same chunks.
        pieces = inputs.analysis.plan(
            lambda turn, speed: chunk_budget(
                len(refs[inputs.turn_voice[turn]].audio), refs[inputs.turn_voice[turn]].text, speed
            ),
            first_short=inputs.priority is Priority.interactive,
        )
        m = inputs.manifest
        # The gate's policy is part of the budget: its retries and transcriptions are GPU work too.
        policy = quality.resolve(self.settings, m.quality, self.engine.bundle)
        work = budget.check_plan(self.settings, pieces, refs, inputs.turn_voice, m.nfe_step, m.cfg_strength, policy)
        run = _Render(self, inputs, refs, pieces, seed, model_label, attempt, workdir, warnings, policy)
        if run.gate is not None:
            # Regenerations share the job's model-work limit with its plan. check_plan admitted
            # the worst case (every try of every chunk), so this never binds; it stays as a
            # second fence should the estimate and the gate ever disagree.
            run.gate.regen_left = max(0, self.settings.max_model_work - work)
        return await run.go()

    async def _remember_transcript(self, library: tuple[VoiceRecord, str], text: str, by: str) -> None:
        """First transcription of a library voice: store it so no job anywhere runs ASR on it again."""
        record, etag = library
        try:
            saved = await self.voices.save_transcript(record.name, etag, text, by)
        except VoiceError as e:  # replaced by something unusable meanwhile: this job has its text
            log.warning("voice %s: transcript not stored (%s)", record.name, e)
            return
        log.info(
            "voice %s: transcript %s", record.name, "stored" if saved and saved.ref_text == text.strip() else "kept"
        )


class _Render:
    """One job's render loop (``Renderer.render``)."""

    def __init__(
        self,
        renderer: Renderer,
        inputs: JobInputs,
        refs: list[Reference],
        pieces: list[Piece],
        seed: int,
        model_label: str,
        attempt: Attempt,
        workdir: Path,
        warnings: list[ResultWarning],
        policy: quality.Policy | None,
    ) -> None:
        self.st = renderer
        self.inputs = inputs
        self.refs = refs
        self.pieces = pieces
        self.attempt = attempt
        self.warnings = warnings
        self.chunks = ChunkStore(renderer.store, attempt.job_id)
        m = inputs.manifest
        self.speech = [p for p in pieces if not p.is_pause]
        # A one-chunk job has nothing to resume and nothing to hear early: its chunk stays in
        # memory (saving a LIST, two PUTs and their removal per job; most jobs are short).
        self.durable = len(self.speech) > 1
        self.ordinal = {p.index: k for k, p in enumerate(self.speech)}
        self.specs: dict[int, ChunkSpec] = {}
        self.gate = (
            None
            if policy is None
            else quality.Gate(
                policy,
                renderer.batcher,
                attempt,
                seed,
                SAMPLE_RATE,
                renderer.faults,
                inputs.batch_priority,
                inputs.tenant,
            )
        )
        self.verdicts: list[ChunkQuality] = []
        shas = [hashlib.sha256(r.audio.tobytes()).hexdigest() for r in refs]
        for p in self.speech:
            v = inputs.turn_voice[p.turn]
            self.specs[p.index] = ChunkSpec(
                model=model_label,
                voice_sha256=shas[v],
                ref_text=refs[v].text,
                spoken=p.spoken,
                seed=seed + self.ordinal[p.index],
                speed=p.speed,
                nfe_step=m.nfe_step,
                cfg_strength=m.cfg_strength,
                remove_silence=m.remove_silence,
                align_language=m.language if m.needs_alignment else None,
                quality=policy.tag if policy is not None else "",
            )
        self.asm = StreamingAssembler(
            workdir / f"audio.{m.output_format.value}",
            SAMPLE_RATE,
            m.output_format.value,
            int(CROSS_FADE_S * SAMPLE_RATE),
        )
        self.marks = _Marks(inputs)
        self.ms: dict[str, float] = {"alignment": 0.0, "encode": 0.0, "upload": 0.0}
        self.reused = 0
        self.skipped: list[str] = []

    async def go(self) -> Rendered:
        attempt, total = self.attempt, len(self.speech)
        # A first attempt knows no earlier one left chunks: no LIST.
        durable = await self.chunks.listed() if self.durable and attempt.number > 1 else {}
        reuse = {i for i, spec in self.specs.items() if spec.digest() in durable.get(i, ())}
        pending: dict[int, asyncio.Future[np.ndarray]] = {}
        next_submit = done = 0
        prev: Piece | None = None
        attempt.progress.set(0, total)
        try:
            for piece in self.pieces:
                attempt.check()
                k = self.ordinal.get(piece.index)
                hold_at = self.st.faults.hold_point(attempt.job_id, attempt.number, total)
                if k is not None and hold_at == k and not pending:  # test hook: held at a chunk boundary
                    await self.st.faults.hold(attempt.job_id, attempt.number, done, total, attempt.check)
                    hold_at = None
                while next_submit < len(self.pieces) and len(pending) < self.st.batcher.max_batch:
                    nxt = self.pieces[next_submit]
                    kn = self.ordinal.get(nxt.index)
                    if kn is not None and hold_at is not None and kn >= hold_at:
                        break
                    if kn is not None and nxt.index not in reuse:
                        pending[nxt.index] = self._submit(nxt)
                    next_submit += 1
                if piece.is_pause:
                    await self._pause(piece)
                else:
                    if piece.index in reuse and await self._reuse(piece, prev):
                        self.reused += 1
                        metrics.CHUNKS.labels("reused").inc()
                    else:
                        fut = pending.pop(piece.index, None) or self._submit(piece)
                        await self._fresh(piece, prev, await self._wait(fut, k or 0, total))
                    done += 1
                    attempt.progress.set(done, total, self.reused)
                    if done % TRIM_EVERY == 0:
                        await asyncio.to_thread(memory.release_free_memory)
                prev = piece
            if self.st.faults.hold_point(attempt.job_id, attempt.number, total) == total:  # held after the last one
                await self.st.faults.hold(attempt.job_id, attempt.number, done, total, attempt.check)
        except BaseException:
            self.asm.abort()
            raise
        finally:
            # Aborted or failed: give the model's time to other jobs (the gate's retries of a
            # chunk are queued too, outside ``pending``).
            if pending or self.gate is not None:
                self.st.batcher.cancel(attempt.job_id)
            for fut in pending.values():
                fut.cancel()
        samples = await asyncio.to_thread(self.asm.close)
        summary = None if self.gate is None else quality.summary(self.gate.policy, self.verdicts)
        if summary is not None and summary.chunks_failed:
            bad = [c.chunk + 1 for c in summary.chunks if c.problems]
            message = (
                f"{len(bad)} of {total} chunks failed the quality gate after their retries: "
                f"chunk {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}"
            )
            assert self.gate is not None
            failed = self.gate.regenerations_failed  # those chunks failed: their tries before it did
            if failed:
                which = ", ".join(str(k + 1) for k, _ in failed[:10]) + (" ..." if len(failed) > 10 else "")
                message += (
                    f"; the model call of a regeneration failed for chunk {which}, which kept its best try"
                    f" ({failed[0][1]})"
                )
            self.warnings.append(ResultWarning(code=WarningCode.QUALITY_BELOW_THRESHOLD, message=message))
        if self.skipped:
            self.warnings.append(
                ResultWarning(
                    code=WarningCode.ALIGNMENT_SKIPPED,
                    message=f"no word timings for {len(self.skipped)} of {total} chunks: {self.skipped[0]}",
                )
            )
        return Rendered(
            path=self.asm.path,
            samples=samples,
            sample_rate=SAMPLE_RATE,
            content_type=self.asm.content_type,
            words=self.marks.words,
            sentences=self.marks.sentence_timings(),
            segments=self.marks.segment_timings(self.inputs, samples),
            pauses=self.marks.pauses,
            chunks=total,
            reused=self.reused,
            stage_ms=self.ms,
            quality=summary,
        )

    def _submit(self, piece: Piece, seed: int | None = None) -> asyncio.Future[np.ndarray]:
        m = self.inputs.manifest
        ref = self.refs[self.inputs.turn_voice[piece.turn]]
        spec = self.specs[piece.index]
        item = sampler.Item(
            ref_audio=ref.audio,
            ref_text=ref.text,
            text=piece.spoken,
            speed=piece.speed,
            seed=spec.seed if seed is None else seed,
        )
        a = self.attempt
        group = (m.nfe_step, m.cfg_strength)
        seconds = item.frames * sampler.HOP_LENGTH / SAMPLE_RATE  # reference + generated: what the call computes
        work = Work(
            "synthesis",
            group,
            item.frames,
            a.job_id,
            item,
            a.number,
            self.inputs.batch_priority,
            seconds,
            self.inputs.tenant,
        )
        return self.st.batcher.submit(work)

    async def _wait(self, fut: asyncio.Future[np.ndarray], k: int, total: int) -> np.ndarray:
        aborted = asyncio.ensure_future(self.attempt.abort.event.wait())
        try:
            await asyncio.wait([fut, aborted], return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
        self.attempt.check()
        return _chunk_result(fut, k, total, self.st.engine.device)

    async def _unless_aborted(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` (a thread's), unless the attempt is aborted first: then it is left to end on
        its own deadline (a thread cannot be interrupted; the aligner kills its child at the
        call's deadline) and the attempt stops now."""
        task = asyncio.ensure_future(work)
        aborted = asyncio.ensure_future(self.attempt.abort.event.wait())
        try:
            await asyncio.wait([task, aborted], return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
            if not task.done():  # its outcome is no one's now: retrieved, so the loop does not log it
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if not task.done():
            self.attempt.check()
        return task.result()

    def _joins(self, piece: Piece, prev: Piece | None) -> bool:
        """Chunks of one turn cross-fade as F5-TTS joins them; pauses and turn changes butt-join."""
        return prev is not None and not prev.is_pause and prev.turn == piece.turn

    async def _pause(self, piece: Piece) -> None:
        t0 = time.perf_counter()
        start = await self.asm.add(np.zeros(round(piece.pause_s * SAMPLE_RATE), dtype=np.float32), cross_fade=False)
        self.ms["encode"] += (time.perf_counter() - t0) * 1000
        self.marks.pause(piece, start / SAMPLE_RATE, (start + round(piece.pause_s * SAMPLE_RATE)) / SAMPLE_RATE)

    async def _fresh(self, piece: Piece, prev: Piece | None, wave: np.ndarray) -> None:
        m = self.inputs.manifest
        spec = self.specs[piece.index]
        if m.remove_silence:
            wave = await asyncio.to_thread(self.st.engine.remove_silence, wave)
        verdict = None
        if self.gate is not None:
            wave, verdict = await self._gate(piece, wave)
        if wave.size == 0 or not np.all(np.isfinite(wave)):
            fail(ErrorCode.SYNTHESIS_FAILED, f"chunk {self.ordinal[piece.index] + 1} produced no usable audio")
        metrics.CHUNKS.labels("synthesized").inc()
        pcm = chunk_io.quantize(wave)
        audio = chunk_io.dequantize(pcm)
        joins = self._joins(piece, prev)
        record = ChunkRecord(
            index=piece.index,
            digest=spec.digest(),
            samples=len(pcm),
            sample_rate=SAMPLE_RATE,
            ordinal=self.ordinal[piece.index],
            start=self.asm.start_of(len(audio), cross_fade=joins),
            cross_fade=joins,
            after=self.specs[self.speech[self.ordinal[piece.index] - 1].index].digest()
            if self.ordinal[piece.index]
            else None,
            quality=verdict,
        )
        if spec.align_language is not None:
            t0 = time.perf_counter()
            try:
                words = " ".join(zh.for_aligner(w) for _, w in script.spoken_words(piece.words))
                align = asyncio.to_thread(self.st.aligner.align, audio, SAMPLE_RATE, words, m.language)
                spans = await self._unless_aborted(align)
                record.words = [(s.start, s.end, round(s.score, 4)) for s in spans]
            except AlignmentImpossible as e:
                record.alignment_error = str(e)
            self.ms["alignment"] += (time.perf_counter() - t0) * 1000
        self.attempt.check()
        if self.durable:
            t0 = time.perf_counter()
            self.attempt.chunks.update(self.chunks.keys(record))  # before: a lost answer may still land
            await self.chunks.save(record, pcm)
            self.ms["upload"] += (time.perf_counter() - t0) * 1000
            if not self.attempt.first_audio:
                self.attempt.first_audio = True
                lane = self.inputs.priority.value
                metrics.FIRST_AUDIO_SECONDS.labels(lane).observe(time.monotonic() - self.attempt.started)
        await self._place(piece, prev, audio, record)

    async def _gate(self, piece: Piece, wave: np.ndarray) -> tuple[np.ndarray, ChunkQuality]:
        """The quality gate (``pipeline.worker.quality``): the kept try and its verdict."""
        assert self.gate is not None
        m, k = self.inputs.manifest, self.ordinal[piece.index]
        v = self.inputs.turn_voice[piece.turn]
        ref = self.refs[v]
        sentence = piece.words[0].sentence if piece.words else None
        language = (self.inputs.analysis.sentences[sentence].language if sentence is not None else None) or m.language

        async def again(seed: int) -> np.ndarray:
            out = await self._wait(self._submit(piece, seed), k, len(self.speech))
            if m.remove_silence:
                out = await asyncio.to_thread(self.st.engine.remove_silence, out)
            return out

        ref_rate = self.gate.reference_rate(v, ref.audio, ref.text)
        seed = self.specs[piece.index].seed
        cost = self._cost(piece)
        return await self.gate.settle(k, piece.spoken, language, piece.speed, ref_rate, wave, seed, again, cost)

    def _cost(self, piece: Piece) -> int:
        m = self.inputs.manifest
        return budget.model_work([piece], self.refs, self.inputs.turn_voice, m.nfe_step, m.cfg_strength)

    async def _reuse(self, piece: Piece, prev: Piece | None) -> bool:
        spec = self.specs[piece.index]
        t0 = time.perf_counter()
        found = await self.chunks.load(piece.index, spec.digest())
        self.ms["upload"] += (time.perf_counter() - t0) * 1000
        if found is None:
            return False
        record, pcm = found
        if self.gate is not None and record.quality is not None and record.quality.tries > 1:
            # Its regenerations were paid for once; the budget runs down as in an uninterrupted run.
            self.gate.regen_left = max(0, self.gate.regen_left - (record.quality.tries - 1) * self._cost(piece))
        await self._place(piece, prev, chunk_io.dequantize(pcm), record)
        return True

    async def _place(self, piece: Piece, prev: Piece | None, audio: np.ndarray, record: ChunkRecord) -> None:
        t0 = time.perf_counter()
        start = await self.asm.add(audio, cross_fade=self._joins(piece, prev))
        self.ms["encode"] += (time.perf_counter() - t0) * 1000
        offset = start / SAMPLE_RATE
        self.marks.chunk(piece, offset, offset + len(audio) / SAMPLE_RATE)
        if self.gate is not None and record.quality is not None:
            end = round(offset + len(audio) / SAMPLE_RATE, 3)
            self.verdicts.append(record.quality.model_copy(update={"start": round(offset, 3), "end": end}))
        if record.alignment_error is not None:
            self.skipped.append(f"chunk {self.ordinal[piece.index] + 1}: {record.alignment_error}")
        elif record.words is not None and not self.marks.words_of(piece, offset, record.words):
            self.skipped.append(f"chunk {self.ordinal[piece.index] + 1}: aligner returned a different word count")


class _Marks:
    """Speech marks in the job's timeline, tied back to the client's text."""

    def __init__(self, inputs: JobInputs) -> None:
        self.inputs = inputs
        self.dialogue = inputs.dialogue
        self.words: list[WordTiming] = []
        self.pauses: list[PauseTiming] = []
        self.turn_spans: dict[int, list[float]] = {}

    def _speaker(self, turn: int) -> str | None:
        return self.inputs.voices[self.inputs.turn_voice[turn]].name if self.dialogue else None

    def chunk(self, piece: Piece, start: float, end: float) -> None:
        span = self.turn_spans.setdefault(piece.turn, [start, end])
        span[1] = end

    def pause(self, piece: Piece, start: float, end: float) -> None:
        marker = piece.marker or (None, None)
        segment = piece.turn if self.dialogue else None
        self.pauses.append(
            PauseTiming(
                start=round(start, 3), end=round(end, 3), text_start=marker[0], text_end=marker[1], segment=segment
            )
        )

    def words_of(self, piece: Piece, offset: float, spans: list[tuple[float, float, float]]) -> bool:
        """One aligner span per spoken word; a source word spans all of its spoken words."""
        spoken = script.spoken_words(piece.words)
        if len(spoken) != len(spans):
            return False
        text = self.inputs.analysis.turns[piece.turn].text
        grouped: dict[int, list[tuple[float, float, float]]] = {}
        for (i, _), span in zip(spoken, spans, strict=True):
            grouped.setdefault(i, []).append(span)
        for i, group in sorted(grouped.items()):
            w = piece.words[i]
            source = text[w.token.start : w.token.end]
            # Cross-faded chunks overlap by 0.15 s: a chunk's first word may be placed before the
            # previous chunk's last one ends. Keep the marks non-decreasing, as within a chunk.
            floor = self.words[-1].end if self.words else 0.0
            start = max(round(offset + group[0][0], 3), floor)
            end = max(round(offset + max(g[1] for g in group), 3), start)
            self.words.append(
                WordTiming(
                    word=source,
                    start=start,
                    end=end,
                    score=round(sum(g[2] for g in group) / len(group), 4),
                    text_start=w.token.start,
                    text_end=w.token.end,
                    spoken=None if w.token.spoken == source else w.token.spoken,
                    sentence=w.sentence,
                    segment=piece.turn if self.dialogue else None,
                    speaker=self._speaker(piece.turn),
                )
            )
        return True

    def sentence_timings(self) -> list[SentenceTiming]:
        by: dict[int, list[WordTiming]] = {}
        for w in self.words:
            by.setdefault(w.sentence or 0, []).append(w)
        out = []
        for index, words in sorted(by.items()):
            ref = self.inputs.analysis.sentences[index]
            text = self.inputs.analysis.turns[ref.turn].text
            out.append(
                SentenceTiming(
                    text=text[ref.text_start : ref.text_end],
                    start=words[0].start,
                    end=max(w.end for w in words),
                    text_start=ref.text_start,
                    text_end=ref.text_end,
                    segment=ref.turn if self.dialogue else None,
                    speaker=self._speaker(ref.turn),
                    language=ref.language,
                )
            )
        return out

    def segment_timings(self, inputs: JobInputs, samples: int) -> list[SegmentTiming]:
        if not self.dialogue:
            return []
        out = []
        for t, turn in enumerate(inputs.analysis.turns):
            voice = inputs.voices[inputs.turn_voice[t]]
            start, end = self.turn_spans.get(t, [0.0, 0.0])
            out.append(
                SegmentTiming(
                    index=t,
                    speaker=voice.name,
                    voice_key=voice.voice_key,
                    ref_text=turn.ref_text or voice.ref_text,
                    start=round(start, 3),
                    end=round(min(end, samples / SAMPLE_RATE), 3),
                )
            )
        return out


def _chunk_result(fut: asyncio.Future[np.ndarray], i: int, total: int, device: str) -> np.ndarray:
    """A chunk's waveform, or the job's failure: out-of-memory, shape errors and the like fail this
    job only (the batcher has already retried the chunk alone)."""
    try:
        return fut.result()
    except EngineError as e:
        fail(e.code, str(e))
    except MemoryError as e:  # torch.OutOfMemoryError is a RuntimeError; MemoryError: host RAM, injected
        log.error("chunk %d/%d: out of memory: %s", i + 1, total, e)
        fail(ErrorCode.SYNTHESIS_FAILED, f"chunk {i + 1}/{total}: out of memory on {device}")
    except (RuntimeError, ValueError) as e:
        oom = "out of memory" in str(e).lower()
        what = f"out of memory on {device}" if oom else f"{type(e).__name__}"
        log.error("chunk %d/%d: synthesis failed: %s", i + 1, total, e)  # the library's words stay in the log
        fail(ErrorCode.SYNTHESIS_FAILED, f"chunk {i + 1}/{total}: synthesis failed: {what}")
