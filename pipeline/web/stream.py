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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import soundfile as sf
from aiohttp import web

from pipeline.client import jobs as client
from pipeline.cloud.aws import describe, is_transient
from pipeline.cloud.store import RANGE_BLOCK, NotFound, Store, TooLarge
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
WAV_HEADER_MAX = 64 * 1024  # a WAV's chunks before its samples fit in this (the worker's: 44 bytes)
T = TypeVar("T")


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
    poll_s: float = 0.1  # the first look after something happened
    poll_max_s: float = 1.0  # the longest gap between looks while nothing happens
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # how the gaps are waited (tests record them)
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
        """Blocks of final samples, in order, until the job's audio is all sent.

        What a stream costs while nothing happens is bounded: the gap between looks doubles from
        ``poll_s`` up to ``poll_max_s`` while neither the status nor the chunks move, and a job
        that is not PROCESSING (queued, handed back) has its status read but its chunks not
        listed. At most 2 requests per ``poll_max_s`` per stream while idle (docs/security.md)."""
        self._chunks = ChunkStore(self.store, self.job_id)
        progressed, seen, delay = time.monotonic(), None, self.poll_s
        while True:
            # S3 unreachable past the store's retries is a poll without progress, not the end of
            # the stream: the job goes on through an outage, and so does its listener, until
            # ``idle_s`` passes with nothing new (the stall rule).
            moved = False
            try:
                self.status = await client.get_status(self.store, self.job_id)
                if self.status.state.terminal:
                    break
                # Progress is audio sent or the job's own status moving (a job rendering while the
                # stream waits for its finished file is not stalled).
                if self.status.updated_at != seen:
                    progressed, seen, moved = time.monotonic(), self.status.updated_at, True
                if self._follow and self.status.state is JobState.PROCESSING:
                    async for block in self._new_chunks():
                        progressed, moved = time.monotonic(), True
                        yield block
            except Exception as e:
                if not is_transient(e):
                    raise
                log.warning("job %s: the store is unreachable (%s): the stream waits", self.job_id, describe(e))
            self._stalled(progressed)
            delay = self.poll_s if moved else min(self.poll_max_s, delay * 2)
            await self.sleep(delay)
        if self.status.state is not JobState.COMPLETED:
            raise StreamFailed(f"job {self.job_id} ended {self.status.state}", self.status)
        async for block in self._final_blocks():
            yield block

    def _stalled(self, progressed: float) -> None:
        if time.monotonic() - progressed > self.idle_s:
            raise StreamStalled(f"job {self.job_id}: no progress and no final state for {self.idle_s:g}s")

    async def _patient(self, make: Callable[[], Awaitable[T]]) -> T:
        """``make()``, made again while the store is unreachable (within ``idle_s``)."""
        since = time.monotonic()
        while True:
            try:
                return await make()
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

    async def _final_blocks(self) -> AsyncIterator[np.ndarray]:
        """The finished audio from the first sample not yet sent (the result names it), a block at
        a time. A plain 16-bit WAV (every speech API job's) is read by ranged GETs from the sample
        offset: a slow listener holds one block, never the file. Another format (a console job's
        flac/mp3/ogg) is read whole, compressed, and decoded a block at a time."""
        job = self.job_id
        try:
            result = await self._patient(lambda: client.get_result(self.store, job))
            key = keys.job_output_key(self.store.bucket, job, result.audio.uri)
            size = await self._patient(lambda: self.store.size(key, max_bytes=self.max_bytes))
            if size == 0:
                raise StreamFailed(f"job {job}'s audio is empty", code="bad_result", http=502)
            head = await self._patient(lambda: self.store.get_range(key, 0, min(size, WAV_HEADER_MAX)))
            layout = wav_layout(head[0], size)
            lossless = result.audio.format.value in LOSSLESS  # an mp3/ogg job decodes near, not equal
            blocks = self._wav_blocks(key, layout) if layout else self._decoded_blocks(key, lossless)
            async for block in blocks:
                yield block
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

    async def _wav_blocks(self, key: str, layout: tuple[int, int]) -> AsyncIterator[np.ndarray]:
        start, end = layout
        if self.sent:  # what was sent must be the file's first samples, byte for byte
            digest = hashlib.sha256()
            async for data in self._ranges(key, start, min(end, start + 2 * self.sent)):
                digest.update(data)
            same = end - start >= 2 * self.sent and digest.digest() == self._digest.digest()
            self._judge(same, (end - start) // 2, lossless=True)
        odd = b""  # a byte of a sample split across two reads (a short read)
        async for data in self._ranges(key, start + 2 * self.sent, end, block=2 * REST_BLOCK):
            data, whole = odd + data, (len(odd) + len(data)) // 2 * 2
            data, odd = data[:whole], data[whole:]
            pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
            yield await asyncio.to_thread(self._emit, pcm)

    async def _ranges(self, key: str, start: int, end: int, block: int = RANGE_BLOCK) -> AsyncIterator[bytes]:
        at = start
        while at < end:
            length = min(block, end - at)
            data, _ = await self._patient(lambda: self.store.get_range(key, at, length))  # noqa: B023
            if not data:
                return
            at += len(data)
            yield data

    async def _decoded_blocks(self, key: str, lossless: bool) -> AsyncIterator[np.ndarray]:
        data = await self._patient(lambda: self.store.get_bytes(key, max_bytes=self.max_bytes))
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.samplerate != SAMPLE_RATE or f.channels != 1:
                raise StreamFailed(f"job {self.job_id}'s audio is not 24 kHz mono", code="bad_result", http=502)
            if self.sent:
                start = await asyncio.to_thread(f.read, self.sent, dtype="int16")
                await asyncio.to_thread(self._check_prefix, start, lossless)
            while True:
                block = await asyncio.to_thread(f.read, REST_BLOCK, dtype="int16")
                if not len(block):
                    return
                yield await asyncio.to_thread(self._emit, block)

    def _check_prefix(self, pcm: np.ndarray, lossless: bool) -> None:
        """What was sent is the finished file's start (``pcm``: its first samples, at most as many
        as were sent), or ``StreamMismatch``: called before any sample of the file is sent, so a
        stream never goes on with another rendering's audio."""
        if not self.sent:
            return
        if lossless:
            same = len(pcm) >= self.sent and (
                hashlib.sha256(pcm[: self.sent].astype("<i2").tobytes()).digest() == self._digest.digest()
            )
        else:
            same = self._near(pcm)
        self._judge(same, len(pcm), lossless)

    def _judge(self, same: bool, samples: int, lossless: bool) -> None:
        if same:
            return
        metrics.STREAM_MISMATCHES.inc()
        log.error(
            "job %s: the %d samples streamed early differ from the finished audio (%d samples, %s): the stream "
            "fails (an attempt that rendered the job otherwise finished it)",
            self.job_id,
            self.sent,
            samples,
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


def wav_layout(head: bytes, size: int) -> tuple[int, int] | None:
    """Where a plain WAV's samples are (byte offsets ``start``, ``end``), from its first bytes;
    None for anything else: not RIFF/WAVE, not 16-bit PCM at 24 kHz mono, or a layout that does
    not fit ``size``. Total on any bytes (the result names the file; its bytes are still untrusted)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at, fmt_ok = 12, False
    while at + 8 <= len(head):
        chunk, length = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")
        body = at + 8
        if chunk == b"fmt ":
            f = head[body : body + 16]
            if len(f) < 16:
                return None
            tag, channels = int.from_bytes(f[0:2], "little"), int.from_bytes(f[2:4], "little")
            rate, bits = int.from_bytes(f[4:8], "little"), int.from_bytes(f[14:16], "little")
            fmt_ok = tag in (1, 0xFFFE) and channels == 1 and rate == SAMPLE_RATE and bits == 16
        elif chunk == b"data":
            if not fmt_ok or body > size:
                return None
            end = min(size, body + length)
            return body, body + (end - body) // 2 * 2
        at = body + length + (length & 1)  # chunks are word-aligned
    return None


_PREPARED = web.RequestKey("tts_prepared", web.StreamResponse)


class ClientGone(Exception):
    """A client took no bytes for the write deadline: its connection is closed and its handler
    returns ``response`` as it stands (the body is cut short)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the client took no bytes in time")
        self.response = response


def prepared(request: web.Request) -> web.StreamResponse | None:
    """The answer a handler has begun (headers sent), if any: an error after it cannot be a new
    answer on the same connection."""
    return request.get(_PREPARED)


async def begin(request: web.Request, response: web.StreamResponse) -> None:
    """``response.prepare``, remembered (``prepared``)."""
    await response.prepare(request)
    request[_PREPARED] = response


async def write_within(
    request: web.Request, response: web.StreamResponse, data: bytes | None, timeout_s: float
) -> None:
    """``response.write(data)`` (``None``: ``write_eof()``, which waits for the client to take
    everything), or ``ClientGone`` if the client has not taken it within ``timeout_s`` (aiohttp
    has no write timeout of its own: a client that never reads would hold the handler, its slot
    and its buffer for ever)."""
    try:
        async with asyncio.timeout(timeout_s):
            if data is None:
                await response.write_eof()
            else:
                await response.write(data)
    except TimeoutError:
        log.info("%s %s: the client took no bytes for %gs: cut off", request.method, request.path, timeout_s)
        if request.transport is not None:
            request.transport.close()
        raise ClientGone(response) from None
