"""All configuration, read from the environment (prefix ``TTS_``).

AWS endpoint, region and credentials are deliberately *not* here: they come from the AWS SDK's
own standard variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID``...), so the same worker talks to AWS or LocalStack unchanged.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.cloud.aws import Calls
from pipeline.runtime.deadlines import Deadline


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_", extra="ignore")

    # Where jobs live.
    bucket: str = "tts-jobs"
    queue: str = "tts-jobs"

    # Which model bundle the worker loads (models/<name>/<version>/ in the bucket).
    model_name: str = "F5TTS_v1_Base"
    model_version: str = "latest"
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "tts-pipeline")
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    # Input limits; exceeding one fails the job with a specific error code.
    # A manifest carries its text: 1 MiB holds 100,000 characters of any script, JSON-escaped.
    max_manifest_bytes: int = 1024 * 1024
    max_text_chars: int = Field(default=100_000, ge=1, description="all of a job's text, markers included")
    max_pause_s: float = Field(default=10.0, gt=0, description="one [pause:...] or pause_after_s")
    max_total_pause_s: float = Field(default=600.0, gt=0)
    max_lexicon_bytes: int = 1024 * 1024  # one PLS file
    max_voice_bytes: int = 25 * 1024 * 1024
    max_voice_seconds: float = 60.0
    min_voice_seconds: float = 0.5
    default_voice: str | None = None  # used when a manifest names no voice
    # The work one job may cost, counted after expansion (lexicons, normalization, chunking) and
    # checked before any synthesis (pipeline/worker/budget.py): over one, the job fails
    # JOB_TOO_COSTLY naming the limit. The defaults fit a 100,000-character plain job with a
    # typical reference at the default steps, at the default quality gate's worst case (model
    # work counts every retry and transcription it may make; docs/security.md has the figures).
    max_spoken_chars: int = Field(default=300_000, ge=1, description="after normalization and lexicons")
    max_turns: int = Field(default=1_000, ge=1, le=1_000, description="dialogue segments (the manifest allows 1,000)")
    max_references: int = Field(default=16, ge=1, description="distinct (clip, transcript) pairs")
    max_chunks: int = Field(default=4_000, ge=1)
    max_model_work: int = Field(default=500_000_000, ge=1, description="mel frames x steps x guidance passes")
    # The text front-end (markup, lexicons, normalization, sentences) runs in a child process
    # under a CPU limit (pipeline/text/sandbox.py): CPU seconds for a text of 100,000 characters; a
    # shorter one gets its share, at least 2 s. Over it the job fails TEXT_TOO_COMPLEX. A normal
    # 100,000-character job takes well under a second (docs/benchmarks.md): the default is headroom
    # for slower machines, not a target.
    text_cpu_s: float = Field(default=20.0, gt=0, description="text front-end CPU seconds per 100,000 characters")
    # Where a manifest's voice key may point (comma-separated prefixes in the env). The pipeline's
    # own prefixes (inbox/, status/, results/, outputs/, models/, cancel/) are refused regardless.
    voice_prefixes: Annotated[tuple[str, ...], NoDecode] = ("voices/",)
    # Where a manifest's PLS lexicons may be (same rules as voice prefixes).
    lexicon_prefixes: Annotated[tuple[str, ...], NoDecode] = ("lexicons/",)

    # Outputs.
    presign_expiry_s: int = Field(default=24 * 3600, ge=1, le=7 * 24 * 3600)
    sse: Literal["AES256", "aws:kms", "none"] = "AES256"  # server-side encryption of every object written
    sse_kms_key_id: str | None = None  # with sse=aws:kms; unset = the account's aws/s3 key
    notify_topic_arn: str | None = None  # SNS topic for job completion/failure notifications

    # Throughput. A worker holds up to max_jobs_in_flight jobs; their text chunks share model calls
    # of up to max_batch items, closed when full or when the oldest item has waited batch_wait_ms
    # (pipeline/tts/batcher.py). Items in one call stay within batch_max_length_ratio of each other.
    # max_batch unset: 8 on a GPU (batching amortises kernel launches: 2-4x measured), 1 on a CPU
    # (compute-bound: a batch only adds padding; see docs/benchmarks.md).
    max_jobs_in_flight: int = Field(default=4, ge=1, le=256)
    # The interactive lane (<queue>-interactive, fed by inbox-interactive/): received by a loop of
    # its own into a room of its own, on top of max_jobs_in_flight, so an interactive job never
    # waits behind bulk work for a receive slot. Small: it is for one-sentence requests.
    interactive_max_in_flight: int = Field(default=2, ge=1, le=64)
    # Bulk messages received but not started, kept invisible by the heartbeat, from which the next
    # bulk job is picked round-robin across submitters (docs/operations.md, "Priority and fair
    # share"). 64: the window one submitter's backlog cannot hide another's jobs behind, at the
    # cost of ~7 ChangeMessageVisibilityBatch requests per beat, and of messages a second worker
    # cannot take while they wait here. 0: no look-ahead (receive only what can start).
    bulk_lookahead: int = Field(default=64, ge=0, le=1024)
    # Torch's intra-op threads on the model thread. Unset: 1 on a CPU device, where the event
    # loop, the aligner process and (in tests) LocalStack share the cores, and torch's default pool
    # of one spinning thread per core cost more than it gave (docs/benchmarks.md, "Per-job
    # overhead": 0.6 vs 4 short jobs/s on 2 cores); torch's own default on a GPU.
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    max_batch: int | None = Field(default=None, ge=1, le=256)
    batch_wait_ms: float = Field(default=20.0, ge=0, le=3_600_000)
    batch_max_length_ratio: float = Field(default=2.0, ge=1.0)

    # torch.compile of the DiT (pipeline/tts/compiler.py): auto = default on CUDA, off on CPU.
    compile: Literal["auto", "off", "default", "max-autotune", "reduce-overhead"] = "auto"
    warmup: bool = True  # run every batch shape once before reporting ready
    # Word-timing scoring (pipeline/tts/align.py): auto = torch on the model's GPU when the bundle
    # has the aligner's transformers weights, else onnx (onnxruntime on the CPU, aligner process).
    aligner: Literal["auto", "onnx", "torch"] = "auto"
    # The quality gate (pipeline/worker/quality.py): every chunk checked before it ships, a failing
    # one synthesised again (another seed) up to quality_max_retries times, the best try kept. A
    # manifest's `quality` overrides these per job. quality_asr = auto: chunks are transcribed (and
    # held to quality_max_wer) where the bundle has an ASR model with real weights; a bundle with
    # random weights (the tiny test bundle hears noise) gets the cheap signal checks only, unless
    # the job sets max_wer. on: transcribe whenever the bundle has ASR; off: never.
    quality: bool = True
    quality_asr: Literal["auto", "on", "off"] = "auto"
    quality_max_wer: float = Field(default=0.2, ge=0.0)
    quality_max_retries: int = Field(default=2, ge=0, le=5)

    # Queue consumption and reliability. A job's lease lasts as long as its message's invisibility:
    # both are renewed by the heartbeat, and both lapse together when a worker dies, so another
    # worker takes a dead worker's job over within visibility_timeout_s (45 s by default; a beat
    # every 15 s costs one conditional S3 PUT per job and one SQS batch call per 10 jobs: 240 of
    # each per job-hour, see docs/reliability.md). Long jobs stay safe: the lease moves with
    # every beat, and one failed beat still leaves 30 s.
    visibility_timeout_s: int = Field(default=45, ge=5, le=43200)
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    receive_wait_s: int = Field(default=20, ge=0, le=20)
    max_attempts: int = Field(default=5, ge=1, description="when the queue has no redrive policy")
    retry_base_s: float = Field(default=10.0, ge=0)
    retry_max_s: float = Field(default=900.0, ge=0)
    job_timeout_s: float = Field(default=900.0, gt=0)
    job_ttl_s: float | None = Field(default=7 * 24 * 3600, gt=0)
    progress_interval_s: float = Field(default=5.0, gt=0)
    # One attempt of one S3/SQS call may take at most this long (then it is retried under the
    # shared policy). Calls that keep a lease alive (renewals, visibility extensions, cancel polls)
    # get at most half the heartbeat interval per attempt and one interval for all their retries,
    # on clients of their own: one slow call never delays a beat (docs/reliability.md).
    call_timeout_s: float = Field(default=10.0, gt=0, le=300)
    cancel_poll_s: float = Field(default=2.0, gt=0)
    shutdown_grace_s: float = Field(default=60.0, ge=0)
    # Deadlines of the parts that can hang (pipeline/runtime/deadlines.py, docs/reliability.md,
    # "Containment"): a model call may take model_deadline_s + deadline_per_audio_s per second of
    # audio its items make or read, an aligner child call aligner_deadline_s + the same per second
    # of the chunk. A model call past its deadline makes the worker not live (/healthz 503): it
    # hands its jobs back and exits non-zero. An aligner call past its deadline kills the child
    # (a new one serves the next call) and costs that chunk its word timings.
    model_deadline_s: float = Field(default=120.0, gt=0)
    aligner_deadline_s: float = Field(default=60.0, gt=0)
    deadline_per_audio_s: float = Field(default=30.0, ge=0)
    # An attempt aborted (cancelled, timed out, released at shutdown) that has not reached its
    # ending this long after the abort is let go: its lease and message are no longer renewed, so
    # they lapse together and another worker takes the job over (the attempt's own later writes
    # are conditional on its claim and lose).
    abort_grace_s: float = Field(default=60.0, gt=0)

    # The console and its OpenAI-compatible API (pipeline/web/, `tts-pipeline console`): a client
    # of the bucket, never of a model. Localhost unless told otherwise; TTS_API_KEY set: every /v1
    # request needs `Authorization: Bearer <key>`. A speech request waits at most api_wait_s for
    # its job, then answers 504 with the job id.
    console_host: str = "127.0.0.1"
    console_port: int = Field(default=8080, ge=1, le=65535)
    api_key: SecretStr | None = None
    api_wait_s: float = Field(default=120.0, gt=0)
    # A streamed answer (pipeline/web/stream.py) looks for new chunks this often; it ends (504
    # before any audio, cut short after) when no audio arrives for api_wait_s.
    api_stream_poll_s: float = Field(default=0.1, gt=0, le=5)
    # The front door (pipeline/web/, docs/security.md). Host names the server answers for (others
    # get 421: DNS rebinding); "*" answers any. The bound address is added when it is a specific one.
    console_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ("localhost", "127.0.0.1", "::1")
    # Binding beyond loopback without TTS_API_KEY is refused unless this says it is meant.
    console_allow_open: bool = False
    # Behind a TLS-terminating proxy: believe its X-Forwarded-Proto (the cookie gets Secure).
    console_trust_proxy: bool = False
    api_max_concurrent: int = Field(default=32, ge=1, description="speech requests at once; more get 429")
    # The most a request may read of one job's audio (the API's answer, the console's waveform).
    console_max_audio_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    # Per-client budgets at the door (pipeline/web/door.py, docs/security.md "Cost"): a client is
    # its address (the proxy's X-Forwarded-For entry with TTS_CONSOLE_TRUST_PROXY). Over one, a
    # 429 with Retry-After before any S3 call. requests: every /v1 and /console/api request;
    # streams: answers carrying audio at once (speech, live players); jobs: jobs the API made for
    # the client that have not ended (a client that hangs up still holds its job's place until it
    # ends; at most door_interactive_jobs of them interactive, the rest bulk); chars: input
    # characters the API takes per minute.
    door_requests_per_s: float = Field(default=20.0, gt=0)
    door_request_burst: int = Field(default=60, ge=1)
    door_streams: int = Field(default=4, ge=1)
    # 2: someone waiting for audio needs one at a time; more unfinished jobs per client is a batch
    # (the inbox's). Measured: with 4, an abuser's budgeted jobs cost a legitimate client 2.2-2.8x
    # its idle p95 on a CPU worker; with 2, 2.0-2.2x (docs/security.md, make bench-abuse).
    door_jobs: int = Field(default=2, ge=1)
    # Of those, how many may be in the interactive lane at once; the client's further jobs are bulk
    # (a client's burst of requests cannot take the lane every other client's first audio needs).
    door_interactive_jobs: int = Field(default=1, ge=1)
    door_chars_per_minute: int = Field(default=100_000, ge=1)
    # The longest input a speech request sends to the interactive lane; longer input becomes a
    # bulk job (still answered, behind no one's interactive request). OpenAI's own limit is 4,096.
    api_interactive_chars: int = Field(default=4_096, ge=1)
    # A client that takes no bytes of an answer (or sends none of its body) for this long is cut
    # off: nothing the server holds for it (a slot, a buffer) waits on a client forever.
    api_io_timeout_s: float = Field(default=30.0, gt=0)

    # Test and fault-injection hooks (pipeline/runtime/faults.py). Off by default; only the worker's own
    # environment can turn them on, never a manifest.
    fault_dir: Path | None = None
    fault_chunk_delay_s: float = Field(default=0.0, ge=0)

    # Identity and observability.
    worker_id: str = Field(default_factory=_default_worker_id)
    metrics_port: int | None = None  # Prometheus /metrics; unset = off
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("voice_prefixes", "lexicon_prefixes", "console_allowed_hosts", mode="before")
    @classmethod
    def _split_prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("voice_prefixes", "lexicon_prefixes")
    @classmethod
    def _check_prefixes(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        from pipeline.jobs.keys import PIPELINE_PREFIXES

        name = f"TTS_{(info.field_name or '').upper()}"
        if not value:
            raise ValueError(f"{name} is empty: no key could be used")
        for prefix in value:
            if not prefix.endswith("/") or prefix.startswith("/") or ".." in prefix.split("/"):
                raise ValueError(f"{name}: {prefix!r} must be a folder like 'voices/' or 'team-a/voices/'")
            if prefix.startswith(PIPELINE_PREFIXES) or any(p.startswith(prefix) for p in PIPELINE_PREFIXES):
                raise ValueError(f"{name}: {prefix!r} overlaps the pipeline's own data")
        return value

    @property
    def interactive_queue(self) -> str:
        """The interactive lane's queue: the job queue's name + ``-interactive``."""
        return f"{self.queue}-interactive"

    def calls(self, agent: str) -> Calls:
        """How the calls of one client are made; ``agent`` is who makes them (worker, lease,
        reconciler, console, cli). The lease's calls must fit inside one heartbeat interval."""
        if agent == "lease":
            beat = self.heartbeat_interval_s
            return Calls(agent, timeout_s=min(self.call_timeout_s, beat / 2), deadline_s=beat)
        return Calls(agent, timeout_s=self.call_timeout_s)

    def model_deadline(self) -> Deadline:
        return Deadline(self.model_deadline_s, self.deadline_per_audio_s)

    def aligner_deadline(self) -> Deadline:
        return Deadline(self.aligner_deadline_s, self.deadline_per_audio_s)

    def torch_threads_on(self, device: str) -> int | None:
        """TTS_TORCH_THREADS, or its default for ``device`` (None: leave torch's own)."""
        if self.torch_threads is not None:
            return self.torch_threads
        return None if device.startswith("cuda") else 1

    def max_batch_on(self, device: str) -> int:
        """TTS_MAX_BATCH, or its default for ``device``."""
        if self.max_batch is not None:
            return self.max_batch
        return 8 if device.startswith("cuda") else 1

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings that only make sense together, refused at start-up rather than in production."""
        if self.heartbeat_interval_s * 2 > self.visibility_timeout_s:
            raise ValueError(
                f"TTS_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s:g}) must be at most half of "
                f"TTS_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}): one failed beat must not lapse a lease"
            )
        if self.min_voice_seconds > self.max_voice_seconds:
            raise ValueError("TTS_MIN_VOICE_SECONDS is larger than TTS_MAX_VOICE_SECONDS")
        return self


def sse_params(settings: Settings) -> dict[str, str]:
    """Extra PutObject arguments for server-side encryption."""
    if settings.sse == "none":
        return {}
    params = {"ServerSideEncryption": settings.sse}
    if settings.sse == "aws:kms" and settings.sse_kms_key_id:
        params["SSEKMSKeyId"] = settings.sse_kms_key_id
    return params


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
