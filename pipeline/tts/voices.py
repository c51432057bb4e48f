"""The voice library: named reference voices, transcribed at most once, ever.

    voices/<name>/audio.<ext>    the reference recording
    voices/<name>/voice.json     VoiceRecord: ref_text (given, or written back by the first
                                 worker that transcribed it), sha256, duration, sample rate

A manifest's ``voice`` may be a library name (``"alice"``) instead of a key. A job with an empty
``ref_text`` on a library voice uses the stored transcript; if there is none yet, the worker runs
ASR once and writes the transcript back with a conditional write, so every later job, on any
worker, skips ASR.

A record is a stored document that anyone allowed to write under ``voices/`` can plant: its
``audio_key`` is untrusted. It is read only through ``VoiceRecord.audio_key_checked`` (the rules
of a manifest's voice key: never another job's outputs, never pipeline data), and the library only
ever deletes inside the voice's own folder, ``voices/<name>/``.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.cloud.store import NotFound, PreconditionFailed, Store, TooLarge, Unreadable, parse_document
from pipeline.jobs import keys
from pipeline.jobs.contract import utcnow
from pipeline.tts import audio as audio_utils

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: "$" accepts "alice\n"
VOICE_FILE = "voice.json"
MAX_RECORD_BYTES = 64 * 1024  # a record is a few hundred bytes; a planted one is not read whole


class VoiceRecord(BaseModel):
    schema_version: Literal[1] = 1
    name: str
    audio_key: str
    ref_text: str = Field(default="", description="Transcript of the recording; empty until known.")
    ref_text_source: Literal["user", "asr"] | None = None
    transcribed_by: str | None = Field(default=None, description="model name/version that produced an ASR text")
    sha256: str
    bytes: int
    duration_s: float
    sample_rate: int
    channels: int
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def audio_key_checked(self, bucket: str, allowed: tuple[str, ...] = keys.DEFAULT_VOICE_PREFIXES) -> str:
        """``audio_key`` under the rules of a manifest's voice key (``keys.voice_key``): a
        ``VoiceRefError`` names the record, so a planted one fails its job with a clear message."""
        try:
            return keys.voice_key(self.audio_key, bucket, allowed)
        except keys.VoiceRefError as e:
            raise keys.VoiceRefError(e.code, f"voice library record {self.name!r}: {e.message}") from None

    def owned_audio_key(self) -> str | None:
        """``audio_key`` if it lies in the voice's own folder (the only place the library deletes)."""
        key = self.audio_key
        folder = f"{keys.VOICES}{self.name}/"
        inside = key.startswith(folder) and "/" not in key[len(folder) :] and key == posixpath.normpath(key)
        return key if inside and is_name(self.name) else None


class VoiceError(ValueError):
    pass


class UnusableRecord(VoiceError):
    """``voices/<name>/voice.json`` exists but is not a record the library wrote."""


def parse_record(key: str, raw: bytes) -> VoiceRecord:
    """A stored record, or ``Unreadable`` (anyone allowed to write under ``voices/`` can plant one)."""
    return parse_document(key, raw, VoiceRecord)


def is_name(voice: str) -> bool:
    return bool(NAME_RE.fullmatch(voice))


def record_key(name: str) -> str:
    return f"{keys.VOICES}{name}/{VOICE_FILE}"


def audio_key(name: str, ext: str) -> str:
    return f"{keys.VOICES}{name}/audio.{ext.lower().lstrip('.')}"


class VoiceLibrary:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, name: str) -> tuple[VoiceRecord, str] | None:
        """The record and its ETag; None if there is none; ``UnusableRecord`` for a record this
        library did not write (malformed, oversized, or naming another voice)."""
        if not is_name(name):
            return None
        try:
            record, etag = await self.store.get_model_etag(record_key(name), VoiceRecord, MAX_RECORD_BYTES)
        except TooLarge as e:
            raise UnusableRecord(f"voice {name!r}: its record is {e.size} bytes, not a voice record") from None
        except Unreadable as e:
            raise UnusableRecord(f"voice {name!r}: its record is malformed ({e})") from None
        if record is None or etag is None:
            return None
        if record.name != name:  # copied or planted under another name
            raise UnusableRecord(f"voice {name!r}: its record names another voice ({record.name!r})")
        return record, etag

    async def add(self, name: str, data: bytes, ext: str, ref_text: str = "") -> VoiceRecord:
        if not is_name(name):
            raise VoiceError(f"voice name {name!r} must match {NAME_RE.pattern}")
        try:
            info = audio_utils.probe(data)
        except audio_utils.AudioDecodeError as e:
            raise VoiceError(f"{name}: {e}") from None
        previous = await self._previous(name)
        key = audio_key(name, ext)
        await self.store.put_bytes(key, data)
        if previous and previous[0].audio_key != key:
            await self._delete_audio(previous[0])
        record = VoiceRecord(
            name=name,
            audio_key=key,
            ref_text=ref_text.strip(),
            ref_text_source="user" if ref_text.strip() else None,
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            duration_s=round(info.duration_s, 3),
            sample_rate=info.sample_rate,
            channels=info.channels,
        )
        await self.store.put_json(record_key(name), record)  # replaces a previous record and its transcript
        return record

    async def list(self) -> list[VoiceRecord]:
        out = []
        for key in await self.store.list_keys(keys.VOICES):
            if key.endswith("/" + VOICE_FILE) and key.count("/") == 2:
                try:
                    record = parse_record(key, await self.store.get_bytes(key, max_bytes=MAX_RECORD_BYTES))
                except (NotFound, TooLarge, Unreadable):
                    continue  # gone meanwhile, or not a record this library wrote
                if record_key(record.name) == key:
                    out.append(record)
        return sorted(out, key=lambda r: r.name)

    async def remove(self, name: str) -> bool:
        if not is_name(name):
            return False
        try:
            found = await self.get(name)
        except UnusableRecord as e:  # not ours to trust: only the record itself goes
            log.warning("%s: removing the record only", e)
            await self.store.delete(record_key(name))
            return True
        if found is None:
            return False
        await self._delete_audio(found[0])
        await self.store.delete(record_key(name))
        return True

    async def _previous(self, name: str) -> tuple[VoiceRecord, str] | None:
        try:
            return await self.get(name)
        except UnusableRecord as e:
            log.warning("%s: replaced, its audio left alone", e)
            return None

    async def _delete_audio(self, record: VoiceRecord) -> None:
        key = record.owned_audio_key()
        if key is None:
            log.warning(
                "voice %r: its record names %r, outside voices/%s/: not deleted",
                record.name,
                record.audio_key,
                record.name,
            )
            return
        await self.store.delete(key)

    async def save_transcript(self, name: str, etag: str, text: str, by: str) -> VoiceRecord | None:
        """Store an ASR transcript unless the record changed meanwhile (another worker stored one,
        or the voice was replaced). Returns the record now in the library."""
        found = await self._previous(name)
        if found is None:
            return None
        record, current_etag = found
        if current_etag != etag or record.ref_text:
            return record
        updated = record.model_copy(
            update={"ref_text": text.strip(), "ref_text_source": "asr", "transcribed_by": by, "updated_at": utcnow()}
        )
        try:
            await self.store.put_json(record_key(name), updated, if_match=etag)
        except PreconditionFailed:
            again = await self.get(name)
            return again[0] if again else None
        return updated
