"""A whole stack for a latency benchmark: LocalStack (host mode, private state), the bucket and
queues (``tts-pipeline bootstrap``), the tiny bundle, a library voice, a worker and the console,
all real processes started as users start them, all stopped (process groups) on exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from pipeline.ops import localstack_host

TTS = str(Path(sys.executable).parent / "tts-pipeline")
VOICE = "bench-voice"
REF_TEXT = "Some call me nature, others call me mother nature."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_clip() -> Path:
    return Path(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")))


@dataclass
class Stack:
    work: Path
    env: dict[str, str]
    bucket: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *args: str) -> str:
        return subprocess.run([TTS, *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def start(self, name: str, *args: str, **settings: str) -> subprocess.Popen[bytes]:
        extra = {f"TTS_{k.upper()}": str(v) for k, v in settings.items()}
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [TTS, *args], env={**self.env, **extra}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def worker(self, name: str = "worker", **settings: str) -> subprocess.Popen[bytes]:
        proc = self.start(name, "worker", **{"receive_wait_s": "2", **settings})
        deadline = time.monotonic() + 300
        while " ready: model " not in self.log(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log(name)[-3000:]}")
            time.sleep(0.25)
        return proc

    def console(self, **settings: str) -> str:
        port = free_port()
        proc = self.start("console", "console", "--port", str(port), **settings)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return url
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"console did not start:\n{self.log('console')[-3000:]}")
            time.sleep(0.2)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def stack(bucket: str = "bench-latency", **bootstrap_settings: str) -> Iterator[Stack]:
    """LocalStack + bootstrap + tiny bundle + library voice; workers and the console on request."""
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    state = work / "localstack"
    inst = localstack_host.start(port=free_port(), state_dir=state)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": inst.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "TTS_BUCKET": bucket,
        "TTS_QUEUE": bucket,
        "TTS_DEVICE": "cpu",
        "TTS_MODEL_NAME": "f5tts-tiny",
        "TTS_CACHE_DIR": str(work / "cache"),
        **{f"TTS_{k.upper()}": v for k, v in bootstrap_settings.items()},
    }
    s = Stack(work, env, bucket)
    try:
        s.run("bootstrap")
        s.run("model", "build-tiny", str(work / "tiny"))
        s.run("model", "push", str(work / "tiny"))
        s.run("voices", "add", VOICE, str(reference_clip()), "--ref-text", REF_TEXT)
        yield s
    finally:
        for proc in reversed(s.procs):
            s.stop(proc)
        localstack_host.stop(state)
        shutil.rmtree(work, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
