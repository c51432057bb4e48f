"""Hostile clients on the real stack (issue 18): what an attacker can write or send costs nothing and
reaches nothing it should not, and every refusal is a clear 4xx or a FAILED status with its code.

Two stacks: ``hostile`` has a worker of its own (planted voice records, cost bombs), ``hostile-door``
has none (the console and the API are clients of the bucket only; a job submitted there stays
QUEUED, which holds a speech request open as long as a test needs). docs/security.md maps each
control to its test here or in tests/unit/test_security.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    add_library_voice,
    multipart,
    reference_voice_path,
    sample_result,
    start_console,
    start_worker,
    stop_worker,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

JOBS, DOOR = "hostile", "hostile-door"
KEY = "sk-hostile-0123456789"
VOICE = "alice"
VICTIM = "outputs/victim-job/attempt-1.wav"  # another job's audio: what a planted record points at
MAX_TURNS = 50


# -- fixtures ----------------------------------------------------------------------------------


def _stack(make_stack: Any, s3: Any, name: str) -> dict[str, str]:
    """A stack with the library voice and another job's audio (what a planted document points at)."""
    env = make_stack(name)
    add_library_voice(env, VOICE)
    s3.put_object(Bucket=name, Key=VICTIM, Body=reference_voice_path().read_bytes())
    return env


@pytest.fixture(scope="module")
def jobs_env(make_stack: Any, s3: Any) -> dict[str, str]:
    return _stack(make_stack, s3, JOBS)


@pytest.fixture(scope="module")
def holds(tmp_path_factory: pytest.TempPathFactory) -> Holds:
    return Holds(tmp_path_factory.mktemp("hostile-faults"))


@pytest.fixture(scope="module")
def worker(jobs_env: dict[str, str], holds: Holds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    # TTS_MAX_TURNS below the manifest's own ceiling (1,000 segments), so a test can cross it.
    log = tmp_path_factory.mktemp("hostile-worker") / "worker.log"
    w = start_worker(jobs_env, log, max_turns=str(MAX_TURNS), **holds.settings)
    wait_ready(w)
    yield w
    assert stop_worker(w) == 0


@pytest.fixture(scope="module")
def door_env(make_stack: Any, s3: Any) -> dict[str, str]:
    return _stack(make_stack, s3, DOOR)


def _console(env: dict[str, str], tmp: Path, **settings: str) -> Iterator[str]:
    proc, url = start_console(env, tmp / "console.log", **settings)
    try:
        yield url
    finally:  # also when the test fails inside (the generator is closed, not exhausted)
        proc.terminate()
        code = proc.wait(timeout=30)
    assert code == 0


@pytest.fixture(scope="module")
def open_door(door_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """No key (the default): only the guard stands between a web page and the bucket."""
    yield from _console(door_env, tmp_path_factory.mktemp("open-door"), api_max_concurrent="1", api_wait_s="600")


@pytest.fixture(scope="module")
def locked_door(door_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _console(door_env, tmp_path_factory.mktemp("locked-door"), api_key=KEY)


INBOXES = "inbox"  # inbox/ and inbox-interactive/ (the speech API submits to the latter)


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def _status(s3: Any, bucket: str, job: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=f"status/{job}.json")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _final(s3: Any, job: str, worker: WorkerProcess) -> dict[str, Any]:
    return wait_until(
        lambda: (st := _status(s3, JOBS, job)) and st["state"] in ("COMPLETED", "FAILED", "CANCELLED") and st,
        f"{job} to end",
        worker=worker,
    )


def _submit(s3: Any, job: str, manifest: dict[str, Any]) -> None:
    s3.put_object(Bucket=JOBS, Key=f"inbox/{job}.json", Body=json.dumps(manifest).encode())


def _model_calls(holds: Holds, job: str) -> int:
    path = holds.root / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if job in json.loads(line)["jobs"])


def _plant_voice(s3: Any, bucket: str, name: str, audio_key: str) -> None:
    record = {
        "name": name,
        "audio_key": audio_key,
        "ref_text": REF_TEXT,
        "ref_text_source": "user",
        "sha256": "0" * 64,
        "bytes": 1,
        "duration_s": 5.0,
        "sample_rate": 24000,
        "channels": 1,
    }
    s3.put_object(Bucket=bucket, Key=f"voices/{name}/voice.json", Body=json.dumps(record).encode())


def _raw(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request exactly as given (Host, framing and path untouched by a client library)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": parts.netloc, **(headers or {})}
        for k, v in hdrs.items():
            conn.putheader(k, v)
        if body and "Transfer-Encoding" not in hdrs:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body:
            if hdrs.get("Transfer-Encoding") == "chunked":
                for i in range(0, len(body), 65536):
                    piece = body[i : i + 65536]
                    conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                conn.send(b"0\r\n\r\n")
            else:
                conn.send(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (ConnectionError, http.client.HTTPException):
        return 0, b""  # the server closed on us: also a refusal (the caller checks nothing landed)
    finally:
        conn.close()


# -- stored documents are untrusted (the worker) --------------------------------------------------


def test_a_planted_voice_record_cannot_clone_another_jobs_audio(s3: Any, worker: WorkerProcess, holds: Holds) -> None:
    _plant_voice(s3, JOBS, "planted", VICTIM)
    _submit(s3, "clone-victim", {"text": "Say it in the victim's voice.", "voice": "planted"})
    final = _final(s3, "clone-victim", worker)
    assert final["state"] == "FAILED" and final["error"]["code"] == "INVALID_VOICE_KEY"
    assert "voice library record 'planted'" in final["error"]["message"]
    assert _model_calls(holds, "clone-victim") == 0
    assert _keys(s3, JOBS, "outputs/clone-victim/") == []


def test_removing_or_replacing_a_planted_voice_deletes_nothing_outside_its_folder(
    s3: Any, jobs_env: dict[str, str], tmp_path: Path
) -> None:
    result = "results/someone-elses-job.json"
    s3.put_object(Bucket=JOBS, Key=result, Body=b"{}")
    _plant_voice(s3, JOBS, "eraser", result)
    done = subprocess.run([TTS, "voices", "rm", "eraser"], env=jobs_env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert _keys(s3, JOBS, "voices/eraser/") == [] and _keys(s3, JOBS, result) == [result]

    _plant_voice(s3, JOBS, "replaced", VICTIM)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(reference_voice_path().read_bytes())
    done = subprocess.run([TTS, "voices", "add", "replaced", str(clip), "--ref-text", REF_TEXT], env=jobs_env)
    assert done.returncode == 0
    assert _keys(s3, JOBS, VICTIM) == [VICTIM]
    record = json.loads(s3.get_object(Bucket=JOBS, Key="voices/replaced/voice.json")["Body"].read())
    assert record["audio_key"] == "voices/replaced/audio.wav"


# -- cost bombs: JOB_TOO_COSTLY before any model call ------------------------------------------


def _segments(n: int, **turn: Any) -> list[dict[str, Any]]:
    return [{"text": f"Turn {i}.", **{k: (v(i) if callable(v) else v) for k, v in turn.items()}} for i in range(n)]


BOMBS = {
    # one character, said as 200: 4,000 characters of text, 400,000 spoken
    "alias": ({"text": "a " * 2000, "voice": VOICE, "lexicon": {"a": "b" * 200}}, "TTS_MAX_SPOKEN_CHARS"),
    # a one-character transcript stretches every chunk, 128 steps at a quarter speed multiply it:
    # 8,000 characters plan 1,600 chunks and ~825 M of model work with the test voice (4.96 s
    # once prepared, its transcript "a. "), where a 100,000-character plain job needs ~106 M
    "stretch": (
        {
            "text": "The river runs past the old stone mill. " * 200,
            "voice": VOICE,
            "ref_text": "a",
            "nfe_step": 128,
            "speed": 0.25,
        },
        "TTS_MAX_MODEL_WORK",
    ),
    # Issue 27: the quality gate's worst case. One step and no guidance make the plan cheap (~11 M
    # for 3,500 chunks: the old budget let it through), but a gate no chunk can pass (max_wer 0:
    # the job turns transcription on, even on the tiny bundle) with five retries may synthesise
    # and transcribe every chunk six times: 21,000 Whisper runs, ~700 M counted
    "quality": (
        {
            "text": "The river runs past the old stone mill. " * 700,
            "voice": VOICE,
            "ref_text": "a",
            "nfe_step": 1,
            "cfg_strength": 0,
            "quality": {"max_wer": 0, "max_retries": 5},
        },
        "TTS_MAX_MODEL_WORK",
    ),
    "turns": ({"segments": _segments(MAX_TURNS + 1), "voice": VOICE}, "TTS_MAX_TURNS"),
    # one clip, many transcripts: each pair would be a reference preparation
    "transcripts": ({"segments": _segments(40, ref_text=lambda i: f"Take {i}."), "voice": VOICE}, "TTS_MAX_REFERENCES"),
    # more voices than references allowed: refused before a single download
    "voices": ({"segments": _segments(17, voice=lambda i: f"nobody-{i}"), "voice": VOICE}, "TTS_MAX_REFERENCES"),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_cost_bomb_fails_fast_naming_its_limit(s3: Any, worker: WorkerProcess, holds: Holds, bomb: str) -> None:
    manifest, setting = BOMBS[bomb]
    job = f"bomb-{bomb}"
    asr_before = worker.metrics().get("tts_asr_runs_total", 0)
    _submit(s3, job, manifest)
    final = _final(s3, job, worker)
    assert final["state"] == "FAILED" and final["error"]["code"] == "JOB_TOO_COSTLY", final.get("error")
    assert setting in final["error"]["message"]
    assert _model_calls(holds, job) == 0
    assert worker.metrics().get("tts_asr_runs_total", 0) == asr_before


def test_the_worker_still_works_after_the_bombs(s3: Any, worker: WorkerProcess) -> None:
    _submit(s3, "after-bombs", {"text": "Still here.", "voice": VOICE, "ref_text": REF_TEXT, "nfe_step": 2})
    assert _final(s3, "after-bombs", worker)["state"] == "COMPLETED"


# -- the front door: hosts, cross-site writes, bodies --------------------------------------------


def test_a_rebound_host_name_reaches_nothing(open_door: str) -> None:
    for path in ["/", "/console/api/jobs", "/console/api/voices", "/v1/audio/voices", "/console/api/session"]:
        code, body = _raw(open_door, "GET", path, headers={"Host": "attacker.example:8080"})
        assert code == 421, (path, code)
        assert VOICE.encode() not in body and DOOR.encode() not in body
    assert _raw(open_door, "GET", "/console/api/voices")[0] == 200  # its own name works


def test_a_cross_site_speech_request_makes_no_job(open_door: str, s3: Any) -> None:
    before = _keys(s3, DOOR, INBOXES)
    body = json.dumps({"model": "tts-1", "input": "pwned", "voice": VOICE}).encode()
    attempts = [
        {"Content-Type": "text/plain", "Origin": "http://evil.example"},  # a page's simple request
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
        {"Content-Type": "application/json", "Origin": "http://localhost:9999", "Sec-Fetch-Site": "same-site"},
    ]
    for headers in attempts:
        code, resp = _raw(open_door, "POST", "/v1/audio/speech", body, headers)
        assert code in (403, 415), (headers, code)
        assert "error" in json.loads(resp)  # OpenAI's shape
    form, ctype = multipart({"text": "pwned", "voice": VOICE})
    code, _ = _raw(
        open_door,
        "POST",
        "/console/api/jobs",
        form,
        {"Content-Type": ctype, "X-Console": "1", "Origin": "http://evil.example"},
    )
    assert code == 403
    assert _keys(s3, DOOR, INBOXES) == before


def test_the_console_cookie_does_not_open_the_api(locked_door: str, s3: Any) -> None:
    cookie = _login(locked_door)
    before = _keys(s3, DOOR, INBOXES)
    body = json.dumps({"model": "tts-1", "input": "Hi.", "voice": VOICE}).encode()
    code, _ = _raw(
        locked_door, "POST", "/v1/audio/speech", body, {"Content-Type": "application/json", "Cookie": cookie}
    )
    assert code == 401
    assert _keys(s3, DOOR, INBOXES) == before


def _login(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("POST", "/login", b"key=" + KEY.encode(), {"Content-Type": "application/x-www-form-urlencoded"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 303
    return resp.getheader("Set-Cookie").split(";", 1)[0]


def test_logout_ends_the_session_and_anonymous_callers_learn_nothing(locked_door: str) -> None:
    cookie = _login(locked_door)
    code, body = _raw(locked_door, "GET", "/console/api/session", headers={"Cookie": cookie})
    assert code == 200 and json.loads(body)["bucket"] == DOOR
    assert _raw(locked_door, "POST", "/logout", headers={"Cookie": cookie})[0] == 303
    code, _ = _raw(locked_door, "GET", "/console/api/jobs", headers={"Cookie": cookie})
    assert code == 401  # the copied cookie died with the logout
    code, body = _raw(locked_door, "GET", "/console/api/session")
    assert code == 200 and json.loads(body) == {"auth_required": True, "authenticated": False}


def test_a_forwarded_https_makes_the_cookie_secure_only_when_the_proxy_is_trusted(
    door_env: dict[str, str], tmp_path: Path
) -> None:
    for trust, secure in (("0", False), ("1", True)):
        (tmp_path / trust).mkdir()
        for url in _console(door_env, tmp_path / trust, api_key=KEY, console_trust_proxy=trust):
            parts = urllib.parse.urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-Proto": "https"}
            conn.request("POST", "/login", b"key=" + KEY.encode(), headers)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            assert ("Secure" in resp.getheader("Set-Cookie")) is secure


def test_key_guesses_are_throttled(door_env: dict[str, str], tmp_path: Path) -> None:
    for url in _console(door_env, tmp_path, api_key=KEY):
        codes = [
            _raw(
                url,
                "POST",
                "/login",
                b"key=sk-guess-" + str(i).encode(),
                {"Content-Type": "application/x-www-form-urlencoded"},
            )[0]
            for i in range(5)
        ]
        assert codes == [401] * 5
        code, _ = _raw(
            url, "POST", "/login", b"key=" + KEY.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert code == 429  # even the right key, until the window has passed


def test_form_floods_and_chunked_bodies_are_refused_before_s3(open_door: str, s3: Any) -> None:
    before = _keys(s3, DOOR, "voices/") + _keys(s3, DOOR, INBOXES)
    boundary = "b0undary"
    ctype = f"multipart/form-data; boundary={boundary}"
    empty_fields = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n\r\n' for i in range(5000)
    )
    flood = (empty_fields + f"--{boundary}--\r\n").encode()
    unnamed = (
        f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\n" + "x" * 1000 + f"\r\n--{boundary}--\r\n"
    ).encode()
    big_field = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n'
        + "x" * (30 * 1024 * 1024)
        + f"\r\n--{boundary}--\r\n"
    ).encode()
    for body, framing, want in [
        (flood, {}, (413,)),
        (flood, {"Transfer-Encoding": "chunked"}, (413,)),
        (unnamed, {"Transfer-Encoding": "chunked"}, (400,)),
        (big_field, {"Transfer-Encoding": "chunked"}, (413, 0)),
    ]:
        for path in ("/console/api/jobs", "/console/api/voices"):
            code, _ = _raw(open_door, "POST", path, body, {"Content-Type": ctype, "X-Console": "1", **framing})
            assert code in want, (path, framing, code)
    code, _ = _raw(
        open_door,
        "POST",
        "/v1/audio/speech",
        b"{" + b" " * (2 * 1024 * 1024) + b"}",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert code in (413, 0)
    assert _keys(s3, DOOR, "voices/") + _keys(s3, DOOR, INBOXES) == before


@pytest.mark.parametrize(
    "path",
    [
        "/console/api/jobs/job1%0A",
        "/console/api/jobs/job1%0D%0AX-Injected:%201",
        "/console/api/jobs/job1%0A/peaks",
        "/console/api/jobs/%2E%2E%2Fresults%2Fx/subtitles/srt",
        "/jobs/job1%0A",
    ],
)
def test_control_characters_in_a_path_are_refused(open_door: str, path: str) -> None:
    code, _ = _raw(open_door, "GET", path)
    assert code in (400, 404), code


def test_voice_names_with_control_characters_are_refused(open_door: str, s3: Any) -> None:
    before = _keys(s3, DOOR, "voices/")
    assert _raw(open_door, "DELETE", f"/console/api/voices/{VOICE}%0A", headers={"X-Console": "1"})[0] in (400, 404)
    body, ctype = multipart({"name": f"{VOICE}\nbob"}, "file", reference_voice_path().read_bytes())
    assert _raw(open_door, "POST", "/console/api/voices", body, {"Content-Type": ctype, "X-Console": "1"})[0] == 400
    assert _keys(s3, DOOR, "voices/") == before


# -- stored documents are untrusted (the front door) ---------------------------------------------


def _plant_result(s3: Any, job: str, audio_key: str) -> None:
    """A COMPLETED status and a well-formed result whose outputs are another job's."""
    from pipeline.jobs.contract import JobState, JobStatus

    status = JobStatus.new(job).moved_to(JobState.PROCESSING, worker="w").moved_to(JobState.COMPLETED)
    uri = f"s3://{DOOR}/{audio_key}"
    result = sample_result(job, uri, duration_s=5.33)
    s3.put_object(Bucket=DOOR, Key=f"status/{job}.json", Body=status.model_dump_json().encode())
    s3.put_object(Bucket=DOOR, Key=f"inbox/{job}.json", Body=json.dumps({"text": "x", "voice": VOICE}).encode())
    s3.put_object(Bucket=DOOR, Key=f"results/{job}.json", Body=result.model_dump_json().encode())


def test_a_planted_result_serves_no_other_jobs_audio(open_door: str, s3: Any) -> None:
    job = "planted-result"
    _plant_result(s3, job, VICTIM)
    code, body = _raw(open_door, "GET", f"/console/api/jobs/{job}")
    assert code == 200 and json.loads(body)["audio_url"] is None and json.loads(body)["subtitles"] == []
    assert _raw(open_door, "GET", f"/console/api/jobs/{job}/peaks")[0] == 404
    assert _raw(open_door, "GET", f"/console/api/jobs/{job}/subtitles/srt")[0] == 404
    # The API's job for an Idempotency-Key, planted ahead of the request.
    idem = "planted-key"
    api_job = f"api-{hashlib.sha256(idem.encode()).hexdigest()[:32]}"
    _plant_result(s3, api_job, VICTIM)
    body = json.dumps({"model": "tts-1", "input": "x", "voice": VOICE, "response_format": "wav"}).encode()
    code, resp = _raw(
        open_door, "POST", "/v1/audio/speech", body, {"Content-Type": "application/json", "Idempotency-Key": idem}
    )
    assert code == 502 and json.loads(resp)["error"]["code"] == "bad_result"


def test_speech_requests_beyond_the_limit_get_429_and_a_dropped_one_frees_its_slot(open_door: str, s3: Any) -> None:
    """TTS_API_MAX_CONCURRENT=1 on a stack no worker serves: a request waits for its job until its
    client goes away. A second one meanwhile is refused; once the first client has gone, its
    handler stops (handler cancellation) and the next request gets in (its manifest appears)."""
    parts = urllib.parse.urlsplit(open_door)
    body = json.dumps({"model": "tts-1", "input": "Waiting forever.", "voice": VOICE}).encode()
    request = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    before = set(_keys(s3, DOOR, INBOXES))
    first = socket.create_connection((parts.hostname, parts.port))
    first.sendall(request)
    wait_until(lambda: len(set(_keys(s3, DOOR, INBOXES)) - before) == 1, "the first request's job")
    code, resp = _raw(open_door, "POST", "/v1/audio/speech", body, {"Content-Type": "application/json"})
    assert code == 429 and json.loads(resp)["error"]["code"] == "rate_limit_exceeded"
    first.close()  # the client goes away

    def next_gets_in() -> bool:
        """One more request: True once its job appears (it got past the limit), False on a 429."""
        jobs = set(_keys(s3, DOOR, INBOXES))
        s = socket.create_connection((parts.hostname, parts.port))
        try:
            s.sendall(request)
            s.setblocking(False)
            while True:
                if len(set(_keys(s3, DOOR, INBOXES)) - jobs) == 1:
                    return True
                try:
                    if s.recv(64):
                        return False  # answered at once: refused
                except BlockingIOError:
                    pass
        finally:
            s.close()

    wait_until(next_gets_in, "a request after the dropped one to be let in")


def test_binding_beyond_loopback_needs_a_key(door_env: dict[str, str]) -> None:
    done = subprocess.run(
        [TTS, "console", "--host", "0.0.0.0", "--port", "1"], env=door_env, capture_output=True, timeout=120
    )
    assert done.returncode != 0 and b"TTS_API_KEY" in done.stderr
