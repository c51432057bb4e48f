"""The voice library: named reference voices, transcribed at most once, ever.

    voices/<name>/audio.<ext>    the reference recording
    voices/<name>/voice.json     VoiceRecord: ref_text (given, or written back by the first
                                 worker that transcribed it), sha256, duration, sample rate

A manifest's ``voice`` may be a library name (``"alice"``) instead of a key. A job with an empty
``ref_text`` on a library voice uses the stored transcript; if there is none yet, the worker runs
ASR once and writes the transcript back with a conditional write, so every later job, on any
worker, skips ASR.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from pipeline import keys
from pipeline.contract import utcnow
from pipeline.store import NotFound, PreconditionFailed, Store
from pipeline.tts import audio as audio_utils

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VOICE_FILE = "voice.json"


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


class VoiceError(ValueError):
    pass


def is_name(voice: str) -> bool:
    return bool(NAME_RE.match(voice))


def record_key(name: str) -> str:
    return f"{keys.VOICES}{name}/{VOICE_FILE}"


def audio_key(name: str, ext: str) -> str:
    return f"{keys.VOICES}{name}/audio.{ext.lower().lstrip('.')}"


class VoiceLibrary:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, name: str) -> tuple[VoiceRecord, str] | None:
        if not is_name(name):
            return None
        record, etag = await self.store.get_model_etag(record_key(name), VoiceRecord)
        return (record, etag) if record is not None and etag is not None else None

    async def add(self, name: str, data: bytes, ext: str, ref_text: str = "") -> VoiceRecord:
        if not is_name(name):
            raise VoiceError(f"voice name {name!r} must match {NAME_RE.pattern}")
        try:
            info = audio_utils.probe(data)
        except audio_utils.AudioDecodeError as e:
            raise VoiceError(f"{name}: {e}") from None
        previous = await self.get(name)
        key = audio_key(name, ext)
        await self.store.put_bytes(key, data)
        if previous and previous[0].audio_key != key:
            await self.store.delete(previous[0].audio_key)
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
                    out.append(VoiceRecord.model_validate_json(await self.store.get_bytes(key)))
                except NotFound:
                    continue
        return sorted(out, key=lambda r: r.name)

    async def remove(self, name: str) -> bool:
        found = await self.get(name)
        if found is None:
            return False
        await self.store.delete(found[0].audio_key)
        await self.store.delete(record_key(name))
        return True

    async def save_transcript(self, name: str, etag: str, text: str, by: str) -> VoiceRecord | None:
        """Store an ASR transcript unless the record changed meanwhile (another worker stored one,
        or the voice was replaced). Returns the record now in the library."""
        found = await self.get(name)
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
