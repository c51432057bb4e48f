"""Issue 18's controls that need no stack: key rules for stored documents, the work budget, sessions
and the login throttle, the front door's guard, log lines. The same holes are tried on the real
stack in tests/integration/test_hostile.py."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request

from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import ErrorCode, Manifest, parse_manifest
from pipeline.models.bundle import AlignerSpec, AsrSpec, Bundle, TtsSpec, VocoderSpec
from pipeline.runtime.logs import _TextFormatter, escape_controls
from pipeline.text import script
from pipeline.tts.engine import Reference, chunk_budget
from pipeline.tts.voices import VoiceRecord, is_name
from pipeline.web.guard import Guard, allowed_hosts, host_name, is_loopback
from pipeline.web.sessions import FREE_FAILURES, WINDOW_S, LoginThrottle, Sessions
from pipeline.worker import budget, quality
from pipeline.worker.failures import JobFailed
from tests.helpers import REF_TEXT
from tests.integration.test_longform import long_text

BUCKET = "b"

# -- ids, names and keys from stored documents --------------------------------------------------


@pytest.mark.parametrize("bad", ["job1\n", "job1\r", "\njob1", "job 1", "job1\x00"])
def test_a_trailing_newline_is_not_a_job_id_or_a_voice_name(bad: str) -> None:
    assert not keys.is_valid_job_id(bad)
    assert not is_name(bad)
    assert keys.job_id_from_key(f"status/{bad}.json", keys.STATUS) is None


def test_a_result_names_only_its_own_jobs_outputs() -> None:
    own = "s3://b/outputs/j1/attempt-2.wav"
    assert keys.job_output_key(BUCKET, "j1", own) == "outputs/j1/attempt-2.wav"
    assert keys.job_output_key(BUCKET, "j1", "s3://b/outputs/j1/attempt-2.srt") == "outputs/j1/attempt-2.srt"
    for uri in [
        "s3://b/outputs/j2/attempt-1.wav",  # another job's audio
        "s3://b/outputs/j1/../j2/attempt-1.wav",
        "s3://b/outputs/j1//attempt-1.wav",
        "s3://b/results/j1.json",
        "s3://b/models/m/latest",
        "s3://other/outputs/j1/attempt-1.wav",
        "outputs/j1/attempt-1.wav",
        "s3://b/outputs/j1/attempt-1.wav\n",
        "s3://b/outputs/j1",
    ]:
        with pytest.raises(keys.UntrustedKey):
            keys.job_output_key(BUCKET, "j1", uri)


def _record(name: str, audio_key: str) -> VoiceRecord:
    return VoiceRecord(
        name=name, audio_key=audio_key, sha256="0" * 64, bytes=1, duration_s=1.0, sample_rate=24000, channels=1
    )


@pytest.mark.parametrize(
    "audio_key",
    ["outputs/other-job/attempt-1.wav", "results/j.json", "models/m/latest", "voices/../outputs/j/a.wav", "/abs.wav"],
)
def test_a_voice_records_audio_key_passes_the_manifest_rules(audio_key: str) -> None:
    record = _record("alice", audio_key)
    with pytest.raises(keys.VoiceRefError) as e:
        record.audio_key_checked(BUCKET)
    assert e.value.code == ErrorCode.INVALID_VOICE_KEY and "voice library record 'alice'" in e.value.message
    assert record.owned_audio_key() is None  # and the library never deletes it


def test_the_library_deletes_only_inside_the_voices_own_folder() -> None:
    assert _record("alice", "voices/alice/audio.wav").owned_audio_key() == "voices/alice/audio.wav"
    assert _record("alice", "voices/alice/audio.wav").audio_key_checked(BUCKET) == "voices/alice/audio.wav"
    for key in ["voices/bob/audio.wav", "voices/alice/sub/audio.wav", "voices/alice.wav", "voices/alice/../bob/a"]:
        assert _record("alice", key).owned_audio_key() is None


# -- the work budget ---------------------------------------------------------------------------


# A bundle with a real ASR model (the worker's default policy transcribes every chunk there), and
# the tiny test bundle (random weights: signal checks only, unless a job sets max_wer).
REAL = Bundle(
    name="b",
    version="1",
    tts=TtsSpec(arch={}, checkpoint="c", vocab="v"),
    vocoder=VocoderSpec(dir="voc"),
    aligner=AlignerSpec(model="a.onnx"),
    asr=AsrSpec(dir="asr"),
)
TINY = REAL.model_copy(update={"random_weights": True})


@dataclass
class _Plan:
    manifest: Manifest
    pieces: list[script.Piece]
    ref: Reference
    turn_voice: list[int]

    @property
    def chunks(self) -> int:
        return sum(1 for p in self.pieces if not p.is_pause)

    @property
    def work(self) -> int:
        """The plan's own model work: one try per chunk (all the budget counted before issue 27)."""
        m = self.manifest
        return budget.model_work(self.pieces, [self.ref], self.turn_voice, m.nfe_step, m.cfg_strength)

    def check(self, settings: Settings, bundle: Bundle) -> int:
        """The worker's check before synthesis, with the gate the job gets on ``bundle``."""
        m = self.manifest
        policy = quality.resolve(settings, m.quality, bundle)
        return budget.check_plan(settings, self.pieces, [self.ref], self.turn_voice, m.nfe_step, m.cfg_strength, policy)


def _plan(text: str, ref_text: str, **fields: object) -> _Plan:
    m = parse_manifest(json.dumps({"text": text, "voice": "voices/a.wav", "ref_text": ref_text, **fields}).encode())
    analysis = script.analyse(m, {})
    ref = Reference(np.zeros(int(5.33 * 24000), dtype=np.float32), 24000, ref_text, "manifest")
    pieces = analysis.plan(lambda turn, speed: chunk_budget(len(ref.audio), ref.text, speed))
    return _Plan(m, pieces, ref, [0] * len(analysis.turns))


def _work(text: str, ref_text: str, **fields: object) -> tuple[int, int]:
    plan = _plan(text, ref_text, **fields)
    return plan.chunks, plan.work


def test_a_100k_character_plain_job_fits_the_default_budget() -> None:
    s = Settings()
    plan = _plan(long_text(100_000), REF_TEXT)
    budget.check(s, "chunks", plan.chunks)
    budget.check(s, "work", plan.work)
    assert plan.work > s.max_model_work / 10, "the limit should be within an order of magnitude of a real long job"
    # ... and so does its worst case with the default quality gate (issue 27): every chunk synthesised
    # three times, and on a bundle with real ASR weights transcribed three times as well.
    for bundle in (REAL, TINY):
        assert plan.check(s, bundle) == plan.work
    worst = budget.worst_case(plan.work, plan.chunks, quality.resolve(s, None, REAL))
    assert worst.tries == 3 and worst.transcriptions == 3 * plan.chunks and worst.total <= s.max_model_work


def test_the_quality_gates_retries_and_transcriptions_are_in_the_budget() -> None:
    """Issue 27, defect 7: one step, no guidance and a gate no chunk can pass, asking for five
    retries, over ~3,900 chunks (a one-character transcript shrinks them): the plan's own work is
    small, but each chunk may be synthesised and transcribed six times, ~23,000 Whisper runs. The
    job is refused before any synthesis, the message naming what to lower."""
    quality_bomb = {"nfe_step": 1, "cfg_strength": 0, "quality": {"max_wer": 0, "max_retries": 5}}
    plan = _plan(long_text(24_000), "a", **quality_bomb)
    s = Settings()
    assert 3_500 < plan.chunks <= s.max_chunks and plan.work < s.max_model_work / 10  # what was counted
    for bundle in (REAL, TINY):  # max_wer in the manifest turns transcription on even on the tiny bundle
        with pytest.raises(JobFailed) as e:
            plan.check(s, bundle)
        assert e.value.code == ErrorCode.JOB_TOO_COSTLY
        assert "TTS_MAX_MODEL_WORK" in e.value.message and "quality.max_retries (now 5)" in e.value.message
        assert "transcriptions" in e.value.message and "quality: false" in e.value.message
    # Without the gate the same text fits: the gate is what it cost.
    assert _plan(long_text(24_000), "a", nfe_step=1, cfg_strength=0, quality=False).check(s, REAL) == plan.work


def test_a_references_transcription_counts_too() -> None:
    assert budget.worst_case(0, 10, None, reference_transcriptions=2).total == 2 * budget.TRANSCRIPTION_WORK
    signal_only = quality.Policy(asr=False, max_wer=None, max_retries=4)
    assert budget.worst_case(100, 10, signal_only) == budget.Worst(synthesis=500, tries=5, transcriptions=0)


@pytest.mark.parametrize(
    ("text", "ref_text", "fields", "limit"),
    [
        (long_text(100_000), "a", {}, "TTS_MAX_CHUNKS"),  # a one-character transcript: ~16,000 chunks
        (long_text(3_000), "a", {"nfe_step": 128, "speed": 0.25}, "TTS_MAX_MODEL_WORK"),
    ],
)
def test_cost_bombs_exceed_the_default_budget(text: str, ref_text: str, fields: dict, limit: str) -> None:
    chunks, work = _work(text, ref_text, **fields)
    with pytest.raises(JobFailed) as e:
        budget.check(Settings(), "chunks", chunks)
        budget.check(Settings(), "work", work)
    assert e.value.code == ErrorCode.JOB_TOO_COSTLY and limit in e.value.message


def test_a_lexicon_alias_is_counted_as_it_expands() -> None:
    m = parse_manifest(json.dumps({"text": "a " * 5000, "voice": "voices/a.wav", "lexicon": {"a": "b" * 200}}).encode())
    seen: list[int] = []

    def limit(n: int) -> None:
        seen.append(n)
        budget.check(Settings(max_spoken_chars=100_000), "spoken", n)

    with pytest.raises(JobFailed) as e:
        script.analyse(m, m.lexicon, on_spoken=limit)
    assert e.value.code == ErrorCode.JOB_TOO_COSTLY and "TTS_MAX_SPOKEN_CHARS" in e.value.message
    assert seen and seen[-1] > 100_000 > len(m.text)


# -- sessions and login guesses ------------------------------------------------------------------


def test_logout_ends_a_session_for_good() -> None:
    now = [1000.0]
    sessions = Sessions(ttl_s=60, clock=lambda: now[0])
    sid = sessions.create()
    assert sessions.valid(sid) and not sessions.valid("forged") and not sessions.valid(None)
    sessions.revoke(sid)
    assert not sessions.valid(sid)
    other = sessions.create()
    now[0] += 61
    assert not sessions.valid(other) and len(sessions) == 0


async def test_guesses_are_refused_after_a_few_wrong_keys_until_the_window_passes() -> None:
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0], pause_s=0)
    for _ in range(FREE_FAILURES):
        assert throttle.retry_after("1.2.3.4") is None
        await throttle.failed("1.2.3.4")
    wait = throttle.retry_after("1.2.3.4")
    assert wait is not None and 0 < wait <= WINDOW_S
    assert throttle.retry_after("5.6.7.8") is None  # another client is not punished
    now[0] += WINDOW_S + 1
    assert throttle.retry_after("1.2.3.4") is None


# -- the guard -----------------------------------------------------------------------------------


def _guard() -> Guard:
    return Guard(allowed_hosts(("localhost", "127.0.0.1", "::1"), "127.0.0.1"))


def _req(method: str, path: str, host: str = "127.0.0.1:8080", **headers: str):  # type: ignore[no-untyped-def]
    return make_mocked_request(method, path, headers={"Host": host, **headers})


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.5:8080", ""])
def test_a_foreign_host_is_misdirected(host: str) -> None:
    r = _guard().refusal(_req("GET", "/console/api/jobs", host=host))
    assert r is not None and r.status == 421


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST"])
def test_loopback_hosts_are_answered(host: str) -> None:
    assert _guard().refusal(_req("GET", "/console/api/jobs", host=host)) is None


def test_healthz_answers_any_host() -> None:
    assert _guard().refusal(_req("GET", "/healthz", host="10.1.2.3:8080")) is None


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/audio/speech", {"Content-Type": "text/plain"}, 415),  # a page's simple request
        ("/v1/audio/speech", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ("/v1/audio/speech", {"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
        ("/v1/audio/speech", {"Content-Type": "application/json", "Origin": "http://127.0.0.1:8081"}, 403),
        ("/v1/audio/speech", {"Content-Type": "application/json", "Origin": "null"}, 403),
        ("/v1/audio/speech", {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403),
        ("/console/api/jobs", {"Sec-Fetch-Site": "cross-site", "X-Console": "1"}, 403),
        ("/logout", {"Origin": "http://evil.example"}, 403),
    ],
)
def test_cross_site_writes_are_refused(path: str, headers: dict[str, str], status: int) -> None:
    r = _guard().refusal(_req("POST", path, **headers))
    assert r is not None and r.status == status


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},  # the openai client: no Origin, no Sec-Fetch-*
        {"Content-Type": "application/json", "Origin": "http://127.0.0.1:8080", "Sec-Fetch-Site": "same-origin"},
        # a same-origin form under Referrer-Policy: no-referrer (the console's) says Origin: null
        {"Content-Type": "application/json", "Origin": "null", "Sec-Fetch-Site": "same-origin"},
    ],
)
def test_same_origin_and_non_browser_writes_pass(headers: dict[str, str]) -> None:
    assert _guard().refusal(_req("POST", "/v1/audio/speech", **headers)) is None


def test_hosts_and_loopback() -> None:
    assert host_name("[::1]:8080") == "::1" and host_name("Example.COM:1") == "example.com"
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and not is_loopback("0.0.0.0")
    assert "10.0.0.5" in allowed_hosts(("localhost",), "10.0.0.5")
    assert "0.0.0.0" not in allowed_hosts(("localhost",), "0.0.0.0")


# -- logs ---------------------------------------------------------------------------------------


def test_a_client_string_cannot_forge_a_text_log_line() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "rejected %s", ("inbox/a\n2026 INFO forged.json",), None)
    record.job_id = "-"
    line = _TextFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "a\\n2026 INFO forged" in line
    assert escape_controls("plain, accented é and 你好") == "plain, accented é and 你好"


def test_peaks_for_any_n_come_from_one_computation() -> None:
    from pipeline.web.console import PEAKS, _downsample

    peaks = [i / PEAKS for i in range(PEAKS)]
    for n in (16, 800, 1234, PEAKS):
        drawn = _downsample(peaks, n)
        assert len(drawn) == n and max(drawn) == max(peaks) and drawn == sorted(drawn)
