"""Abuse at the front door (issue 27), on the real stack: what one client can make the operator pay
is bounded. Each test names the defect it closes; each failed on the code before the fix.

The ``abuse-door`` stack has no worker (a job stays QUEUED, which holds a request open as long as
a test needs); clients at distinct addresses are sockets bound to distinct loopback addresses
(127.0.0.0/8 is all loopback on Linux), or ``X-Forwarded-For`` behind a trusted proxy. The direct
send of interactive jobs runs on the session's worker, with its interactive notification removed.
docs/security.md maps each control to its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import (
    BUCKET,
    WorkerProcess,
    add_library_voice,
    http_request,
    sample_result,
    start_console,
    wait_until,
)

pytestmark = pytest.mark.integration

DOOR = "abuse-door"
VOICE = "alice"
KEY = "sk-abuse-0123456789"


@pytest.fixture(scope="module")
def door_env(make_stack: Any) -> dict[str, str]:
    env = make_stack(DOOR)
    add_library_voice(env, VOICE)
    return env


@contextlib.contextmanager
def _console(env: dict[str, str], tmp: Path, **settings: str) -> Iterator[str]:
    proc, url = start_console(env, tmp / "console.log", **settings)
    try:
        yield url
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    assert code == 0


def _manifests(s3: Any, prefix: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=DOOR, Prefix=prefix).get("Contents", [])}


def _speech(url: str, body: dict[str, Any], *, source: str = "127.0.0.1", headers: str = "") -> socket.socket:
    """A speech request sent from ``source`` on a socket left open (the caller reads or hangs up)."""
    parts = urllib.parse.urlsplit(url)
    raw = json.dumps(body).encode()
    s = socket.socket()
    s.bind((source, 0))
    s.connect((parts.hostname, parts.port))
    s.sendall(
        (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"{headers}Content-Length: {len(raw)}\r\n\r\n"
        ).encode()
        + raw
    )
    return s


def _answer(s: socket.socket) -> tuple[int, bytes]:
    s.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = s.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tts-1", "input": text, "voice": VOICE, "response_format": "wav", **extra}


# -- 1: key guesses ---------------------------------------------------------------------------------


def test_bearer_key_guesses_are_throttled_per_client_behind_a_trusted_proxy(
    door_env: dict[str, str], tmp_path: Path
) -> None:
    """Defect 1: 300 wrong bearer keys got 300 answers 401; behind a proxy the login throttle keyed
    on the proxy, so five wrong keys locked every browser out."""
    with _console(door_env, tmp_path, api_key=KEY, console_trust_proxy="1") as url:

        def get(path: str, key: str, client: str) -> int:
            headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": f"198.51.100.1, {client}"}
            return http_request(url + path, headers=headers)[0]

        guesser, other = "203.0.113.5", "203.0.113.6"
        assert [get("/v1/models", f"sk-guess-{i}", guesser) for i in range(5)] == [401] * 5
        assert get("/v1/models", "sk-guess-5", guesser) == 429
        assert get("/v1/models", KEY, guesser) == 429  # refused before the key is looked at
        assert get("/console/api/jobs", KEY, guesser) == 429  # one budget for the API and the console
        assert get("/v1/models", KEY, other) == 200  # the proxy's other clients are not locked out
        code, body, headers = http_request(
            url + "/v1/models", headers={"Authorization": "Bearer x", "X-Forwarded-For": guesser}
        )
        assert code == 429 and int(headers["Retry-After"]) > 0
        assert json.loads(body)["error"]["code"] == "too_many_wrong_keys"


def test_requests_over_a_clients_rate_get_429_with_retry_after(door_env: dict[str, str], tmp_path: Path) -> None:
    with _console(door_env, tmp_path, door_requests_per_s="0.01", door_request_burst="3") as url:
        codes = [http_request(url + "/v1/models")[0] for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert http_request(url + "/healthz")[0] == 200  # probes are not metered


# -- 2: slow bodies, readers that never read ------------------------------------------------------


def test_a_slow_body_holds_no_speech_slot(door_env: dict[str, str], s3: Any, tmp_path: Path) -> None:
    """Defect 2: ``speech()`` took its concurrency slot before reading the body, so
    TTS_API_MAX_CONCURRENT slow bodies locked /v1/audio/speech out."""
    with _console(door_env, tmp_path, api_max_concurrent="1") as url:
        parts = urllib.parse.urlsplit(url)
        slow = socket.create_connection((parts.hostname, parts.port))
        slow.sendall(
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{".encode()
        )
        before = _manifests(s3, "inbox")
        fast = _speech(url, _body("A request whose body arrived."))
        try:
            wait_until(lambda: len(_manifests(s3, "inbox") - before) == 1, "the complete request's job")
        finally:
            fast.close()
            slow.close()


def _plant_completed(s3: Any, job: str, audio: bytes, fmt: str) -> None:
    from pipeline.jobs.contract import JobState, JobStatus, OutputFormat

    key = f"outputs/{job}/attempt-1.{fmt}"
    status = JobStatus.new(job).moved_to(JobState.PROCESSING, worker="w").moved_to(JobState.COMPLETED)
    result = sample_result(job, f"s3://{DOOR}/{key}", duration_s=len(audio) / 48000).model_copy(deep=True)
    result.audio.format = OutputFormat(fmt)
    s3.put_object(Bucket=DOOR, Key=key, Body=audio)
    s3.put_object(Bucket=DOOR, Key=f"results/{job}.json", Body=result.model_dump_json().encode())
    s3.put_object(Bucket=DOOR, Key=f"status/{job}.json", Body=status.model_dump_json().encode())


def _non_readers(url: str, idem: str, n: int) -> list[socket.socket]:
    """``n`` clients at distinct addresses asking for one completed job's FLAC, none of them reading."""
    out = []
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((f"127.0.0.{10 + i}", 0))
        parts = urllib.parse.urlsplit(url)
        s.connect((parts.hostname, parts.port))
        raw = json.dumps(_body("x", response_format="flac")).encode()
        s.sendall(
            (
                f"POST /v1/audio/speech HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Idempotency-Key: {idem}\r\nContent-Length: {len(raw)}\r\n\r\n"
            ).encode()
            + raw
        )
        out.append(s)
    return out


@pytest.fixture(scope="module")
def big_flac_job(door_env: dict[str, str], s3: Any) -> str:
    """A completed job (the API's job for Idempotency-Key ``big``) whose FLAC is 16 MiB."""
    idem = "big"
    job = f"api-{hashlib.sha256(idem.encode()).hexdigest()[:32]}"
    _plant_completed(s3, job, np.random.default_rng(0).bytes(16 * 1024 * 1024), "flac")
    return idem


def test_clients_that_never_read_cannot_take_the_s3_pool(
    door_env: dict[str, str], big_flac_job: str, tmp_path: Path
) -> None:
    """Defect 2: a FLAC answer held its S3 body open while writing to the client; sixteen clients
    that never read took the console's 16 S3 connections, and every other call waited."""
    with _console(door_env, tmp_path, api_io_timeout_s="600") as url:
        stuck = _non_readers(url, big_flac_job, 20)
        try:
            log = tmp_path / "console.log"
            wait_until(lambda: log.read_text().count("idempotency key seen before") >= 20, "all 20 answers started")
            code, body, _ = http_request(url + "/v1/audio/voices")
            assert code == 200 and VOICE in json.loads(body)["voices"]
        finally:
            for s in stuck:
                s.close()


def test_a_client_that_takes_no_bytes_is_cut_off(door_env: dict[str, str], big_flac_job: str, tmp_path: Path) -> None:
    """Defect 2: aiohttp has no write timeout: a client that never reads held its answer for ever."""
    with _console(door_env, tmp_path, api_io_timeout_s="2") as url:
        stuck = _non_readers(url, big_flac_job, 1)
        try:
            log = tmp_path / "console.log"
            wait_until(lambda: "took no bytes for 2s: cut off" in log.read_text(), "the non-reader cut off")
        finally:
            stuck[0].close()


# -- 3: the finished file, read by ranges -------------------------------------------------------------


class _Counting:
    """The real store, with every read's size recorded (an observer, not a stand-in)."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, str, int]] = []
        self.lists = 0

    def wrap(self, store: Any) -> Any:
        rec = self

        class Observed(type(store)):  # type: ignore[misc]
            async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
                data = await super().get_bytes(key, max_bytes)
                rec.reads.append(("get", key, len(data)))
                return data

            async def get_range(self, key: str, start: int, length: int) -> tuple[bytes, int]:
                data, size = await super().get_range(key, start, length)
                rec.reads.append(("range", key, len(data)))
                return data, size

            async def list_objects(self, prefix: str, start_after: str | None = None) -> Any:
                rec.lists += 1
                return await super().list_objects(prefix, start_after)

        return Observed(store.s3, store.bucket, store.put_params, store.calls)


def test_a_finished_wav_is_streamed_by_ranges_from_the_sample_offset(door_env: dict[str, str], s3: Any) -> None:
    """Defect 3: the stream read a finished file whole (up to 256 MiB), decoded it and kept the
    samples while blocks dripped out to a slow client."""
    from pipeline.cloud.store import RANGE_BLOCK, Store
    from pipeline.web.stream import ChunkFollower

    samples = (np.random.default_rng(1).standard_normal(24000 * 60) * 3000).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, samples, 24000, format="WAV", subtype="PCM_16")
    job = "abuse-ranged"
    _plant_completed(s3, job, buf.getvalue(), "wav")
    seen = _Counting()

    async def follow() -> np.ndarray:
        async with Store.open(DOOR) as store:
            follower = ChunkFollower(seen.wrap(store), job, poll_s=0.01, idle_s=60)
            return np.concatenate([b async for b in follower.blocks()])

    got = asyncio.run(follow())
    assert np.array_equal(got, samples)
    audio = [(how, n) for how, key, n in seen.reads if key.startswith("outputs/")]
    assert audio and all(how == "range" and n <= RANGE_BLOCK for how, n in audio), audio[:3]


def test_short_range_reads_that_split_a_sample_leave_the_stream_exact(door_env: dict[str, str], s3: Any) -> None:
    """A ranged read may answer fewer bytes than asked (S3 may; a proxy may): a read that ends in
    the middle of a 16-bit sample carries the odd byte to the next one, so every sample after it
    is still the file's (read as pairs from the answer's start, every later sample was garbage)."""
    from pipeline.cloud.store import Store
    from pipeline.web.stream import ChunkFollower

    samples = (np.random.default_rng(2).standard_normal(24000 * 3) * 3000).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, samples, 24000, format="WAV", subtype="PCM_16")
    job = "abuse-short-reads"
    _plant_completed(s3, job, buf.getvalue(), "wav")
    short: list[int] = []

    class ShortReads(Store):
        async def get_range(self, key: str, start: int, length: int) -> tuple[bytes, int]:
            data, size = await super().get_range(key, start, length)
            if key.startswith("outputs/") and len(data) > 1001:
                data = data[:1001]  # odd: the last sample of this answer is split
                short.append(len(data))
            return data, size

    async def follow() -> np.ndarray:
        async with Store.open(DOOR) as store:
            reader = ShortReads(store.s3, store.bucket, store.put_params, store.calls)
            follower = ChunkFollower(reader, job, poll_s=0.01, idle_s=60)
            return np.concatenate([b async for b in follower.blocks()])

    got = asyncio.run(follow())
    assert len(short) > 10  # the splitting path ran, many times
    assert np.array_equal(got, samples)


def test_an_empty_or_range_ignoring_audio_object_is_a_clear_error(door_env: dict[str, str], s3: Any) -> None:
    """A finished job whose audio object is empty is a 502 ``bad_result`` before any read of it
    (a ranged read of an empty object has no answer); an answer that ignores the Range (the whole
    object where a range was asked) is refused, never taken as those bytes."""
    from pipeline.cloud.store import RangeIgnored, Store
    from pipeline.web.stream import ChunkFollower, StreamFailed

    _plant_completed(s3, "abuse-empty", b"", "wav")
    s3.put_object(Bucket=DOOR, Key="outputs/abuse-whole/blob.bin", Body=b"0123456789" * 100)

    class NoRanges:
        """The S3 client, except that its GetObject answers ignore Range (as some proxies do)."""

        def __init__(self, s3: Any) -> None:
            self._s3 = s3

        def __getattr__(self, name: str) -> Any:
            return getattr(self._s3, name)

        async def get_object(self, **kw: Any) -> Any:
            kw.pop("Range", None)
            return await self._s3.get_object(**kw)

    async def go() -> StreamFailed:
        async with Store.open(DOOR) as store:
            with pytest.raises(StreamFailed) as failed:
                async for _ in ChunkFollower(store, "abuse-empty", poll_s=0.01, idle_s=60).blocks():
                    pass
            assert (await store.get_range("outputs/abuse-whole/blob.bin", 10, 5))[0] == b"01234"
            ignoring = Store(NoRanges(store.s3), store.bucket, store.put_params, store.calls)
            with pytest.raises(RangeIgnored):
                await ignoring.get_range("outputs/abuse-whole/blob.bin", 10, 5)
            return failed.value

    failed = asyncio.run(go())
    assert failed.code == "bad_result" and failed.http == 502 and "empty" in str(failed)


# -- 4: the interactive lane ---------------------------------------------------------------------------


def test_a_stream_waiting_on_a_queued_job_backs_off_and_lists_nothing(door_env: dict[str, str], s3: Any) -> None:
    """Defect 4: each stream read the status and listed the chunks every 0.1 s for as long as the
    job ran: ~18,000 S3 requests for one long request."""
    from pipeline.cloud.store import Store
    from pipeline.jobs.contract import JobState, JobStatus
    from pipeline.web.stream import ChunkFollower, StreamFailed

    job = "abuse-queued"
    s3.put_object(Bucket=DOOR, Key=f"status/{job}.json", Body=JobStatus.new(job).model_dump_json().encode())
    gaps: list[float] = []
    seen = _Counting()

    async def sleep(s: float) -> None:
        gaps.append(s)
        if len(gaps) == 8:  # the job ends (cancelled) after eight looks
            cancelled = JobStatus.new(job).moved_to(JobState.CANCELLED)
            s3.put_object(Bucket=DOOR, Key=f"status/{job}.json", Body=cancelled.model_dump_json().encode())

    async def follow() -> None:
        async with Store.open(DOOR) as store:
            follower = ChunkFollower(seen.wrap(store), job, poll_s=0.1, poll_max_s=1.0, idle_s=600, sleep=sleep)
            with pytest.raises(StreamFailed):
                async for _ in follower.blocks():
                    pass

    asyncio.run(follow())
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])
    assert seen.lists == 0  # a job that is not rendering has no chunks to list


def test_long_input_is_a_bulk_job(door_env: dict[str, str], s3: Any, tmp_path: Path) -> None:
    """Defect 4: every API request, up to 100,000 characters, was an interactive job whose chunks
    lead every batch."""
    with _console(door_env, tmp_path, api_interactive_chars="20") as url:
        before_bulk, before_fast = _manifests(s3, "inbox/"), _manifests(s3, "inbox-interactive/")
        long = _speech(url, _body("This input is longer than twenty characters."))
        short = _speech(url, _body("Short."))
        try:
            wait_until(lambda: len(_manifests(s3, "inbox/") - before_bulk) == 1, "the long input's bulk job")
            wait_until(lambda: len(_manifests(s3, "inbox-interactive/") - before_fast) == 1, "the short one's")
        finally:
            long.close()
            short.close()


def test_clients_that_hang_up_keep_their_jobs_places(door_env: dict[str, str], s3: Any, tmp_path: Path) -> None:
    """Defect 4: a client that disconnected freed its slot while its job went on, so ``curl -m 1``
    in a loop created interactive jobs without bound."""
    with _console(door_env, tmp_path, door_jobs="2") as url:
        before = _manifests(s3, "inbox")
        for n in (1, 2):
            s = _speech(url, _body(f"Hang up number {n}."))
            wait_until(lambda n=n: len(_manifests(s3, "inbox") - before) == n, f"job {n}")  # type: ignore[misc]
            s.close()
        code, body = _answer(_speech(url, _body("One more.")))
        assert code == 429 and b"have not ended yet" in body
        other = _speech(url, _body("Another client."), source="127.0.0.2")  # has a budget of its own
        try:
            wait_until(lambda: len(_manifests(s3, "inbox") - before) == 3, "the other client's job")
        finally:
            other.close()
    # Each manifest names its client (not its address) as the requester the worker shares the
    # model among (pipeline.tts.shares): one client's jobs one requester, the other's another.
    docs = [json.loads(s3.get_object(Bucket=DOOR, Key=k)["Body"].read()) for k in _manifests(s3, "inbox") - before]
    requesters = {d["text"]: d["requester"] for d in docs}
    assert requesters["Hang up number 1."] == requesters["Hang up number 2."] != requesters["Another client."]
    assert all(r.startswith("door-") for r in requesters.values()), requesters  # a digest, not the address


@pytest.fixture
def no_interactive_notification(aws_env: dict[str, str], s3: Any) -> Iterator[None]:
    config = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    config.pop("ResponseMetadata", None)
    kept = [q for q in config.get("QueueConfigurations", []) if "interactive" not in json.dumps(q)]
    assert len(kept) < len(config.get("QueueConfigurations", [])), "the stack has an interactive notification"
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET, NotificationConfiguration={**config, "QueueConfigurations": kept}
    )
    yield
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration=config)


def test_an_interactive_job_needs_no_s3_notification(
    aws_env: dict[str, str], worker: WorkerProcess, no_interactive_notification: None, tmp_path: Path
) -> None:
    """First audio without S3's notification on the critical path: the API sends the interactive
    job's message itself (on AWS a notification can take a minute or longer)."""
    add_library_voice(aws_env, VOICE)
    with _console(aws_env, tmp_path, api_wait_s="120") as url:
        code, audio, headers = http_request(
            url + "/v1/audio/speech",
            "POST",
            json.dumps(_body("Nobody told the queue about this.")).encode(),
            {"Content-Type": "application/json"},
        )
        assert code == 200, audio[:300]
        assert sf.info(io.BytesIO(audio)).duration > 0.1
        assert headers["X-Job-Id"]


# -- 5: the job list ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_door(door_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _console(door_env, tmp_path_factory.mktemp("abuse-open")) as url:
        yield url


def test_a_huge_offset_is_refused_before_any_listing(open_door: str) -> None:
    """Defect 5: any ``offset`` was taken; a huge one alone scanned everything."""
    code, body, _ = http_request(open_door + "/console/api/jobs?offset=1000000000")
    assert code == 400 and json.loads(body)["error"]["code"] == "invalid_value"
    assert http_request(open_door + "/console/api/jobs?offset=0&state=queued")[0] == 200


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_page_elsewhere_cannot_fire_the_job_list(open_door: str, site: str) -> None:
    """Defect 5: the guard let GETs through, so in the no-key mode any page the operator visits
    could fire the listing from an <img>."""
    for path in ("/console/api/jobs?state=failed", "/v1/audio/voices"):
        code, body, _ = http_request(open_door + path, headers={"Sec-Fetch-Site": site})
        assert code == 403 and json.loads(body)["error"]["code"] == "cross_site"
    assert http_request(open_door + "/console/api/jobs", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200
