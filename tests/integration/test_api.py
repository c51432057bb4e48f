"""The OpenAI-compatible speech API, driven by the official `openai` client, in front of a real
worker on LocalStack. The server is `tts-pipeline console`, started as users start it."""

from __future__ import annotations

import io
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import BUCKET, TTS, WorkerProcess, add_library_voice, start_console

pytestmark = pytest.mark.integration

openai = pytest.importorskip("openai")
KEY = "sk-test-0123456789"
VOICE = "api-alice"
STALLED = "api-stalled"  # a bucket and queue no worker consumes: every job stays QUEUED


@pytest.fixture(scope="module")
def console(aws_env: dict[str, str], worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    add_library_voice(aws_env, VOICE)
    proc, url = start_console(aws_env, tmp_path_factory.mktemp("console") / "console.log", api_key=KEY)
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def stalled(make_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    env = make_stack(STALLED)
    add_library_voice(env, VOICE)
    proc, url = start_console(env, tmp_path_factory.mktemp("stalled") / "console.log", api_wait_s="1")
    yield url, env
    proc.terminate()
    proc.wait(timeout=30)


def _client(url: str, key: str = KEY, **kw: Any) -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, **kw)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "pcm"])
def test_speech_comes_back_as_24khz_audio(console: str, fmt: str) -> None:
    response = _client(console).audio.speech.create(
        model="tts-1", voice=VOICE, input="Hello from the speech API. It costs $3.50.", response_format=fmt, speed=1.25
    )
    data = response.content
    if fmt == "pcm":  # raw 24 kHz 16-bit mono, as OpenAI documents it
        samples = np.frombuffer(data, dtype="<i2")
        assert len(data) % 2 == 0 and len(samples) > 2400 and np.any(samples)
        return
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == 24000 and info.channels == 1 and info.frames > 2400
    expected = {"wav": "WAV", "mp3": "MP3", "flac": "FLAC", "opus": "OGG"}[fmt]
    assert info.format == expected
    if fmt == "opus":
        assert info.subtype == "OPUS"
    assert response.response.headers["x-job-id"].startswith("job-")


def test_chinese_input_is_spoken_as_chinese(console: str, s3: Any) -> None:
    """OpenAI's request names no language: input with Chinese characters is detected (language
    auto), so its numbers are read in Mandarin and its words timed one by one."""
    text = "你好，世界。今天是2026年12月1日。"
    response = _client(console).audio.speech.create(model="tts-1", voice=VOICE, input=text, response_format="wav")
    job_id = response.response.headers["x-job-id"]
    result = json.loads(s3.get_object(Bucket=BUCKET, Key=f"results/{job_id}.json")["Body"].read())
    assert result["languages"] == {"zho": len(text)}
    assert "二零二六年十二月一日" in result["normalized_text"]
    assert len(result["word_timings"]) > 5


def test_voices_are_listed_from_the_library(console: str) -> None:
    req = urllib.request.Request(f"{console}/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.loads(resp.read())
    assert VOICE in body["voices"] and any(v["id"] == VOICE for v in body["data"])


@pytest.mark.parametrize("voice", ["nobody", "../voices/alice.wav", "voices/alice.wav", "s3://other/v.wav"])
def test_a_voice_outside_the_library_is_a_400_in_openais_shape(console: str, s3: Any, voice: str) -> None:
    before = s3.list_objects_v2(Bucket=BUCKET, Prefix="inbox").get("KeyCount", 0)
    with pytest.raises(openai.BadRequestError) as e:
        _client(console).audio.speech.create(model="tts-1", voice=voice, input="Hi.")
    error = e.value.response.json()["error"]
    assert e.value.status_code == 400 and error["code"] == "voice_not_found" and error["param"] == "voice"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="inbox").get("KeyCount", 0) == before  # no job made


def test_an_unsupported_format_is_a_400(console: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        _client(console).audio.speech.create(model="tts-1", voice=VOICE, input="Hi.", response_format="aac")
    assert e.value.response.json()["error"]["code"] == "unsupported_format"


def test_a_wrong_key_is_a_401(console: str) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        _client(console, key="sk-wrong").audio.speech.create(model="tts-1", voice=VOICE, input="Hi.")
    assert e.value.status_code == 401 and e.value.response.json()["error"]["code"] == "invalid_api_key"
    req = urllib.request.Request(f"{console}/v1/audio/voices")  # no key at all
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(req, timeout=10)
    assert missing.value.code == 401
    assert KEY not in missing.value.read().decode()


def test_a_job_longer_than_the_wait_bound_is_a_504_with_its_job_id(
    stalled: tuple[str, dict[str, str]], s3: Any
) -> None:
    url, env = stalled
    with pytest.raises(openai.APIStatusError) as e:
        _client(url, max_retries=0).audio.speech.create(model="tts-1", voice=VOICE, input="Nobody runs me.")
    assert e.value.status_code == 504
    job_id = e.value.response.headers["x-job-id"]
    assert job_id in e.value.response.json()["error"]["message"]
    # The job is in the system (its manifest: no worker claimed it, so it has no status document
    # yet, issue 27); `tts-pipeline status` says QUEUED and `result` fetches it later.
    assert s3.head_object(Bucket=STALLED, Key=f"inbox-interactive/{job_id}.json")
    out = subprocess.run([TTS, "status", job_id], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "QUEUED", out.stderr


def test_retries_with_an_idempotency_key_make_one_job(stalled: tuple[str, dict[str, str]], s3: Any) -> None:
    url, _ = stalled
    client = _client(url, max_retries=2)  # the openai client retries a 504 twice
    with pytest.raises(openai.APIStatusError) as e:
        client.audio.speech.create(
            model="tts-1", voice=VOICE, input="Once only.", extra_headers={"Idempotency-Key": "req-42"}
        )
    job_id = e.value.response.headers["x-job-id"]
    # One manifest in one inbox: the interactive one, or the bulk one when this client's
    # interactive share (TTS_DOOR_INTERACTIVE_JOBS) is taken by an earlier test's job, which never
    # ends on this stack (issue 27).
    manifests = [o["Key"] for o in s3.list_objects_v2(Bucket=STALLED, Prefix="inbox").get("Contents", [])]
    assert [f"inbox-interactive/{job_id}.json" in manifests, f"inbox/{job_id}.json" in manifests].count(True) == 1
    assert (
        sum(
            1
            for k in manifests
            if json.loads(s3.get_object(Bucket=STALLED, Key=k)["Body"].read())["text"] == "Once only."
        )
        == 1
    )
