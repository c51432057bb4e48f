"""Streaming speech through the OpenAI-compatible API, with OpenAI's own client, in front of a real
worker on LocalStack. A job is held after its first chunk by the fault hooks, so "audio arrived
before the job completed" is an observed fact, not a race won on this machine's speed."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import (
    Holds,
    WorkerProcess,
    add_library_voice,
    drop_manifest,
    get_json,
    start_console,
    start_worker,
    stop_worker,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

openai = pytest.importorskip("openai")
STACK = "api-stream"
VOICE = "stream-alice"
KEY = "sk-stream-test"
TEXT = (
    "The first sentence is short. "
    "Then comes a much longer second sentence, which carries on for a while so that it fills a chunk of its own. "
    "A third sentence follows it, and a fourth one closes the request, with a number: 42."
)


@pytest.fixture(scope="module")
def stack(make_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Holds]]:
    env = make_stack(STACK)
    add_library_voice(env, VOICE)
    holds = Holds(tmp_path_factory.mktemp("stream-faults"))
    worker: WorkerProcess = start_worker(env, tmp_path_factory.mktemp("stream-worker") / "worker.log", **holds.settings)
    wait_ready(worker)
    log = tmp_path_factory.mktemp("stream-console") / "console.log"
    proc, url = start_console(env, log)  # no key: the console page opens without a login
    yield url, log, holds
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert stop_worker(worker) == 0


def _client(url: str) -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def _job_id(idempotency_key: str) -> str:
    """The job an Idempotency-Key names (pipeline/web/api.py), so a test can hold it beforehand."""
    return "api-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _final_samples(s3: Any, job_id: str) -> np.ndarray:
    result = get_json(s3, f"results/{job_id}.json", bucket=STACK)
    assert result is not None
    key = result["audio"]["uri"].split(f"s3://{STACK}/", 1)[1]
    data = s3.get_object(Bucket=STACK, Key=key)["Body"].read()
    samples, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == 24000
    return samples


def _state(s3: Any, job_id: str) -> str | None:
    status = get_json(s3, f"status/{job_id}.json", bucket=STACK)
    return status["state"] if status else None


class _Reader(threading.Thread):
    """Reads a streamed answer in the background, recording when each piece came relative to the
    job's hold (the test releases the hold only after it has seen the first piece)."""

    def __init__(self, response: Any) -> None:
        super().__init__(daemon=True)
        self.response = response
        self.parts: list[bytes] = []
        self.first = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for part in self.response.iter_bytes():
                self.parts.append(part)
                self.first.set()
        except BaseException as e:  # surfaced by the test
            self.error = e
        finally:
            self.first.set()


def test_audio_arrives_before_the_job_completes_and_is_the_final_audio(stack: tuple[str, Path, Holds], s3: Any) -> None:
    url, _, holds = stack
    idem = "stream-pcm-1"
    job_id = _job_id(idem)
    holds.hold(job_id, after_chunks=1)
    with _client(url).audio.speech.with_streaming_response.create(
        model="tts-1", voice=VOICE, input=TEXT, response_format="pcm", extra_headers={"Idempotency-Key": idem}
    ) as response:
        assert response.headers["x-job-id"] == job_id
        reader = _Reader(response)
        reader.start()
        assert reader.first.wait(300), "no audio arrived"
        assert reader.error is None and reader.parts, reader.error
        # The job is held after its first chunk: what arrived came from it, before completion.
        assert holds.held(job_id) is not None
        assert _state(s3, job_id) == "PROCESSING"
        early = sum(len(p) for p in reader.parts)
        holds.release(job_id)
        reader.join(300)
    assert reader.error is None, reader.error
    streamed = np.frombuffer(b"".join(reader.parts), dtype="<i2")
    final = _final_samples(s3, job_id)
    assert _state(s3, job_id) == "COMPLETED"
    assert early > 0 and len(streamed) > early // 2
    np.testing.assert_array_equal(streamed, final)


def test_sse_events_parse_with_openais_client_and_carry_the_final_audio(
    stack: tuple[str, Path, Holds], s3: Any
) -> None:
    from openai._streaming import SSEDecoder

    url, _, holds = stack
    idem = "stream-sse-1"
    job_id = _job_id(idem)
    holds.hold(job_id, after_chunks=1)
    with _client(url).audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice=VOICE,
        input=TEXT,
        response_format="wav",
        stream_format="sse",
        extra_headers={"Idempotency-Key": idem},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = SSEDecoder().iter_bytes(response.iter_bytes())
        first = json.loads(next(events).data)
        assert first["type"] == "speech.audio.delta"
        assert _state(s3, job_id) == "PROCESSING"  # held: the first delta came before completion
        holds.release(job_id)
        rest = [json.loads(e.data) for e in events]
    deltas = [first, *rest[:-1]]
    assert all(e["type"] == "speech.audio.delta" for e in deltas)
    done = rest[-1]
    assert done["type"] == "speech.audio.done" and done["usage"]["input_tokens"] == len(TEXT)
    wav = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    samples, sr = sf.read(io.BytesIO(wav), dtype="int16")
    assert sr == 24000
    np.testing.assert_array_equal(samples, _final_samples(s3, job_id))


@pytest.mark.parametrize("cancel", [False, True])
def test_a_client_that_goes_away_cancels_only_when_it_asked_to(
    stack: tuple[str, Path, Holds], s3: Any, cancel: bool
) -> None:
    url, log, holds = stack
    idem = f"stream-leave-{cancel}"
    job_id = _job_id(idem)
    holds.hold(job_id, after_chunks=1)
    extra = {"cancel_on_disconnect": True} if cancel else None
    with _client(url).audio.speech.with_streaming_response.create(
        model="tts-1",
        voice=VOICE,
        input=TEXT,
        response_format="mp3",
        extra_headers={"Idempotency-Key": idem},
        extra_body=extra,
    ) as response:
        next(response.iter_bytes())  # audio is flowing; the client leaves
    # The server has seen the client go (and, if asked, cancelled) before the job may go on.
    wait_until(lambda: f"job {job_id}: its client went away" in log.read_text(), "the server saw the client leave")
    if cancel:
        wait_until(lambda: _exists(s3, f"cancel/{job_id}"), "the cancel request")
    holds.release(job_id)
    final = wait_until(lambda: _state(s3, job_id) in ("COMPLETED", "CANCELLED", "FAILED") and _state(s3, job_id), "end")
    assert final == ("CANCELLED" if cancel else "COMPLETED")
    if not cancel:
        assert len(_final_samples(s3, job_id)) > 0  # fetchable later by its X-Job-Id


def _exists(s3: Any, key: str) -> bool:
    try:
        s3.head_object(Bucket=STACK, Key=key)
        return True
    except s3.exceptions.ClientError:
        return False


def test_a_job_that_fails_before_audio_is_an_http_error(stack: tuple[str, Path, Holds]) -> None:
    url = stack[0]
    with pytest.raises(openai.BadRequestError) as e:
        _client(url).audio.speech.create(
            model="tts-1", voice=VOICE, input="<speak><break time='x'/></speak>", response_format="pcm"
        )
    assert e.value.status_code == 400


def test_the_console_plays_a_held_job_from_its_chunks_then_the_final_audio(
    stack: tuple[str, Path, Holds], s3: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    url, _, holds = stack
    job_id = "console-live-1"
    holds.hold(job_id, after_chunks=1)
    env = {**aws_env, "TTS_BUCKET": STACK, "TTS_QUEUE": STACK}
    drop_manifest(env, tmp_path, job_id, {"text": TEXT, "voice": VOICE}, bucket=STACK)
    holds.wait_held(job_id)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        page = browser.new_page()
        page.goto(f"{url}/jobs/{job_id}")
        live = page.locator("#live-audio")
        sync_api.expect(live).to_have_count(1, timeout=60_000)
        # Chromium decodes and plays the first chunk while the job is held after it.
        page.wait_for_function(
            "() => { const a = document.getElementById('live-audio'); return a && !a.error && a.currentTime > 0; }",
            timeout=120_000,
        )
        assert _state(s3, job_id) == "PROCESSING" and holds.held(job_id) is not None
        holds.release(job_id)
        sync_api.expect(page.locator("#player")).to_have_count(1, timeout=300_000)
        sync_api.expect(live).to_have_count(0)
        browser.close()
    assert _state(s3, job_id) == "COMPLETED"
