"""Helpers shared by the integration and fault tests: processes, the AWS CLI, polling."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.ops import localstack_host

BIN = Path(sys.executable).parent
TTS = str(BIN / "tts-pipeline")
BUCKET = "tts-jobs"
QUEUE = "tts-jobs"
REF_TEXT = "Some call me nature, others call me mother nature."
# Where the suite's models run: the engine fixture and every worker it starts. CPU unless asked
# (`TTS_TEST_DEVICE=cuda make test`), so a GPU box runs what CI runs.
TEST_DEVICE = os.environ.get("TTS_TEST_DEVICE", "cpu")
T = TypeVar("T")


def reference_voice() -> tuple[np.ndarray, int, str]:
    """F5-TTS's own example reference (a real recording shipped in the f5-tts wheel) and its text."""
    import soundfile as sf

    wave, sr = sf.read(str(reference_voice_path()), dtype="float32")
    return wave, sr, REF_TEXT


def reference_voice_path() -> Path:
    return Path(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")))


def s3_event(bucket: str, key: str) -> str:
    """An S3 ObjectCreated notification body, as S3 puts it on the queue (for duplicate deliveries)."""
    from pipeline.jobs.contract import utcnow

    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": utcnow().isoformat(),
        "s3": {"bucket": {"name": bucket}, "object": {"key": key}},
    }
    return json.dumps({"Records": [record]})


class Holds:
    """The test side of pipeline/runtime/faults.py: hold a job at a chunk boundary until released, so a
    test acts on a running job without depending on how fast this machine synthesises."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "hold").mkdir(parents=True, exist_ok=True)

    @property
    def settings(self) -> dict[str, str]:
        """Worker settings (``start_worker(**settings)``) that point a worker at these holds."""
        return {"fault_dir": str(self.root)}

    def hold(self, job_id: str, *, after_chunks: int = 0, attempts: list[int] | None = None, at: str = "chunk") -> None:
        spec: dict[str, Any] = {"after_chunks": after_chunks, "at": at}
        if attempts is not None:
            spec["attempts"] = attempts
        (self.root / "hold" / job_id).write_text(json.dumps(spec))

    def release(self, job_id: str) -> None:
        (self.root / "hold" / job_id).unlink(missing_ok=True)

    def held(self, job_id: str) -> dict[str, Any] | None:
        path = self.root / "held" / job_id
        return json.loads(path.read_text()) if path.exists() else None

    def wait_held(self, job_id: str, worker: WorkerProcess | None = None, timeout_s: float = 300) -> dict[str, Any]:
        """Until a worker reports the job held (the marker it writes); returns the marker."""
        return wait_until(lambda: self.held(job_id), f"{job_id} held", timeout_s, worker)


def wait_until(
    probe: Callable[[], T | None], what: str, timeout_s: float = 300, worker: WorkerProcess | None = None
) -> T:
    """Poll ``probe`` until it returns something truthy. ``timeout_s`` only stops a broken run from
    hanging: no test relies on anything happening within it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker died ({worker.proc.returncode}) waiting for {what}:\n{worker.log()[-4000:]}")
        time.sleep(0.1)
    log = worker.log()[-4000:] if worker else ""
    raise AssertionError(f"gave up waiting for {what} after {timeout_s}s\n{log}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real AWS CLI (LocalStack's pinned awscli), as a user would run it."""
    return subprocess.run([localstack_host.aws_cli(), *args], env=env, check=True, capture_output=True, text=True)


def drop_manifest(
    env: dict[str, str], tmp_path: Path, job_id: str, manifest: dict[str, Any] | bytes, bucket: str = BUCKET
) -> None:
    """Submit a job the way clients do: `aws s3 cp job.json s3://<bucket>/inbox/<job_id>.json`."""
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    path = tmp_path / f"{abs(hash(job_id))}.json"
    path.write_bytes(body)
    aws(env, "s3", "cp", str(path), f"s3://{bucket}/inbox/{job_id}.json")


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


def start_worker(env: dict[str, str], log_path: Path, *args: str, **settings: str) -> WorkerProcess:
    """`tts-pipeline worker` as a subprocess; ``settings`` are extra TTS_* variables."""
    port = free_port()
    log = log_path.open("wb")
    extra = {f"TTS_{k.upper()}": str(v) for k, v in settings.items()}
    proc = subprocess.Popen(
        [TTS, "worker", *args],
        env={**env, "TTS_METRICS_PORT": str(port), "TTS_RECEIVE_WAIT_S": "2", **extra},
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


def queue_depth(sqs: Any, queue: str) -> tuple[int, int]:
    """(visible, in flight) messages of ``queue``, as SQS reports them."""
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def get_json(s3: Any, key: str, bucket: str = BUCKET) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED")


def wait_for_state(
    s3: Any,
    job_id: str,
    timeout_s: float = 180,
    worker: WorkerProcess | None = None,
    bucket: str = BUCKET,
    states: tuple[str, ...] = TERMINAL,
) -> dict:
    """Poll status/<job_id>.json until the job is in one of ``states`` (default: any final one)."""
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = get_json(s3, f"status/{job_id}.json", bucket)
        if status and status["state"] in states:
            return status
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker died ({worker.proc.returncode}):\n{worker.log()[-4000:]}")
        time.sleep(0.3)
    log = worker.log()[-4000:] if worker else ""
    raise AssertionError(f"{job_id} did not finish in {timeout_s}s; last status {status}\n{log}")


def add_library_voice(env: dict[str, str], name: str) -> None:
    """`tts-pipeline voices add NAME <f5-tts's example recording> --ref-text ...`, as users run it."""
    subprocess.run(
        [TTS, "voices", "add", name, str(reference_voice_path()), "--ref-text", REF_TEXT],
        env=env,
        check=True,
        capture_output=True,
    )


def start_console(env: dict[str, str], log: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    extra = {f"TTS_{k.upper()}": v for k, v in settings.items()}
    proc = subprocess.Popen(
        [TTS, "console", "--port", str(port)], env={**env, **extra}, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"console exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_until(up, "console up", 120)
    return proc, url


def outputs_left(s3: Any, job_id: str, want: list[str], bucket: str = BUCKET, timeout_s: float = 120) -> list[str]:
    """The keys under ``outputs/<job_id>/`` once the job's ending has removed what it no longer
    needs: that removal comes right after the final status (pipeline/jobs/outputs.py), so a test that
    has just seen the status waits for the listing to become ``want`` (a hang guard, not a timer)."""

    def listing() -> list[str]:
        resp = s3.list_objects_v2(Bucket=bucket, Prefix=f"outputs/{job_id}/")
        return sorted(o["Key"] for o in resp.get("Contents", []))

    with contextlib.suppress(AssertionError):  # the caller's assertion shows what is left
        wait_until(lambda: listing() == sorted(want), f"outputs of {job_id} to be {want}", timeout_s)
    return listing()


def http_request(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    """(status, body, headers) of one plain HTTP request; an error status is returned, not raised."""
    import urllib.error

    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def multipart(fields: dict[str, str], file_field: str | None = None, data: bytes = b"") -> tuple[bytes, str]:
    """A multipart/form-data body (and its Content-Type), as the console's forms send."""
    import uuid

    boundary = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    if file_field:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="v.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def sample_result(job_id: str, audio_uri: str, *, duration_s: float = 1.5, srt_uri: str | None = None) -> Any:
    """A well-formed ``JobResult`` naming ``audio_uri`` (and ``srt_uri``, by default the audio's):
    what a planted or fuzzed result document starts from."""
    from pipeline.jobs.contract import AudioInfo, JobResult, ModelInfo, StageTimings, utcnow

    return JobResult(
        job_id=job_id,
        audio=AudioInfo(
            uri=audio_uri,
            url="https://example.invalid/x",
            url_expires_at=utcnow(),
            format="wav",
            sample_rate=24000,
            duration_s=duration_s,
            bytes=1,
        ),
        word_timings=None,
        subtitles={"srt": srt_uri or audio_uri},
        text="x",
        ref_text="x",
        ref_text_source="manifest",
        voice_key="voices/x.wav",
        seed=1,
        chunks=1,
        model=ModelInfo(name="m", version="v", random_weights=True, device="cpu"),
        worker="w",
        timings_ms=StageTimings(queue_wait=0, download=0, synthesis=0, alignment=0, encode=0, upload=0, total=0),
        completed_at=utcnow(),
    )
