"""The CLI for people and for scripts: through a real pseudo-terminal, `submit --wait` draws a
progress bar and `status`/`jobs` print a summary and a table; piped, they print the JSON documents
as before, and the exit codes are the same either way. Real LocalStack, a real worker."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import (
    BUCKET,
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    aws,
    get_json,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_ready,
)

pytestmark = pytest.mark.integration

TEXT = "This is a sentence of moderate length. " * 8
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
HANG_GUARD_S = 600  # only against a hang; nothing here measures speed
# Variables that change how rich sees a terminal; the tests want its defaults.
RICH_ENV = ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES", "TERM")


def run_in_terminal(
    argv: list[str],
    env: dict[str, str],
    timeout_s: float = HANG_GUARD_S,
    on_output: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal (160x40); returns the exit
    code and everything it wrote, escape codes included. ``on_output`` sees all output so far after
    every read (to act on what the terminal shows while the command runs)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    term_env = {k: v for k, v in env.items() if k not in RICH_ENV} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=term_env, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{argv} still running after {timeout_s}s:\n{out.decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as e:  # EIO: every process holding the terminal has closed it
                if e.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            out += data
            if on_output is not None:
                on_output(out.decode(errors="replace"))
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out.decode(errors="replace")


def plain(text: str) -> str:
    """Terminal output without escape codes and carriage returns."""
    return ANSI.sub("", text).replace("\r", "")


def piped(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


@pytest.fixture(scope="module")
def voice(aws_env: dict[str, str]) -> str:
    aws(aws_env, "s3", "cp", str(reference_voice_path()), f"s3://{BUCKET}/voices/alice.wav")
    return "voices/alice.wav"


@pytest.fixture(scope="module")
def submitted(aws_env: dict[str, str], worker: WorkerProcess, voice: str) -> tuple[str, int, str]:
    """`tts-pipeline submit --wait` on a terminal: (job id, exit code, what the terminal showed)."""
    job_id = f"cli-human-{time.time_ns()}"
    code, out = run_in_terminal(
        [
            TTS,
            "submit",
            "--job-id",
            job_id,
            "--text",
            TEXT,
            "--voice",
            voice,
            "--ref-text",
            REF_TEXT,
            "--nfe-step",
            "2",
            "--wait",
            "--timeout",
            str(HANG_GUARD_S),
        ],
        aws_env,
    )
    return job_id, code, out


def test_submit_wait_on_a_terminal_draws_a_progress_bar(submitted: tuple[str, int, str], s3: Any) -> None:
    job_id, code, out = submitted
    text = plain(out)
    assert code == 0, text
    assert "\x1b[" in out, "no escape codes: not drawn as a rich progress bar"
    status = get_json(s3, f"status/{job_id}.json")
    result = get_json(s3, f"results/{job_id}.json")
    assert status is not None and status["state"] == "COMPLETED", status
    assert result is not None
    n = result["chunks"]
    assert n >= 2, f"the text should have been planned into several chunks: {result['chunks']}"
    # The bar's last frame: the job, its final state, every chunk done.
    assert re.search(rf"{re.escape(job_id)}\s+COMPLETED\b.*\b{n}/{n} chunks", text), text
    # Then the summary on stdout, not the result JSON.
    assert "submitted " + job_id in text
    assert re.search(r"^audio\s+s3://", text, re.M), text
    assert '"word_timings"' not in text


def test_status_piped_is_exactly_the_status_document(
    submitted: tuple[str, int, str], aws_env: dict[str, str], s3: Any
) -> None:
    job_id, _, _ = submitted
    out = piped([TTS, "status", job_id], aws_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == get_json(s3, f"status/{job_id}.json")
    assert "\x1b" not in out.stdout + out.stderr


def test_status_on_a_terminal_is_a_summary_and_json_with_the_flag(
    submitted: tuple[str, int, str], aws_env: dict[str, str], s3: Any
) -> None:
    job_id, _, _ = submitted
    code, out = run_in_terminal([TTS, "status", job_id], aws_env)
    text = plain(out)
    assert code == 0, text
    assert re.search(rf"^{re.escape(job_id)}\s+COMPLETED\s+attempt 1", text, re.M), text
    result = get_json(s3, f"results/{job_id}.json")
    assert result is not None
    assert result["audio"]["uri"] in text and re.search(rf"^chunks\s+{result['chunks']}\b", text, re.M), text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)

    code, out = run_in_terminal([TTS, "status", job_id, "--json"], aws_env)
    assert code == 0, out
    assert json.loads(out.replace("\r\n", "\n")) == get_json(s3, f"status/{job_id}.json")


def test_jobs_lists_the_job_as_a_table_on_a_terminal_and_as_json_when_piped(
    submitted: tuple[str, int, str], aws_env: dict[str, str], s3: Any
) -> None:
    job_id, _, _ = submitted
    code, out = run_in_terminal([TTS, "jobs", "--state", "COMPLETED", "--limit", "5"], aws_env)
    text = plain(out)
    assert code == 0, text
    assert re.search(r"^JOB ID\s+STATE\s+AGE\s+ATTEMPT", text, re.M), text
    assert re.search(rf"^{re.escape(job_id)}\s+COMPLETED\s.*\s1\s+took ", text, re.M), text

    out = piped([TTS, "jobs", "--state", "completed", "--limit", "5"], aws_env)
    assert out.returncode == 0, out.stderr
    docs = json.loads(out.stdout)
    assert isinstance(docs, list) and 1 <= len(docs) <= 5
    assert all(d["state"] == "COMPLETED" for d in docs)
    mine = [d for d in docs if d["job_id"] == job_id]
    assert mine == [get_json(s3, f"status/{job_id}.json")]

    out = piped([TTS, "jobs"], aws_env)
    assert out.returncode == 0, out.stderr
    assert job_id in [d["job_id"] for d in json.loads(out.stdout)]


def test_wait_piped_writes_plain_progress_lines_and_the_status_json(
    submitted: tuple[str, int, str], aws_env: dict[str, str], s3: Any
) -> None:
    job_id, _, _ = submitted
    out = piped([TTS, "wait", job_id, "--timeout", "60"], aws_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == get_json(s3, f"status/{job_id}.json")
    n = get_json(s3, f"results/{job_id}.json")["chunks"]  # type: ignore[index]
    assert out.stderr.splitlines()[-1] == f"{job_id} COMPLETED {n}/{n} chunks"
    assert "\x1b" not in out.stdout + out.stderr


def test_exit_codes_are_unchanged(aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str) -> None:
    # A job that fails: 1, on a terminal (the bar ends FAILED with the error code) as when piped.
    failed = f"cli-human-fail-{time.time_ns()}"
    argv = [TTS, "submit", "--job-id", failed, "--text", "Hello.", "--voice", "voices/no-such-voice.wav"]
    code, out = run_in_terminal([*argv, "--ref-text", REF_TEXT, "--wait"], aws_env)
    text = plain(out)
    assert code == 1, text
    assert re.search(rf"{re.escape(failed)}\s+FAILED\b.*VOICE_NOT_FOUND", text), text
    out_piped = piped([TTS, "wait", failed], aws_env)
    assert out_piped.returncode == 1
    assert json.loads(out_piped.stdout)["error"]["code"] == "VOICE_NOT_FOUND"
    assert out_piped.stderr.splitlines()[-1].startswith(f"{failed} FAILED VOICE_NOT_FOUND: ")

    # A job nobody picks up (a status without a manifest: no S3 event): --timeout is 3.
    stuck = f"cli-human-stuck-{time.time_ns()}"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = {"job_id": stuck, "state": "QUEUED", "created_at": now, "updated_at": now, "history": []}
    s3.put_object(Bucket=BUCKET, Key=f"status/{stuck}.json", Body=json.dumps(doc).encode())
    try:
        out_piped = piped([TTS, "wait", stuck, "--timeout", "0"], aws_env)
        assert out_piped.returncode == 3, out_piped.stderr
        assert json.loads(out_piped.stdout)["state"] == "QUEUED"
        assert out_piped.stderr.splitlines()[-2:] == [f"{stuck} QUEUED", f"{stuck} still QUEUED after 0s (--timeout)"]
        code, out = run_in_terminal([TTS, "wait", stuck, "--timeout", "0"], aws_env)
        assert code == 3, plain(out)
        assert re.search(rf"{re.escape(stuck)}\s+QUEUED", plain(out))
    finally:
        s3.delete_object(Bucket=BUCKET, Key=f"status/{stuck}.json")

    # Unknown jobs: 1 with the message on stderr, terminal or not.
    code, out = run_in_terminal([TTS, "status", "never-submitted-cli"], aws_env)
    assert code == 1 and "no job never-submitted-cli" in out


def test_jobs_filters_orders_and_bounds_its_reads(aws_env: dict[str, str], s3: Any) -> None:
    """A bucket of its own: two FAILED jobs written before twelve COMPLETED ones, and a manifest
    that no worker has picked up (no status: QUEUED)."""
    bucket = f"cli-jobs-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    try:
        _jobs_in(bucket, aws_env, s3)
    finally:
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        with contextlib.suppress(Exception):
            s3.delete_bucket(Bucket=bucket)


def _jobs_in(bucket: str, aws_env: dict[str, str], s3: Any) -> None:
    env = {**aws_env, "TTS_BUCKET": bucket}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def put_status(job_id: str, state: str, error: dict[str, str] | None = None) -> None:
        doc = {"job_id": job_id, "state": state, "attempt": 1, "created_at": now, "updated_at": now}
        doc |= {"finished_at": now, "error": error}
        s3.put_object(Bucket=bucket, Key=f"status/{job_id}.json", Body=json.dumps(doc).encode())

    # Equal LastModified (one-second resolution) are ordered by key, newest first: names that sort
    # the way they were written keep the expected order either way.
    for i in range(2):
        put_status(f"a-failed-{i}", "FAILED", {"code": "VOICE_NOT_FOUND", "message": "no voice"})
    for i in range(12):
        put_status(f"b-done-{i:02d}", "COMPLETED")
    time.sleep(1.1)  # the manifest is strictly newer than every status
    s3.put_object(Bucket=bucket, Key="inbox/c-queued.json", Body=b"{}")

    def jobs(*args: str) -> tuple[list[dict[str, Any]], str]:
        out = piped([TTS, "jobs", *args], env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout), out.stderr

    docs, err = jobs("--limit", "3")
    assert [d["job_id"] for d in docs] == ["c-queued", "b-done-11", "b-done-10"] and err == ""
    assert docs[0]["state"] == "QUEUED"

    docs, err = jobs("--state", "FAILED", "--limit", "2")  # reads up to 20 documents: both found
    assert [d["job_id"] for d in docs] == ["a-failed-1", "a-failed-0"] and err == ""

    docs, err = jobs("--state", "FAILED", "--limit", "1")  # reads at most 10: the COMPLETED ones
    assert docs == [] and "read the 10 most recently updated status documents" in err

    code, out = run_in_terminal([TTS, "jobs", "--state", "FAILED", "--limit", "2"], env)
    text = plain(out)
    assert code == 0, text
    rows = [line for line in text.splitlines() if line.startswith("a-failed-")]
    assert len(rows) == 2 and all(re.search(r"\sFAILED\s.*VOICE_NOT_FOUND\s*$", r) for r in rows), text


def test_the_bar_shows_chunks_done_while_the_job_runs(make_stack: Any, holds: Holds, tmp_path: Any, s3: Any) -> None:
    """A job held after its first chunk (a fault hold, so no race with the model): the terminal
    shows `1/N chunks` while it is held, then the job is released and the bar ends at `N/N`."""
    env = make_stack("cli-progress")
    aws(env, "s3", "cp", str(reference_voice_path()), "s3://cli-progress/voices/alice.wav")
    worker = start_worker(env, tmp_path / "worker.log", progress_interval_s=0.2, **holds.settings)
    try:
        wait_ready(worker)
        job_id = "cli-progress-1"
        holds.hold(job_id, after_chunks=1)
        argv = [TTS, "submit", "--job-id", job_id, "--text", TEXT, "--voice", "voices/alice.wav"]
        argv += ["--ref-text", REF_TEXT, "--nfe-step", "2", "--wait", "--timeout", str(HANG_GUARD_S)]
        released: list[bool] = []

        def release_once_shown(shown: str) -> None:
            if not released and re.search(r"PROCESSING.*\b1/(\d+) chunks", plain(shown)):
                assert holds.wait_held(job_id, worker)["chunks_done"] == 1  # its marker follows at once
                holds.release(job_id)
                released.append(True)

        code, out = run_in_terminal(argv, env, on_output=release_once_shown)
        text = plain(out)
        assert released, f"the bar never showed 1/N chunks while the job was held:\n{text[-2000:]}"
        assert code == 0, text[-2000:]
        result = get_json(s3, f"results/{job_id}.json", "cli-progress")
        assert result is not None
        n = result["chunks"]
        assert n > 1 and re.search(rf"PROCESSING.*\b1/{n} chunks", text), text[-2000:]
        assert re.search(rf"\b{n}/{n} chunks", text), text[-2000:]
    finally:
        stop_worker(worker)


def test_escape_codes_in_a_status_never_reach_the_terminal(aws_env: dict[str, str], s3: Any) -> None:
    """Issue 27, defect 8: a FAILED status whose error message carries what a manifest's unknown
    key did (``\\x1b[2J`` clears the screen; a title change, an 8-bit CSI, a right-to-left
    override). `status` and `jobs` on a terminal, `wait` piped and `status --json`: the operator
    sees the escapes spelled out, and no byte of them reaches the terminal."""
    job = f"cli-hostile-{time.time_ns()}"
    hostile = "extra field '\x1b[2J\x1b]0;owned\x07' \x9b31m \u202eevil [bold]x[/]"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = {"job_id": job, "state": "FAILED", "attempt": 1, "created_at": now, "updated_at": now}
    doc |= {"finished_at": now, "error": {"code": "INVALID_MANIFEST", "message": hostile}, "worker": hostile}
    s3.put_object(Bucket=BUCKET, Key=f"status/{job}.json", Body=json.dumps(doc).encode())
    shown = "extra field '\\x1b[2J\\x1b]0;owned\\x07' \\x9b31m \\u202eevil [bold]x[/]"
    try:
        for argv in ([TTS, "status", job], [TTS, "jobs", "--state", "FAILED", "--limit", "5"]):
            code, out = run_in_terminal(argv, aws_env)
            rest = re.sub(r"\x1b\[[0-9;]*m", "", out)  # rich's own colours and styles
            assert code == 0 and "\x1b" not in rest and "\x9b" not in rest and "\u202e" not in rest, repr(rest)
            assert job in rest, rest
            if argv[1] == "status":  # (the table shows the error's code only)
                assert shown in plain(out).replace("\n", ""), plain(out)

        waited = piped([TTS, "wait", job, "--timeout", "0"], aws_env)
        assert waited.returncode == 1, waited.stderr
        assert json.loads(waited.stdout)["error"]["message"] == hostile  # the same document
        for stream in (waited.stdout, waited.stderr):
            assert "\x1b" not in stream and "\x9b" not in stream and "\u202e" not in stream, repr(stream)
        assert waited.stderr.splitlines()[-1] == f"{job} FAILED INVALID_MANIFEST: {shown}"

        code, out = run_in_terminal([TTS, "status", job, "--json"], aws_env)
        assert code == 0 and "\x1b" not in out and "\x9b" not in out and "\u202e" not in out, repr(out)
        assert json.loads(out.replace("\r\n", "\n"))["error"]["message"] == hostile
    finally:
        s3.delete_object(Bucket=BUCKET, Key=f"status/{job}.json")
