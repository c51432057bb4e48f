"""A job's inputs, read and checked before any model work: the manifest, its lexicons, the text
analysis, and the reference voices.

Every check that can fail a job fails it here, with a specific code, before the expensive work.
The text analysis runs in a child process with a CPU limit (``pipeline.text.sandbox``).
Every key comes from a client (the manifest) or a stored document (a voice library record) and is
validated where it is used (``pipeline.jobs.keys``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from botocore.exceptions import ClientError

from pipeline.cloud.aws import is_access_denied
from pipeline.cloud.store import NotFound, Store, TooLarge
from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import ErrorCode, Manifest, ManifestError, Priority, parse_manifest
from pipeline.text import lexicon as lexicons
from pipeline.text import script
from pipeline.text.languages import AUTO
from pipeline.text.sandbox import SpokenOverLimit, TextSandbox, TextTooComplex
from pipeline.text.script import Analysis
from pipeline.tts import audio as audio_utils
from pipeline.tts.batcher import BULK, INTERACTIVE
from pipeline.tts.shares import Tenant
from pipeline.tts.voices import UnusableRecord, VoiceLibrary, VoiceRecord
from pipeline.worker import budget
from pipeline.worker.failures import fail

log = logging.getLogger(__name__)


@dataclass
class VoiceInput:
    """One distinct reference voice of a job (a dialogue has several)."""

    name: str  # as the manifest names it (library name, key or URI)
    voice_key: str
    wave: np.ndarray
    sample_rate: int
    ref_text: str  # what the engine gets: the manifest's, the library's, or "" (transcribe)
    ref_text_source: str  # "manifest" | "voice_library" | "asr" (decided before synthesis)
    sha256: str  # of the clip's bytes: voices with the same content share one reference
    library: tuple[VoiceRecord, str] | None = None  # (record, etag) for a library voice
    ref_text_from_asr: bool = False  # the library's stored transcript came from an earlier ASR run


@dataclass(frozen=True)
class _Clip:
    key: str
    data: bytes
    sha256: str
    library: tuple[VoiceRecord, str] | None


def _voice_input(name: str, ref_text: str, clip: _Clip, wave: np.ndarray, sr: int) -> VoiceInput:
    record = clip.library[0] if clip.library is not None else None
    if not ref_text.strip() and record is not None and record.ref_text:
        return VoiceInput(
            name,
            clip.key,
            wave,
            sr,
            record.ref_text,
            "voice_library",
            clip.sha256,
            clip.library,
            record.ref_text_source == "asr",
        )
    return VoiceInput(name, clip.key, wave, sr, ref_text, "manifest", clip.sha256, clip.library)


@dataclass
class JobInputs:
    manifest: Manifest
    analysis: Analysis
    voices: list[VoiceInput]
    turn_voice: list[int]  # turn -> index into voices
    priority: Priority = Priority.bulk  # effective: the inbox the manifest was dropped in
    submitter: str = ""  # who wrote the manifest (the S3 event's, pipeline.cloud.events.submitter)

    @property
    def batch_priority(self) -> int:
        """Where the job's chunks stand in the batcher's queue (interactive ones lead)."""
        return INTERACTIVE if self.priority is Priority.interactive else BULK

    @property
    def tenant(self) -> Tenant:
        """Whose turn the job's model work takes within its priority (``pipeline.tts.shares``)."""
        return Tenant(self.submitter, self.manifest.requester or "")

    @property
    def dialogue(self) -> bool:
        return self.manifest.segments is not None


class Inputs:
    def __init__(self, settings: Settings, store: Store, languages: tuple[str, ...] = ("eng", "zho")) -> None:
        self.settings = settings
        self.store = store
        self.voices = VoiceLibrary(store)
        self.languages = languages  # what the worker's model speaks (its bundle's ``languages``)
        self.text = TextSandbox(settings.text_cpu_s)  # the text front-end's child, started on first use

    def close(self) -> None:
        self.text.close()

    async def read(
        self, job_id: str, check: Callable[[], None] = lambda: None, priority: Priority = Priority.bulk
    ) -> JobInputs:
        """``check`` is the attempt's (cancel, timeout, lost claim): called between downloads.
        ``priority``: the inbox the manifest was dropped in (its event's key said which)."""
        s = self.settings
        key = keys.manifest_key(job_id, priority)
        try:
            raw = await self.store.get_bytes(key, max_bytes=s.max_manifest_bytes)
        except NotFound:
            fail(ErrorCode.MANIFEST_NOT_FOUND, f"{key} no longer exists")
        except TooLarge as e:
            fail(ErrorCode.MANIFEST_TOO_LARGE, f"manifest is {e.size} bytes; the limit is {e.limit}")
        try:
            manifest = parse_manifest(raw)
        except ManifestError as e:
            fail(e.code, e.message)
        _check_text(manifest.full_text, s.max_text_chars)
        if manifest.language != AUTO:
            self._check_language([manifest.language])
        budget.check(s, "turns", len(manifest.turns))
        lexicon = await self._lexicon(manifest)
        try:  # in a child process under a CPU limit: a thread would hold the GIL, and the heartbeat
            analysis = await self.text.analyse(
                manifest,
                lexicon,
                max_pause_s=s.max_pause_s,
                max_total_pause_s=s.max_total_pause_s,
                max_spoken=s.max_spoken_chars,
            )
        except script.ScriptError as e:
            fail(e.code, e.message)
        except SpokenOverLimit as e:  # stopped while expanding: the failure the whole count would get
            budget.check(s, "spoken", e.spoken)
            raise  # pragma: no cover - over the limit by construction
        except TextTooComplex as e:
            fail(ErrorCode.TEXT_TOO_COMPLEX, e.message)
        self._check_language(list(analysis.languages))  # as detected, for "auto"
        voices, turn_voice = await self._voices(analysis, check)
        return JobInputs(manifest, analysis, voices, turn_voice, priority)

    def _check_language(self, found: list[str]) -> None:
        other = [lang for lang in found if lang not in self.languages]
        if other:
            fail(
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"the text is in {', '.join(other)}; this worker's model speaks {', '.join(self.languages)}",
            )

    async def _voices(self, analysis: Analysis, check: Callable[[], None]) -> tuple[list[VoiceInput], list[int]]:
        """One ``VoiceInput`` per distinct (voice, transcript) the turns name, for speaker labels;
        each voice downloaded once and each clip decoded once, however many turns name it. At most
        ``max_references`` distinct (clip content, transcript) pairs: each is a reference
        preparation (and, without a transcript, an ASR run)."""
        s = self.settings
        names: list[str] = []
        for turn in analysis.turns:
            voice = turn.voice or s.default_voice
            if not voice:
                fail(ErrorCode.VOICE_REQUIRED, "manifest names no voice and the worker has no TTS_DEFAULT_VOICE")
            names.append(voice)
        budget.check(s, "references", len(set(names)), "distinct voices named")  # before any download
        clips: dict[str, _Clip] = {}
        decoded: dict[str, tuple[np.ndarray, int]] = {}  # content sha256 -> wave
        voices: list[VoiceInput] = []
        turn_voice: list[int] = []
        index: dict[tuple[str, str], int] = {}
        for voice, turn in zip(names, analysis.turns, strict=True):
            if (voice, turn.ref_text) not in index:
                if voice not in clips:
                    check()
                    clips[voice] = await self._clip(voice)
                    clip = clips[voice]
                    if clip.sha256 not in decoded:
                        decoded[clip.sha256] = await asyncio.to_thread(
                            _decode_voice, clip.data, s.min_voice_seconds, s.max_voice_seconds
                        )
                index[(voice, turn.ref_text)] = len(voices)
                voices.append(_voice_input(voice, turn.ref_text, clips[voice], *decoded[clips[voice].sha256]))
            turn_voice.append(index[(voice, turn.ref_text)])
        budget.check(s, "references", len({(v.sha256, v.ref_text) for v in voices}))
        return voices, turn_voice

    async def _clip(self, voice: str) -> _Clip:
        """A voice's bytes: a library name (``"alice"``) before a plain key. A library record is a
        stored document anyone who may write under ``voices/`` can plant: its ``audio_key`` passes
        the rules of a manifest's key before it is read."""
        s = self.settings
        try:
            library = await self.voices.get(voice)
            vkey = (
                library[0].audio_key_checked(s.bucket, s.voice_prefixes)
                if library is not None
                else keys.voice_key(voice, s.bucket, s.voice_prefixes)
            )
        except UnusableRecord as e:
            fail(ErrorCode.INVALID_VOICE_KEY, str(e))
        except keys.VoiceRefError as e:
            fail(e.code, e.message)
        try:
            data = await self.store.get_bytes(vkey, max_bytes=s.max_voice_bytes)
        except NotFound:
            fail(ErrorCode.VOICE_NOT_FOUND, f"voice {voice!r}: no library voice and no object s3://{s.bucket}/{vkey}")
        except TooLarge as e:
            fail(ErrorCode.VOICE_TOO_LARGE, f"voice is {e.size} bytes; the limit is {e.limit}")
        except ClientError as e:
            _denied(e, f"voice {voice!r}", s.bucket, vkey)
            raise
        return _Clip(vkey, data, hashlib.sha256(data).hexdigest(), library)

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
            except ClientError as e:
                _denied(e, f"lexicon {ref!r}", s.bucket, key)
                raise
        merged = lexicons.merge(*found, manifest.lexicon)
        try:
            lexicons.check(merged)
        except lexicons.LexiconError as e:
            fail(ErrorCode.INVALID_LEXICON, f"lexicon: {e}")
        return merged


def _denied(e: ClientError, what: str, bucket: str, key: str) -> None:
    """An input the worker's role may not read fails the job with the input's name, in our words
    (AWS's AccessDenied message names the role's ARN and the account: it stays in the log)."""
    if is_access_denied(e):
        log.error("%s: access denied reading s3://%s/%s: %s", what, bucket, key, e)
        fail(
            ErrorCode.ACCESS_DENIED,
            f"{what}: the worker may not read s3://{bucket}/{key} (its IAM role needs s3:GetObject there)",
        )


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
