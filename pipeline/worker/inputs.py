"""A job's inputs, read and checked before any model work: the manifest, its lexicons, the text
analysis, and the reference voices.

Every check that can fail a job fails it here, with a specific code, before the expensive work.
Every key comes from a client (the manifest) or a stored document (a voice library record) and is
validated where it is used (``pipeline.keys``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from pipeline import keys
from pipeline.config import Settings
from pipeline.contract import ErrorCode, Manifest, ManifestError, parse_manifest
from pipeline.store import NotFound, Store, TooLarge
from pipeline.text import lexicon as lexicons
from pipeline.text import script
from pipeline.text.script import Analysis
from pipeline.tts import audio as audio_utils
from pipeline.tts.voices import VoiceLibrary, VoiceRecord
from pipeline.worker.failures import fail


@dataclass
class VoiceInput:
    """One distinct reference voice of a job (a dialogue has several)."""

    name: str  # as the manifest names it (library name, key or URI)
    voice_key: str
    wave: np.ndarray
    sample_rate: int
    ref_text: str  # what the engine gets: the manifest's, the library's, or "" (transcribe)
    ref_text_source: str  # "manifest" | "voice_library" | "asr" (decided before synthesis)
    library: tuple[VoiceRecord, str] | None = None  # (record, etag) for a library voice
    ref_text_from_asr: bool = False  # the library's stored transcript came from an earlier ASR run


@dataclass
class JobInputs:
    manifest: Manifest
    analysis: Analysis
    voices: list[VoiceInput]
    turn_voice: list[int]  # turn -> index into voices

    @property
    def dialogue(self) -> bool:
        return self.manifest.segments is not None


class Inputs:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.voices = VoiceLibrary(store)

    async def read(self, job_id: str) -> JobInputs:
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
        _check_text(manifest.full_text, s.max_text_chars)
        lexicon = await self._lexicon(manifest)
        try:  # 100,000 characters take a moment: off the event loop
            analysis = await asyncio.to_thread(
                script.analyse,
                manifest,
                lexicon,
                max_pause_s=s.max_pause_s,
                max_total_pause_s=s.max_total_pause_s,
            )
        except script.ScriptError as e:
            fail(e.code, e.message)
        voices: list[VoiceInput] = []
        turn_voice: list[int] = []
        seen: dict[tuple[str, str], int] = {}
        for turn in analysis.turns:
            voice = turn.voice or s.default_voice
            if not voice:
                fail(ErrorCode.VOICE_REQUIRED, "manifest names no voice and the worker has no TTS_DEFAULT_VOICE")
            if (voice, turn.ref_text) not in seen:
                seen[(voice, turn.ref_text)] = len(voices)
                voices.append(await self._voice(voice, turn.ref_text))
            turn_voice.append(seen[(voice, turn.ref_text)])
        return JobInputs(manifest, analysis, voices, turn_voice)

    async def _voice(self, voice: str, ref_text: str) -> VoiceInput:
        s = self.settings
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
        if not ref_text.strip() and library is not None and library[0].ref_text:
            record = library[0]
            return VoiceInput(
                voice, vkey, wave, sr, record.ref_text, "voice_library", library, record.ref_text_source == "asr"
            )
        return VoiceInput(voice, vkey, wave, sr, ref_text, "manifest", library)

    async def _lexicon(self, manifest: Manifest) -> dict[str, str]:
        """PLS files in order (later wins), then the manifest's own entries over all of them."""
        s = self.settings
        found: list[dict[str, str]] = []
        for ref in manifest.lexicons:
            try:
                key = keys.lexicon_key(ref, s.bucket, s.lexicon_prefixes)
                data = await self.store.get_bytes(key, max_bytes=s.max_lexicon_bytes)
                found.append(lexicons.parse_pls(data))
            except keys.VoiceRefError as e:
                fail(e.code, e.message)
            except NotFound:
                fail(ErrorCode.LEXICON_NOT_FOUND, f"lexicon {ref!r}: no object s3://{s.bucket}/{key}")
            except TooLarge as e:
                fail(ErrorCode.INVALID_LEXICON, f"lexicon {ref!r} is {e.size} bytes; the limit is {e.limit}")
            except lexicons.LexiconError as e:
                fail(ErrorCode.INVALID_LEXICON, f"lexicon {ref!r}: {e}")
        merged = lexicons.merge(*found, manifest.lexicon)
        try:
            lexicons.check(merged)
        except lexicons.LexiconError as e:
            fail(ErrorCode.INVALID_LEXICON, f"lexicon: {e}")
        return merged


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
