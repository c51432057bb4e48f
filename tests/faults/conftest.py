"""Fault-suite fixtures: each test gets its own bucket + queue + DLQ (versioned, so writes can be
counted), workers it starts and kills itself, and a place to record its figures for
docs/reliability.md (`make reliability`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.proxy import ProxyProcess
from tests.helpers import (
    REF_TEXT,
    Holds,
    WorkerProcess,
    aws,
    free_port,
    queue_depth,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_ready,
)

FIGURES_DIR = Path(__file__).resolve().parents[2] / ".cache" / "reliability"

# Short timings so that redelivery and takeover happen within seconds.
FAST = {
    "visibility_timeout_s": 6,
    "heartbeat_interval_s": 1.5,
    "receive_wait_s": 1,
    "retry_base_s": 1,
    "retry_max_s": 5,
    "cancel_poll_s": 1,
    "progress_interval_s": 1,
}


@pytest.fixture
def stack(request: pytest.FixtureRequest, make_stack: Any, s3: Any) -> dict[str, str]:
    name = "f-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    env = make_stack(name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    aws(env, "s3", "cp", str(reference_voice_path()), f"s3://{name}/voices/alice.wav")
    return env


@pytest.fixture
def workers(tmp_path: Path, holds: Holds) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory for worker processes, all obeying this test's ``holds``; all still running at
    teardown are stopped (SIGTERM)."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], name: str, *args: str, wait: bool = True, **settings: Any) -> WorkerProcess:
        w = start_worker(env, tmp_path / f"{name}.log", *args, **{**FAST, **holds.settings, **settings})
        started.append(w)
        if wait:
            wait_ready(w)
        return w

    yield start
    for w in started:
        stop_worker(w)


@pytest.fixture
def proxy(localstack: Any, tmp_path: Path) -> Iterator[Callable[[float], tuple[str, Path]]]:
    """Start the fault-injecting proxy in front of LocalStack; returns (endpoint, stats file)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(rate: float, seed: int = 7) -> tuple[str, Path]:
        port = free_port()
        stats = tmp_path / f"proxy-{port}.json"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.faults.proxy",
                    "--upstream",
                    localstack.endpoint,
                    "--port",
                    str(port),
                    "--rate",
                    str(rate),
                    "--seed",
                    str(seed),
                    "--stats",
                    str(stats),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/_localstack/health", timeout=1).read()
                return f"http://127.0.0.1:{port}", stats
            except OSError:
                time.sleep(0.2)
        raise AssertionError("fault proxy did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Write this test's measured figures to .cache/reliability/<test>.json."""

    def write(**figures: Any) -> None:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        doc = {"test": request.node.name, "doc": (request.node.function.__doc__ or "").strip(), **figures}
        (FIGURES_DIR / f"{request.node.name}.json").write_text(json.dumps(doc, indent=2, default=str))

    return write


def short_manifest(**fields: Any) -> dict[str, Any]:
    """A one-chunk job on the stack's test voice; ``fields`` override or add manifest fields."""
    return {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2, **fields}


def put_job(s3: Any, bucket: str, job_id: str, manifest: dict[str, Any]) -> None:
    """Drop ``manifest`` into the bulk inbox (its S3 event is the job's message)."""
    s3.put_object(Bucket=bucket, Key=f"inbox/{job_id}.json", Body=json.dumps(manifest).encode())


def versions(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    resp = s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in resp.get("Versions", []) if v["Key"] == key]


def audio_key(s3: Any, job_id: str, bucket: str) -> str:
    """The audio key the job's result names (results/<job_id>.json must exist)."""
    result = json.loads(s3.get_object(Bucket=bucket, Key=f"results/{job_id}.json")["Body"].read())
    return result["audio"]["uri"].removeprefix(f"s3://{bucket}/")


def generations(s3: Any, bucket: str, job_id: str) -> int:
    """How many attempts generated and uploaded the job's audio, as S3 saw it: the distinct audio
    keys ever written under outputs/<job_id>/attempt-* (one per attempt; removed ones count too, versioned
    buckets keep them; an SDK retry of one PUT is one key). An attempt that died before uploading
    generated nothing."""
    resp = s3.list_object_versions(Bucket=bucket, Prefix=f"outputs/{job_id}/attempt-")
    return len({v["Key"] for v in resp.get("Versions", []) if not v["Key"].endswith((".srt", ".vtt"))})


def visible_outputs(s3: Any, bucket: str, job_id: str) -> list[str]:
    """The output keys a client can see now (what the result names, if nothing leaked)."""
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=f"outputs/{job_id}/")
    return sorted(o["Key"] for o in resp.get("Contents", []))


def queue_drained(sqs: Any, queue: str, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if queue_depth(sqs, queue) == (0, 0):
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def fault_proxy(localstack: Any, tmp_path: Path) -> Iterator[ProxyProcess]:
    """The fault-injecting, tracing proxy (tests/faults/proxy.py) in front of this test's LocalStack."""
    p = ProxyProcess(localstack.endpoint, tmp_path)
    yield p
    p.stop()


@pytest.fixture
def via(stack: dict[str, str], fault_proxy: ProxyProcess) -> dict[str, str]:
    """The stack's environment with every S3/SQS/SNS call going through the proxy."""
    return {**stack, "AWS_ENDPOINT_URL": fault_proxy.endpoint}
