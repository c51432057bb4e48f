"""Streaming speech through the OpenAI-compatible API, with OpenAI's own client, in front of a real
worker on LocalStack. A job is held after its first chunk by the fault hooks, so "audio arrived
before the job completed" is an observed fact, not a race won on this machine's speed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import shutil
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from pipeline.cloud.store import Store
from pipeline.jobs import keys
from pipeline.jobs.chunks import ChunkRecord, ChunkStore, dequantize, quantize
from pipeline.jobs.contract import JobState, JobStatus, OutputFormat
from pipeline.runtime import metrics
from pipeline.tts.assembler import Joiner, pcm16
from pipeline.tts.audio import ENCODINGS
from pipeline.tts.engine import CROSS_FADE_S, SAMPLE_RATE
from pipeline.web.stream import ChunkFollower, StreamMismatch
from tests.helpers import (
    TTS,
    Holds,
    WorkerProcess,
    add_library_voice,
    drop_manifest,
    get_json,
    reference_voice_path,
    sample_result,
    start_console,
    start_worker,
    stop_worker,
    wait_for_state,
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


def _final_samples(s3: Any, job_id: str, bucket: str = STACK) -> np.ndarray:
    result = get_json(s3, f"results/{job_id}.json", bucket=bucket)
    assert result is not None
    key = result["audio"]["uri"].split(f"s3://{bucket}/", 1)[1]
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    samples, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == 24000
    return samples


def _state(s3: Any, job_id: str, bucket: str = STACK) -> str | None:
    status = get_json(s3, f"status/{job_id}.json", bucket=bucket)
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


# -- a stream never splices two renderings (issue 26) ---------------------------------------------
#
# Attempt 1 wrote chunks and a stream sent them; the job was handed back and attempt 2 rendered it
# otherwise. The listener must get the finished audio exactly, or an error: never attempt 1's
# opening followed by attempt 2's rest in an answer that ends cleanly.

SPLICE_STACK = "api-splice"
FADE = int(CROSS_FADE_S * SAMPLE_RATE)  # the samples of a chunk a stream holds back for the next one
OTHER_REF_TEXT = "A different transcript, much shorter."


def test_a_job_rendered_otherwise_after_a_hand_back_fails_the_stream_instead_of_splicing(
    make_stack: Any, s3: Any, holds: Holds, tmp_path: Path
) -> None:
    """A real worker renders a job's first chunk and streams it; SIGTERM hands the job back; the
    library voice's transcript is replaced meanwhile, so attempt 2 (a second worker) renders every
    chunk otherwise (other digests: nothing reused). The stream must not send attempt 2's rest
    after attempt 1's opening: its body is cut short (OpenAI's client raises), and what it sent is
    attempt 1's audio only."""
    env = make_stack(SPLICE_STACK)
    add_library_voice(env, VOICE)
    a = start_worker(env, tmp_path / "a.log", shutdown_grace_s="1", **holds.settings)
    b: WorkerProcess | None = None
    log = tmp_path / "console.log"
    proc, url = start_console(env, log, api_wait_s="600")  # a stall is not what ends this stream
    try:
        wait_ready(a)
        idem = "stream-splice-1"
        job_id = _job_id(idem)
        holds.hold(job_id, after_chunks=1, attempts=[1])
        with _client(url).audio.speech.with_streaming_response.create(
            model="tts-1", voice=VOICE, input=TEXT, response_format="pcm", extra_headers={"Idempotency-Key": idem}
        ) as response:
            reader = _Reader(response)
            reader.start()
            assert reader.first.wait(300), "no audio arrived"
            assert reader.error is None and reader.parts, reader.error
            assert holds.held(job_id) is not None  # attempt 1's first chunk is what was sent
            # A deploy: the voice is re-recorded (another transcript) and the worker handed the job back.
            subprocess.run(
                [TTS, "voices", "add", VOICE, str(reference_voice_path()), "--ref-text", OTHER_REF_TEXT],
                env=env,
                check=True,
                capture_output=True,
            )
            a.proc.send_signal(signal.SIGTERM)
            assert a.proc.wait(timeout=120) == 0, a.log()[-3000:]
            assert _state(s3, job_id, SPLICE_STACK) == "QUEUED"
            # Attempt 1's only chunk, durable for the next attempt (which will not reuse it).
            listed = s3.list_objects_v2(Bucket=SPLICE_STACK, Prefix=f"outputs/{job_id}/chunks/")["Contents"]
            [chunk] = [o["Key"] for o in listed if o["Key"].endswith(".flac")]
            data = s3.get_object(Bucket=SPLICE_STACK, Key=chunk)["Body"].read()
            attempt_1, _ = sf.read(io.BytesIO(data), dtype="int16")
            holds.release(job_id)
            b = start_worker(env, tmp_path / "b.log", **holds.settings)
            final = wait_for_state(s3, job_id, bucket=SPLICE_STACK, worker=b)
            assert (final["state"], final["attempt"]) == ("COMPLETED", 2), final
            reader.join(300)
            assert not reader.is_alive()
        result = get_json(s3, f"results/{job_id}.json", bucket=SPLICE_STACK)
        assert result is not None and result["chunks_reused"] == 0, result  # attempt 2 rendered every chunk anew
        assert result["ref_text"].strip() == OTHER_REF_TEXT
        streamed = np.frombuffer(b"".join(reader.parts), dtype="<i2")
        final_audio = _final_samples(s3, job_id, SPLICE_STACK)
        # Attempt 1's opening was sent (its first chunk, the fade tail held back), and nothing after
        # it: it is not the finished audio's start, and none of the finished audio followed it.
        np.testing.assert_array_equal(streamed, attempt_1[: len(attempt_1) - FADE])
        assert not np.array_equal(streamed, final_audio[: len(streamed)])
        # ... and the answer did not end cleanly: the body was cut short, as clients detect (the
        # HTTP library under OpenAI's client varies by version: its error is known by name).
        error = reader.error
        assert type(error).__name__ == "RemoteProtocolError" and "incomplete chunked read" in str(error), error
        text = log.read_text()
        assert "differ from the finished audio" in text and "stream cut short" in text, text[-3000:]
    finally:
        holds.release(_job_id("stream-splice-1"))
        stop_worker(a)
        if b is not None:
            assert stop_worker(b) == 0, b.log()[-3000:]
        proc.terminate()
        proc.wait(timeout=30)


# The same, planted: a stack no worker serves, where the test writes what attempts would (status,
# durable chunks through the worker's own ChunkStore, the finished file and its result), so every
# way the chunk chain can change is driven exactly, against real S3 (LocalStack).

PLANTED = "stream-planted"
LENGTHS = (30_000, 24_000, 36_000)  # three chunks, each longer than a cross-fade


@pytest.fixture(scope="module")
def planted(make_stack: Any) -> dict[str, str]:
    return make_stack(PLANTED)


@pytest.fixture
async def store(planted: dict[str, str]) -> Any:
    async with Store.open(PLANTED) as s:
        yield s


def _rendering(seed: int) -> list[np.ndarray]:
    """PCM16 chunks of voiced, speech-like audio: another seed is another rendering of them."""
    rng = np.random.default_rng(seed)
    chunks = []
    for n in LENGTHS:
        t = np.arange(n) / SAMPLE_RATE
        phase = 2 * np.pi * np.cumsum(110 + 40 * rng.random() + 25 * np.sin(2 * np.pi * rng.random() * t)) / SAMPLE_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = np.abs(np.sin(2 * np.pi * (2 + 2 * rng.random()) * t + 6 * rng.random())) ** 1.5
        chunks.append(quantize(0.25 * voiced * envelope + 0.01 * rng.standard_normal(n)))
    return chunks


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    """The finished file's samples: the worker's joining rule over its chunks."""
    j = Joiner(FADE)
    out = [j.add(dequantize(pcm), cross_fade=i > 0)[1] for i, pcm in enumerate(chunks)]
    return pcm16(np.concatenate([*out, j.flush()]))


async def _put_chunks(store: Any, job: str, chunks: list[np.ndarray], tag: str, places: list[tuple[int, int]]) -> None:
    """Chunks of one attempt, as its worker writes them: ``places`` is (index, ordinal) each; the
    records chain by digest and give each chunk's start in that attempt's audio."""
    j, after = Joiner(FADE), None
    for (index, ordinal), pcm in zip(places, chunks, strict=False):
        wave = dequantize(pcm)
        start = j.start_of(len(wave), cross_fade=ordinal > 0)
        j.add(wave, cross_fade=ordinal > 0)
        digest = hashlib.sha256(f"{tag}:{ordinal}".encode()).hexdigest()[:32]
        record = ChunkRecord(
            index=index,
            digest=digest,
            samples=len(pcm),
            sample_rate=SAMPLE_RATE,
            ordinal=ordinal,
            start=start,
            cross_fade=ordinal > 0,
            after=after,
        )
        await ChunkStore(store, job).save(record, pcm)
        after = digest


async def _put_status(store: Any, job: str, state: JobState) -> None:
    status = JobStatus.new(job).moved_to(JobState.PROCESSING, worker="w")
    if state is not JobState.PROCESSING:
        status = status.moved_to(state)
    await store.put_bytes(keys.status_key(job), status.model_dump_json().encode(), "application/json")


async def _complete(store: Any, job: str, audio: np.ndarray, fmt: str = "wav") -> None:
    """Attempt 2 finished the job: its file, its result, COMPLETED; and its chunks removed."""
    sf_format, subtype, content_type = ENCODINGS[fmt]
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE, format=sf_format, subtype=subtype)
    key = f"outputs/{job}/attempt-2.{fmt}"
    await store.put_bytes(key, buf.getvalue(), content_type)
    result = sample_result(job, f"s3://{PLANTED}/{key}", duration_s=len(audio) / SAMPLE_RATE)
    result.audio.format = OutputFormat(fmt)
    await store.put_bytes(keys.result_key(job), result.model_dump_json().encode(), "application/json")
    await _put_status(store, job, JobState.COMPLETED)
    await store.delete_many(await store.list_keys(keys.chunks_prefix(job)))


async def _started(store: Any, job: str) -> tuple[ChunkFollower, AsyncIterator[np.ndarray], list[np.ndarray]]:
    """A job whose attempt 1 wrote its first two chunks, and a stream that has sent both."""
    await _put_status(store, job, JobState.PROCESSING)
    await _put_chunks(store, job, _rendering(1)[:2], "attempt-1", [(0, 0), (1, 1)])
    follower = ChunkFollower(store, job, poll_s=0.02, idle_s=60)
    blocks = follower.blocks()
    early = [await anext(blocks), await anext(blocks)]
    assert follower.from_chunks == 2
    return follower, blocks, early


async def _until_not_following(
    follower: ChunkFollower, blocks: AsyncIterator[np.ndarray], rest: list[np.ndarray]
) -> asyncio.Task[None]:
    """The stream resumed (collecting into ``rest``) until it has stopped following chunks."""

    async def drain() -> None:
        async for block in blocks:
            rest.append(block)

    task = asyncio.create_task(drain())
    for _ in range(3000):
        if not follower._follow or task.done():
            break
        await asyncio.sleep(0.01)
    assert not follower._follow, "the stream went on following another attempt's chunks"
    return task


def _mismatches() -> float:
    return metrics.STREAM_MISMATCHES._value.get()


@pytest.mark.parametrize("change", ["chunks removed", "chain broken", "ordinal already sent"])
async def test_planted_a_stream_fails_before_sending_another_renderings_rest(store: Any, change: str) -> None:
    """Attempt 1's chunks 0 and 1 were streamed; attempt 2 rendered the job otherwise and finished
    it. However the change shows (attempt 2's chunks gone before the stream listed them; a chunk
    naming another chunk before it; a record at an ordinal already sent), the stream raises
    StreamMismatch and yields nothing more: not one sample of attempt 2's file."""
    job = f"planted-{change.replace(' ', '-')}"
    follower, blocks, early = await _started(store, job)
    other = _rendering(2)
    before, rest = _mismatches(), []
    if change == "chain broken":  # attempt 2's chunks, under the same indices, chained on its own
        await _put_chunks(store, job, other, "attempt-2", [(0, 0), (1, 1), (2, 2)])
        task = await _until_not_following(follower, blocks, rest)
    elif change == "ordinal already sent":  # attempt 2 planned otherwise: its second chunk at index 2
        await _put_chunks(store, job, other[:2], "attempt-2", [(0, 0), (2, 1)])
        task = await _until_not_following(follower, blocks, rest)
    else:
        task = None
    await _complete(store, job, _joined(other))
    with pytest.raises(StreamMismatch) as e:
        if task is None:
            async for block in blocks:
                rest.append(block)
        else:
            await asyncio.wait_for(task, 60)
    assert e.value.code == "stream_mismatch"
    assert rest == []  # nothing after attempt 1's chunks: no splice
    assert follower.sent == sum(len(b) for b in early)
    assert _mismatches() == before + 1


async def test_planted_other_chunks_with_the_same_audio_stream_the_finished_file_exactly(store: Any) -> None:
    """Attempt 2 chunked under other digests (another quality policy, say) but rendered the same
    audio: the chain breaks, the check passes, and the stream is the finished file, sample for
    sample (a changed chain alone is no error)."""
    job = "planted-same-audio"
    follower, blocks, early = await _started(store, job)
    same = _rendering(1)
    rest: list[np.ndarray] = []
    await _put_chunks(store, job, same, "attempt-2-other-policy", [(0, 0), (1, 1), (2, 2)])
    task = await _until_not_following(follower, blocks, rest)
    before = _mismatches()
    await _complete(store, job, _joined(same))
    await asyncio.wait_for(task, 60)
    np.testing.assert_array_equal(np.concatenate([*early, *rest]), _joined(same))
    assert _mismatches() == before


async def test_planted_a_stream_waits_out_a_store_outage_and_sends_the_finished_file(
    store: Any, localstack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's S3 goes through the fault proxy. After two chunks were sent, every read fails
    (an outage past the store's retries) while the job finishes; the outage ends. The stream
    waits it out (polls without progress, within its idle limit) and then sends the finished
    file's rest: the listener gets the job's audio, sample for sample, and no error (before: the
    first failed poll ended the stream, cut short, although the job completed)."""
    from tests.faults.proxy import ProxyProcess

    job = "planted-outage"
    proxy = ProxyProcess(localstack.endpoint, tmp_path)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        async with Store.open(PLANTED) as through_proxy:
            await _put_status(store, job, JobState.PROCESSING)
            chunks = _rendering(1)
            await _put_chunks(store, job, chunks[:2], "attempt-1", [(0, 0), (1, 1)])
            follower = ChunkFollower(through_proxy, job, poll_s=0.02, idle_s=120)
            blocks = follower.blocks()
            early = [await anext(blocks), await anext(blocks)]
            proxy.add_rules([{"match": rf"^(GET|HEAD) /{PLANTED}", "kind": "dropped", "times": -1}])
            rest: list[np.ndarray] = []

            async def drain() -> None:
                async for block in blocks:
                    rest.append(block)

            task = asyncio.create_task(drain())
            for _ in range(6000):  # two whole polls failed past the store's retries (a hang guard)
                if sum(1 for e in proxy.trace() if e.get("fault")) >= 12 or task.done():
                    break
                await asyncio.sleep(0.05)
            assert not task.done(), task.exception() if task.done() else None
            await _complete(store, job, _joined(chunks))
            proxy.remove_rules()
            await asyncio.wait_for(task, 120)
        np.testing.assert_array_equal(np.concatenate([*early, *rest]), _joined(chunks))
    finally:
        proxy.stop()


@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
@pytest.mark.parametrize("rendering", ["same", "other"])
async def test_planted_a_lossy_file_is_checked_as_near_as_its_encoding_allows(
    store: Any, fmt: str, rendering: str
) -> None:
    """A console job's mp3 or ogg decodes near its samples, not to them: its start is compared
    with what was sent through a sketch. The same rendering streams on (the rest from the file);
    another rendering fails the stream before any of it."""
    job = f"planted-lossy-{fmt}-{rendering}"
    _, blocks, _ = await _started(store, job)
    chunks = _rendering(1 if rendering == "same" else 2)
    before, rest = _mismatches(), []
    await _complete(store, job, _joined(chunks), fmt)
    if rendering == "same":
        async for block in blocks:
            rest.append(block)
        assert sum(len(b) for b in rest) > 0 and _mismatches() == before
    else:
        with pytest.raises(StreamMismatch):
            async for block in blocks:
                rest.append(block)
        assert rest == [] and _mismatches() == before + 1


def test_planted_the_console_live_player_is_cut_short_not_ended(planted: dict[str, str], tmp_path: Path) -> None:
    """The console's live player (a WAV of unknown length): attempt 1's chunks are played, then
    attempt 2's file differs: the body ends without its last chunk (the browser reports an
    error), never with attempt 2's rest after a clean end."""
    import http.client

    log = tmp_path / "console.log"
    proc, url = start_console(planted, log)
    job = "planted-live"

    async def started() -> None:
        async with Store.open(PLANTED) as s:
            await _put_status(s, job, JobState.PROCESSING)
            await _put_chunks(s, job, _rendering(1)[:2], "attempt-1", [(0, 0), (1, 1)])

    async def completed() -> None:
        async with Store.open(PLANTED) as s:
            await _complete(s, job, _joined(_rendering(2)))

    try:
        asyncio.run(started())
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("GET", f"/console/api/jobs/{job}/live.wav")
        response = conn.getresponse()
        assert response.status == 200
        early = sum(LENGTHS[:2]) - 2 * FADE  # attempt 1's two chunks, cross-faded, the last fade held back
        head = response.read(44 + 2 * early)
        assert len(head) == 44 + 2 * early and head.startswith(b"RIFF")
        asyncio.run(completed())
        with pytest.raises(http.client.IncompleteRead) as e:
            response.read()
        assert e.value.partial == b""  # not one sample of attempt 2's file
        conn.close()
        assert "live audio of planted-live cut short" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
