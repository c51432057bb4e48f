"""The reconciler: jobs that fall between the pieces are found and ended or re-enqueued.

Claims, leases and the DLQ cover a job while its SQS message exists. These are the jobs they miss,
and what ``tts-pipeline reconcile`` does with each (every write is conditional on the status it
read, so it is safe next to workers and next to another reconciler: the claims decide):

==========================================================  =========================================
Found                                                       Done
==========================================================  =========================================
manifest in ``inbox/`` or ``inbox-interactive/`` with no    status QUEUED (``If-None-Match``), then an
status, older than the threshold (its S3 event never        S3-event message for it is sent, to the
reached the queue), and no message can still carry it       queue of its inbox
(as for a QUEUED job below: ``submit`` writes no status)
status QUEUED, unchanged for longer than the threshold      QUEUED again (new ``updated_at``), message
(its message vanished: retention, deletion, a lost send)    sent; a duplicate is harmless (claims)
status PROCESSING whose lease lapsed more than the          ``attempt`` < max attempts: re-enqueued as
threshold ago with no worker taking it over                 above; else FAILED ``WORKER_CRASHED``
the job's own message in the DLQ (the one its claim        FAILED ``RETRIES_EXHAUSTED``
names), status QUEUED (released on every delivery:
rolling deploys, outages)
the job's own message in the DLQ, status PROCESSING with    FAILED ``WORKER_CRASHED``
a lapsed lease (its worker died on every delivery:
native crash, OOM kill, GPU hang)
a result, and a status not final and not updated since it   COMPLETED (the result is the commit point:
was written (the worker died, or S3 failed, between the     its worker's final status write was lost)
result and the final status)
any of the above, or a manifest without status, whose       EXPIRED
job is older than ``TTS_JOB_TTL_S``
a final status whose notification was never recorded        notification published, then recorded
(``notified_at`` null: its writer died or SNS failed)
outputs ``pipeline.jobs.outputs`` finds unneeded: of a job with  deleted
a result, whatever it does not name; of a job that ended
without one, everything
==========================================================  =========================================

A dead letter that is not the job's own message (a duplicate S3 event, a re-enqueue) never ends a
job: the job's own message still carries it. A job FAILED from the DLQ keeps its DLQ message:
``tts-pipeline dlq redrive`` puts both back. A dead letter that is no S3 event at all (parked by a
worker, with its ``tts-reason``) is reported as ``dead_letter_unreadable`` and left where it is; it
never stops the pass. Every job the reconciler ends is notified
(``pipeline.cloud.notify``), like any other.

Cost per run, with bounded S3 LIST use: one LIST per 1,000 keys of both inboxes, ``status/``,
``results/`` and ``outputs/``; GETs only for jobs without a result whose status has not changed
for the threshold (a running job's status changes with every heartbeat) and for outputs of jobs
with more than one attempt or no result; objects older than the look-back window (TTL + 1 day
by default: an earlier run has dealt with them) are skipped. The DLQ is read up to ``dlq_limit``
messages, which stay in the DLQ.

Why a command of its own (a CronJob in ``infra/k8s/reconcile.yaml``, every 5 minutes) rather than
a task in every worker: it needs no GPU and no model; N workers would LIST the bucket N times per
period for the same answer; and it must keep running when no worker is (scaled to zero by KEDA,
crash-looping), which is exactly when jobs get stuck.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pipeline.cloud.consumer import Message, Queue
from pipeline.cloud.events import s3_event
from pipeline.cloud.notify import Notifier, ensure_notified, record_in
from pipeline.cloud.store import ObjectInfo, PreconditionFailed, Store, Unreadable
from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import ErrorCode, JobErrorInfo, JobResult, JobState, JobStatus, Priority, utcnow
from pipeline.jobs.outputs import named_keys, unneeded
from pipeline.jobs.state import committed, recheck_commit
from pipeline.ops.dlq import drain, read
from pipeline.runtime import metrics
from pipeline.worker.backoff import longest_delay

log = logging.getLogger(__name__)

WORKER = "reconciler"
DEFAULT_OLDER_THAN_S = 3600.0
_DLQ_HOLD_S = 30
# A job unmoved this many thresholds is re-enqueued even while its lane is busy: a lost message
# must not wait for the lane to drain (a steady lane never does), and one copy per job per grace
# period is what a backlog that long costs at most.
BACKLOG_GRACE = 6


class Action(StrEnum):
    REENQUEUED = "reenqueued"
    EXPIRED = "expired"
    RETRIES_EXHAUSTED = "failed_retries_exhausted"
    WORKER_CRASHED = "failed_worker_crashed"
    COMPLETED = "completed_from_result"
    NOTIFIED = "notified"
    OUTPUTS_REMOVED = "outputs_removed"
    UNREADABLE_DEAD_LETTER = "dead_letter_unreadable"  # not an S3 event: reported, left for the operator
    STATUS_UNREADABLE = "status_unreadable"  # a corrupt status and no manifest: reported, left for the operator
    ERROR = "error"  # this job could not be handled in this pass (the next one tries again)


@dataclass
class Report:
    scanned: dict[str, int] = field(default_factory=dict)
    actions: list[dict[str, str]] = field(default_factory=list)

    def add(self, action: Action, job_id: str, why: str) -> None:
        self.actions.append({"action": action.value, "job_id": job_id, "why": why})
        metrics.RECONCILE_ACTIONS.labels(action.value).inc()
        log.info("%s %s: %s", action.value, job_id, why)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.actions:
            out[a["action"]] = out.get(a["action"], 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "counts": self.counts(), "actions": self.actions}


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: Queue,
        *,
        older_than_s: float = DEFAULT_OLDER_THAN_S,
        lookback_s: float | None = None,
        scan_all: bool = False,
        dlq_limit: int = 1000,
        notifier: Notifier | None = None,
        interactive: Queue | None = None,
    ) -> None:
        if older_than_s < 0:
            raise ValueError("older_than_s must be >= 0")
        self.settings = settings
        self.store = store
        self.queue = queue
        self.interactive = interactive  # the interactive lane's queue; None: an old deployment without one
        self.notifier = notifier or Notifier(None, None, settings.bucket)
        self.older_than = timedelta(seconds=older_than_s)
        ttl = settings.job_ttl_s
        if lookback_s is None and ttl is not None:
            lookback_s = ttl + 86400  # a job older than this was expired by an earlier run
        self.lookback = None if scan_all or lookback_s is None else timedelta(seconds=lookback_s)
        self.dlq_limit = dlq_limit
        self.max_attempts = queue.max_receive_count or settings.max_attempts
        self._lanes_empty: dict[Priority, bool] = {}
        # A job handed back for a retry waits up to this for its message (run the reconciler with
        # the workers' TTS_RETRY_* settings): never a lost message before then.
        self._retry_horizon = timedelta(
            seconds=longest_delay(
                base_s=settings.retry_base_s, budget_s=settings.retry_max_s, max_deliveries=self.max_attempts
            )
            + settings.visibility_timeout_s
        )

    async def run(self, *, now: datetime | None = None) -> Report:
        """One pass. ``now`` is the reconciler's clock (a test may move it forward)."""
        now = now or utcnow()
        report = Report()
        inbox, status, results, outputs = await asyncio.gather(
            self._inboxes(now),
            self._listing(keys.STATUS, now),
            self._listing(keys.RESULTS, now),
            self.store.list_objects(keys.OUTPUTS),
        )
        report.scanned = {"inbox": len(inbox), "status": len(status), "results": len(results), "outputs": len(outputs)}
        self._lanes_empty = await self._empty_lanes()
        report.scanned["dlq"] = await self._dead_letters(report, now)
        for job_id in sorted(inbox.keys() | status.keys()):
            await self._isolated(job_id, report, self._job(job_id, inbox, status, results, report, now))
        await self._orphan_outputs(outputs, results.keys(), report, now)
        return report

    async def _isolated(self, job_id: str, report: Report, step: Any) -> None:
        """One job's handling: its failure (S3 or SNS down past the retries, a corrupt document)
        is reported and the pass goes on to the next job."""
        try:
            await step
        except Exception as e:
            log.exception("%s: %s", job_id, e)
            report.add(Action.ERROR, job_id, f"{type(e).__name__}: {e}")

    async def _job(
        self,
        job_id: str,
        inbox: dict[str, ObjectInfo],
        status: dict[str, ObjectInfo],
        results: dict[str, ObjectInfo],
        report: Report,
        now: datetime,
    ) -> None:
        if job_id in results:
            # Done, unless its status was not written since the result (the final write was lost,
            # or an attempt that had lost its claim published after the job ended otherwise).
            st = status.get(job_id)
            if st is not None and st.last_modified <= results[job_id].last_modified and self._stale(st, now):
                await self._result_without_final_status(job_id, report, now)
            return
        if job_id not in status:
            if self._stale(inbox[job_id], now):
                await self._orphan(job_id, inbox[job_id], report, now)
        elif self._stale(status[job_id], now):
            try:
                await self._stuck(job_id, report, now)
            except Unreadable as e:
                await self._unreadable_status(job_id, inbox.get(job_id), report, e, now)

    # -- what is stale -----------------------------------------------------------------------

    async def _listing(self, prefix: str, now: datetime) -> dict[str, ObjectInfo]:
        out = {}
        for obj in await self.store.list_objects(prefix):
            job_id = keys.job_id_from_key(obj.key, prefix)
            if job_id is not None and self._in_window(obj, now):
                out[job_id] = obj
        return out

    async def _inboxes(self, now: datetime) -> dict[str, ObjectInfo]:
        """Manifests of both inboxes by job id (one namespace; the bulk one wins a clash, as the
        worker would meet either first and the claim decides)."""
        interactive, bulk = await asyncio.gather(*(self._listing(keys.INBOXES[p], now) for p in Priority))
        return {**interactive, **bulk}

    def _in_window(self, obj: ObjectInfo, now: datetime) -> bool:
        return self.lookback is None or obj.last_modified >= now - self.lookback

    def _stale(self, obj: ObjectInfo, now: datetime) -> bool:
        return obj.last_modified <= now - self.older_than

    def _expired(self, created_at: datetime, now: datetime) -> bool:
        ttl = self.settings.job_ttl_s
        return ttl is not None and (now - created_at).total_seconds() > ttl

    async def _empty_lanes(self) -> dict[Priority, bool]:
        """Per lane, whether its queue held no message at all when the pass began (an error
        reading the depth counts as not empty: no copy is sent on a guess)."""

        async def empty(queue: Queue | None) -> bool:
            if queue is None:
                return True
            try:
                return await queue.depth() == 0
            except Exception as e:
                log.warning("could not read the depth of queue %s (%s): no job is re-enqueued to it", queue.name, e)
                return False

        bulk, interactive = await asyncio.gather(empty(self.queue), empty(self.interactive))
        return {Priority.bulk: bulk, Priority.interactive: interactive if self.interactive else bulk}

    def _message_lost(self, priority: Priority | None, since: datetime, now: datetime) -> bool:
        """Whether a job not moved since ``since`` has, as far as can be told, no message left to
        carry it, so that a copy is no duplicate: its lane's queue held no message when this pass
        began (nothing waiting, in flight or delayed: a job still in a backlog or in a worker's
        look-ahead is counted there), or it has not moved for ``BACKLOG_GRACE`` thresholds (a
        lost message in a lane that never drains), or the queue's retention has passed since (any
        message it had then has expired). A backlogged job gets at most one copy per grace period
        (the re-enqueue moves it), where it used to get one per threshold."""
        if self._lanes_empty.get(priority or Priority.bulk, False):
            return True
        idle = now - since
        if idle > max(self.older_than * BACKLOG_GRACE, self._retry_horizon):
            return True
        lane = self.interactive if priority is Priority.interactive and self.interactive else self.queue
        retention = lane.retention_s
        return retention is not None and idle.total_seconds() > retention

    # -- jobs ----------------------------------------------------------------------------------

    async def _orphan(self, job_id: str, manifest: ObjectInfo, report: Report, now: datetime) -> None:
        """A manifest no worker ever saw: its S3 event never reached the queue, or still waits in
        it (re-enqueued only when no message can still carry it, as a QUEUED job is)."""
        age = (now - manifest.last_modified).total_seconds()
        created = manifest.last_modified
        if self._expired(created, now):
            action, why = Action.EXPIRED, f"never started: no status {age:.0f}s after upload, past the TTL"
            new = JobStatus.new(job_id, created_at=created).moved_to(JobState.EXPIRED, worker=WORKER, note=why, at=now)
        elif not self._message_lost(keys.inbox_of(manifest.key), created, now):
            # Its S3 event may still be waiting in the queue: ``submit`` writes no status (issue
            # 27), so every job waiting in a backlog looks like this one; a copy would be a duplicate.
            return
        else:
            action, why = Action.REENQUEUED, f"re-enqueued by the reconciler: no status {age:.0f}s after upload"
            new = JobStatus.new(job_id, created_at=created, note=why).model_copy(update={"updated_at": now})
        try:
            etag = await self.store.put_json(keys.status_key(job_id), new, if_none_match=True)
        except PreconditionFailed:
            return  # a worker (or another reconciler) wrote one meanwhile: theirs decides
        if action is Action.REENQUEUED:
            await self._send(job_id, manifest)
        report.add(action, job_id, why)
        if new.state.terminal:
            await self._notify(new, etag, report)

    async def _unreadable_status(
        self, job_id: str, manifest: ObjectInfo | None, report: Report, e: Exception, now: datetime
    ) -> None:
        """A status document that is not one (planted, corrupted): a worker claims over it and runs
        the job from its manifest, so the job is re-enqueued; without a manifest there is nothing
        to run, and it is reported for the operator. Either way the pass goes on."""
        if manifest is None:
            report.add(Action.STATUS_UNREADABLE, job_id, f"{e}; no manifest to run it from: left for the operator")
            return
        if not self._message_lost(keys.inbox_of(manifest.key), manifest.last_modified, now):
            return
        await self._send(job_id, manifest)
        report.add(Action.REENQUEUED, job_id, f"{e}; re-enqueued: the worker claims over it")

    async def _stuck(self, job_id: str, report: Report, now: datetime) -> None:
        current, etag = await self.store.get_model_etag(keys.status_key(job_id), JobStatus)
        if current is None or etag is None:
            return
        if current.state.terminal:
            await self._notify(current, etag, report)  # owed if its writer never got to it
            return
        lease = current.lease_expires_at
        if current.state is JobState.PROCESSING and lease is not None and lease > now - self.older_than:
            return  # alive, or lapsed so recently that the queue is about to redeliver it
        if current.state is JobState.QUEUED and current.updated_at > now - self.older_than:
            return  # queued (or re-enqueued by another reconciler) recently: its message is fresh
        if self._expired(current.created_at, now):
            await self._end(job_id, current, etag, JobState.EXPIRED, None, "past the TTL while stuck", report)
            return
        if current.state is JobState.PROCESSING and current.attempt >= self.max_attempts:
            why = f"{current.attempt} attempts started, none finished: its workers died (last: {current.worker})"
            error = JobErrorInfo(code=ErrorCode.WORKER_CRASHED, message=why)
            await self._end(job_id, current, etag, JobState.FAILED, error, why, report)
            return
        if not self._message_lost(current.priority, current.updated_at, now):
            return  # its message may still be waiting behind a backlog: a copy would be a duplicate
        idle = (now - current.updated_at).total_seconds()
        why = f"re-enqueued by the reconciler: {current.state} for {idle:.0f}s with no delivery"
        try:
            await self.store.put_json(
                keys.status_key(job_id), current.moved_to(JobState.QUEUED, note=why, at=now), if_match=etag
            )
        except PreconditionFailed:
            return
        await self._send(job_id, None, current.priority)
        report.add(Action.REENQUEUED, job_id, why)

    async def _dead_letters(self, report: Report, now: datetime) -> int:
        """Jobs whose own message is in the DLQ but whose status never ended."""
        if not self.queue.dlq_url:
            return 0
        dlq = self.queue.sibling(self.queue.dlq_url, f"{self.queue.name}-dlq")
        messages = await drain(dlq, self.dlq_limit, _DLQ_HOLD_S)
        try:
            for msg in messages:
                jobs, unreadable = read(msg)
                if jobs is None:  # names no job: nothing to end, and no reason to stop the pass
                    report.add(Action.UNREADABLE_DEAD_LETTER, "", f"message {msg.id}: {unreadable}")
                for job_id in jobs or []:
                    await self._isolated(job_id, report, self._dead_letter(job_id, msg, report, now))
        finally:
            for msg in messages:  # they stay in the DLQ for the operator
                await dlq.set_visibility(msg, 0)
        return len(messages)

    async def _dead_letter(self, job_id: str, msg: Message, report: Report, now: datetime) -> None:
        current, etag = await self.store.get_model_etag(keys.status_key(job_id), JobStatus)
        if current is None or etag is None:
            return
        if current.state.terminal:
            await self._notify(current, etag, report)
            return
        if current.message_id is not None and current.message_id not in (msg.identity, msg.id):
            return  # a duplicate's dead letter: the job's own message still carries it
        if current.state is JobState.QUEUED and current.updated_at > now - self.older_than:
            return  # moved recently (redriven, released for a retry): a copy of it may be queued
        if current.message_id is None and current.updated_at > now - self.older_than:
            return  # no claim names a message yet, and the job moved recently: give it time
        lease = current.lease_expires_at
        if current.state is JobState.PROCESSING and lease is not None and lease > now - self.older_than:
            return  # a live worker holds it, or held it so recently that it may still be at work
        if current.state is JobState.PROCESSING:
            code = ErrorCode.WORKER_CRASHED
            why = f"its worker died on every delivery ({current.attempt} attempts); the message is in the DLQ"
        else:
            code = ErrorCode.RETRIES_EXHAUSTED
            why = f"put back on every delivery ({msg.receive_count} deliveries) until the message reached the DLQ"
        why += " (`tts-pipeline dlq redrive` runs it again)"
        error = JobErrorInfo(code=code, message=why)
        await self._end(job_id, current, etag, JobState.FAILED, error, why, report)

    async def _result_without_final_status(self, job_id: str, report: Report, now: datetime) -> None:
        """The result exists and the status was not written since: complete the job from it. The
        result is the commit point, so this holds for a job that ended otherwise too: an attempt
        paused past its lease may have published after its successor ended the job (a second
        fault); what the result names is kept (``_orphan_outputs`` runs after this)."""
        current, etag = await self.store.get_model_etag(keys.status_key(job_id), JobStatus)
        if current is None or etag is None or current.state is JobState.COMPLETED:
            if current is not None and etag is not None:
                await self._notify(current, etag, report)
            return
        lease = current.lease_expires_at
        if current.state is JobState.PROCESSING and lease is not None and lease > now - self.older_than:
            return  # its worker is still at it (about to write the final status)
        if current.state.terminal:
            why = f"its result was published after it ended {current.state} (by an attempt that had lost its claim)"
        else:
            why = "its result exists: the final status write was lost"
        await self._end(job_id, current, etag, JobState.COMPLETED, None, why, report)

    async def _notify(self, status: JobStatus, etag: str, report: Report) -> None:
        if not self.notifier.enabled or status.notified_at is not None:
            return
        await ensure_notified(self.notifier, status, record_in(self.store, keys.status_key(status.job_id), etag))
        report.add(Action.NOTIFIED, status.job_id, f"{status.state} had not been notified")

    async def _end(
        self,
        job_id: str,
        current: JobStatus,
        etag: str,
        state: JobState,
        error: JobErrorInfo | None,
        why: str,
        report: Report,
    ) -> None:
        if state is not JobState.COMPLETED and await committed(self.store, job_id):
            state, error, why = JobState.COMPLETED, None, f"its result exists (it was about to end {state}: {why})"
        new = current.moved_to(state, worker=WORKER, error=error, note=f"reconciler: {why}")
        if state is JobState.COMPLETED:
            new.result_key = keys.result_key(job_id)
        try:
            new_etag = await self.store.put_json(keys.status_key(job_id), new, if_match=etag)
        except PreconditionFailed:
            return  # changed meanwhile (a worker claimed it): nothing stuck after all
        new, new_etag = await recheck_commit(self.store, new, new_etag, WORKER)
        state, error = new.state, new.error
        metrics.JOBS.labels(state, error.code if error else "").inc()
        if state is JobState.EXPIRED:
            report.add(Action.EXPIRED, job_id, why)
        elif state is JobState.COMPLETED:
            report.add(Action.COMPLETED, job_id, why)
        else:
            assert error is not None
            action = Action.WORKER_CRASHED if error.code == ErrorCode.WORKER_CRASHED else Action.RETRIES_EXHAUSTED
            report.add(action, job_id, why)
        await self._notify(new, new_etag, report)

    async def _send(self, job_id: str, manifest: ObjectInfo | None, priority: Priority | None = None) -> None:
        """An S3-shaped event for the job's manifest, on the queue of the inbox it is in."""
        key = manifest.key if manifest is not None else keys.manifest_key(job_id, priority)
        lane = self.interactive if keys.inbox_of(key) is Priority.interactive and self.interactive else self.queue
        await lane.send(s3_event(self.settings.bucket, key, manifest, principal=WORKER), {"tts-sent-by": WORKER})

    # -- outputs ---------------------------------------------------------------------------------

    async def _orphan_outputs(
        self, outputs: list[ObjectInfo], with_result: set[str], report: Report, now: datetime
    ) -> None:
        by_job: dict[str, list[tuple[ObjectInfo, str]]] = {}
        for obj in outputs:
            parsed = keys.parse_output_key(obj.key)
            if parsed is not None and self._in_window(obj, now):
                by_job.setdefault(parsed[0], []).append((obj, parsed[1]))
        for job_id, entries in sorted(by_job.items()):
            if job_id in with_result and len({group for _, group in entries}) == 1 and entries[0][1] != keys.CHUNKS_DIR:
                continue  # one attempt's files and a result: the result names them (no GET needed)
            stale = {o.key for o, _ in entries if self._stale(o, now)}
            await self._isolated(job_id, report, self._remove_unneeded(job_id, stale, job_id in with_result, report))

    async def _remove_unneeded(self, job_id: str, stale: set[str], has_result: bool, report: Report) -> None:
        named, ended = await self._needs(job_id, has_result)
        garbage = unneeded(stale, named=named, ended=ended)
        if garbage:
            await self.store.delete_many(garbage)
            report.add(Action.OUTPUTS_REMOVED, job_id, ", ".join(garbage))

    async def _needs(self, job_id: str, has_result: bool) -> tuple[set[str] | None, bool]:
        """(keys the result names or None, whether the job has ended), for ``unneeded``. The result
        is read again once the job is known to have ended, whatever the listing said: one may
        have landed since the listing."""
        current = None if has_result else await self.store.get_model(keys.status_key(job_id), JobStatus)
        if not has_result and current is not None and not current.state.terminal:
            return None, False  # still running: everything may still be needed
        result = await self.store.get_model(keys.result_key(job_id), JobResult)
        if result is not None:
            return named_keys(result, self.settings.bucket), True
        if current is None:
            current = await self.store.get_model(keys.status_key(job_id), JobStatus)
        return None, current is None or current.state.terminal


async def reconcile_once(
    settings: Settings,
    *,
    older_than_s: float = DEFAULT_OLDER_THAN_S,
    lookback_s: float | None = None,
    scan_all: bool = False,
    now: datetime | None = None,
) -> Report:
    from pipeline.cloud.store import open_store

    calls = settings.calls(WORKER)
    async with (
        open_store(settings, WORKER) as store,
        Queue.open(settings.queue, calls=calls) as queue,
        Notifier.open(settings.notify_topic_arn, settings.bucket, calls) as notifier,
    ):
        interactive = await queue.other(settings.interactive_queue)
        reconciler = Reconciler(
            settings,
            store,
            queue,
            older_than_s=older_than_s,
            lookback_s=lookback_s,
            scan_all=scan_all,
            notifier=notifier,
            interactive=interactive,
        )
        return await reconciler.run(now=now)
