"""The worker's start-up, then its message loop (``pipeline.worker.loop``).

Start-up syncs the model bundle, loads the engine and the aligner once, compiles and warms the
model where configured, and only then reports ready. The loop keeps up to
``TTS_MAX_JOBS_IN_FLIGHT`` messages in hand, each handled by its own task
(``pipeline.worker.runner.JobRunner``): claims, downloads, reference preparation, alignment,
encoding and uploads of some jobs overlap the model's work on others, and the model's work itself
is batched across jobs by one ``Batcher`` that owns the device. One ``Heartbeat``
(``pipeline.worker.lease``) keeps every in-flight message invisible and every lease alive, on S3
and SQS clients of its own.

A stop request (SIGTERM/SIGINT) at any point of start-up ends it cleanly (exit 0).

Liveness: ``/healthz`` asks the batcher, the aligner and the heartbeat (``metrics.watch``) as well
as the event loop. A model call stuck past its deadline ends the worker (its jobs handed back) with
exit status ``EXIT_MODEL_STUCK`` at once: the stuck thread can never be joined, and a normal
interpreter exit would wait for it forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.cloud.aws import is_missing_resource, is_transient
from pipeline.cloud.consumer import Queue
from pipeline.cloud.notify import Notifier
from pipeline.cloud.store import open_store
from pipeline.config import Settings
from pipeline.jobs.contract import ModelInfo
from pipeline.jobs.state import Ledger
from pipeline.runtime import metrics
from pipeline.runtime.faults import FaultHooks
from pipeline.tts.batcher import Batcher, Runner, model_thread
from pipeline.worker.inputs import Inputs
from pipeline.worker.lease import Heartbeat
from pipeline.worker.loop import RECEIVE_BACKOFF_S, Worker
from pipeline.worker.render import Renderer
from pipeline.worker.runner import JobRunner

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.cloud.store import Store
    from pipeline.models.bundle import Bundle
    from pipeline.models.cache import SyncReport
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine

log = logging.getLogger(__name__)

EXIT_MODEL_STUCK = 70  # EX_SOFTWARE: the orchestrator restarts the worker
LIVENESS_CHECKS = ("batcher", "aligner", "heartbeat")


async def serve(settings: Settings, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
    """Start-up (sync the bundle, load the models once, compile and warm them) then consume.
    Returns the jobs done. A stop request at any point of start-up ends it cleanly (exit 0)."""
    from pipeline.tts import compiler

    t0 = time.perf_counter()
    compiler.use_cache_dir(settings.cache_dir)  # before torch is imported
    # Signals first: a SIGTERM during start-up (scale-in, deploy) must end the process cleanly too.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
    # From the start: model loading and compilation run off the loop, so /healthz stays true while
    # a first start compiles for minutes (the orchestrator's startup probe must not kill it).
    background = [
        asyncio.create_task(_liveness()),
        asyncio.create_task(_announce_stop(stopping, settings.shutdown_grace_s)),
    ]
    gpu = model_thread()  # loads, compiles, warms and later runs the models: one thread owns the device
    faults = FaultHooks(settings.fault_dir, settings.fault_chunk_delay_s, settings.worker_id)
    aligner: Aligner | None = None
    batcher: Batcher | None = None
    try:
        started = await _start_up(settings, gpu, stopping, t0, faults)
        batcher = Batcher(
            started.runners,
            max_batch=started.max_batch,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_length_ratio=settings.batch_max_length_ratio,
            executor=gpu,
            faults=faults,
            deadline=settings.model_deadline(),
        )
        aligner = await asyncio.to_thread(started.aligner, batcher, loop)
        metrics.watch("batcher", batcher.sick)
        metrics.watch("aligner", aligner.sick)
        async with (
            open_store(settings, "worker") as store,
            open_store(settings, "lease") as lease_store,  # its own connections: never behind an upload
            Notifier.open(settings.notify_topic_arn, settings.bucket, settings.calls("worker")) as notifier,
            Queue.open(settings.queue, resolve=False, calls=settings.calls("worker")) as queue,
            Queue.open(settings.queue, resolve=False, calls=settings.calls("lease")) as lease_queue,
        ):
            if not await _resolve_queue(queue, stopping):
                raise _StoppedDuringStartup
            lease_queue.follow(queue)
            check_retention(settings, queue)
            interactive = await _interactive_queue(queue, settings)
            worker = _worker(
                settings, started, aligner, batcher, faults, stopping, store, lease_store, queue, lease_queue, notifier
            )
            worker.interactive = interactive
            log.info(
                "worker %s ready: model %s (%s) on %s (compile %s, aligner %s), up to %d jobs in flight "
                "(+%d interactive, %d bulk waiting), batches of up to %d; cold start %s",
                settings.worker_id,
                started.model,
                started.cache_state,
                started.engine.device,
                started.compile_mode,
                aligner.backend,
                settings.max_jobs_in_flight,
                settings.interactive_max_in_flight if interactive else 0,
                settings.bulk_lookahead,
                started.max_batch,
                " ".join(f"{k}={v:.2f}s" for k, v in started.phases.items()),
            )
            metrics.set_ready(True)
            try:
                return await worker.run(max_jobs=max_jobs, idle_exit_s=idle_exit_s)
            finally:
                worker.runner.inputs.close()  # the text front-end's child goes now, not with the process
    except _StoppedDuringStartup:
        log.info("stop requested during start-up: exiting before consuming")
        return 0
    finally:
        metrics.set_ready(False)
        for task in background:
            task.cancel()
        if aligner is not None:
            aligner.close()
        gpu.shutdown(wait=False, cancel_futures=True)
        if batcher is not None and batcher.stuck:
            _exit_now(EXIT_MODEL_STUCK, f"exiting with status {EXIT_MODEL_STUCK}: {batcher.sick()}")
        for name in LIVENESS_CHECKS:
            metrics.unwatch(name)


def _exit_now(code: int, why: str) -> None:
    """Ends the process without joining its threads (the stuck model thread never returns)."""
    log.error("%s", why)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _worker(
    settings: Settings,
    started: _Started,
    aligner: Aligner,
    batcher: Batcher,
    faults: FaultHooks,
    stopping: asyncio.Event,
    store: Store,
    lease_store: Store,
    queue: Queue,
    lease_queue: Queue,
    notifier: Notifier,
) -> Worker:
    """The parts, wired: the runner's stages on the job's clients, the heartbeat on its own."""
    engine = started.engine
    model = ModelInfo(
        name=engine.bundle.name,
        version=engine.bundle.version,
        random_weights=engine.bundle.random_weights,
        device=engine.device,
    )
    lease_ledger = Ledger(lease_store, settings.worker_id, lease_s=settings.visibility_timeout_s)
    heartbeat = Heartbeat(
        lease_queue,
        lease_ledger,
        settings.visibility_timeout_s,
        settings.heartbeat_interval_s,
        faults,
        abort_grace_s=settings.abort_grace_s,
    )
    metrics.watch("heartbeat", heartbeat.sick)
    runner = JobRunner(
        settings,
        store,
        queue,
        heartbeat,
        lease_store,
        Inputs(settings, store, tuple(engine.bundle.languages)),
        Renderer(settings, store, engine, aligner, batcher, faults),
        model,
        stopping,
        notifier,
    )
    background = {"heartbeat": heartbeat.run(), "batcher": batcher.run()}
    return Worker(settings, queue, runner, background, stopping)


@dataclass
class _Started:
    engine: F5Engine
    runners: dict[str, Runner]
    aligner: Callable[[Batcher, asyncio.AbstractEventLoop], Aligner]  # built once the batcher exists
    compile_mode: str
    max_batch: int
    model: str
    cache_state: str
    phases: dict[str, float]


async def _start_up(
    settings: Settings, gpu: ThreadPoolExecutor, stopping: asyncio.Event, t0: float, faults: FaultHooks
) -> _Started:
    from pipeline.models.cache import ModelCache
    from pipeline.tts.align import Aligner, BatchedEmitter

    report = await asyncio.to_thread(
        ModelCache.for_settings(settings).sync, settings.model_name, settings.model_version
    )
    t_sync = time.perf_counter()
    await faults.hold_at_startup(stopping)
    if stopping.is_set():
        raise _StoppedDuringStartup
    engine, runners, mode, load_s = await _load_models(settings, report, gpu, stopping)
    t_warm = time.perf_counter()
    phases = {**report.seconds, "load": load_s, "warmup": t_warm - t_sync - load_s, "total": t_warm - t0}
    for phase, seconds in phases.items():
        metrics.COLD_START_SECONDS.labels(phase).set(seconds)
    bundle = report.bundle
    if bundle.random_weights:
        log.warning("!!! model bundle %s has RANDOM WEIGHTS: its audio is noise (test bundle) !!!", bundle.name)
    onnx = report.path / bundle.aligner.model

    def aligner(batcher: Batcher, loop: asyncio.AbstractEventLoop) -> Aligner:
        # On a CPU worker the aligner shares the cores with the model (one torch thread): one thread.
        threads = 1 if settings.torch_threads_on(engine.device) == 1 else None
        emitter = BatchedEmitter(batcher, loop) if "emissions" in runners else None
        return Aligner(onnx, emitter, threads=threads, deadline=settings.aligner_deadline())

    return _Started(
        engine=engine,
        runners=runners,
        aligner=aligner,
        compile_mode=mode,
        max_batch=settings.max_batch_on(engine.device),
        model=f"{bundle.name}/{bundle.version}",
        cache_state=f"{'warm' if report.warm else 'cold'} cache, {len(report.files_fetched)} files fetched",
        phases=phases,
    )


class _StoppedDuringStartup(Exception):
    pass


async def _load_models(
    settings: Settings, report: SyncReport, gpu: ThreadPoolExecutor, stopping: asyncio.Event
) -> tuple[F5Engine, dict[str, Runner], str, float]:
    """On the model thread: the engine (+ the torch aligner), compiled and warmed as configured.
    Returns (engine, batcher runners, compile mode, seconds spent loading before compile/warm-up).
    A stop request between steps ends start-up there (a step itself cannot be interrupted)."""

    def check_stop() -> None:
        if stopping.is_set():
            raise _StoppedDuringStartup

    from pipeline.tts import compiler
    from pipeline.tts.align import ctc_runner, load_ctc_model
    from pipeline.tts.engine import F5Engine

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    engine = await loop.run_in_executor(gpu, F5Engine.load, report.path, settings.device)
    threads = settings.torch_threads_on(engine.device)
    if threads is not None:
        await loop.run_in_executor(gpu, _set_torch_threads, threads)
    check_stop()
    runners: dict[str, Runner] = {"synthesis": engine.batch_runner()}
    if engine.asr is not None:  # reference voices' and the quality gate's transcriptions (pipeline/tts/asr.py)
        from pipeline.tts import asr

        runners["transcription"] = asr.runner(engine.asr)
    torch_dir = _aligner_torch_dir(settings, report.bundle, engine.device)
    if torch_dir is not None:
        ctc = await loop.run_in_executor(gpu, load_ctc_model, report.path / torch_dir, engine.device)
        runners["emissions"] = ctc_runner(ctc)
    loaded = time.perf_counter() - t0
    check_stop()
    mode = compiler.resolve_mode(settings.compile, engine.device)
    await loop.run_in_executor(gpu, compiler.compile_engine, engine, mode)
    if settings.warmup:
        check_stop()
        max_batch = settings.max_batch_on(engine.device)
        await loop.run_in_executor(gpu, compiler.warm_up, engine, max_batch, runners.get("emissions"))
    check_stop()
    return engine, runners, mode, loaded


def _set_torch_threads(n: int) -> None:
    """On the model thread (OpenMP's thread count is a per-thread setting)."""
    import torch

    torch.set_num_threads(n)
    log.info("torch intra-op threads: %d", n)


def _aligner_torch_dir(settings: Settings, bundle: Bundle, device: str) -> str | None:
    """Where the torch aligner's weights are, if this worker scores alignments with torch."""
    torch_dir = bundle.aligner.torch_dir
    if settings.aligner == "onnx" or (settings.aligner == "auto" and not device.startswith("cuda")):
        return None
    if torch_dir is None:
        if settings.aligner == "torch":
            raise ValueError(f"TTS_ALIGNER=torch but bundle {bundle.name}/{bundle.version} has no aligner.torch_dir")
        log.warning("bundle has no transformers weights for the aligner: aligning on the CPU (onnxruntime)")
    return torch_dir


class ConfigError(RuntimeError):
    """The worker's settings contradict the deployment it runs in: refuse to start."""


def check_retention(settings: Settings, queue: Queue) -> None:
    """A job waiting longer than the queue keeps messages would vanish from SQS while its status
    says QUEUED: its TTL must end it first (EXPIRED), so the TTL may not exceed the retention."""
    ttl, retention = settings.job_ttl_s, queue.retention_s
    if ttl is not None and retention is not None and ttl > retention:
        raise ConfigError(
            f"TTS_JOB_TTL_S={ttl:g}s is longer than queue {queue.name}'s MessageRetentionPeriod "
            f"({retention}s): jobs would vanish from SQS before they expire. Raise the retention "
            f"(`tts-pipeline bootstrap` sets the SQS maximum, 14 days) or lower TTS_JOB_TTL_S."
        )


async def _interactive_queue(queue: Queue, settings: Settings) -> Queue | None:
    """The interactive lane's queue, on the job queue's client; None (said once, here) when it
    does not exist: a deployment made before the lane existed runs its bulk lane only."""
    name = settings.interactive_queue
    try:
        lane = await queue.other(name)
    except Exception as e:
        if not is_transient(e):
            raise
        # One SQS blip at start-up must not leave a worker without its interactive lane until a
        # restart: the lane keeps trying to find its queue (``Worker._find_lane``).
        log.warning("queue %s unreachable at start-up (%s): the interactive lane keeps trying", name, e)
        return queue.sibling(None, name)
    if lane is None:
        log.warning("queue %s does not exist (deployed before the interactive lane): bulk lane only", name)
    return lane


async def _resolve_queue(queue: Queue, stopping: asyncio.Event) -> bool:
    """Look the queue up once SQS answers: an outage at start-up waits instead of crashing, and so
    does a queue that does not exist (yet): exiting would only restart the worker into the same
    situation in a loop, reloading its model each time. It waits unready until ``bootstrap`` (or
    the stack) creates the queue, as a running worker does when its queue goes (``_queue_gone``)."""
    said = False
    while not stopping.is_set():
        try:
            await queue.resolve()
            return True
        except Exception as e:
            if is_missing_resource(e):
                if not said:
                    log.error("queue %s does not exist: waiting for it to be created", queue.name)
                    said = True
            elif is_transient(e):
                log.warning("queue %s unreachable (%s); retrying in %.0fs", queue.name, e, RECEIVE_BACKOFF_S)
            else:
                raise
            await asyncio.sleep(RECEIVE_BACKOFF_S)
    return False


async def _liveness() -> None:
    """Proves to /healthz that the event loop runs (inference is off-loop, so it always should)."""
    while True:
        metrics.beat()
        await asyncio.sleep(5)


async def _announce_stop(stopping: asyncio.Event, grace_s: float) -> None:
    await stopping.wait()
    log.info("stop requested: receiving no more messages; jobs in hand have %gs to finish", grace_s)
