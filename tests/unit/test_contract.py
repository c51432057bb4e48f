"""The job contract: manifest validation, status transitions, exported schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.jobs.contract import (
    ErrorCode,
    JobState,
    JobStatus,
    Manifest,
    ManifestError,
    OutputFormat,
    SubtitleFormat,
    json_schemas,
    parse_manifest,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def _m(**fields: object) -> bytes:
    return json.dumps({"text": "Hello there.", "voice": "voices/a.wav", **fields}).encode()


def test_minimal_manifest_gets_documented_defaults() -> None:
    m = parse_manifest(json.dumps({"text": "Hi."}).encode())
    assert m.voice is None
    assert m.ref_text == ""
    assert (m.speed, m.nfe_step, m.cfg_strength, m.seed) == (1.0, 32, 2.0, None)
    assert m.output_format is OutputFormat.wav
    assert m.word_timings is True and m.subtitles == [] and m.remove_silence is False
    assert m.language == "eng"


def test_full_manifest() -> None:
    m = parse_manifest(
        _m(
            ref_text="ref",
            speed=1.5,
            nfe_step=16,
            cfg_strength=1.0,
            seed=7,
            output_format="flac",
            word_timings=False,
            subtitles=["srt", "vtt"],
            remove_silence=True,
            language="deu",
        )
    )
    assert m.output_format is OutputFormat.flac
    assert m.subtitles == [SubtitleFormat.srt, SubtitleFormat.vtt]
    assert m.needs_alignment  # subtitles need timings even when word_timings is false


def test_integer_speed_is_a_number() -> None:
    assert parse_manifest(_m(speed=2)).speed == 2.0


def test_bom_is_tolerated() -> None:
    assert parse_manifest(b"\xef\xbb\xbf" + _m()).text == "Hello there."


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"{not json", ErrorCode.INVALID_JSON, "not valid JSON"),
        (b"\xff\xfe\x00", ErrorCode.INVALID_JSON, "not UTF-8"),
        (b"", ErrorCode.INVALID_JSON, "not valid JSON"),
        (b"[1, 2]", ErrorCode.INVALID_MANIFEST, "JSON object"),
        (b"null", ErrorCode.INVALID_MANIFEST, "JSON object"),
        (json.dumps({"voice": "voices/a.wav"}).encode(), ErrorCode.INVALID_MANIFEST, "text"),
        (_m(text=""), ErrorCode.INVALID_MANIFEST, "text"),
        (_m(text="   \n"), ErrorCode.INVALID_MANIFEST, "blank"),
        (_m(text=42), ErrorCode.INVALID_MANIFEST, "text"),
        (_m(speed="fast"), ErrorCode.INVALID_MANIFEST, "speed"),
        (_m(speed="1.0"), ErrorCode.INVALID_MANIFEST, "speed"),  # strict: no string coercion
        (_m(speed=0), ErrorCode.INVALID_MANIFEST, "speed"),
        (_m(speed=100), ErrorCode.INVALID_MANIFEST, "speed"),
        (_m(nfe_step=0), ErrorCode.INVALID_MANIFEST, "nfe_step"),
        (_m(nfe_step=8.5), ErrorCode.INVALID_MANIFEST, "nfe_step"),
        (_m(seed=-1), ErrorCode.INVALID_MANIFEST, "seed"),
        (_m(word_timings="yes"), ErrorCode.INVALID_MANIFEST, "word_timings"),
        (_m(word_timings=1), ErrorCode.INVALID_MANIFEST, "word_timings"),
        (_m(output_format="aiff"), ErrorCode.INVALID_MANIFEST, "output_format"),
        (_m(subtitles="srt"), ErrorCode.INVALID_MANIFEST, "subtitles"),
        (_m(subtitles=["srt", "srt"]), ErrorCode.INVALID_MANIFEST, "repeat"),
        (_m(subtitles=["ass"]), ErrorCode.INVALID_MANIFEST, "subtitles"),
        (_m(voice=""), ErrorCode.INVALID_MANIFEST, "voice"),
        (_m(language="english"), ErrorCode.INVALID_MANIFEST, "language"),
        (_m(colour="blue"), ErrorCode.INVALID_MANIFEST, "colour"),  # unknown fields are rejected
        (_m(version=2), ErrorCode.INVALID_MANIFEST, "version"),
    ],
)
def test_bad_manifests_are_rejected_with_a_code_and_the_field(raw: bytes, code: ErrorCode, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    assert info.value.code == code
    assert fragment in info.value.message


def test_nan_speed_is_rejected() -> None:
    with pytest.raises(ManifestError):
        parse_manifest(b'{"text": "hi", "speed": NaN}')


def test_status_transitions_keep_history_and_count_attempts() -> None:
    s = JobStatus.new("job-1")
    p1 = s.moved_to(JobState.PROCESSING, worker="w1")
    assert (p1.state, p1.attempt, p1.worker) == (JobState.PROCESSING, 1, "w1")
    p2 = p1.moved_to(JobState.PROCESSING, worker="w2")  # a redelivery
    assert p2.attempt == 2 and p2.worker == "w2"
    done = p2.moved_to(JobState.COMPLETED)
    assert done.state.terminal and done.finished_at is not None and done.error is None
    assert [h.state for h in done.history] == ["QUEUED", "PROCESSING", "PROCESSING", "COMPLETED"]
    assert s.history == [s.history[0]]  # the original is untouched


def test_manifest_is_immutable() -> None:
    m = Manifest(text="x")
    with pytest.raises(Exception, match="frozen"):
        m.text = "y"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["manifest", "status", "result"])
def test_exported_schemas_match_the_code(name: str) -> None:
    """docs/schemas is generated by `tts-pipeline schema --out docs/schemas`; stale files fail here."""
    on_disk = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    assert on_disk == json_schemas()[name]
