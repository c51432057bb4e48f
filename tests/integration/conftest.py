"""Integration fixtures: a real LocalStack process, the tiny bundle in its S3 model cache, and a
real `tts-pipeline worker` subprocess. Nothing here is mocked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import localstack_host
from tests.conftest import TTS

pytestmark = pytest.mark.integration

BUCKET = "tts-jobs"
QUEUE = "tts-jobs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack_host.Instance]:
    """A LocalStack of our own on a free port (a demo instance on 4566 is left alone)."""
    state = tmp_path_factory.mktemp("localstack")
    inst = localstack_host.start(port=free_port(), state_dir=state)
    yield inst
    localstack_host.stop(state)


@pytest.fixture(scope="session")
def aws_env(localstack: localstack_host.Instance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for every process that talks to LocalStack (also applied to this one)."""
    env = {
        "AWS_ENDPOINT_URL": localstack.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TTS_BUCKET": BUCKET,
        "TTS_QUEUE": QUEUE,
        "TTS_MODEL_NAME": "f5tts-tiny",
        "TTS_CACHE_DIR": str(tmp_path_factory.mktemp("model-cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {**os.environ, **env}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3(aws_env: dict[str, str]) -> Any:
    from pipeline.aws import sync_client

    return sync_client("s3")


@pytest.fixture(scope="session")
def sqs(aws_env: dict[str, str]) -> Any:
    from pipeline.aws import sync_client

    return sync_client("sqs")


@pytest.fixture(scope="session")
def pushed_bundle(aws_env: dict[str, str], tiny_bundle: Path) -> Path:
    subprocess.run([TTS, "model", "push", str(tiny_bundle)], env=aws_env, check=True, capture_output=True)
    return tiny_bundle


def aws(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real AWS CLI (LocalStack's pinned awscli), as a user would run it."""
    return subprocess.run([localstack_host.aws_cli(), *args], env=env, check=True, capture_output=True, text=True)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> WorkerProcess:
    port = free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [TTS, "worker", *args],
        env={**env, "TTS_METRICS_PORT": str(port), "TTS_RECEIVE_WAIT_S": "2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return WorkerProcess(proc=proc, metrics_port=port, log_path=log_path)


def wait_ready(worker: WorkerProcess, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log()[-4000:]}")
        if " ready: model " in worker.log():
            return
        time.sleep(0.5)
    raise AssertionError(f"worker not ready after {timeout_s}s:\n{worker.log()[-4000:]}")


def stop_worker(worker: WorkerProcess, timeout_s: float = 60) -> int:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
    try:
        return worker.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        return worker.proc.wait()


@pytest.fixture(scope="session")
def worker(
    aws_env: dict[str, str], pushed_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One long-running worker shared by the end-to-end tests (the model must load once)."""
    w = start_worker(aws_env, tmp_path_factory.mktemp("worker") / "worker.log")
    wait_ready(w)
    yield w
    code = stop_worker(w)
    assert code == 0, f"worker did not shut down cleanly on SIGTERM ({code}):\n{w.log()[-4000:]}"


def get_json(s3: Any, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def wait_for_state(s3: Any, job_id: str, timeout_s: float = 180, worker: WorkerProcess | None = None) -> dict:
    """Poll status/<job_id>.json until the job ends."""
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = get_json(s3, f"status/{job_id}.json")
        if status and status["state"] in ("COMPLETED", "FAILED"):
            return status
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker died ({worker.proc.returncode}):\n{worker.log()[-4000:]}")
        time.sleep(0.3)
    log = worker.log()[-4000:] if worker else ""
    raise AssertionError(f"{job_id} did not finish in {timeout_s}s; last status {status}\n{log}")
