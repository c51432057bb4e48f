"""The job contract: manifest (input), status and result (outputs), as pydantic models.

These three documents are the whole public interface of the pipeline. Their JSON Schemas are
exported to ``docs/schemas/`` by ``tts-pipeline schema --out docs/schemas`` and checked in a
test, so the docs can never drift from the code. See docs/contract.md for the prose version.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class OutputFormat(StrEnum):
    wav = "wav"
    flac = "flac"
    mp3 = "mp3"
    ogg = "ogg"


class SubtitleFormat(StrEnum):
    srt = "srt"
    vtt = "vtt"


class JobState(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.PROCESSING)


class Priority(StrEnum):
    """Which lane a job runs in. ``interactive`` jobs are received from their own queue and their
    chunks lead every model call; ``bulk`` jobs share the rest fairly among submitters."""

    interactive = "interactive"
    bulk = "bulk"


class ErrorCode(StrEnum):
    """Why a job failed. Stable strings: clients switch on them."""

    INVALID_JOB_ID = "INVALID_JOB_ID"
    MANIFEST_NOT_FOUND = "MANIFEST_NOT_FOUND"
    MANIFEST_TOO_LARGE = "MANIFEST_TOO_LARGE"
    INVALID_JSON = "INVALID_JSON"
    INVALID_MANIFEST = "INVALID_MANIFEST"
    TEXT_TOO_LONG = "TEXT_TOO_LONG"
    TEXT_NOT_SPEAKABLE = "TEXT_NOT_SPEAKABLE"
    TEXT_TOO_COMPLEX = "TEXT_TOO_COMPLEX"
    INVALID_MARKUP = "INVALID_MARKUP"
    INVALID_LEXICON = "INVALID_LEXICON"
    UNSUPPORTED_LANGUAGE = "UNSUPPORTED_LANGUAGE"
    JOB_TOO_COSTLY = "JOB_TOO_COSTLY"
    LEXICON_NOT_FOUND = "LEXICON_NOT_FOUND"
    VOICE_REQUIRED = "VOICE_REQUIRED"
    INVALID_VOICE_KEY = "INVALID_VOICE_KEY"
    VOICE_OUTSIDE_BUCKET = "VOICE_OUTSIDE_BUCKET"
    VOICE_NOT_FOUND = "VOICE_NOT_FOUND"
    VOICE_TOO_LARGE = "VOICE_TOO_LARGE"
    VOICE_UNREADABLE = "VOICE_UNREADABLE"
    VOICE_TOO_SHORT = "VOICE_TOO_SHORT"
    VOICE_TOO_LONG = "VOICE_TOO_LONG"
    TRANSCRIPTION_FAILED = "TRANSCRIPTION_FAILED"
    SYNTHESIS_FAILED = "SYNTHESIS_FAILED"
    ENCODE_FAILED = "ENCODE_FAILED"
    TIMEOUT = "TIMEOUT"
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"
    WORKER_CRASHED = "WORKER_CRASHED"
    ACCESS_DENIED = "ACCESS_DENIED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class WarningCode(StrEnum):
    ALIGNMENT_SKIPPED = "ALIGNMENT_SKIPPED"
    RANDOM_WEIGHTS = "RANDOM_WEIGHTS"
    QUALITY_BELOW_THRESHOLD = "QUALITY_BELOW_THRESHOLD"


# --------------------------------------------------------------------------------------------
# Manifest (what a client uploads to inbox/<job_id>.json)
# --------------------------------------------------------------------------------------------


class QualitySpec(BaseModel):
    """A job's quality gate (``pipeline/worker/quality.py``); an unset field takes the worker's
    ``TTS_QUALITY_*`` default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_wer: float | None = Field(
        default=None,
        ge=0.0,
        description="Highest word error rate (character error rate for Chinese) a chunk may have, its ASR "
        "transcript against what was meant to be spoken. Setting it asks for transcription even where the "
        "worker would not transcribe by default (a bundle with random weights); unset: TTS_QUALITY_MAX_WER "
        "where the bundle's ASR is real, signal checks only otherwise.",
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=5,
        description="Times a failing chunk is synthesised again. Unset: TTS_QUALITY_MAX_RETRIES.",
    )


class Segment(BaseModel):
    """One speaker's turn in a dialogue job (``Manifest.segments``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: str = Field(min_length=1, description="Text of this turn; may contain [pause:1.5s] markers.")
    voice: str | None = Field(
        default=None, min_length=1, max_length=1024, description="Library voice name or key; unset: the job's voice."
    )
    ref_text: str = Field(default="", max_length=2000, description="Transcript of this voice (as Manifest.ref_text).")
    speed: float | None = Field(default=None, ge=0.25, le=4.0, description="Unset: the job's speed.")
    pause_after_s: float = Field(default=0.0, ge=0.0, le=10.0, description="Silence after this turn.")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


class Manifest(BaseModel):
    """Manifest v1. Unknown fields are rejected so that typos fail loudly instead of being ignored.

    Limits that depend on deployment (text length, voice size and duration) are settings, checked
    by the worker, not part of the schema. A job has either ``text`` (one voice) or ``segments``
    (a dialogue: one voice per turn), never both.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Literal[1] = Field(default=1, description="Manifest schema version.")
    priority: Priority = Field(
        default=Priority.bulk,
        description="Which inbox a client should drop the manifest in (tts-pipeline submit does): interactive -> "
        "inbox-interactive/, bulk -> inbox/. The job's effective priority is the inbox it was dropped in (the one "
        "IAM can restrict), recorded as status.priority; this field only says what the client asked for.",
    )
    text: str | None = Field(
        default=None,
        min_length=1,
        description="Text to speak; may contain [pause:1.5s] markers. Required unless segments are given.",
    )
    segments: list[Segment] | None = Field(
        default=None, min_length=1, max_length=1000, description="A dialogue: turns spoken one after the other."
    )
    voice: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Reference voice: a library voice name (alice), a key in the job bucket (voices/alice.wav) or an "
        "s3:// URI in the same bucket. Defaults to the worker's TTS_DEFAULT_VOICE.",
    )
    ref_text: str = Field(
        default="",
        max_length=2000,
        description="Transcript of the reference voice. Empty: the worker transcribes it (ASR).",
    )
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    nfe_step: int = Field(default=32, ge=1, le=128, description="Flow-matching ODE steps.")
    cfg_strength: float = Field(default=2.0, ge=0.0, le=10.0)
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Unset: derived from the job id (recorded in the result), so a retried job resumes its chunks.",
    )
    output_format: OutputFormat = OutputFormat.wav
    word_timings: bool = True
    subtitles: list[SubtitleFormat] = Field(default_factory=list, max_length=2)
    remove_silence: bool = False
    language: Annotated[str, Field(pattern=r"^(?:[a-z]{2,3}|auto)$")] = Field(
        default="eng",
        description="Language of the text: an ISO 639-3 code (eng, zho), a two-letter one or an alias (zh, cmn), "
        "stored as ISO 639-3; or auto: detected sentence by sentence. It picks the normalization rules and the "
        "word segmentation; the worker's model must speak it (UNSUPPORTED_LANGUAGE otherwise).",
    )
    normalize: bool = Field(
        default=True, description="Write numbers, dates, currency, units and abbreviations out as words."
    )
    lexicon: dict[str, str] = Field(
        default_factory=dict,
        description="Pronunciations: whole word (case-sensitive) -> what to say instead. Applied before "
        "normalization; wins over lexicons.",
    )
    lexicons: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="W3C PLS lexicon files in the job bucket (keys under TTS_LEXICON_PREFIXES, lexicons/ by "
        "default); later files win.",
    )
    requester: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:@/+=-]+$",
        description="Whom the job is for, within its submitter: an opaque name (an app that submits for its end "
        "users names them here; the speech API and the console write their client's id). The worker shares the "
        "model fairly among submitters, then among the requesters of one submitter; it grants nothing else.",
    )
    quality: bool | QualitySpec | None = Field(
        default=None,
        description="The quality gate: every chunk checked (signal checks; ASR against the text where the bundle "
        "has a real ASR model), a failing one synthesised again with another seed, the best try kept. Unset or "
        "true: the worker's defaults (TTS_QUALITY_*); false: off; an object: those settings for this job.",
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("text is blank")
        return v

    @field_validator("language")
    @classmethod
    def _canonical_language(cls, v: str) -> str:
        from pipeline.text.languages import canonical

        return canonical(v)

    @field_validator("subtitles")
    @classmethod
    def _unique_subtitles(cls, v: list[SubtitleFormat]) -> list[SubtitleFormat]:
        if len(set(v)) != len(v):
            raise ValueError("subtitle formats must not repeat")
        return v

    @model_validator(mode="after")
    def _text_or_segments(self) -> Manifest:
        if (self.text is None) == (self.segments is None):
            raise ValueError("give either text or segments (a dialogue), not both and not neither")
        return self

    @property
    def needs_alignment(self) -> bool:
        return self.word_timings or bool(self.subtitles)

    @property
    def turns(self) -> list[Segment]:
        """The job as dialogue turns: a plain ``text`` job is one turn in the job's voice."""
        if self.segments is None:
            assert self.text is not None
            return [Segment(text=self.text, voice=self.voice, ref_text=self.ref_text, speed=self.speed)]
        return [
            seg.model_copy(
                update={
                    "voice": seg.voice or self.voice,
                    "ref_text": seg.ref_text if seg.voice else (seg.ref_text or self.ref_text),
                    "speed": seg.speed if seg.speed is not None else self.speed,
                }
            )
            for seg in self.segments
        ]

    @property
    def full_text(self) -> str:
        """The text as one string: a dialogue's turns joined by newlines."""
        return "\n".join(t.text for t in self.turns)


class ManifestError(ValueError):
    """A manifest that cannot be accepted; ``code`` is INVALID_JSON or INVALID_MANIFEST."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_manifest(raw: bytes) -> Manifest:
    """Decode and validate manifest bytes, raising ManifestError with a human message (and nothing
    else, whatever the bytes: a manifest is anyone's who may write to the inbox)."""
    try:
        # utf-8-sig: tolerate the BOM some Windows tools write; the JSON inside must be UTF-8.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(ErrorCode.INVALID_JSON, f"manifest is not UTF-8: {e}") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ManifestError(ErrorCode.INVALID_JSON, "manifest JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError; an integer literal over Python's digit limit
        raise ManifestError(ErrorCode.INVALID_JSON, f"manifest is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ManifestError(ErrorCode.INVALID_MANIFEST, f"manifest must be a JSON object, got {type(data).__name__}")
    try:
        again = json.dumps(data, ensure_ascii=False)
        again.encode("utf-8")  # a "\ud800" escape decodes to a lone surrogate, which is no character
    except UnicodeEncodeError:
        raise ManifestError(ErrorCode.INVALID_JSON, "manifest has a \\u escape that is not a character") from None
    except RecursionError:  # nesting under the decoder's limit can still be over the encoder's
        raise ManifestError(ErrorCode.INVALID_JSON, "manifest JSON is nested too deeply") from None
    try:
        # Validate the parsed JSON in JSON mode so enums accept their string values under strict.
        return Manifest.model_validate_json(again)
    except ValidationError as e:
        raise ManifestError(ErrorCode.INVALID_MANIFEST, _describe(e)) from None


def _no_constant(name: str) -> NoReturn:
    # Python's json reads NaN and Infinity; JSON has neither, and no manifest field means them.
    raise ValueError(f"{name} is not a JSON number")


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "manifest"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid manifest: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Status (status/<job_id>.json)
# --------------------------------------------------------------------------------------------


class JobErrorInfo(BaseModel):
    code: str = Field(description="One of ErrorCode.")
    message: str


class Transition(BaseModel):
    state: JobState
    at: datetime
    worker: str | None = None
    attempt: int = 0
    note: str | None = None


class Progress(BaseModel):
    chunks_done: int = Field(ge=0)
    chunks_total: int = Field(ge=0)
    chunks_reused: int = Field(
        default=0, ge=0, description="Chunks taken from an earlier attempt's durable outputs instead of synthesised."
    )
    chunks_prefix: str | None = Field(
        default=None,
        description="outputs/<job_id>/chunks/: finished chunks as <index>-<digest>.flac (+ .json), listable in order "
        "while the job runs, so a client can start listening early.",
    )


class JobStatus(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: Literal[1] = 1
    job_id: str
    state: JobState
    attempt: int = Field(default=0, ge=0, description="Processing attempts started so far.")
    created_at: datetime = Field(description="When the job entered the system (manifest upload).")
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    lease_expires_at: datetime | None = Field(
        default=None,
        description="While PROCESSING: the worker holds the job until then and renews it while alive. "
        "Another worker may take over a job whose lease has expired.",
    )
    progress: Progress | None = None
    error: JobErrorInfo | None = None
    result_key: str | None = Field(default=None, description="results/<job_id>.json once COMPLETED.")
    message_id: str | None = Field(
        default=None,
        description="The SQS message whose delivery holds the job (set by each claim). Other messages for the "
        "same job are duplicates: they are dropped, and their dead letters never end the job.",
    )
    priority: Priority | None = Field(
        default=None,
        description="The effective priority: the inbox the manifest was dropped in (set by submit and by each "
        "claim); null on statuses written before priorities existed.",
    )
    notified_at: datetime | None = Field(
        default=None,
        description="When this final state's notification was published (TTS_NOTIFY_TOPIC_ARN); null before, "
        "and always without a topic.",
    )
    history: list[Transition] = Field(default_factory=list)

    def moved_to(
        self,
        state: JobState,
        *,
        worker: str | None = None,
        error: JobErrorInfo | None = None,
        note: str | None = None,
        at: datetime | None = None,
        lease_s: float | None = None,
    ) -> JobStatus:
        """Return the next status document; the previous one stays in ``history``."""
        at = at or utcnow()
        attempt = self.attempt + 1 if state is JobState.PROCESSING else self.attempt
        changes: dict[str, object] = {
            "state": state,
            "attempt": attempt,
            "updated_at": at,
            "worker": worker or self.worker,
            "error": error,
            "lease_expires_at": None,
            "progress": None,
            "notified_at": None,  # every final state is notified on its own
            "history": [
                *self.history,
                Transition(state=state, at=at, worker=worker or self.worker, attempt=attempt, note=note),
            ],
        }
        if state is JobState.PROCESSING:
            changes["started_at"] = at
            changes["lease_expires_at"] = at + timedelta(seconds=lease_s) if lease_s else None
        changes["finished_at"] = at if state.terminal else None
        return self.model_copy(update=changes)

    @classmethod
    def new(cls, job_id: str, *, created_at: datetime | None = None, note: str | None = None) -> JobStatus:
        created_at = created_at or utcnow()
        return cls(
            job_id=job_id,
            state=JobState.QUEUED,
            created_at=created_at,
            updated_at=created_at,
            history=[Transition(state=JobState.QUEUED, at=created_at, note=note)],
        )


# --------------------------------------------------------------------------------------------
# Result (results/<job_id>.json)
# --------------------------------------------------------------------------------------------


class AudioInfo(BaseModel):
    uri: str = Field(description="s3://bucket/outputs/<job_id>/attempt-<n>.<ext> (the attempt that won)")
    url: str = Field(description="Presigned GET URL (expires; `tts-pipeline result` re-signs it).")
    url_expires_at: datetime
    format: OutputFormat
    sample_rate: int
    duration_s: float
    bytes: int


class WordTiming(BaseModel):
    word: str = Field(description="The word as the client wrote it (text[text_start:text_end]).")
    start: float = Field(ge=0, description="Seconds from the start of the audio.")
    end: float = Field(ge=0)
    score: float | None = None
    text_start: int | None = Field(default=None, ge=0, description="Character offset into the text (or segment).")
    text_end: int | None = Field(default=None, ge=0)
    spoken: str | None = Field(default=None, description="What was said, when normalization changed it.")
    sentence: int | None = Field(default=None, ge=0, description="Index into the result's sentences.")
    segment: int | None = Field(default=None, ge=0, description="Dialogue turn (index into segments).")
    speaker: str | None = Field(default=None, description="Dialogue turn's voice.")


class SentenceTiming(BaseModel):
    text: str = Field(description="The sentence as the client wrote it.")
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text_start: int = Field(ge=0)
    text_end: int = Field(ge=0)
    segment: int | None = None
    speaker: str | None = None
    language: str | None = Field(default=None, description='ISO 639-3 code, for language "auto" (as detected).')


class PauseTiming(BaseModel):
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text_start: int | None = Field(default=None, description="Offsets of the [pause:...] marker (none: pause_after_s).")
    text_end: int | None = None
    segment: int | None = None


class SegmentTiming(BaseModel):
    index: int
    speaker: str = Field(description="The turn's voice as the manifest names it.")
    voice_key: str
    ref_text: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)


class ChunkQuality(BaseModel):
    """The quality gate's verdict on one speech chunk (the kept try), in the result and in the
    chunk's durable record."""

    chunk: int = Field(ge=0, description="Speech chunk, in playing order (0-based).")
    start: float | None = Field(default=None, ge=0, description="Seconds from the start of the audio.")
    end: float | None = Field(default=None, ge=0)
    text: str = Field(default="", description="What was meant to be spoken (the chunk's normalized text).")
    score: float | None = Field(
        default=None, description="Error rate of the transcript (0 is perfect); null when not transcribed."
    )
    metric: Literal["wer", "cer"] | None = Field(default=None, description="wer: words; cer: characters (Chinese).")
    transcript: str | None = Field(default=None, description="What the ASR model heard in the kept try.")
    problems: list[str] = Field(
        default_factory=list,
        description="Checks the kept try failed: error_rate, not_transcribed (the ASR call failed), silent, "
        "speech_rate, long_silence, clipping, non_finite, empty. Empty: it passed.",
    )
    tries: int = Field(
        default=1,
        ge=1,
        description="Times the chunk was synthesised (a regeneration whose model call failed counts: it ends the "
        "chunk's retries, and the best try before it is kept).",
    )
    kept: int = Field(default=0, ge=0, description="Which try was kept (0: the first).")
    seed: int = Field(description="The kept try's seed.")

    @property
    def passed(self) -> bool:
        return not self.problems


class QualitySummary(BaseModel):
    transcribed: bool = Field(description="Chunks were transcribed by ASR (false: signal checks only).")
    max_wer: float | None = Field(description="The threshold applied (null: no transcription).")
    max_retries: int
    mean_score: float | None = Field(
        default=None, description="Mean error rate over the chunks (null: none transcribed)."
    )
    worst_score: float | None = None
    chunks_checked: int = 0
    chunks_regenerated: int = Field(default=0, description="Chunks synthesised more than once.")
    chunks_failed: int = Field(default=0, description="Chunks still failing a check after their retries.")
    chunks: list[ChunkQuality] = Field(default_factory=list)


class ModelInfo(BaseModel):
    name: str
    version: str
    random_weights: bool = Field(description="True for test bundles: the audio is noise.")
    device: str


class StageTimings(BaseModel):
    """Milliseconds per stage; ``total`` is dequeue-to-published (``queue_wait`` is before it)."""

    queue_wait: float
    download: float
    synthesis: float
    alignment: float
    encode: float
    upload: float
    total: float


class Usage(BaseModel):
    """What the job cost, for charging it back (**new, issue 28**). The model figures are the
    publishing attempt's: chunks an earlier attempt made durable cost nothing here."""

    characters: int = Field(description="Characters spoken: the text after lexicons and normalization.")
    audio_s: float = Field(description="Seconds of audio in the output.")
    model_s: float = Field(
        description="Seconds of model time: the job's share of each call on the worker's model thread it was in "
        "(synthesis, transcription, and alignment where the bundle's aligner runs there: on a GPU), by the audio "
        "each item made or read."
    )
    chunks_synthesized: int = Field(description="Chunk syntheses run, regenerations by the quality gate included.")
    chunks_regenerated: int = Field(default=0, description="Chunks synthesised more than once (the quality gate).")
    transcriptions: int = Field(default=0, description="ASR runs: the quality gate's and a reference's.")


class ResultWarning(BaseModel):
    code: str = Field(description="One of WarningCode.")
    message: str


class JobResult(BaseModel):
    schema_version: Literal[1] = 1
    job_id: str
    audio: AudioInfo
    word_timings: list[WordTiming] | None = Field(
        description="One entry per aligned word, monotonic, inside the audio; null if not asked."
    )
    subtitles: dict[SubtitleFormat, str] = Field(default_factory=dict, description="format -> s3 URI")
    sentences: list[SentenceTiming] | None = Field(
        default=None, description="Sentence marks, as word_timings; null if not asked or alignment was skipped."
    )
    segments: list[SegmentTiming] | None = Field(default=None, description="Dialogue jobs: where each turn is.")
    pauses: list[PauseTiming] = Field(default_factory=list, description="Silences asked for, where they are.")
    text: str = Field(description="The manifest's text (a dialogue's turns joined by newlines).")
    normalized_text: str = Field(default="", description="What was spoken: the text after lexicons and normalization.")
    languages: dict[str, int] = Field(
        default_factory=dict,
        description="Characters of the text per language (ISO 639-3): the manifest's, or as detected for auto.",
    )
    ref_text: str = Field(description="The reference transcript actually used.")
    ref_text_source: Literal["manifest", "voice_library", "asr"] = Field(
        description="manifest: given in the job; voice_library: stored in voices/<name>/voice.json; "
        "asr: transcribed for this job (then stored, for a library voice)."
    )
    ref_text_from_asr: bool = Field(default=False, description="The text was produced by ASR, now or earlier.")
    voice_key: str
    seed: int = Field(description="The seed used (the manifest's, or the one drawn); rerun with it.")
    chunks: int = Field(description="How many text chunks the text was planned into.")
    chunks_reused: int = Field(default=0, description="Chunks an earlier attempt had made durable (not synthesised).")
    model: ModelInfo
    worker: str
    timings_ms: StageTimings
    warnings: list[ResultWarning] = Field(default_factory=list)
    quality: QualitySummary | None = Field(
        default=None, description="The quality gate's summary and per-chunk verdicts; null when the gate was off."
    )
    usage: Usage | None = Field(default=None, description="What the job cost (null: published before issue 28).")
    completed_at: datetime


DOCUMENTS: dict[str, type[BaseModel]] = {
    "manifest": Manifest,
    "status": JobStatus,
    "result": JobResult,
}


def json_schemas() -> dict[str, dict]:
    return {name: model.model_json_schema() for name, model in DOCUMENTS.items()}
