"""The worker: start-up, then a bounded concurrent loop over SQS messages.

Start-up syncs the model bundle, loads the engine and the aligner once, compiles and warms the
model where configured, and only then reports ready. The loop keeps up to
``TTS_MAX_JOBS_IN_FLIGHT`` messages in hand, each handled by its own task
(``pipeline.jobs.JobRunner``): claims, downloads, reference preparation, alignment, encoding and
uploads of some jobs overlap the model's work on others, and the model's work itself is batched
across jobs by one ``Batcher`` that owns the device. One ``Heartbeat`` keeps every in-flight
message invisible and every lease alive.

Acknowledgement policy: a message is deleted only once its job's outcome is durable (or it was
never ours to run), made visible again after a delay for a retry, or left alone when another
worker owns the job. A stop request (SIGTERM/SIGINT) ends receiving at once; jobs in hand get
``TTS_SHUTDOWN_GRACE_S`` to finish, then hand themselves back; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline import metrics
from pipeline.aws import is_missing_resource, is_transient
from pipeline.batcher import Batcher, Runner, model_thread
from pipeline.config import Settings
from pipeline.consumer import Message, Queue
from pipeline.contract import ModelInfo
from pipeline.events import UnrecognisedMessage, parse_message_body
from pipeline.faults import FaultHooks
from pipeline.heartbeat import Heartbeat
from pipeline.jobs import Ack, Decision, JobRunner
from pipeline.notify import Notifier
from pipeline.stages import Stages
from pipeline.store import Store, open_store

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.models.bundle import Bundle
    from pipeline.models.cache import SyncReport
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine

log = logging.getLogger(__name__)

_RECEIVE_BACKOFF_S = 5.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: Queue,
        engine: F5Engine,
        aligner: Aligner,
        batcher: Batcher,
        stopping: asyncio.Event | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self._stopping = stopping or asyncio.Event()
        self.heartbeat = Heartbeat(queue, settings.visibility_timeout_s, settings.heartbeat_interval_s)
        model = ModelInfo(
            name=engine.bundle.name,
            version=engine.bundle.version,
            random_weights=engine.bundle.random_weights,
            device=engine.device,
        )
        stages = Stages(settings, store, engine, aligner, batcher, batcher.faults)
        self.jobs = JobRunner(
            settings,
            store,
            queue,
            stages,
            self.heartbeat,
            model,
            self._stopping,
            notifier or Notifier(None, None, settings.bucket),
        )
        self.jobs_done = 0  # jobs this worker ran or rejected; duplicates and deferrals do not count
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None

    async def run(self, *, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Consume until stopped, ``max_jobs`` jobs are done, or idle for ``idle_exit_s``."""
        beating = asyncio.create_task(self.heartbeat.run(), name="heartbeat")
        try:
            await self._receive_loop(max_jobs, idle_exit_s)
            if self._tasks:
                log.info("waiting for %d message(s) in hand", len(self._tasks))
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        if self._fatal is not None:
            raise self._fatal
        if self._stopping.is_set():
            log.info("stop requested: no more messages will be received")
        return self.jobs_done

    async def _receive_loop(self, max_jobs: int | None, idle_exit_s: float | None) -> None:
        s = self.settings
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            room = s.max_jobs_in_flight - len(self._tasks)
            if max_jobs is not None:
                room = min(room, max_jobs - self.jobs_done - len(self._tasks))
                if self.jobs_done >= max_jobs:
                    return
            if room <= 0:  # full (or the last countable jobs are in hand): wait for one to end
                await self._wait_for({*self._tasks})
                continue
            wait_s = s.receive_wait_s
            if idle_exit_s is not None and not self._tasks:
                remaining = idle_exit_s - (time.monotonic() - idle_since)
                if remaining <= 0:
                    log.info("idle for %.0fs: exiting", idle_exit_s)
                    return
                wait_s = max(0, min(wait_s, int(remaining + 0.999)))
            metrics.RECEIVES.inc()
            receive = asyncio.create_task(
                self.queue.receive(max_messages=min(room, 10), wait_s=wait_s, visibility_s=s.visibility_timeout_s)
            )
            await self._wait_for({receive})
            if not receive.done():
                receive.cancel()  # shutting down: anything it would have received stays queued
                return
            try:
                messages = receive.result()
            except Exception as e:
                if is_missing_resource(e):
                    await self._queue_gone(e)
                    continue
                if not is_transient(e):
                    raise
                # SQS unreachable even after our retries: keep the worker, try again shortly.
                log.warning("receive failed: %s; retrying in %.0fs", e, _RECEIVE_BACKOFF_S)
                await asyncio.sleep(_RECEIVE_BACKOFF_S)
                continue
            for msg in messages:
                task = asyncio.create_task(self._handle(msg), name=f"message-{msg.id}")
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            if messages or self._tasks:
                idle_since = time.monotonic()

    async def _queue_gone(self, e: Exception) -> None:
        """The queue no longer exists (deleted; a LocalStack restarted without its state). Exiting
        would only restart the worker into the same situation, minus its loaded model: wait,
        unready, until it exists again (re-created by bootstrap), then consume as before. Jobs in
        hand find their status gone and stop without publishing (a lost claim)."""
        log.error("queue %s is gone (%s): waiting for it to be created again", self.queue.name, e)
        metrics.set_ready(False)
        await asyncio.sleep(_RECEIVE_BACKOFF_S)
        try:
            await self.queue.resolve()
        except Exception as again:
            if not (is_missing_resource(again) or is_transient(again)):
                raise
            return
        log.info("queue %s exists again: consuming", self.queue.name)
        metrics.set_ready(True)

    async def _wait_for(self, tasks: set[asyncio.Task]) -> None:
        """Until one of ``tasks`` ends or a stop is requested."""
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._fatal is None:
            # A bug, not a job's failure (those end in a status): stop taking work and re-raise it.
            self._fatal = task.exception()
            log.error("message handler crashed: %r; stopping", self._fatal)
            self._stopping.set()

    async def _handle(self, msg: Message) -> None:
        try:
            await self.handle_message(msg)
        except Exception as e:
            if not is_transient(e):
                raise
            # Could not acknowledge (SQS unreachable): the message comes back; its job's status
            # makes the redelivery a no-op if the job had finished.
            log.warning("message %s left for redelivery: %s", msg.id, e)

    async def handle_message(self, msg: Message) -> None:
        try:
            parsed = parse_message_body(msg.body)
        except UnrecognisedMessage as e:
            # Not ours to interpret and not ours to drop: park it in the DLQ for an operator.
            metrics.UNRECOGNISED_MESSAGES.inc()
            moved = await self.queue.dead_letter(msg, f"not an S3 event notification: {e}")
            log.error("message %s is not an S3 event (%s); %s", msg.id, e, "moved to the DLQ" if moved else "left")
            return
        if parsed.test_event:
            log.info("s3:TestEvent received (notification configured); deleting it")
            await self.queue.delete(msg)
            return
        decisions = []
        for record in parsed.created:
            try:
                decisions.append(await self.jobs.process_record(record, msg))
            except Exception as e:
                # Could not even record the outcome (S3 down after retries): the message comes back.
                log.exception("could not process %s: %s; leaving it for redelivery", record.key, e)
                decisions.append(Decision(Ack.LEAVE))
        decision = Decision.combine(decisions)
        if decision.counted:
            self.jobs_done += 1
        if decision.ack is Ack.DELETE:
            await self.queue.delete(msg)
        elif decision.ack is Ack.RETRY:
            await self.queue.set_visibility(msg, decision.delay_s)


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
    try:
        started = await _start_up(settings, gpu, stopping, t0, faults)
        batcher = Batcher(
            started.runners,
            max_batch=started.max_batch,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_length_ratio=settings.batch_max_length_ratio,
            executor=gpu,
            faults=faults,
        )
        background.append(asyncio.create_task(batcher.run(), name="batcher"))
        aligner = await asyncio.to_thread(started.aligner, batcher, loop)
        async with (
            open_store(settings) as store,
            Notifier.open(settings.notify_topic_arn, settings.bucket) as notifier,
            Queue.open(settings.queue, resolve=False) as queue,
        ):
            if not await _resolve_queue(queue, stopping):
                raise _StoppedDuringStartup
            check_retention(settings, queue)
            worker = Worker(settings, store, queue, started.engine, aligner, batcher, stopping, notifier)
            log.info(
                "worker %s ready: model %s (%s) on %s (compile %s, aligner %s), up to %d jobs in flight, "
                "batches of up to %d; cold start %s",
                settings.worker_id,
                started.model,
                started.cache_state,
                started.engine.device,
                started.compile_mode,
                aligner.backend,
                settings.max_jobs_in_flight,
                started.max_batch,
                " ".join(f"{k}={v:.2f}s" for k, v in started.phases.items()),
            )
            metrics.set_ready(True)
            return await worker.run(max_jobs=max_jobs, idle_exit_s=idle_exit_s)
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
        return Aligner(onnx, BatchedEmitter(batcher, loop) if "emissions" in runners else None)

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
    check_stop()
    runners: dict[str, Runner] = {"synthesis": engine.batch_runner()}
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


async def _resolve_queue(queue: Queue, stopping: asyncio.Event) -> bool:
    """Look the queue up once SQS answers: an outage at start-up waits instead of crashing."""
    while not stopping.is_set():
        try:
            await queue.resolve()
            return True
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("queue %s unreachable (%s); retrying in %.0fs", queue.name, e, _RECEIVE_BACKOFF_S)
            await asyncio.sleep(_RECEIVE_BACKOFF_S)
    return False


async def _liveness() -> None:
    """Proves to /healthz that the event loop runs (inference is off-loop, so it always should)."""
    while True:
        metrics.beat()
        await asyncio.sleep(5)


async def _announce_stop(stopping: asyncio.Event, grace_s: float) -> None:
    await stopping.wait()
    log.info("stop requested: receiving no more messages; jobs in hand have %gs to finish", grace_s)
