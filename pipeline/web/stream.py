"""A job's audio while it renders: its durable chunks re-joined into the final samples, in order.

How the server learns a chunk is ready: it lists the job's chunk prefix (``pipeline.jobs.chunks``)
every ``TTS_API_STREAM_POLL_S``, starting after the last chunk it has, and reads the status
alongside. The worker writes a chunk's record last, so a listed record means a complete chunk; the
record says where the chunk goes (``ordinal``, ``start``, ``cross_fade``), and ``Joiner`` (the
rule the worker's assembler writes the file with) turns chunks into final samples. The audio a
listener hears early is therefore the finished file's audio, sample for sample; the fade tail a
next chunk may still change is held back.

The finished file is the truth: once the job is COMPLETED the rest (trailing pauses, chunks the
worker removed before they were read, a one-chunk job's only chunk, records of an older worker
without a place) is read from the result's audio, from the first sample not yet sent.

A stream never splices two renderings. The chunks a stream follows can belong to an attempt that
does not finish the job: attempt 1 wrote chunks and was handed back (a deploy), and attempt 2
rendered the job otherwise (a new model version, another voice transcript, other quality
settings: other chunk digests, so nothing of attempt 1 is reused). The chain check stops the
stream following attempt 2's chunks after attempt 1's, and before a sample of the finished file
is sent, what was sent is compared with the file's start: for WAV and FLAC (every speech API job)
a SHA-256 of the sent samples against the file's first samples, exact; for an mp3 or ogg job (the
console's live player), whose file decodes near its samples but not to them, a 1 kHz sketch of
what was sent against the file's, window by window (``_near``). A mismatch raises
``StreamMismatch`` (counted in ``tts_stream_mismatches``): the caller ends the stream as an error
the client sees (an HTTP 502 before any audio, an audio body cut short, an SSE ``error`` event),
never a clean end after audio of two attempts.

Why a listing and not an event: the chunks are already written for resume and for listening
early, so a listing adds no write to the worker's path; one LIST plus one status GET per poll cost
a few milliseconds on LocalStack (docs/benchmarks.md, "Streaming speech") and a few hundred
requests for a minute of audio on S3. An SNS/SSE push would save the poll interval's half at
the price of a second channel whose delivery can be lost. Every key read comes from the job's own
chunk prefix (listed, parsed by ``keys.parse_chunk_key``), every read is bounded, and every value a
record gives is checked against what the stream has already placed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from pipeline.client import jobs as client
from pipeline.cloud.aws import describe, is_transient
from pipeline.cloud.store import NotFound, Store, TooLarge
from pipeline.jobs import chunks as chunk_io
from pipeline.jobs import keys
from pipeline.jobs.chunks import ChunkRecord, ChunkStore
from pipeline.jobs.contract import JobState, JobStatus
from pipeline.runtime import metrics
from pipeline.tts.assembler import Joiner, pcm16
from pipeline.tts.engine import CROSS_FADE_S, SAMPLE_RATE

log = logging.getLogger(__name__)

# A gap between chunks is a pause (SSML <break>, a dialogue's turn pause); longer than this is
# not one a worker wrote, and the stream waits for the finished audio instead.
MAX_GAP_S = 600.0
REST_BLOCK = SAMPLE_RATE  # the finished file's remainder is handed out a second at a time
LOSSLESS = ("wav", "flac")
# A lossy file (mp3, ogg) is compared with what was sent through a sketch: the mean of every
# SKETCH samples (a 1 kHz signal, low-passed), a window of SKETCH_WINDOW points (1 s) at a time. A
# window matches when its error holds at most half the sent window's energy (3 dB) plus
# SKETCH_FLOOR (the sketch's RMS difference always allowed, about -60 dBFS: silence, dither).
# Measured with libsndfile's encoders (the worker's), per window: mp3 and ogg sketches are 15-17 dB
# from the samples they encode for the tiny bundle's audio, 28-30 dB for voiced speech-like audio,
# 9-15 dB for white noise; another rendering (the tiny bundle, another seed) is -2.3 to -3.3 dB
# (two unrelated signals: the error holds both signals' energy).
SKETCH = 24
SKETCH_WINDOW = SAMPLE_RATE // SKETCH
SKETCH_FLOOR = 32.0
LOSSY_SHORT = 1152  # a lossy file may decode at most one mp3 frame shorter than what was sent


class StreamFailed(Exception):
    """The job ended without audio (``status`` says how), or its finished audio could not be
    served (``code``: ``bad_result``, ``audio_not_found``, ``too_large``; ``http``: the answer)."""

    def __init__(self, message: str, status: JobStatus | None = None, *, code: str | None = None, http: int = 500):
        super().__init__(message)
        self.status = status
        self.code = code
        self.http = http


class StreamMismatch(StreamFailed):
    """The audio already sent is not the start of the job's finished audio (an attempt that rendered
    the job otherwise finished it): raised before any of the finished file is sent. The stream must
    end as an error, not cleanly: what the listener has is not the job's audio."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="stream_mismatch", http=502)


class StreamStalled(Exception):
    """No new audio and no final state for ``idle_s``."""


@dataclass
class ChunkFollower:
    """Follows one job: ``blocks()`` yields PCM16 sample blocks of its audio as they become final."""

    store: Store
    job_id: str
    poll_s: float = 0.1
    idle_s: float = 120.0
    max_bytes: int = 256 * 1024 * 1024  # the finished audio is read at most this large
    status: JobStatus | None = None  # the last status read (final once blocks() is exhausted)
    sent: int = 0  # samples yielded
    from_chunks: int = 0  # chunks placed before the job ended
    _joiner: Joiner = field(default_factory=lambda: Joiner(int(CROSS_FADE_S * SAMPLE_RATE)))
    _digest: hashlib._Hash = field(default_factory=hashlib.sha256)  # of every sample sent
    _sketch: list[np.ndarray] = field(default_factory=list)  # of every sample sent (``SKETCH``)
    _sketch_rest: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    _chunks: ChunkStore | None = None
    _last_index: int | None = None
    _last_digest: str | None = None  # the chunk placed last: the next one must name it as ``after``
    _follow: bool = True  # False once a chunk cannot be placed: wait for the finished audio

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        self._chunks = ChunkStore(self.store, self.job_id)
        progressed, seen = time.monotonic(), None
        while True:
            # S3 unreachable past the store's retries is a poll without progress, not the end of
            # the stream: the job goes on through an outage, and so does its listener, until
            # ``idle_s`` passes with nothing new (the stall rule).
            try:
                self.status = await client.get_status(self.store, self.job_id)
                if self.status.state.terminal:
                    break
                # Progress is audio sent or the job's own status moving (a job rendering while the
                # stream waits for its finished file is not stalled).
                if self.status.updated_at != seen:
                    progressed, seen = time.monotonic(), self.status.updated_at
                if self._follow:
                    async for block in self._new_chunks():
                        progressed = time.monotonic()
                        yield block
            except Exception as e:
                if not is_transient(e):
                    raise
                log.warning("job %s: the store is unreachable (%s): the stream waits", self.job_id, describe(e))
            self._stalled(progressed)
            await asyncio.sleep(self.poll_s)
        if self.status.state is not JobState.COMPLETED:
            raise StreamFailed(f"job {self.job_id} ended {self.status.state}", self.status)
        rest = await self._final_rest(time.monotonic())
        for i in range(0, len(rest), REST_BLOCK):  # a second at a time: each is encoded off the loop
            yield rest[i : i + REST_BLOCK]

    def _stalled(self, progressed: float) -> None:
        if time.monotonic() - progressed > self.idle_s:
            raise StreamStalled(f"job {self.job_id}: no progress and no final state for {self.idle_s:g}s")

    async def _final_rest(self, since: float) -> np.ndarray:
        """``_rest_of_final``, read again while the store is unreachable (within ``idle_s``)."""
        while True:
            try:
                return await self._rest_of_final()
            except Exception as e:
                if not is_transient(e):
                    raise
                log.warning("job %s: its audio is unreachable (%s): the stream waits", self.job_id, describe(e))
            self._stalled(since)
            await asyncio.sleep(self.poll_s)

    async def _new_chunks(self) -> AsyncIterator[np.ndarray]:
        assert self._chunks is not None
        for index, digests in (await self._chunks.listed(after=self._last_index)).items():
            if len(digests) > 1:  # attempts that planned differently: which is this job's is unknown
                self._follow = False
                return
            found = await self._chunks.load(index, digests[0])
            if found is None:  # removed meanwhile (the job ended): the finished audio has it
                return
            record, pcm = found
            if record.ordinal is None or record.ordinal != self.from_chunks:
                if record.ordinal is None or record.ordinal < self.from_chunks:
                    self._follow = False  # not placeable: wait for the finished audio
                return  # a later chunk listed before an earlier one landed: next poll
            # The chain: a chunk follows the very chunk its plan put before it (an attempt that
            # planned otherwise, e.g. a new model version, is never spliced onto this one's).
            if record.after != self._last_digest:
                self._follow = False
                return
            block = await asyncio.to_thread(self._place, record, pcm)
            if block is None:
                self._follow = False
                return
            self._last_index, self._last_digest = index, record.digest
            self.from_chunks += 1
            if len(block):
                yield await asyncio.to_thread(self._emit, block)

    def _place(self, record: ChunkRecord, pcm: np.ndarray) -> np.ndarray | None:
        """The samples ``record``'s chunk makes final; None if its stated place is not where the
        stream stands (an older record, a bug, a record the worker did not write)."""
        if record.start is None or record.sample_rate != SAMPLE_RATE:
            return None
        audio = chunk_io.dequantize(pcm)
        j = self._joiner
        blocks = []
        if not record.cross_fade and record.start > j.samples:
            gap = record.start - j.samples
            if gap > MAX_GAP_S * SAMPLE_RATE:
                return None
            blocks.append(j.add(np.zeros(gap, dtype=np.float32), cross_fade=False)[1])
        if j.start_of(len(audio), cross_fade=record.cross_fade) != record.start:
            return None
        blocks.append(j.add(audio, cross_fade=record.cross_fade)[1])
        return pcm16(np.concatenate(blocks))

    def _emit(self, block: np.ndarray) -> np.ndarray:
        self._digest.update(block.astype("<i2").tobytes())
        pending = np.concatenate([self._sketch_rest, block.astype(np.int16)])
        whole = len(pending) // SKETCH * SKETCH
        if whole:
            self._sketch.append(_sketch(pending[:whole]))
        self._sketch_rest = pending[whole:]
        self.sent += len(block)
        return block

    async def _rest_of_final(self) -> np.ndarray:
        """The finished audio from the first sample not yet sent (the result names it)."""
        job = self.job_id
        result = await client.get_result(self.store, job)
        try:
            key = keys.job_output_key(self.store.bucket, job, result.audio.uri)
            data = await self.store.get_bytes(key, max_bytes=self.max_bytes)
            pcm, sr = await asyncio.to_thread(sf.read, io.BytesIO(data), dtype="int16")
        except keys.UntrustedKey as e:
            log.warning("job %s: %s: not served", job, e)
            raise StreamFailed(f"job {job}'s result names no audio of its own", code="bad_result", http=502) from None
        except NotFound:
            raise StreamFailed(f"job {job}'s audio is gone", code="audio_not_found", http=502) from None
        except TooLarge as e:
            message = f"job {job}'s audio is {e.size} bytes, over {self.max_bytes} (TTS_CONSOLE_MAX_AUDIO_BYTES)"
            raise StreamFailed(message, code="too_large", http=413) from None
        except (sf.LibsndfileError, RuntimeError) as e:
            raise StreamFailed(f"job {job}'s audio does not decode: {e}", code="bad_result", http=502) from None
        if sr != SAMPLE_RATE or pcm.ndim != 1:
            raise StreamFailed(f"job {job}'s audio is not 24 kHz mono", code="bad_result", http=502)
        lossless = result.audio.format.value in LOSSLESS  # an mp3/ogg job (the console's) decodes near, not equal
        await asyncio.to_thread(self._check_prefix, pcm, lossless)
        rest = pcm[self.sent :]
        await asyncio.to_thread(self._emit, rest)
        return rest

    def _check_prefix(self, pcm: np.ndarray, lossless: bool) -> None:
        """What was sent is the finished file's start, or ``StreamMismatch``: called before any
        sample of the file is sent, so a stream never goes on with another rendering's audio."""
        if not self.sent:
            return
        if lossless:
            same = len(pcm) >= self.sent and (
                hashlib.sha256(pcm[: self.sent].astype("<i2").tobytes()).digest() == self._digest.digest()
            )
        else:
            same = self._near(pcm)
        if same:
            return
        metrics.STREAM_MISMATCHES.inc()
        log.error(
            "job %s: the %d samples streamed early differ from the finished audio (%d samples, %s): the stream "
            "fails (an attempt that rendered the job otherwise finished it)",
            self.job_id,
            self.sent,
            len(pcm),
            "lossless" if lossless else "lossy",
        )
        raise StreamMismatch(
            f"job {self.job_id}: the audio streamed so far is not the finished audio's start "
            "(the job was rendered again otherwise); fetch the finished audio instead"
        )

    def _near(self, pcm: np.ndarray) -> bool:
        """A lossy file's start is what was sent, as near as its encoding allows (``SKETCH``)."""
        if len(pcm) < self.sent - LOSSY_SHORT:
            return False
        sent = np.concatenate(self._sketch) if self._sketch else np.zeros(0, dtype=np.int16)
        n = min(len(sent), len(pcm) // SKETCH)
        a = sent[:n].astype(np.float64)
        b = _sketch(pcm[: n * SKETCH]).astype(np.float64)
        pad = -n % SKETCH_WINDOW
        a, b = np.pad(a, (0, pad)).reshape(-1, SKETCH_WINDOW), np.pad(b, (0, pad)).reshape(-1, SKETCH_WINDOW)
        points = np.full(len(a), SKETCH_WINDOW, dtype=np.float64)
        if pad and len(points):
            points[-1] -= pad
        error = ((a - b) ** 2).sum(axis=1)
        return bool(np.all(error <= 0.5 * (a**2).sum(axis=1) + points * SKETCH_FLOOR**2))


def _sketch(pcm: np.ndarray) -> np.ndarray:
    """The mean of every ``SKETCH`` samples (``len(pcm)`` a multiple of it), as int16."""
    means = pcm.astype(np.int32).reshape(-1, SKETCH).mean(axis=1)
    return np.rint(means).astype(np.int16)
