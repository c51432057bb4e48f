"""The fault-point sweep: every S3/SQS/SNS request of a job's life, times every fault kind.

Random faults (tests/faults, 20 % of calls) rarely hit the one request that matters. Here, as in
FoundationDB's simulation and Jepsen, the faults go to *positions*:

1. **Reference runs.** Each reference job (``REFERENCES``: one chunk; several durable chunks with
   subtitles; a dialogue; a cancel; a voice that needs ASR) runs once, fault-free, through the
   tracing proxy (``tests/faults/proxy.py``). Its requests become its positions: every request the
   attempt itself makes (agent ``worker``), in order, named by action, key and, for status
   writes, the state written, with an occurrence number (the 2nd ``PutObject status→PROCESSING``
   is the re-assertion before publishing); and each kind of request the heartbeat makes (agent
   ``lease``: renewal, visibility extension, cancel poll), whose first occurrence is made certain
   by holding the job (``pipeline/runtime/faults.py``) until it has happened.
2. **Cells.** For a position and a fault kind, the same job runs afresh (a job id of its own) with
   one fault point armed in the proxy: ``dropped``, ``reset``, ``lost``, ``truncated``,
   ``brownout`` (every retry of that call fails, then it recovers), ``hang`` (the answer never
   comes; the client's timeout must fire), ``kill`` (SIGKILL of the worker right after that
   request landed) and ``stop`` (SIGSTOP right after it landed, until the job has been taken over
   and finished, then SIGCONT). A ``ReceiveMessage`` knows its job only from the answer: it takes
   the after-landing kinds only.
3. **Invariants**, checked from S3 object versions, queue depths, the proxy's trace, the
   notification queue (FIFO, subscribed to the topic) and the worker processes, never from logs:

   - I0 the job ends in the reference's final state (one fault never changes the outcome);
   - I1 it reaches a final status (after at most one reconcile pass);
   - I2 COMPLETED ⇔ ``results/<job>.json`` exists ⇔ every key it names exists and decodes, and
     the audio's duration is the result's;
   - I3 one result version; the named audio has one version;
   - I4 after one reconcile pass, nothing under ``outputs/<job>/`` that the result does not name;
   - I5 exactly one notification per final state, whoever ended the job;
   - I6 the workers are alive and ready afterwards (a killed one replaced);
   - I7 no process of a killed worker remains;
   - I8 the model rendered each chunk at most once per attempt that was not itself killed, and not
     at all in an attempt that started after the result existed.

Cells run in lanes, each with a stack of its own (bucket, queue, DLQ, FIFO topic), its own proxy
and two workers, so that one is always there to take over; lanes run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import queue as queue_mod
import re
import signal
import socket
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import soundfile as sf

from pipeline.cloud.aws import sync_client
from pipeline.config import Settings
from pipeline.ops.reconcile import reconcile_once
from tests.faults.conftest import FAST
from tests.faults.proxy import ProxyProcess
from tests.helpers import (
    REF_TEXT,
    Holds,
    WorkerProcess,
    queue_depth,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_ready,
    wait_until,
)

KINDS = ("dropped", "reset", "lost", "truncated", "brownout", "hang", "kill", "stop")
AFTER_KINDS = ("lost", "truncated", "hang", "kill", "stop")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED")

# The suite's short timings, plus a 2 s bound on one attempt of one call (a hung answer is given
# up quickly); lease calls get half a beat (pipeline/config.py).
WORKER_SETTINGS = {**FAST, "call_timeout_s": 2, "shutdown_grace_s": 5, "log_level": "INFO"}
RECONCILER_SETTINGS = {k: WORKER_SETTINGS[k] for k in ("visibility_timeout_s", "heartbeat_interval_s")}
GUARD_S = 240.0  # hang guard for one wait: a broken run fails instead of hanging, nothing is timed


# -- reference jobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    name: str
    final: str  # the state a fault-free run ends in
    cancel: bool = False  # held after chunk 1 (every attempt) until cancel/<job> is written

    def manifest(self, job: str) -> dict[str, Any]:
        base = {"voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2, "seed": 7}
        if self.name == "one-chunk":
            return {**base, "text": "Short and sweet."}
        if self.name == "chunks":
            text = "This is a sentence of moderate length. " * 12
            return {**base, "text": text, "subtitles": ["srt", "vtt"], "output_format": "flac"}
        if self.name == "dialogue":
            return {
                **base,
                "segments": [
                    {"text": "Hello there, how are you?"},
                    {"text": "Very well, thank you.", "voice": job},
                    {"text": "Glad to hear it."},
                ],
            }
        if self.name == "cancel":
            return {**base, "text": "This is a sentence of moderate length. " * 8}
        if self.name == "asr":
            return {"voice": job, "text": "A voice heard for the first time.", "nfe_step": 2, "seed": 7}
        raise ValueError(self.name)

    def library_voice(self) -> str | None:
        """The library voice this job needs under its own name: its transcript, if any."""
        return {"dialogue": REF_TEXT, "asr": ""}.get(self.name)


REFERENCES = [
    Reference("one-chunk", "COMPLETED"),
    Reference("chunks", "COMPLETED"),
    Reference("dialogue", "COMPLETED"),
    Reference("cancel", "CANCELLED", cancel=True),
    Reference("asr", "COMPLETED"),
]


# -- positions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    ref: str
    index: int
    agent: str  # worker: the attempt's own request; lease: the heartbeat's
    op: str
    key: str | None  # a template: "{job}" for the job id; digests as "<digest>"
    state: str | None
    nth: int
    after_cancel: bool = False  # (the cancel job) reached after cancel/<job> was written

    @property
    def label(self) -> str:
        key = f" {self.key}" if self.key else ""
        state = f"→{self.state}" if self.state else ""
        return f"{self.agent} {self.op}{key}{state} #{self.nth}"

    def kinds(self) -> tuple[str, ...]:
        return AFTER_KINDS if self.op == "SQS ReceiveMessage" else KINDS

    def point(self, job: str, kind: str, ident: str) -> dict[str, Any]:
        spec: dict[str, Any] = {"id": ident, "job": job, "op": self.op, "agent": self.agent, "kind": kind}
        spec["nth"] = self.nth
        if self.key is not None:
            spec["key"] = _key_regex(self.key, job)
        if self.state is not None:
            spec["state"] = self.state
        return spec


def _key_regex(template: str, job: str) -> str:
    parts = template.split("<digest>")
    return "[0-9a-f]+".join(re.escape(p.replace("{job}", job)) for p in parts)


def _template(key: str, job: str) -> str:
    out = key.replace(job, "{job}")
    return re.sub(r"(/chunks/\d{5})-[0-9a-f]{8,64}", r"\1-<digest>", out)


def positions_of(ref: str, trace: list[dict[str, Any]], job: str, cancel_seq: int | None = None) -> list[Position]:
    out: list[Position] = []
    seen: dict[tuple[Any, ...], int] = {}
    lease_kinds: set[tuple[Any, ...]] = set()
    for e in trace:
        if job not in e["jobs"] or e["agent"] not in ("worker", "lease"):
            continue
        key = _template(e["keys"][0], job) if len(e["keys"]) == 1 else None
        sig = (e["agent"], e["op"], key, e.get("state"))
        if e["agent"] == "lease":
            if sig in lease_kinds:
                continue  # later beats come when they come: only the first is certain (held)
            lease_kinds.add(sig)
        seen[sig] = seen.get(sig, 0) + 1
        after = cancel_seq is not None and e["seq"] > cancel_seq
        out.append(Position(ref, len(out), e["agent"], e["op"], key, e.get("state"), seen[sig], after))
    return out


# -- cells and their results -------------------------------------------------------------------


@dataclass
class Cell:
    position: Position
    kind: str
    serial: int

    @property
    def job(self) -> str:
        short = {"one-chunk": "one", "chunks": "chk", "dialogue": "dlg", "cancel": "cxl", "asr": "asr"}
        return f"s{self.serial:04d}-{short[self.position.ref]}-{self.position.index:02d}-{self.kind}"


@dataclass
class CellResult:
    cell: Cell
    broken: list[str] = field(default_factory=list)  # "I2: ..." per invariant that failed
    final: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    fired: bool = False
    unreached: bool = False  # a timing-dependent point (a beat after the cancel) this run never made
    diagnosis: list[str] = field(default_factory=list)  # for a cell the harness could not drive

    @property
    def passed(self) -> bool:
        return not self.broken

    def describe(self) -> str:
        p = self.cell.position
        return (
            f"[{p.ref} #{p.index}] {p.label} × {self.cell.kind} (job {self.cell.job}, final {self.final}, "
            f"{self.attempts} attempts): "
            + ("point not reached this run; " if self.unreached else "")
            + "; ".join(self.broken)
            + "".join(f"\n      {line}" for line in self.diagnosis)
        )


# -- a lane ------------------------------------------------------------------------------------


@dataclass
class LaneWorker:
    proc: WorkerProcess
    descendants: list[int]

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}-{self.pid}"

    def alive(self) -> bool:
        return self.proc.proc.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.proc.metrics_port}/readyz", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def in_flight(self) -> float:
        return self.proc.metrics().get("tts_jobs_in_flight", 0.0)


class Lane:
    """A stack, a proxy in front of LocalStack and two workers behind it; cells one at a time."""

    def __init__(
        self,
        name: str,
        make_stack: Callable[..., dict[str, str]],
        upstream: str,
        workdir: Path,
        worker_settings: dict[str, Any] | None = None,  # the nemesis's clock; the sweep's by default
    ) -> None:
        self.name = name
        self.worker_settings = worker_settings or WORKER_SETTINGS
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = make_stack(name)
        self.bucket = name
        self.s3 = sync_client("s3")
        self.sqs = sync_client("sqs")
        sns = sync_client("sns")
        self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        self.s3.upload_file(str(reference_voice_path()), name, "voices/alice.wav")
        topic = sns.create_topic(
            Name=f"{name}-events.fifo", Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "false"}
        )["TopicArn"]
        self.notes_url = self.sqs.create_queue(QueueName=f"{name}-notes.fifo", Attributes={"FifoQueue": "true"})[
            "QueueUrl"
        ]
        notes_arn = self.sqs.get_queue_attributes(QueueUrl=self.notes_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=notes_arn, Attributes={"RawMessageDelivery": "true"})
        self.proxy = ProxyProcess(upstream, workdir)
        self.holds = Holds(workdir / "faults")
        self.topic = topic
        self.worker_env = {**self.env, "AWS_ENDPOINT_URL": self.proxy.endpoint, "TTS_NOTIFY_TOPIC_ARN": topic}
        self.workers: list[LaneWorker] = []
        self._starting: list[threading.Thread] = []
        self._spawned = 0
        self.notes: dict[str, list[dict[str, Any]]] = {}
        for _ in range(2):
            self._start_worker()

    # -- workers -------------------------------------------------------------------------------

    def _start_worker(self) -> LaneWorker:
        self._spawned += 1
        log = self.workdir / f"worker-{self._spawned}.log"
        w = start_worker(self.worker_env, log, **{**self.worker_settings, **self.holds.settings})
        wait_ready(w)
        proc = psutil.Process(w.proc.pid)
        lw = LaneWorker(w, [c.pid for c in proc.children(recursive=True)])
        self.workers.append(lw)
        return lw

    def replace_in_background(self) -> None:
        t = threading.Thread(target=self._start_worker, daemon=True)
        t.start()
        self._starting.append(t)

    def ensure_two(self) -> None:
        for t in self._starting:
            t.join()
        self._starting.clear()
        while len([w for w in self.workers if w.alive()]) < 2:
            self._start_worker()

    def worker_by_pid(self, pid: int | None) -> LaneWorker | None:
        return next((w for w in self.workers if w.pid == pid), None)

    def close(self) -> list[str]:
        for t in self._starting:
            t.join()
        problems = []
        for w in self.workers:
            if w.alive():
                code = stop_worker(w.proc)
                if code != 0:
                    problems.append(f"worker {w.pid} exited {code} on SIGTERM")
        self.proxy.stop()
        return problems

    # -- S3 / SQS, outside the proxy -------------------------------------------------------------

    def status(self, job: str) -> dict[str, Any] | None:
        return _get_json(self.s3, self.bucket, f"status/{job}.json")

    def queue_empty(self) -> bool:
        return queue_depth(self.sqs, self.bucket) == (0, 0)

    def versions(self, key: str) -> list[dict[str, Any]]:
        resp = self.s3.list_object_versions(Bucket=self.bucket, Prefix=key)
        return [v for v in resp.get("Versions", []) if v["Key"] == key]

    def outputs(self, job: str) -> list[str]:
        resp = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"outputs/{job}/")
        return sorted(o["Key"] for o in resp.get("Contents", []))

    def drain_notes(self) -> None:
        # Short polls: LocalStack answers them exactly (no sampled servers, unlike SQS), and the
        # callers poll again until what they expect has arrived; a late repeat is still caught by
        # the sweep's last drain. A long poll here cost a second per call, two calls per cell.
        while True:
            msgs = self.sqs.receive_message(QueueUrl=self.notes_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                "Messages", []
            )
            if not msgs:
                return
            for m in msgs:
                doc = json.loads(m["Body"])
                self.notes.setdefault(doc["job_id"], []).append(doc)
                self.sqs.delete_message(QueueUrl=self.notes_url, ReceiptHandle=m["ReceiptHandle"])

    def prepare(self, ref: Reference, job: str) -> None:
        transcript = ref.library_voice()
        if transcript is None:
            return
        audio = reference_voice_path().read_bytes()
        record = {
            "name": job,
            "audio_key": f"voices/{job}/audio.wav",
            "ref_text": transcript,
            "ref_text_source": "user" if transcript else None,
            "sha256": hashlib.sha256(audio).hexdigest(),
            "bytes": len(audio),
            "duration_s": 7.0,
            "sample_rate": 24000,
            "channels": 1,
        }
        self.s3.put_object(Bucket=self.bucket, Key=f"voices/{job}/audio.wav", Body=audio)
        self.s3.put_object(Bucket=self.bucket, Key=f"voices/{job}/voice.json", Body=json.dumps(record).encode())

    def submit(self, ref: Reference, job: str) -> None:
        self.prepare(ref, job)
        body = json.dumps(ref.manifest(job)).encode()
        self.s3.put_object(Bucket=self.bucket, Key=f"inbox/{job}.json", Body=body)

    def reconcile(self) -> dict[str, Any]:
        """One pass of the real reconciler over this lane's stack (in this thread, straight to
        LocalStack: its own requests are not what the sweep faults)."""
        settings = Settings(bucket=self.bucket, queue=self.bucket, notify_topic_arn=self.topic, **RECONCILER_SETTINGS)
        return asyncio.run(reconcile_once(settings, older_than_s=0)).as_dict()

    def calls(self, job: str) -> dict[tuple[str, int], int]:
        """(worker id, attempt) -> synthesis items of ``job`` the model ran (fault hooks' log)."""
        path = self.holds.root / "calls.jsonl"
        out: dict[tuple[str, int], int] = {}
        if not path.exists():
            return out
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            if doc["kind"] != "synthesis" or job not in doc["jobs"]:
                continue
            for attempt, n in doc["jobs"][job].items():
                out[(doc["worker"], int(attempt))] = out.get((doc["worker"], int(attempt)), 0) + n
        return out


def _get_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


# -- running a cell ----------------------------------------------------------------------------


def run_reference(lane: Lane, ref: Reference, job: str) -> tuple[list[Position], int]:
    """A fault-free run: the positions it went through and its chunk count."""
    lane.ensure_two()
    lane.holds.hold(job, after_chunks=1 if ref.cancel else 0, attempts=None if ref.cancel else [1])
    lane.submit(ref, job)
    wait_until(lambda: _lease_seen(lane, job), f"{job}: the heartbeat's first requests", GUARD_S)
    cancel_seq = None
    if ref.cancel:
        lane.holds.wait_held(job, timeout_s=GUARD_S)
        cancel_seq = lane.proxy.trace()[-1]["seq"]  # everything after this came after the request
        lane.s3.put_object(Bucket=lane.bucket, Key=f"cancel/{job}", Body=b"")
        wait_until(lambda: (lane.status(job) or {}).get("state") in TERMINAL, f"{job} cancelled", GUARD_S)
    lane.holds.release(job)
    _settle(lane, job)
    status = lane.status(job)
    assert status is not None and status["state"] == ref.final, (ref.name, status)
    result = _get_json(lane.s3, lane.bucket, f"results/{job}.json")
    chunks = result["chunks"] if result else (status.get("progress") or {}).get("chunks_total", 3)
    return positions_of(ref.name, lane.proxy.trace(), job, cancel_seq), chunks or 3


def _lease_seen(lane: Lane, job: str) -> bool:
    ops = {e["op"] for e in lane.proxy.trace() if job in e["jobs"] and e["agent"] == "lease"}
    return {"S3 PutObject", "S3 HeadObject", "SQS ChangeMessageVisibilityBatch"} <= ops


def _settle(lane: Lane, job: str) -> None:
    """Until the job is final, notified, its message gone and no worker has it in hand."""

    def quiet() -> bool:
        status = lane.status(job)
        if status is None or status["state"] not in TERMINAL or status.get("notified_at") is None:
            return False
        if not lane.queue_empty():
            return False
        return all(w.in_flight() == 0 for w in lane.workers if w.alive())

    wait_until(quiet, f"{job} to settle", GUARD_S)


def run_cell(lane: Lane, cell: Cell, chunks: int, ref: Reference) -> CellResult:
    t0 = time.monotonic()
    job, pos, kind = cell.job, cell.position, cell.kind
    res = CellResult(cell)
    if kind in ("kill", "stop"):
        lane.ensure_two()  # someone must be there to take over
    ident = job
    lane.proxy.arm(pos.point(job, kind, ident))
    hold = ref.cancel or pos.agent == "lease"
    if hold:
        lane.holds.hold(job, after_chunks=1 if ref.cancel else 0, attempts=None if ref.cancel else [1])
    lane.submit(ref, job)
    victim: LaneWorker | None = None
    try:
        victim = _drive(lane, cell, ref, res)
    except AssertionError as e:
        res.broken.append(f"harness: {e}".splitlines()[0][:300])
        res.diagnosis = _diagnose(lane, job)
    finally:
        lane.holds.release(job)
    if victim is not None and not res.broken:
        _check_victim(lane, victim, kind, res)
    if not res.broken:
        try:
            _settle_or_reconcile(lane, job, res)
        except AssertionError as e:
            res.broken.append(f"I1: {str(e).splitlines()[0][:300]}")
    if not any(b.startswith(("harness", "I1")) for b in res.broken):
        _check(lane, job, ref, chunks, victim if kind == "kill" else None, res)
    res.seconds = round(time.monotonic() - t0, 1)
    return res


def _diagnose(lane: Lane, job: str) -> list[str]:
    """What a cell the harness could not drive looked like: the job's status, the requests that
    named it, the queue, and each worker's log lines that name it (a flaky cell explains itself)."""
    out = []
    try:
        status = lane.status(job)
        states = [h.get("state") for h in status.get("history", [])] if status else None
        out.append(f"status: {status and status.get('state')}, history {states}")
        ops = [f"{e['agent']} {e['op']}" for e in lane.proxy.trace() if job in e["jobs"]]
        out.append(f"requests naming it ({len(ops)}): {ops[:12]}{' …' if len(ops) > 12 else ''}")
        out.append(f"queue empty: {lane.queue_empty()}; fired: {lane.proxy.fired(job)}")
        for w in lane.workers:
            lines = [line for line in w.proc.log().splitlines() if job in line][-6:]
            state = f"{'alive' if w.alive() else 'gone'}, ready {w.alive() and w.ready()}"
            out.append(f"worker {w.pid} ({state}): {len(lines)} lines")
            out += [f"  {line[:240]}" for line in lines]
    except Exception as e:  # a diagnosis must not hide the failure it explains
        out.append(f"(diagnosis failed: {type(e).__name__}: {e})")
    return out


def _drive(lane: Lane, cell: Cell, ref: Reference, res: CellResult) -> LaneWorker | None:
    """Bring the job through its protocol; returns the worker killed or stopped, if any."""
    job, kind, pos = cell.job, cell.kind, cell.position

    def fired() -> dict[str, Any] | None:
        return lane.proxy.fired(job)

    def final() -> bool:
        return (lane.status(job) or {}).get("state") in TERMINAL

    hit: dict[str, Any] | None = None
    if ref.cancel:
        # Whoever runs it (the first attempt, or one that took over) is held at chunk 1; the
        # cancel request comes once the point is reached, or, for points after it, right away.
        if not pos.after_cancel:
            hit = wait_until(fired, f"{job}: the fault point to be reached", GUARD_S)
        lane.holds.wait_held(job, timeout_s=GUARD_S)
        lane.s3.put_object(Bucket=lane.bucket, Key=f"cancel/{job}", Body=b"")
        if pos.after_cancel and pos.agent == "lease":
            wait_until(lambda: final() or fired(), f"{job}: cancelled or the beat", GUARD_S)
            if final() and not fired():
                # A heartbeat call after the cancel request exists only when a beat lands before
                # the cancellation ends the job: the reference run had one, this run did not. Not
                # a failure (nothing was injected); the job's invariants are still checked. (Any
                # kind: a stop cell at such a point waited 240 s for a beat that never came.)
                res.unreached = True
                return None
        if kind != "stop":
            wait_until(lambda: final() or fired(), f"{job}: cancelled", GUARD_S)  # then the hold can go
            wait_until(final, f"{job}: cancelled", GUARD_S)
    elif pos.agent == "lease":
        hit = wait_until(fired, f"{job}: the fault point to be reached", GUARD_S)
        lane.holds.release(job)
    if hit is None:
        hit = wait_until(fired, f"{job}: the fault point to be reached", GUARD_S)
    res.fired = True
    if kind not in ("kill", "stop"):
        return None
    victim = lane.worker_by_pid(hit.get("pid"))
    assert victim is not None, f"the {kind} point fired on no known worker (pid {hit.get('pid')})"
    if kind == "kill":
        victim.proc.proc.wait(timeout=60)
        lane.replace_in_background()
        return victim
    # stop: the other worker takes the job over (lease and visibility lapse) and finishes it.
    try:
        wait_until(
            lambda: final() and lane.queue_empty(),
            f"{job}: another worker to finish the job while {victim.pid} is stopped",
            GUARD_S,
        )
    finally:
        os.kill(victim.pid, signal.SIGCONT)
        lane.proxy.release(job)
    return victim


def _check_victim(lane: Lane, victim: LaneWorker, kind: str, res: CellResult) -> None:
    if kind != "kill":
        return
    gone = [p for p in victim.descendants if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    if gone:
        try:
            wait_until(
                lambda: not [p for p in victim.descendants if _running(p)],
                f"the killed worker's children {victim.descendants} to exit",
                60,
            )
        except AssertionError:
            res.broken.append(
                f"I7: processes of the killed worker remain: {[p for p in victim.descendants if _running(p)]}"
            )


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _settle_or_reconcile(lane: Lane, job: str, res: CellResult) -> None:
    try:
        _settle(lane, job)
    except AssertionError:
        lane.reconcile()  # I1 allows one pass
        _settle(lane, job)
    lane.reconcile()  # I4 is checked after one pass


def _check(lane: Lane, job: str, ref: Reference, chunks: int, killed: LaneWorker | None, res: CellResult) -> None:
    broken = res.broken
    status = lane.status(job) or {}
    res.final = status.get("state")
    res.attempts = status.get("attempt", 0)
    if res.final != ref.final:
        broken.append(f"I0: ended {res.final} ({(status.get('error') or {}).get('code')}), reference {ref.final}")
    if res.final == "FAILED" and not ((status.get("error") or {}).get("code") and status["error"].get("message")):
        broken.append("I1: FAILED without a code and a message")
    result = _get_json(lane.s3, lane.bucket, f"results/{job}.json")
    named: set[str] = set()
    if (res.final == "COMPLETED") != (result is not None):
        broken.append(f"I2: state {res.final} but result {'present' if result else 'absent'}")
    if result is not None:
        named = {
            u.removeprefix(f"s3://{lane.bucket}/") for u in [result["audio"]["uri"], *result["subtitles"].values()]
        }
        _check_outputs(lane, result, named, broken)
        if len(lane.versions(f"results/{job}.json")) != 1:
            broken.append(f"I3: {len(lane.versions(f'results/{job}.json'))} result versions")
    left = set(lane.outputs(job))
    if left != named:
        broken.append(f"I4: outputs left {sorted(left - named)}, missing {sorted(named - left)}")
    _check_notes(lane, job, status, broken)
    for w in lane.workers:
        if w is killed:
            continue
        if w.alive() and not w.ready():
            broken.append(f"I6: worker {w.pid} is not ready")
        elif not w.alive() and w.proc.proc.returncode not in (None, -signal.SIGKILL):
            broken.append(f"I6: worker {w.pid} exited {w.proc.proc.returncode}")
    _check_calls(lane, job, status, chunks, killed, broken)


def _check_outputs(lane: Lane, result: dict[str, Any], named: set[str], broken: list[str]) -> None:
    audio_key = result["audio"]["uri"].removeprefix(f"s3://{lane.bucket}/")
    for key in sorted(named):
        try:
            data = lane.s3.get_object(Bucket=lane.bucket, Key=key)["Body"].read()
        except lane.s3.exceptions.NoSuchKey:
            broken.append(f"I2: the result names {key}, which does not exist")
            continue
        if key == audio_key:
            try:
                info = sf.info(io.BytesIO(data))
            except Exception as e:
                broken.append(f"I2: {key} does not decode: {e}")
                continue
            if abs(info.frames / info.samplerate - result["audio"]["duration_s"]) > 0.01:
                broken.append(
                    f"I2: {key} lasts {info.frames / info.samplerate:.3f}s, result {result['audio']['duration_s']}"
                )
            if len(lane.versions(key)) != 1:
                broken.append(f"I3: the named audio has {len(lane.versions(key))} versions")
        elif b"-->" not in data:
            broken.append(f"I2: subtitles {key} hold no cue")


def _check_notes(lane: Lane, job: str, status: dict[str, Any], broken: list[str]) -> None:
    finals = [h["state"] for h in status.get("history", []) if h["state"] in TERMINAL]
    with contextlib.suppress(AssertionError):  # what arrived is counted below
        wait_until(lambda: (lane.drain_notes(), len(lane.notes.get(job, [])) >= len(finals))[1], f"{job}'s notes", 60)
    lane.drain_notes()
    got = [n["state"] for n in lane.notes.get(job, [])]
    if sorted(got) != sorted(finals):
        broken.append(f"I5: notifications {got} for final states {finals}")


def _check_calls(
    lane: Lane, job: str, status: dict[str, Any], chunks: int, killed: LaneWorker | None, broken: list[str]
) -> None:
    calls = lane.calls(job)  # (worker, attempt) -> chunks the model rendered
    for (worker, n), items in sorted(calls.items()):
        if killed is not None and worker == killed.worker_id:
            continue  # killed mid-attempt: whatever it rendered died with it
        if items > chunks:
            broken.append(f"I8: attempt {n} ({worker}) rendered {items} chunks of {chunks}")
    trace = lane.proxy.trace()
    status_key, result_key = f"status/{job}.json", f"results/{job}.json"
    landed = [e for e in trace if e["op"] == "S3 PutObject" and e.get("status") == 200]
    result_at = next((e["seq"] for e in landed if e["keys"] == [result_key]), None)
    if result_at is None:
        return
    claimed: dict[int, int] = {}  # attempt -> seq of its claim
    for e in landed:
        if e["keys"] == [status_key] and e.get("state") == "PROCESSING" and e.get("attempt"):
            claimed.setdefault(e["attempt"], e["seq"])
    for n, seq in sorted(claimed.items()):
        rendered = sum(items for (_, a), items in calls.items() if a == n)
        if seq > result_at and rendered:
            broken.append(f"I8: attempt {n} began after the result existed and rendered {rendered} chunks")


def _interleaved(cells: list[Cell]) -> list[Cell]:
    """Cells that kill or stop a worker spread evenly among the others: a lane's replacement
    worker starts while it runs cheaper cells, and the slow ones do not all come last."""
    slow = [c for c in cells if c.kind in ("kill", "stop")]
    fast = [c for c in cells if c.kind not in ("kill", "stop")]
    if not slow:
        return fast
    out, step = [], max(1, len(fast) // len(slow))
    for i, c in enumerate(slow):
        out.append(c)
        out.extend(fast[i * step : (i + 1) * step])
    out.extend(fast[len(slow) * step :])
    return out


# -- the sweep ---------------------------------------------------------------------------------


@dataclass
class Sweep:
    lanes: list[Lane]
    results: list[CellResult] = field(default_factory=list)
    positions: dict[str, list[Position]] = field(default_factory=dict)
    chunks: dict[str, int] = field(default_factory=dict)

    def record_references(self) -> None:
        refs = list(REFERENCES)
        errors: list[str] = []

        def work(lane: Lane, ref: Reference) -> None:
            try:
                self.positions[ref.name], self.chunks[ref.name] = run_reference(lane, ref, f"ref-{ref.name}")
            except BaseException as e:
                errors.append(f"{ref.name}: {e}\n{traceback.format_exc()}")

        for i in range(0, len(refs), len(self.lanes)):
            threads = [
                threading.Thread(target=work, args=(lane, ref))
                for lane, ref in zip(self.lanes, refs[i : i + len(self.lanes)], strict=False)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, "\n".join(errors)
        for ref in refs:
            print(f"{ref.name}: {len(self.positions[ref.name])} positions, {self.chunks[ref.name]} chunks")
            for p in self.positions[ref.name]:
                print(f"  #{p.index:02d} {p.label}{' (after the cancel request)' if p.after_cancel else ''}")

    def all_cells(self) -> list[Cell]:
        cells, serial = [], 0
        for ref in REFERENCES:
            for pos in self.positions[ref.name]:
                for kind in pos.kinds():
                    serial += 1
                    cells.append(Cell(pos, kind, serial))
        return cells

    def subset(self, seed: int) -> list[Cell]:
        """Every position once, the kinds rotated by ``seed``."""
        cells, serial, i = [], 0, seed
        for ref in REFERENCES:
            for pos in self.positions[ref.name]:
                kinds = pos.kinds()
                serial += 1
                cells.append(Cell(pos, kinds[i % len(kinds)], serial))
                i += 1
        return cells

    def run(self, cells: list[Cell], progress: Callable[[str], None] = print) -> None:
        todo: queue_mod.Queue[Cell] = queue_mod.Queue()
        for c in _interleaved(cells):
            todo.put(c)
        refs = {r.name: r for r in REFERENCES}
        lock = threading.Lock()

        def lane_loop(lane: Lane) -> None:
            while True:
                try:
                    cell = todo.get_nowait()
                except queue_mod.Empty:
                    return
                try:
                    res = run_cell(lane, cell, self.chunks[cell.position.ref], refs[cell.position.ref])
                except BaseException as e:
                    res = CellResult(cell, [f"harness: {type(e).__name__}: {e}"])
                with lock:
                    self.results.append(res)
                    done = len(self.results)
                progress(f"[{done}/{len(cells)}] {'ok ' if res.passed else 'FAIL'} {res.seconds:5.1f}s {cell.job}")
                if not res.passed:
                    progress("      " + res.describe())

        threads = [threading.Thread(target=lane_loop, args=(lane,)) for lane in self.lanes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for lane in self.lanes:  # late duplicates of a notification count against their cell
            lane.drain_notes()
        for res in self.results:
            lane = next(lane for lane in self.lanes if lane.status(res.cell.job) is not None)
            got = lane.notes.get(res.cell.job, [])
            finals = [
                h["state"] for h in (lane.status(res.cell.job) or {}).get("history", []) if h["state"] in TERMINAL
            ]
            if res.passed and sorted(n["state"] for n in got) != sorted(finals):
                res.broken.append(f"I5: notifications {[n['state'] for n in got]} for final states {finals} (late)")

    def matrix(self) -> dict[str, Any]:
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for res in self.results:
            p = res.cell.position
            row = rows.setdefault((p.ref, p.index), {"ref": p.ref, "index": p.index, "position": p.label, "kinds": {}})
            cell = row["kinds"].setdefault(res.cell.kind, {"passed": 0, "failed": 0})
            cell["passed" if res.passed else "failed"] += 1
        return {
            "kinds": list(KINDS),
            "rows": [rows[k] for k in sorted(rows)],
            "cells": len(self.results),
            "failed": sum(1 for r in self.results if not r.passed),
        }
