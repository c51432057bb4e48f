"""Durable chunks: every synthesised text chunk goes to S3 as soon as it is done.

    outputs/<job_id>/chunks/<index>-<digest>.flac   the chunk's audio (PCM16, 24 kHz mono)
    outputs/<job_id>/chunks/<index>-<digest>.json   ChunkRecord: length, word timings and place in
                                                    the job's audio, written after the audio, so
                                                    it marks a complete chunk

Two uses. A client can list the prefix while the job runs and start listening (the index sorts in
playing order; the speech API streams them, ``pipeline.web.stream``). And a retried job (its worker
died, S3 failed, the worker was shut down) reuses every chunk an earlier attempt finished instead
of synthesising it again: the digest covers everything the chunk's audio depends on (model version,
reference audio and transcript, the chunk's spoken text, its seed, speed, steps, guidance, silence
removal, alignment language, and the quality gate's policy), so the same key always holds the same
content, whichever attempt wrote it, and a chunk whose inputs changed is simply not found.

The quality gate (``pipeline.worker.quality``) may synthesise a chunk several times with seeds
derived from the spec's; which try was kept is an *outcome*, not an input, so it lives in the record
(``quality``: tries, kept try, its seed, score, transcript), not in the digest. The gate's policy
(threshold, retries, ASR or not) is an input: it is in the digest, so a resumed attempt under the
same policy reuses exactly the chunk an uninterrupted run would have kept, and one under another
policy makes its own.

Chunks are stored PCM16, and a fresh chunk is quantised exactly as a stored one decodes, so a
resumed job's audio is bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
from pydantic import BaseModel, Field

from pipeline.cloud.store import NotFound, Store, TooLarge, parse_document
from pipeline.jobs import keys
from pipeline.jobs.contract import ChunkQuality

log = logging.getLogger(__name__)

AUDIO_EXT = "flac"
RECORD_EXT = "json"
# A chunk is seconds of 16-bit 24 kHz mono (48 KB a second before FLAC) and its record a few KiB;
# anything larger under a chunk key was not written by a worker.
MAX_AUDIO_BYTES = 32 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ChunkSpec:
    """Everything a chunk's audio and timings depend on; its digest names the chunk."""

    model: str
    voice_sha256: str
    ref_text: str
    spoken: str
    seed: int
    speed: float
    nfe_step: int
    cfg_strength: float
    remove_silence: bool
    align_language: str | None  # None: no word timings asked
    quality: str = ""  # the quality gate's policy (``quality.Policy.tag``); "": gate off

    def digest(self) -> str:
        fields = asdict(self)
        if not fields["quality"]:  # gate off: the digest chunks had before the gate existed
            del fields["quality"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class ChunkRecord(BaseModel):
    index: int
    digest: str
    samples: int = Field(ge=0)
    sample_rate: int
    # One [start, end, score] per spoken word of the chunk (seconds from the chunk's start); null
    # when no timings were asked or alignment was impossible (then ``alignment_error`` says why).
    words: list[tuple[float, float, float]] | None = None
    alignment_error: str | None = None
    # Where the chunk goes in the job's audio (``pipeline.tts.assembler.Joiner``): which speech
    # chunk it is, the sample it starts at, and whether it cross-fades into the one before. What
    # lets the speech API re-join chunks while the job runs (``pipeline.web.stream``); absent in
    # records written before they existed (the stream then waits for the finished audio).
    ordinal: int | None = Field(default=None, ge=0)
    start: int | None = Field(default=None, ge=0)
    cross_fade: bool = False
    after: str | None = None  # the digest of the speech chunk before it in the plan (None: the first)
    # The quality gate's verdict on the kept try (absent: the gate was off, or an older record).
    quality: ChunkQuality | None = None


def parse_record(key: str, raw: bytes) -> ChunkRecord:
    """A stored chunk record, or ``Unreadable`` (anyone who can write outputs/ can plant one)."""
    return parse_document(key, raw, ChunkRecord)


def quantize(wave: np.ndarray) -> np.ndarray:
    """PCM16, as libsndfile stores it."""
    return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)


def dequantize(pcm: np.ndarray) -> np.ndarray:
    """float32, as soundfile decodes PCM16."""
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


class ChunkStore:
    """One job's durable chunks."""

    def __init__(self, store: Store, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    async def listed(self, after: int | None = None) -> dict[int, list[str]]:
        """index -> the digests of its complete chunks, in index order, from one listing;
        ``after``: only chunks with a greater index (the listing starts there)."""
        audio: set[tuple[int, str]] = set()
        records: set[tuple[int, str]] = set()
        start = None if after is None else keys.chunk_key(self.job_id, after, "g", "")  # sorts after its keys
        for key in await self.store.list_keys(keys.chunks_prefix(self.job_id), start):
            parsed = keys.parse_chunk_key(key)
            if parsed is None:
                continue
            index, digest, ext = parsed
            (audio if ext == AUDIO_EXT else records).add((index, digest))
        out: dict[int, list[str]] = {}
        for index, digest in sorted(audio & records):
            out.setdefault(index, []).append(digest)
        return out

    def keys(self, record: ChunkRecord) -> tuple[str, str]:
        """The chunk's audio and record keys."""
        return (
            keys.chunk_key(self.job_id, record.index, record.digest, AUDIO_EXT),
            keys.chunk_key(self.job_id, record.index, record.digest, RECORD_EXT),
        )

    async def save(self, record: ChunkRecord, pcm: np.ndarray) -> None:
        data = await asyncio.to_thread(_encode, pcm, record.sample_rate)
        audio_key, record_key = self.keys(record)
        await self.store.put_bytes(audio_key, data, "audio/flac")
        await self.store.put_bytes(record_key, record.model_dump_json().encode(), "application/json")

    async def load(self, index: int, digest: str) -> tuple[ChunkRecord, np.ndarray] | None:
        """The chunk's record and PCM16 samples; None if it vanished or does not decode (then it
        is synthesised again)."""
        try:
            raw = await self.store.get_bytes(keys.chunk_key(self.job_id, index, digest, RECORD_EXT), MAX_RECORD_BYTES)
            data = await self.store.get_bytes(keys.chunk_key(self.job_id, index, digest, AUDIO_EXT), MAX_AUDIO_BYTES)
        except NotFound:
            return None
        except TooLarge as e:  # not what a worker writes: never read whole
            log.warning("durable chunk %d unusable (%s): synthesising it again", index, e)
            return None
        try:
            record = parse_record(keys.chunk_key(self.job_id, index, digest, RECORD_EXT), raw)
            pcm, sr = await asyncio.to_thread(sf.read, io.BytesIO(data), dtype="int16")
        except Exception as e:  # Unreadable, or whatever libsndfile says of audio it cannot decode
            log.warning("durable chunk %d unusable (%s): synthesising it again", index, e)
            return None
        if sr != record.sample_rate or len(pcm) != record.samples or record.digest != digest:
            log.warning("durable chunk %d does not match its record: synthesising it again", index)
            return None
        return record, pcm


def _encode(pcm: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
