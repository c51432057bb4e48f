"""The nemesis's checker: what the history in S3, SQS and SNS says about every job.

It reads S3 object versions (``status/`` and ``results/``), the ``outputs/`` listing, queue
attributes (main, interactive, DLQ), the notification queue (FIFO, subscribed to the topic), the
proxy's trace (which messages were delivered when) and the streamed bytes; never logs.

Per job, the sweep's invariants (tests/sweep/harness.py: I1 final, I2 outputs named exist and
decode, I3 one result and one audio version, I4 no orphan outputs after a reconciler pass, I5
notified, I8 no chunk rendered twice in an attempt that was not killed) plus:

- (a) a job whose result exists is COMPLETED;
- (b) COMPLETED => the result exists and every output it names exists (I2);
- (c) at most one result version (I3);
- (d) the final state is notified exactly once: one notification, of that state;
- (e) no job ends FAILED with a transient code (RETRIES_EXHAUSTED, WORKER_CRASHED) when the faults
  it lived through could not have used up its deliveries (``Budget``). The policy spaces failed
  deliveries by at least ``backoffs()`` (retry_base x 2^(d-1), and a last gap of at least
  retry_max), so S3/SQS outages, brownouts and hung calls totalling L seconds (every window
  overlapping its life, added up as if contiguous) can fail at most 1 + k deliveries, k the number
  of backoffs whose sum fits in L, plus one for each further separate window (a second outage may
  meet the delivery after a gap); failing visibility extensions for V seconds cost at most one redelivery per
  lease (V // visibility + 1); each kill, stop or SIGTERM of the worker holding it (by its status
  history), and a forced failed final write of its own, at most one more. Only when that
  total is below maxReceiveCount is a transient failure a violation: the check never blames the
  pipeline for an outage its policy does not promise to outlast, and over-counts faults rather
  than under-counting them;
- (f) the streamed audio equals the result's audio sample for sample, or the stream ended in an
  error;
- (g) after settling, the queues' depth (visible + in flight + delayed) <= the non-final jobs (0
  when all ended); no reconciler pass re-enqueued a QUEUED job whose message was still on the
  queue (its message, sent before the re-enqueue, delivered after it: a duplicate it created);
  and a job's own message (the one its claim names) is in the DLQ only when its faults can account
  for every delivery, as in (e) (a duplicate's dead letter is allowed: docs/contract.md);
- (h) no orphan outputs after the last reconciler pass (I4);
- (i) every worker not killed or stopped on purpose is alive and ready; one sent SIGTERM exited 0;
  no process of a killed worker remains (I6, I7).
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import soundfile as sf

from tests.helpers import wait_until
from tests.nemesis.harness import Run, dead_letters, dlq_depth, queue_depth
from tests.nemesis.schedule import MAX_RECEIVE_COUNT, backoffs
from tests.sweep.harness import TERMINAL, _check_outputs, _get_json, _running

TRANSIENT_CODES = ("RETRIES_EXHAUSTED", "WORKER_CRASHED")
OUTAGE_KINDS = ("s3_outage", "sqs_outage", "brownout")
DISRUPTIONS = ("kill", "term", "stop", "failed_write_cancel")
REENQUEUED = "re-enqueued by the reconciler"


@dataclass
class JobOutcome:
    job: str
    kind: str
    final: str | None = None
    code: str | None = None
    attempts: int = 0
    life: tuple[float, float] = (0.0, 0.0)  # seconds from the schedule's start
    broken: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    jobs: list[JobOutcome]
    broken: list[str]  # global: (g), (i)
    figures: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not self.broken and not any(j.broken for j in self.jobs)


def check(run: Run) -> Verdict:
    run.lane.drain_notes()
    run.dead = dead_letters(run.lane)
    outcomes = [_check_job(run, job, kind) for job, kind in _jobs(run)]
    broken = _check_queues(run, outcomes) + _check_workers(run)
    return Verdict(outcomes, broken, _figures(run, outcomes))


def _jobs(run: Run) -> list[tuple[str, str]]:
    out = [(j.job, j.kind) for j in run.schedule.jobs if j.kind != "api"]
    return out + ([(run.stream.job, "api")] if run.stream.job else [])


def _at(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _check_job(run: Run, job: str, kind: str) -> JobOutcome:
    lane = run.lane
    o = JobOutcome(job, kind)
    status = lane.status(job) or {}
    o.final, o.attempts = status.get("state"), status.get("attempt", 0)
    o.code = (status.get("error") or {}).get("code")
    start = run.submitted.get(job) or _at(status.get("created_at"))
    end = _at(status.get("updated_at")) if o.final in TERMINAL else run.wall0 + run.now()
    o.life = (round(start - run.wall0, 1), round(end - run.wall0, 1))
    if o.final not in TERMINAL:
        o.broken.append(f"I1: not final after settling: {o.final}")
    result = _get_json(lane.s3, lane.bucket, f"results/{job}.json")
    results = lane.versions(f"results/{job}.json")
    if result is not None and o.final != "COMPLETED":
        o.broken.append(f"(a): its result exists, it ended {o.final} ({o.code})")
    if o.final == "COMPLETED" and result is None:
        o.broken.append("(b): COMPLETED without a result")
    if len(results) > 1:
        o.broken.append(f"(c): {len(results)} result versions")
    named: set[str] = set()
    if result is not None:
        named = {
            u.removeprefix(f"s3://{lane.bucket}/") for u in [result["audio"]["uri"], *result["subtitles"].values()]
        }
        _check_outputs(lane, result, named, o.broken)
    left = set(lane.outputs(job))
    if left != named:
        o.broken.append(f"(h): outputs left {sorted(left - named)}, missing {sorted(named - left)}")
    _check_notes(run, job, o)
    _check_budget(run, o)
    _check_calls(run, job, result, status, o)
    if kind == "api":
        _check_stream(run, result, o)
    return o


def _check_notes(run: Run, job: str, o: JobOutcome) -> None:
    lane = run.lane
    if o.final in TERMINAL:
        with contextlib.suppress(AssertionError):  # what arrived is judged below
            wait_until(lambda: (lane.drain_notes(), job in lane.notes)[1], f"{job}'s notification", 30)
    got = [n["state"] for n in lane.notes.get(job, [])]
    want = [o.final] if o.final in TERMINAL else []
    if got != want:
        o.broken.append(f"(d): notifications {got}, final state {o.final}")


def _merged(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by ``spans`` (overlaps counted once)."""
    return sum(t - s for s, t in _windows(spans))


def _windows(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``spans`` merged where they overlap."""
    out: list[tuple[float, float]] = []
    for s, t in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], t))
        else:
            out.append((s, t))
    return out


def deliveries_consumable(outage_s: float, settings: dict[str, Any]) -> int:
    """At most how many deliveries an outage of ``outage_s`` can fail, the policy's backoffs between."""
    k, spent = 0, 0.0
    for b in backoffs(settings):
        if spent + b > outage_s:
            break
        spent += b
        k += 1
    return 1 + k if outage_s > 0 else 0


@dataclass
class Budget:
    """What the faults a job lived through can legitimately cost it in deliveries."""

    outage_s: float  # S3/SQS outages, brownouts, hung calls: failures the policy backs off from
    outage_windows: int  # how many separate windows they make
    visext_s: float  # failing visibility extensions: a redelivery per lease at most
    disruptions: int  # workers killed, stopped, sent SIGTERM; a forced failed final write
    settings: dict[str, Any]

    @property
    def deliveries(self) -> int:
        lease = float(self.settings["visibility_timeout_s"])
        visext = int(self.visext_s // lease) + 1 if self.visext_s else 0
        separate = max(0, self.outage_windows - 1)
        return deliveries_consumable(self.outage_s, self.settings) + separate + visext + self.disruptions

    def describe(self) -> str:
        return (
            f"{self.outage_s:.0f}s of outage in {self.outage_windows} window(s), "
            f"{self.visext_s:.0f}s of failing visibility extensions and "
            f"{self.disruptions} disruptions in its life can use up {self.deliveries} of its {MAX_RECEIVE_COUNT} "
            f"deliveries (retry budget {float(self.settings['retry_max_s']):.0f}s)"
        )


def budget(run: Run, job: str, start: float, end: float) -> Budget:
    outages: list[tuple[float, float]] = []
    visext: list[tuple[float, float]] = []
    disruptions = 0
    call_s = float(run.schedule.settings["call_timeout_s"])
    history = (run.lane.status(job) or {}).get("history", [])
    for i, e in enumerate(run.schedule.events):
        if not e.overlaps(start, end):
            continue
        span = (max(e.at, start), min(e.until if e.until is not None else e.at, end))
        if e.kind in OUTAGE_KINDS:
            outages.append(span)
        elif e.kind == "visext":
            visext.append(span)
        elif e.kind == "hang":  # each hung call costs one call timeout before its retry
            outages.append((e.at, e.at + e.params["count"] * call_s))
        elif e.kind == "failed_write_cancel":
            disruptions += e.job == job
        elif e.kind in DISRUPTIONS:
            disruptions += _hit_holder(run, i, history)
    return Budget(_merged(outages), len(_windows(outages)), _merged(visext), disruptions, run.schedule.settings)


def _hit_holder(run: Run, index: int, history: list[dict[str, Any]]) -> bool:
    """Did event ``index`` (a kill, stop or SIGTERM) hit the worker holding the job? By the status
    history: the job was PROCESSING, claimed by that worker, when the signal went."""
    hit = next((f for f in run.fired if f.event == index and f.detail.get("pid")), None)
    if hit is None:
        return False
    at = run.wall0 + hit.at
    before = [h for h in history if _at(h["at"]) <= at]
    last = before[-1] if before else {}
    return last.get("state") == "PROCESSING" and str(last.get("worker", "")).endswith(f"-{hit.detail['pid']}")


def _check_budget(run: Run, o: JobOutcome) -> None:
    """(e), and the DLQ half of (g): a job's own message reaching the DLQ, or a transient
    failure, only when its faults can account for every delivery."""
    b = budget(run, o.job, *o.life)
    if b.deliveries >= MAX_RECEIVE_COUNT:
        return
    if o.final == "FAILED" and o.code in TRANSIENT_CODES:
        o.broken.append(f"(e): FAILED {o.code}, but {b.describe()}")
    own = (run.lane.status(o.job) or {}).get("message_id")
    if own is not None and own in run.dead:
        o.broken.append(f"(g): its own message {own} is in the DLQ, but {b.describe()}")


def _check_calls(run: Run, job: str, result: dict[str, Any] | None, status: dict[str, Any], o: JobOutcome) -> None:
    """I8: no attempt that was not killed rendered a chunk twice; none began after the result."""
    chunks = (result or {}).get("chunks") or ((status.get("progress") or {}).get("chunks_total")) or 0
    killed = {f"{w.worker_id}" for w in run.lane.workers if w.pid in run.killed}
    calls = run.lane.calls(job)
    for (worker, n), items in sorted(calls.items()):
        if worker not in killed and chunks and items > chunks:
            o.broken.append(f"I8: attempt {n} ({worker}) rendered {items} chunks of {chunks}")
    landed = [e for e in run.lane.proxy.trace() if e["op"] == "S3 PutObject" and e.get("status") == 200]
    result_at = next((e["seq"] for e in landed if e["keys"] == [f"results/{job}.json"]), None)
    if result_at is None:
        return
    claimed: dict[int, int] = {}
    for e in landed:
        if e["keys"] == [f"status/{job}.json"] and e.get("state") == "PROCESSING" and e.get("attempt"):
            claimed.setdefault(e["attempt"], e["seq"])
    for n, seq in sorted(claimed.items()):
        rendered = sum(items for (_, a), items in calls.items() if a == n)
        if seq > result_at and rendered:
            o.broken.append(f"I8: attempt {n} began after the result existed and rendered {rendered} chunks")


def _check_stream(run: Run, result: dict[str, Any] | None, o: JobOutcome) -> None:
    s = run.stream
    if s.error is not None or s.status != 200:
        return  # the stream ended in an error: allowed
    if result is None:
        o.broken.append(f"(f): the stream ended cleanly ({len(s.data)} bytes) but the job has no result")
        return
    key = result["audio"]["uri"].removeprefix(f"s3://{run.lane.bucket}/")
    data = run.lane.s3.get_object(Bucket=run.lane.bucket, Key=key)["Body"].read()
    final, _ = sf.read(io.BytesIO(data), dtype="int16")
    streamed = np.frombuffer(s.data[: len(s.data) // 2 * 2], dtype="<i2")
    if len(streamed) != len(final) or not np.array_equal(streamed, final):
        o.broken.append(f"(f): streamed {len(streamed)} samples, the result's audio has {len(final)}; they differ")


def _check_queues(run: Run, outcomes: list[JobOutcome]) -> list[str]:
    broken = []
    live = sum(1 for o in outcomes if o.final not in TERMINAL)
    depth = queue_depth(run.lane)
    if sum(depth.values()) > live:
        broken.append(f"(g): queue depth {depth} after settling, {live} jobs not final")
    broken += _reenqueued_live(run)
    return broken


def _reenqueued_live(run: Run) -> list[str]:
    """Reconciler re-enqueues of a QUEUED job whose message was still on the queue: its own message
    (the one the QUEUED status names), or any message for it when none is named yet, sent before
    the re-enqueue and delivered to a worker after it. Read from the status's S3 versions and the
    deliveries the proxy saw."""
    out = []
    main = {run.lane.bucket, f"{run.lane.bucket}-interactive"}
    received = [
        (e["t"] * 1000, m)
        for e in run.lane.proxy.trace()
        if e["op"] == "SQS ReceiveMessage" and e.get("queue") in main and e.get("agent") == "worker"
        for m in e.get("messages", [])
    ]
    for job, _ in _jobs(run):
        for before, at_ms in _reenqueues(run, job):
            own = before.get("message_id")
            alive = [
                m["id"]
                for t, m in received
                if t > at_ms and job in m["jobs"] and (m["id"] == own if own else (m.get("sent_ms") or at_ms) < at_ms)
            ]
            if alive:
                out.append(
                    f"(g): {job} re-enqueued by the reconciler at {at_ms / 1000 - run.wall0:.1f}s while QUEUED "
                    f"(since {_at(before.get('updated_at')) - run.wall0:.1f}s), its message {alive[0]} still on "
                    "the queue (delivered after): a duplicate"
                )
    return out


def _reenqueues(run: Run, job: str) -> list[tuple[dict[str, Any], float]]:
    """(the QUEUED status it replaced, when) for each reconciler re-enqueue of a QUEUED job."""
    lane = run.lane
    docs = []
    for v in lane.versions(f"status/{job}.json"):
        body = lane.s3.get_object(Bucket=lane.bucket, Key=f"status/{job}.json", VersionId=v["VersionId"])["Body"]
        with contextlib.suppress(ValueError):
            docs.append(json.loads(body.read()))
    by_len = {len(d.get("history", [])): d for d in docs}
    out = []
    for n, d in sorted(by_len.items()):
        last = d["history"][-1] if d.get("history") else {}
        before = by_len.get(n - 1)
        if before and before.get("state") == "QUEUED" and (last.get("note") or "").startswith(REENQUEUED):
            out.append((before, _at(last["at"]) * 1000))
    return out


def _check_workers(run: Run) -> list[str]:
    broken = []
    for w in run.lane.workers:
        if w.pid in run.killed:
            left = [p for p in w.descendants if _running(p)]
            if left:
                with contextlib.suppress(AssertionError):
                    wait_until(lambda w=w: not [p for p in w.descendants if _running(p)], "children to exit", 60)
                left = [p for p in w.descendants if _running(p)]
            if left:
                broken.append(f"(i): processes of killed worker {w.pid} remain: {left}")
            continue
        if w.pid in run.termed:
            code = w.proc.proc.wait(timeout=120) if w.proc.proc.poll() is None else w.proc.proc.returncode
            if code != 0:
                broken.append(f"(i): worker {w.pid} exited {code} on SIGTERM")
            continue
        if not w.alive():
            code = w.proc.proc.returncode
            broken.append(f"(i): worker {w.pid} died ({code}{' SIGKILL' if code == -signal.SIGKILL else ''})")
        elif not w.ready():
            broken.append(f"(i): worker {w.pid} is alive but not ready")
    return broken


def _figures(run: Run, outcomes: list[JobOutcome]) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    for o in outcomes:
        key = f"{o.final}{f' {o.code}' if o.code else ''}"
        by_state[key] = by_state.get(key, 0) + 1
    faults: dict[str, int] = {}
    for e in run.schedule.events:
        if e.kind not in ("cancel", "dup", "resubmit"):
            faults[e.kind] = faults.get(e.kind, 0) + 1
    trace = run.lane.proxy.trace()
    return {
        "seed": run.schedule.seed,
        "short": run.schedule.short,
        "jobs": len(outcomes),
        "jobs_by_final_state": by_state,
        "faults_by_kind": faults,
        "client_events": {k: sum(1 for e in run.schedule.events if e.kind == k) for k in ("cancel", "dup", "resubmit")},
        "requests": len(trace),
        "requests_faulted": sum(1 for e in trace if e.get("fault")),
        "reconciler_passes": len(run.reports),
        "dlq_messages": dlq_depth(run.lane),
        "stream": {"status": run.stream.status, "bytes": len(run.stream.data), "error": run.stream.error}
        if any(j.kind == "api" for j in run.schedule.jobs)
        else None,
    }
