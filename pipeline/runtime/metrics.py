"""Prometheus metrics and the worker's probes, served on ``TTS_METRICS_PORT`` (unset: not served).

GET /metrics   Prometheus text format
GET /healthz   200 while the worker is live, else 503 with the reason: its event loop runs, and
               every part that watches itself (``watch``: the batcher, the aligner, the heartbeat)
               says it is not stuck
GET /readyz    200 once the model is loaded and the worker consumes (readiness), else 503
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

JOBS = Counter("tts_jobs", "Jobs finished, by final state and error code", ["state", "code"])
STAGE_SECONDS = Histogram(
    "tts_stage_seconds",
    "Time spent per job stage",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
QUEUE_WAIT_SECONDS = Histogram(
    "tts_queue_wait_seconds", "Manifest upload to job start", buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)
)
ASR_RUNS = Counter("tts_asr_runs", "Reference transcriptions run (empty ref_text, nothing cached)")
MODEL_LOADS = Counter("tts_model_loads", "Times the TTS engine was loaded in this process")
MODEL_LOAD_SECONDS = Gauge("tts_model_load_seconds", "Duration of the last engine load")
COMPILE_CACHE_EVENTS = Counter(
    "tts_compile_cache_events", "torch.compile FX-graph cache hits and misses during warm-up", ["event"]
)
COLD_START_SECONDS = Gauge("tts_cold_start_seconds", "Worker start-up breakdown", ["phase"])
IN_FLIGHT = Gauge("tts_jobs_in_flight", "Jobs being processed now")
RECEIVES = Counter("tts_sqs_receives", "SQS ReceiveMessage calls (long polls) started")
DUPLICATES = Counter("tts_duplicate_deliveries", "Deliveries of jobs already finished, acknowledged")
DEFERRED = Counter("tts_deferred_deliveries", "Deliveries of jobs held by a live lease elsewhere, put back")
CHUNKS = Counter(
    "tts_chunks", "Text chunks rendered: synthesised by the model, or reused from an earlier attempt", ["source"]
)
AUDIO_SECONDS = Counter("tts_audio_seconds", "Seconds of audio in published results, by lane", ["priority"])
REAL_TIME_FACTOR = Histogram(
    "tts_real_time_factor",
    "A published job's time on the worker (claim to result) per second of its audio: below 1 is faster than real time",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50),
)
FIRST_AUDIO_SECONDS = Histogram(
    "tts_first_audio_seconds",
    "From a job's claim to its first audio chunk being durable (what a stream can play), by lane",
    ["priority"],
    buckets=(0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 60),
)
RETRIES = Counter("tts_job_retries", "Jobs put back on the queue after a transient error")
BATCH_SIZE = Histogram(
    "tts_batch_size", "Items per model call", ["kind"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
)
BATCH_JOBS = Histogram(
    "tts_batch_jobs", "Distinct jobs per model call", ["kind"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)
)
BATCH_WAIT_SECONDS = Histogram(
    "tts_batch_wait_seconds",
    "Time a work item waited for its model call to start",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SPLITS = Counter("tts_batch_splits", "Model calls that failed and were retried in halves", ["kind"])
STREAM_MISMATCHES = Counter(
    "tts_stream_mismatches",
    "Audio streams (speech API, console live player) failed because the samples already sent were not the "
    "finished audio's start (an attempt that rendered the job otherwise finished it)",
)
QUALITY_SCORE = Histogram(
    "tts_quality_score",
    "Error rate (WER, or CER for Chinese) of each kept chunk's ASR transcript",
    buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0),
)
QUALITY_REGENERATIONS = Counter("tts_quality_regenerations", "Chunks synthesised again by the quality gate")
QUALITY_CHUNKS = Counter("tts_quality_chunks", "Chunks judged by the quality gate, by verdict", ["verdict"])
MODEL_BUSY_SECONDS = Counter("tts_model_busy_seconds", "Time the model thread (GPU or CPU) spent in calls")
MODEL_CPU_SECONDS = Counter(
    "tts_model_cpu_seconds",
    "CPU time of the model thread in calls (with one torch thread: all of the engine's CPU)",
)
MODEL_BUSY_FRACTION = Gauge(
    "tts_gpu_busy_fraction", "Fraction of the last 60 s the model thread (the GPU on GPU workers) was in a call"
)
RECONCILE_ACTIONS = Counter(
    "tts_reconcile_actions",
    "Jobs the reconciler re-enqueued, expired or failed; orphan outputs it removed",
    ["action"],
)
UNRECOGNISED_MESSAGES = Counter("tts_unrecognised_messages", "SQS messages that are not S3 events (left for the DLQ)")


# Probe state, set by the worker.
_ready = threading.Event()
_last_beat = [time.monotonic()]
LIVENESS_STALE_S = 60.0


def set_ready(ready: bool) -> None:
    if ready:
        _ready.set()
    else:
        _ready.clear()


def beat() -> None:
    """Called by the worker's event loop; a loop stuck for LIVENESS_STALE_S fails /healthz."""
    _last_beat[0] = time.monotonic()


# name -> check: None while that part is fine, else why the worker is not live. Called on the
# probe's own thread at every probe: each reads a few attributes, never waits (a liveness probe
# that can hang is worse than none).
_checks: dict[str, Callable[[], str | None]] = {}


def watch(name: str, check: Callable[[], str | None]) -> None:
    _checks[name] = check


def unwatch(name: str) -> None:
    _checks.pop(name, None)


def not_live() -> str | None:
    """Why /healthz fails (None: it answers 200)."""
    stalled = time.monotonic() - _last_beat[0]
    if stalled >= LIVENESS_STALE_S:
        return f"event loop stalled for {stalled:.0f}s"
    for name, check in list(_checks.items()):
        try:
            why = check()
        except Exception as e:  # a broken check is a reason to look, not to crash the probe
            why = f"its liveness check failed ({type(e).__name__})"
        if why:
            return f"{name}: {why}"
    return None


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            why = not_live()
            if why is None:
                self._send(200, b"ok\n")
            else:
                self._send(503, f"not live: {why}\n".encode())
        elif self.path == "/readyz":
            self._send(200 if _ready.is_set() else 503, b"ready\n" if _ready.is_set() else b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds would drown the job logs


def serve(port: int) -> ThreadingHTTPServer:
    # All interfaces: Prometheus and orchestrator probes come from outside the container.
    server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
