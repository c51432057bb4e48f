"""Latency under load for issue 19's lanes (CPU, tiny random bundle, real LocalStack, one worker).

1. interactive: p50/p95 of 20 one-sentence interactive jobs on an idle worker, then again with a
   long bulk job running and 50 bulk jobs queued (goal: loaded p95 <= 1.5 x idle p95);
2. fair share: one bulk submitter with 200 jobs queued (S3 events with its principal, sent
   straight to the queue for real manifests), another submitter's jobs one after the other,
   against the same jobs on an idle worker (goal: <= 2 x idle).

Latency is measured as a client sees it: from the manifest's upload (or its event's send) to
the final status being readable. Run alone (``python -m scripts.latency.priority`` or
``python scripts/latency/priority.py``; JSON on stdout and in .cache/bench/priority.json) or
import ``measure`` (scripts/bench_latency.py does).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from pipeline.jobs.contract import utcnow  # noqa: E402

TTS = str(ROOT / ".venv" / "bin" / "tts-pipeline")
OUT = ROOT / ".cache" / "bench" / "priority.json"
BUCKET = "bench-prio"
SENTENCE = "Hello there, this is one short sentence."
REF_TEXT = "Some call me nature, others call me mother nature."


def _manifest(text: str = SENTENCE) -> bytes:
    return json.dumps({"text": text, "voice": "voices/ref.wav", "ref_text": REF_TEXT, "nfe_step": 8}).encode()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))], 3)


def _summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_s": _pct(xs, 0.5), "p95_s": _pct(xs, 0.95), "mean_s": round(statistics.mean(xs), 3)}


class Bench:
    """One LocalStack, one bucket with both lanes, workers started and stopped as needed."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.s3 = boto3.client("s3")
        self.sqs = boto3.client("sqs")
        self.worker: subprocess.Popen[bytes] | None = None
        self.n = 0

    def start_worker(self, **settings: str) -> None:
        log = self.work / f"worker-{self.n}.log"
        self.n += 1
        extra = {f"TTS_{k.upper()}": v for k, v in settings.items()}
        self.worker = subprocess.Popen(
            [TTS, "worker"], env={**self.env, **extra}, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while " ready: model " not in log.read_text(errors="replace"):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait(timeout=120)
            self.worker = None
        for q in (BUCKET, f"{BUCKET}-interactive"):
            self.sqs.purge_queue(QueueUrl=self.sqs.get_queue_url(QueueName=q)["QueueUrl"])

    def final(self, job: str, timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                status = json.loads(self.s3.get_object(Bucket=BUCKET, Key=f"status/{job}.json")["Body"].read())
                if status["state"] in ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED"):
                    return status
            except self.s3.exceptions.NoSuchKey:
                pass
            time.sleep(0.05)
        raise TimeoutError(job)

    def upload_latency(self, job: str, inbox: str) -> float:
        t0 = time.perf_counter()
        self.s3.put_object(Bucket=BUCKET, Key=f"{inbox}{job}.json", Body=_manifest())
        self.final(job)
        return time.perf_counter() - t0

    def event_latency(self, job: str, principal: str) -> float:
        """A bulk job whose event names ``principal`` (notifications off for this phase)."""
        self.s3.put_object(Bucket=BUCKET, Key=f"inbox/{job}.json", Body=_manifest())
        t0 = time.perf_counter()
        self.send_event(job, principal)
        self.final(job)
        return time.perf_counter() - t0

    def send_event(self, job: str, principal: str) -> None:
        record = {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "eventTime": utcnow().isoformat().replace("+00:00", "Z"),
            "userIdentity": {"principalId": principal},
            "s3": {"bucket": {"name": BUCKET}, "object": {"key": f"inbox/{job}.json"}},
        }
        url = self.sqs.get_queue_url(QueueName=BUCKET)["QueueUrl"]
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [record]}))


def interactive_phase(b: Bench, requests: int, queued: int) -> dict[str, Any]:
    b.start_worker()
    idle = [b.upload_latency(f"idle-i{n}", "inbox-interactive/") for n in range(requests)]
    long_text = " ".join(f"This is sentence number {n} of a long bulk job." for n in range(60))
    b.s3.put_object(Bucket=BUCKET, Key="inbox/long-bulk.json", Body=_manifest(long_text))
    for n in range(queued):
        b.s3.put_object(Bucket=BUCKET, Key=f"inbox/queued-{n}.json", Body=_manifest())
    loaded = [b.upload_latency(f"load-i{n}", "inbox-interactive/") for n in range(requests)]
    long_state = json.loads(b.s3.get_object(Bucket=BUCKET, Key="status/long-bulk.json")["Body"].read())["state"]
    b.stop_worker()
    out = {"idle": _summary(idle), "loaded": _summary(loaded), "long_bulk_state_after": long_state}
    out["p95_ratio"] = round(out["loaded"]["p95_s"] / out["idle"]["p95_s"], 2)
    return out


def fairness_phase(b: Bench, backlog: int, requests: int, lookahead: int) -> dict[str, Any]:
    b.s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    b.start_worker(bulk_lookahead=str(lookahead))
    idle = [b.event_latency(f"idle-b{lookahead}-{n}", "AWS:other") for n in range(requests)]
    for n in range(backlog):
        b.s3.put_object(Bucket=BUCKET, Key=f"inbox/heavy{lookahead}-{n}.json", Body=_manifest())
        b.send_event(f"heavy{lookahead}-{n}", "AWS:heavy")
    loaded = [b.event_latency(f"other{lookahead}-{n}", "AWS:other") for n in range(requests)]
    b.stop_worker()
    out = {"lookahead": lookahead, "backlog": backlog, "idle": _summary(idle), "behind_backlog": _summary(loaded)}
    out["p95_ratio"] = round(out["behind_backlog"]["p95_s"] / out["idle"]["p95_s"], 2)
    return out


def measure(
    requests: int = 20,
    queued: int = 50,
    backlog: int = 200,
    fair_requests: int = 5,
    lookaheads: tuple[int, ...] = (64, 256),
) -> dict[str, Any]:
    """Start LocalStack, bootstrap, push the tiny bundle, run both phases; returns the figures."""
    from scripts.latency.common import reference_clip, stack

    with stack(BUCKET, receive_wait_s="1", shutdown_grace_s="1") as st:
        os.environ.update({k: v for k, v in st.env.items() if k.startswith("AWS_")})
        boto3.client("s3").upload_file(str(reference_clip()), BUCKET, "voices/ref.wav")
        b = Bench(st.work, st.env)
        result: dict[str, Any] = {"machine": f"{os.cpu_count()} CPU cores, tiny random bundle, one worker"}
        result["interactive"] = interactive_phase(b, requests, queued)
        result["fair_share"] = [fairness_phase(b, backlog, fair_requests, la) for la in lookaheads]
        return result


def main() -> int:
    result = measure()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
