"""The S3 key layout and the rules for job ids and voice references."""

from __future__ import annotations

import pytest

from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import ErrorCode


def test_layout() -> None:
    assert keys.manifest_key("job-1") == "inbox/job-1.json"
    assert keys.status_key("job-1") == "status/job-1.json"
    assert keys.result_key("job-1") == "results/job-1.json"
    assert keys.output_key("job-1", 1, "wav") == "outputs/job-1/attempt-1.wav"
    assert keys.output_key("job-1", 12, "srt") == "outputs/job-1/attempt-12.srt"
    assert keys.attempt_outputs_prefix("job-1", 1) == "outputs/job-1/attempt-1."
    assert keys.parse_output_key("outputs/job.1/attempt-2.wav") == ("job.1", "attempt-2")
    assert keys.parse_output_key("outputs/job-1.wav") is None  # the layout before attempts
    assert keys.key_from_uri("b", "s3://b/outputs/j/attempt-1.wav") == "outputs/j/attempt-1.wav"
    assert keys.job_id_from_key("status/a.b.json", keys.STATUS) == "a.b"
    assert keys.job_id_from_key("status/../x.json", keys.STATUS) is None
    assert keys.model_prefix("F5TTS_v1_Base", "abc") == "models/F5TTS_v1_Base/abc/"
    assert keys.model_latest_key("F5TTS_v1_Base") == "models/F5TTS_v1_Base/latest"


@pytest.mark.parametrize("job_id", ["job-0001", "a", "A.b_c-9", "x" * 128, "2026.11.25"])
def test_valid_job_ids(job_id: str) -> None:
    assert keys.job_id_from_inbox_key(f"inbox/{job_id}.json") == job_id


@pytest.mark.parametrize(
    "key",
    [
        "inbox/has space.json",
        "inbox/plus+sign.json",
        "inbox/sub/dir.json",
        "inbox/.json",
        "inbox/..json",
        "inbox/" + "x" * 129 + ".json",
        "inbox/émoji.json",
        "inbox/job.txt",
        "other/job.json",
    ],
)
def test_invalid_job_ids_still_say_where_the_verdict_goes(key: str) -> None:
    with pytest.raises(keys.InvalidJobId) as info:
        keys.job_id_from_inbox_key(key)
    assert info.value.status_key.startswith("status/")
    if key.startswith("inbox/"):
        assert info.value.status_key == "status/" + key.removeprefix("inbox/")


@pytest.mark.parametrize(
    ("voice", "key"),
    [
        ("voices/alice.wav", "voices/alice.wav"),
        ("s3://tts-jobs/voices/alice.wav", "voices/alice.wav"),
        ("voices/with space+plus.wav", "voices/with space+plus.wav"),
        ("voices/uploads/abc/bob.flac", "voices/uploads/abc/bob.flac"),
    ],
)
def test_voice_references(voice: str, key: str) -> None:
    assert keys.voice_key(voice, "tts-jobs") == key


def test_voice_prefixes_are_an_allow_list_that_never_reaches_pipeline_data() -> None:
    """Only voices/ by default; TTS_VOICE_PREFIXES widens it; outputs/ (another job's audio) and
    every other pipeline prefix stay refused whatever the list says."""
    with pytest.raises(keys.VoiceRefError, match="outside the voice prefixes"):
        keys.voice_key("custom/prefix/bob.flac", "tts-jobs")
    assert keys.voice_key("custom/prefix/bob.flac", "tts-jobs", ("voices/", "custom/")) == "custom/prefix/bob.flac"
    for key in ("outputs/chk-mp3/attempt-1.mp3", "outputs/chk-mp3.mp3", "results/a.json", "cancel/a", "inbox/a.json"):
        with pytest.raises(keys.VoiceRefError, match="pipeline data") as info:
            keys.voice_key(key, "tts-jobs", ("voices/", "outputs/", "results/", "cancel/", "inbox/"))
        assert info.value.code == ErrorCode.INVALID_VOICE_KEY
    assert Settings(voice_prefixes="voices/, team-a/voices/").voice_prefixes == ("voices/", "team-a/voices/")
    for bad in ("outputs/", "outputs/voices/", "voices", "", "/abs/", "a/../b/"):
        with pytest.raises(ValueError, match="TTS_VOICE_PREFIXES"):
            Settings(voice_prefixes=bad)


@pytest.mark.parametrize(
    ("voice", "code"),
    [
        ("s3://other-bucket/voices/a.wav", ErrorCode.VOICE_OUTSIDE_BUCKET),
        ("s3://tts-jobs-evil/voices/a.wav", ErrorCode.VOICE_OUTSIDE_BUCKET),
        ("https://example.com/a.wav", ErrorCode.INVALID_VOICE_KEY),
        ("../etc/passwd", ErrorCode.INVALID_VOICE_KEY),
        ("voices/../inbox/x.json", ErrorCode.INVALID_VOICE_KEY),
        ("voices//a.wav", ErrorCode.INVALID_VOICE_KEY),
        ("/voices/a.wav", ErrorCode.INVALID_VOICE_KEY),
        ("voices/a\x00.wav", ErrorCode.INVALID_VOICE_KEY),
        ("s3://tts-jobs/", ErrorCode.INVALID_VOICE_KEY),
        ("status/job-1.json", ErrorCode.INVALID_VOICE_KEY),
        ("models/F5TTS_v1_Base/latest", ErrorCode.INVALID_VOICE_KEY),
        ("outputs/chk-mp3/attempt-1.mp3", ErrorCode.INVALID_VOICE_KEY),
        ("s3://tts-jobs/outputs/chk-mp3.mp3", ErrorCode.INVALID_VOICE_KEY),
        ("elsewhere/a.wav", ErrorCode.INVALID_VOICE_KEY),
    ],
)
def test_bad_voice_references(voice: str, code: ErrorCode) -> None:
    with pytest.raises(keys.VoiceRefError) as info:
        keys.voice_key(voice, "tts-jobs")
    assert info.value.code == code


def test_chunk_keys_sort_in_playing_order_and_parse_back() -> None:
    a = keys.chunk_key("job-1", 9, "ab" * 16, "flac")
    b = keys.chunk_key("job-1", 10, "cd" * 16, "flac")
    assert a.startswith(keys.chunks_prefix("job-1")) and sorted([b, a]) == [a, b]
    assert keys.parse_chunk_key(b) == (10, "cd" * 16, "flac")
    assert keys.parse_chunk_key("outputs/job-1/chunks/notes.txt") is None
    # The reconciler sees a job's chunks as one group of its outputs, apart from any attempt.
    assert keys.parse_output_key(a) == ("job-1", "chunks")
    assert keys.parse_output_key(keys.output_key("job-1", 2, "wav")) == ("job-1", "attempt-2")


def test_lexicon_keys_follow_the_voice_rules_under_their_own_prefixes() -> None:
    assert keys.lexicon_key("lexicons/tech.pls", "b") == "lexicons/tech.pls"
    assert keys.lexicon_key("s3://b/lexicons/a/tech.pls", "b") == "lexicons/a/tech.pls"
    for bad in ("voices/alice.wav", "results/x.json", "lexicons/../status/x.json", "s3://other/lexicons/x.pls"):
        with pytest.raises(keys.VoiceRefError) as e:
            keys.lexicon_key(bad, "b")
        assert e.value.code == "INVALID_LEXICON"


def test_both_inboxes_name_jobs_of_one_namespace() -> None:
    """Issue 19: inbox-interactive/ is the interactive lane's inbox; it does not overlap inbox/
    (S3 refuses overlapping notification prefixes) and its job ids are the same namespace."""
    assert keys.manifest_key("j", "interactive") == "inbox-interactive/j.json"
    assert keys.job_id_from_inbox_key("inbox-interactive/j.json") == "j"
    assert keys.inbox_of("inbox-interactive/j.json") == "interactive" and keys.inbox_of("inbox/j.json") == "bulk"
    assert keys.inbox_of("status/j.json") is None
    assert not keys.INBOX_INTERACTIVE.startswith(keys.INBOX)
    assert keys.manifest_keys("j") == ["inbox/j.json", "inbox-interactive/j.json"]
    with pytest.raises(keys.InvalidJobId) as info:
        keys.job_id_from_inbox_key("inbox-interactive/has space.json")
    assert info.value.status_key == "status/has space.json"
