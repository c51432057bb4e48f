"""Prometheus metrics, exported by the worker on ``TTS_METRICS_PORT`` (unset: not served)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
MODEL_LOADS = Counter("tts_model_loads", "Times the TTS engine was loaded in this process")
MODEL_LOAD_SECONDS = Gauge("tts_model_load_seconds", "Duration of the last engine load")
COLD_START_SECONDS = Gauge("tts_cold_start_seconds", "Worker start-up breakdown", ["phase"])
IN_FLIGHT = Gauge("tts_jobs_in_flight", "Jobs being processed now")
DUPLICATES = Counter("tts_duplicate_deliveries", "Deliveries of jobs already finished, acknowledged")
DEFERRED = Counter("tts_deferred_deliveries", "Deliveries of jobs held by a live lease elsewhere, put back")
RETRIES = Counter("tts_job_retries", "Jobs put back on the queue after a transient error")
UNRECOGNISED_MESSAGES = Counter("tts_unrecognised_messages", "SQS messages that are not S3 events (left for the DLQ)")


def serve(port: int) -> None:
    # All interfaces: Prometheus and orchestrator probes scrape from outside the container.
    start_http_server(port, addr="0.0.0.0")
