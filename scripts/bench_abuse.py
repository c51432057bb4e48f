"""Issue 27's hostile-load benchmark: what abusive clients cost a legitimate one, and the operator.

    python scripts/bench_abuse.py [--requests N] [--attack-s S]     (make bench-abuse)

The real stack on loopback (LocalStack, one worker with the tiny bundle, ``tts-pipeline console``
with a key), its S3/SQS traffic through the fault proxy (no faults: it only counts the console's
requests). One legitimate client sends short speech requests one after another, first alone
(idle), then while every attack of issue 27 runs at once, each from addresses of its own
(127.0.0.0/8 is loopback):

- ``guesser``: wrong bearer keys as fast as answers come;
- ``non_readers``: 16 clients asking for a completed job's 16 MiB FLAC and never reading;
- ``slow_bodies``: 32 requests whose bodies never finish;
- ``slow_streams``: 8 clients streaming a completed minute of audio at 1 KiB/s;
- ``hang_ups``: ``curl -m 1`` in a loop (a speech request, then hang up);
- ``scanner``: the job list, filtered, at its deepest page, in a loop;
- ``flooder``: ``GET /v1/models`` as fast as answers come.

Reported (stdout and docs/bench/abuse.json, quoted by docs/security.md): the legitimate client's
p50/p95 idle and under attack, the console's S3 requests and peak RSS and open sockets idle and
under attack, the jobs the abusers got created against their budget, and each attack's answers
by status code. Bounded: ``--requests`` legitimate requests per phase, the attack at most
``--attack-s`` seconds. The completed jobs the attacks read are planted objects (a status, a
result and an audio file), not rendered: the tiny model's audio of that length would take minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import platform
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.ops import localstack_host  # noqa: E402
from scripts.latency.common import VOICE, Stack, percentile, stack  # noqa: E402

OUT = ROOT / "docs" / "bench" / "abuse.json"
KEY = "sk-bench-abuse-0123456789"
SHORT = "Hello there. This is a short request."


# -- plain HTTP on sockets (a client library would read, retry or pool: an abuser does not) ---------


def _connect(url: str, source: str) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    s = socket.socket()
    # Closed with a reset, not left in TIME_WAIT: an attack of ~1,000 connections a second would
    # otherwise hold this machine's ~28,000 ephemeral ports, and every other process's new
    # connections (the worker's to S3) would crawl. That is the attacker's machine's problem, not
    # the operator's, and no part of what is measured here.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.bind((source, 0))
    s.connect((parts.hostname, parts.port))
    return s


def _request(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, length: int = -1
) -> bytes:
    parts = urllib.parse.urlsplit(url)
    hdrs = {"Host": parts.netloc, **(headers or {})}
    if body or length >= 0:
        hdrs["Content-Length"] = str(length if length >= 0 else len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return head.encode() + body


def _status_of(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        piece = s.recv(4096)
        if not piece:
            return 0
        data += piece
    return int(data.split()[1])


def _speech_body(text: str, fmt: str = "wav") -> bytes:
    return json.dumps({"model": "tts-1", "input": text, "voice": VOICE, "response_format": fmt}).encode()


def _auth(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(extra or {})}


# -- the stack ---------------------------------------------------------------------------------------


def _plant(s: Stack, job: str, audio: bytes, fmt: str) -> None:
    """A completed job (status, result, audio): what the read attacks ask for."""
    os.environ.update({k: v for k, v in s.env.items() if k.startswith(("AWS_", "TTS_"))})
    from pipeline.cloud.aws import sync_client
    from pipeline.jobs.contract import JobState, JobStatus, OutputFormat
    from tests.helpers import sample_result

    s3 = sync_client("s3")
    key = f"outputs/{job}/attempt-1.{fmt}"
    result = sample_result(job, f"s3://{s.bucket}/{key}", duration_s=60.0)
    result.audio.format = OutputFormat(fmt)
    status = JobStatus.new(job).moved_to(JobState.PROCESSING, worker="w").moved_to(JobState.COMPLETED)
    s3.put_object(Bucket=s.bucket, Key=key, Body=audio)
    s3.put_object(Bucket=s.bucket, Key=f"results/{job}.json", Body=result.model_dump_json().encode())
    s3.put_object(Bucket=s.bucket, Key=f"status/{job}.json", Body=status.model_dump_json().encode())


def _idem_job(idem: str) -> str:
    return f"api-{hashlib.sha256(idem.encode()).hexdigest()[:32]}"


class Console:
    """The console process: its RSS and open sockets, sampled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def sockets(self) -> int:
        n = 0
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                n += os.readlink(fd).startswith("socket:")
        return n


class Sampler(threading.Thread):
    def __init__(self, console: Console) -> None:
        super().__init__(daemon=True)
        self.console = console
        self.stop = threading.Event()
        self.rss: list[float] = []
        self.sockets: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                self.rss.append(self.console.rss_mb())
                self.sockets.append(self.console.sockets())
            self.stop.wait(0.25)


# -- the legitimate client ---------------------------------------------------------------------------


def legit(url: str, n: int, jobs: list[str] | None = None) -> list[float]:
    """``n`` short speech requests one after another; the seconds each took to its last byte
    (their job ids appended to ``jobs``)."""
    import urllib.request

    times = []
    for i in range(n):
        req = urllib.request.Request(
            url + "/v1/audio/speech", data=_speech_body(f"{SHORT} Number {i}."), headers=_auth(), method="POST"
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as resp:
            data = resp.read()
            if jobs is not None:
                jobs.append(resp.headers["X-Job-Id"])
        times.append(time.perf_counter() - t0)
        assert sf.info(io.BytesIO(data)).duration > 0, "no audio"
    return times


# -- the attacks --------------------------------------------------------------------------------------


class Attack(threading.Thread):
    def __init__(self, name: str, until: float, body: Callable[[Attack], None]) -> None:
        super().__init__(daemon=True, name=name)
        self.until = until
        self.body = body
        self.codes: Counter[str] = Counter()
        self.held: list[socket.socket] = []

    def live(self) -> bool:
        return time.monotonic() < self.until

    def run(self) -> None:
        try:
            self.body(self)
        except Exception as e:  # an attack that breaks is reported, not hidden
            self.codes[f"error: {type(e).__name__}"] += 1
        finally:
            for s in self.held:
                s.close()


def guesser(url: str) -> Callable[[Attack], None]:
    def run(a: Attack) -> None:
        i = 0
        while a.live():
            s = _connect(url, "127.0.0.2")
            s.sendall(_request(url, "GET", "/v1/models", headers={"Authorization": f"Bearer sk-guess-{i}"}))
            a.codes[str(_status_of(s))] += 1
            s.close()
            i += 1

    return run


def non_readers(url: str, idem: str) -> Callable[[Attack], None]:
    def run(a: Attack) -> None:
        while a.live():  # reconnect once the server has cut one off
            a.held = [s for s in a.held if _open(s)]
            for i in range(16 - len(a.held)):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.bind((f"127.0.1.{10 + i + len(a.held)}", 0))
                parts = urllib.parse.urlsplit(url)
                s.connect((parts.hostname, parts.port))
                body = _speech_body("x", "flac")
                s.sendall(_request(url, "POST", "/v1/audio/speech", body, _auth({"Idempotency-Key": idem})))
                a.held.append(s)
                a.codes["sent"] += 1
            time.sleep(1)

    return run


def _open(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def slow_bodies(url: str) -> Callable[[Attack], None]:
    def run(a: Attack) -> None:
        while a.live():
            a.held = [s for s in a.held if _open(s)]
            for _ in range(32 - len(a.held)):
                s = _connect(url, "127.0.0.3")
                s.sendall(_request(url, "POST", "/v1/audio/speech", b"{", _auth(), length=100_000))
                a.held.append(s)
                a.codes["sent"] += 1
            time.sleep(1)

    return run


def slow_streams(url: str, idem: str) -> Callable[[Attack], None]:
    def one(i: int, a: Attack) -> None:
        while a.live():
            s = _connect(url, f"127.0.2.{i}")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(
                _request(url, "POST", "/v1/audio/speech", _speech_body("x", "pcm"), _auth({"Idempotency-Key": idem}))
            )
            a.codes["sent"] += 1
            while a.live():
                try:
                    if not s.recv(1024):
                        break
                except OSError:
                    break
                time.sleep(1)
            s.close()

    def run(a: Attack) -> None:
        threads = [threading.Thread(target=one, args=(i, a), daemon=True) for i in range(1, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return run


def hang_ups(url: str) -> Callable[[Attack], None]:
    def run(a: Attack) -> None:
        i = 0
        while a.live():
            s = _connect(url, "127.0.0.4")
            s.sendall(_request(url, "POST", "/v1/audio/speech", _speech_body(f"Abuse number {i}."), _auth()))
            s.settimeout(1.0)
            try:
                a.codes[str(_status_of(s))] += 1
            except TimeoutError:
                a.codes["hung up"] += 1
            s.close()
            i += 1

    return run


def scanner(url: str) -> Callable[[Attack], None]:
    def run(a: Attack) -> None:
        paths = ["/console/api/jobs?state=failed&offset=900&limit=100", "/console/api/jobs?offset=1000000000"]
        i = 0
        while a.live():
            s = _connect(url, "127.0.0.5")
            s.sendall(_request(url, "GET", paths[i % 2], headers={"Authorization": f"Bearer {KEY}"}))
            a.codes[str(_status_of(s))] += 1
            s.close()
            i += 1

    return run


def flooder(url: str) -> Callable[[Attack], None]:
    def run(a: Attack) -> None:
        while a.live():
            s = _connect(url, "127.0.0.6")
            s.sendall(_request(url, "GET", "/v1/models", headers={"Authorization": f"Bearer {KEY}"}))
            a.codes[str(_status_of(s))] += 1
            s.close()

    return run


def _attack(attacks: dict[str, Callable[[Attack], None]], until: float, results: multiprocessing.Queue[Any]) -> None:
    """Every attack at once, in this (forked, lowest-priority) process, until ``until`` or SIGUSR1."""
    os.nice(19)
    threads = {name: Attack(name, until, body) for name, body in attacks.items()}

    def stop(*_: object) -> None:
        for t in threads.values():
            t.until = 0

    signal.signal(signal.SIGUSR1, stop)
    for t in threads.values():
        t.start()
    for t in threads.values():
        while t.is_alive():
            t.join(timeout=0.5)
    results.put({name: dict(t.codes) for name, t in threads.items()})


# -- the run ------------------------------------------------------------------------------------------


def _console_requests(trace: Path, since: float, until: float) -> int:
    n = 0
    for line in trace.read_text().splitlines():
        entry = json.loads(line)
        n += entry.get("agent") == "console" and since <= entry["t"] <= until
    return n


def _abuse_jobs(s: Stack) -> int:
    """Jobs whose manifests carry the hang-up attack's text."""
    from pipeline.cloud.aws import sync_client

    s3 = sync_client("s3")
    n = 0
    for prefix in ("inbox/", "inbox-interactive/"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s.bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                n += b"Abuse number" in s3.get_object(Bucket=s.bucket, Key=o["Key"])["Body"].read()
    return n


def _door_max(s: Stack, client: str) -> int:
    """The most unfinished jobs the console's door counted for ``client`` at once (its log)."""
    mark = f"client {client}: "
    lines = [line for line in s.log("console").splitlines() if mark in line and "unfinished job" in line]
    counts = [int(line.split(mark, 1)[1].split()[0]) for line in lines]
    return max(counts, default=0)


def _phases(s: Stack, jobs: list[str]) -> list[dict[str, float]]:
    """Per legitimate job: seconds from its creation to its claim, and from its claim to its end."""
    from pipeline.cloud.aws import sync_client
    from pipeline.jobs.contract import JobStatus

    s3 = sync_client("s3")
    out = []
    for job in jobs:
        st = JobStatus.model_validate_json(s3.get_object(Bucket=s.bucket, Key=f"status/{job}.json")["Body"].read())
        if st.started_at and st.finished_at:
            queued = (st.started_at - st.created_at).total_seconds()
            out.append(
                {"queued_s": round(queued, 2), "ran_s": round((st.finished_at - st.started_at).total_seconds(), 2)}
            )
    return out


def _pin(pgid: int, cpus: set[int]) -> None:
    """Every thread of every process of one process group onto ``cpus`` (an affinity is a
    thread's: threads started before the pin, the model thread among them, keep their own)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                for task in (stat.parent / "task").iterdir():
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(task.name), cpus)


def run(requests: int, attack_s: float, door_jobs: int, only: list[str] | None = None) -> dict[str, Any]:
    from tests.faults.proxy import ProxyProcess

    # What is apart in a deployment is kept apart here, as far as two cores allow: the console,
    # the proxy and the clients on core 0; S3 (LocalStack) and the worker on core 1, so the
    # console's load does not slow S3 for the worker (S3 is not the console's to starve). The
    # attackers run in a process of their own at the lowest priority: their CPU is theirs, not
    # the operator's, so they take only what the console leaves.
    split = (os.cpu_count() or 1) >= 2
    if split:
        os.sched_setaffinity(0, {0})
    with stack("bench-abuse") as s:
        big_flac, big_wav = "big-flac", "big-wav"
        _plant(s, _idem_job(big_flac), np.random.default_rng(0).bytes(16 * 1024 * 1024), "flac")
        minute = (np.random.default_rng(1).standard_normal(24000 * 60) * 3000).astype(np.int16)
        buf = io.BytesIO()
        sf.write(buf, minute, 24000, format="WAV", subtype="PCM_16")
        _plant(s, _idem_job(big_wav), buf.getvalue(), "wav")
        worker = s.worker()
        localstack = localstack_host.running(s.work / "localstack")
        if split:
            _pin(worker.pid, {1})
            if localstack is not None:
                _pin(localstack.pid, {1})
        os.environ["PYTHONPATH"] = str(ROOT)  # the proxy runs as ``python -m tests.faults.proxy``
        proxy = ProxyProcess(s.env["AWS_ENDPOINT_URL"], s.work)
        trace = proxy.trace_path
        real = s.env["AWS_ENDPOINT_URL"]
        s.env["AWS_ENDPOINT_URL"] = proxy.endpoint
        try:
            url = s.console(api_key=KEY, door_jobs=str(door_jobs))
        finally:
            s.env["AWS_ENDPOINT_URL"] = real
        console = Console(s.procs[-1].pid)
        legit(url, 2)  # warm: the model's first calls, the console's first S3 calls
        sampler = Sampler(console)
        sampler.start()
        t0 = time.time()
        idle_jobs: list[str] = []
        idle = legit(url, requests, idle_jobs)
        t1 = time.time()
        idle_rss, idle_sockets = max(sampler.rss), max(sampler.sockets)
        sampler.rss.clear()
        sampler.sockets.clear()
        until = time.monotonic() + attack_s
        attacks = {
            "guesser": guesser(url),
            "non_readers": non_readers(url, big_flac),
            "slow_bodies": slow_bodies(url),
            "slow_streams": slow_streams(url, big_wav),
            "hang_ups": hang_ups(url),
            "scanner": scanner(url),
            "flooder": flooder(url),
        }
        attacks = {name: body for name, body in attacks.items() if not only or name in only}
        results: multiprocessing.Queue[dict[str, dict[str, int]]] = multiprocessing.Queue()
        attackers = multiprocessing.get_context("fork").Process(
            target=_attack, args=(attacks, until, results), daemon=True
        )
        attackers.start()
        time.sleep(3)  # every attack under way before the first measured request
        t2 = time.time()
        attack_jobs: list[str] = []
        loaded = legit(url, requests, attack_jobs)
        t3 = time.time()
        os.kill(attackers.pid, signal.SIGUSR1)  # stop now
        answers = results.get(timeout=120)
        attackers.join(timeout=60)
        sampler.stop.set()
        sampler.join()
        abuse_jobs = _abuse_jobs(s)
        if os.environ.get("BENCH_ABUSE_LOGS"):  # the processes' logs, for a closer look
            for name in ("worker", "console"):
                Path(os.environ["BENCH_ABUSE_LOGS"], f"{name}.log").write_text(s.log(name))
        proxy.stop()
        figures = {
            "legit_requests_per_phase": requests,
            "legit_idle_p50_s": round(percentile(idle, 50), 3),
            "legit_idle_p95_s": round(percentile(idle, 95), 3),
            "legit_attack_p50_s": round(percentile(loaded, 50), 3),
            "legit_attack_p95_s": round(percentile(loaded, 95), 3),
            "legit_p95_ratio": round(percentile(loaded, 95) / percentile(idle, 95), 2),
            "legit_idle_s": [round(t, 2) for t in idle],
            "legit_attack_s": [round(t, 2) for t in loaded],
            "legit_idle_jobs": _phases(s, idle_jobs),
            "legit_attack_jobs": _phases(s, attack_jobs),
            "console_s3_requests_per_s_idle": round(_console_requests(trace, t0, t1) / (t1 - t0), 1),
            "console_s3_requests_per_s_attack": round(_console_requests(trace, t2, t3) / (t3 - t2), 1),
            "console_rss_mb_idle": round(idle_rss, 1),
            "console_rss_mb_attack_peak": round(max(sampler.rss), 1),
            "console_sockets_idle_peak": idle_sockets,
            "console_sockets_attack_peak": max(sampler.sockets),
            "abuser_jobs_created": abuse_jobs,
            "abuser_jobs_door_counted_max": _door_max(s, "127.0.0.4"),
            "abuser_job_budget": door_jobs,
            "cpus": "worker and LocalStack on core 1; console, proxy, clients on core 0, attackers at nice 19"
            if split
            else "shared",
            "attack_s": round(t3 - t2 + 3, 1),
            "answers": answers,
        }
        return figures


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20, help="legitimate requests per phase")
    p.add_argument("--attack-s", type=float, default=120.0, help="the longest the attacks run")
    p.add_argument("--door-jobs", type=int, default=Settings().door_jobs, help="TTS_DOOR_JOBS (default: its default)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--only", nargs="*", help="run only these attacks (to find what costs what)")
    a = p.parse_args(argv)
    figures = run(a.requests, a.attack_s, a.door_jobs, a.only)
    figures["recorded"] = time.strftime("%Y-%m-%d")
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, tiny random bundle, loopback"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
