"""The Jepsen-style nemesis on the real stack: a seeded schedule (tests/nemesis/schedule.py) of jobs
and overlapping faults runs against one sweep ``Lane`` (LocalStack, the fault proxy, two workers,
a notification queue), then everything is healed and left to settle, and the checker
(tests/nemesis/checker.py) reads the history back from S3 object versions, queue attributes, the
notification queue, the proxy's trace and the streamed bytes.

Who goes through the proxy: the workers, the console (speech API) and the reconciler passes made
*during* the schedule (faults hit them too). Clients (submits, ``tts-pipeline cancel``,
duplicate S3 events) and the settling reconciler passes go straight to LocalStack: they are
outside the faulted network, as a client on another network would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import TTS, add_library_voice, s3_event, start_console
from tests.nemesis.schedule import FAMILIES, Event, Job, Schedule
from tests.sweep.harness import REFERENCES, TERMINAL, Lane, LaneWorker

API_VOICE = "nemesis-voice"
API_TEXT = (
    "The first sentence is short. Then comes a much longer second sentence, which carries on for a "
    "while so that it fills a chunk of its own. A third sentence closes the request. "
) * 4
SETTLE_DEADLINE_S = 900.0  # a hang guard: a broken run fails instead of hanging, nothing is timed
RECONCILE_EVERY_S = 8.0  # while settling
SETTLE_OLDER_THAN_S = 3.0  # the settling passes' threshold (small: the clock moved on)
REF = {r.name: r for r in REFERENCES}
LONG_TIMES = 5


@dataclass
class Stream:
    """A speech-API request streamed through the console, kept for check (f)."""

    status: int | None = None
    job: str | None = None
    data: bytes = b""
    error: str | None = None
    done: bool = False


@dataclass
class Fired:
    """What the runner did, when (seconds from the schedule's start), to what."""

    at: float
    kind: str
    event: int | None  # index into the schedule's events (None: a job's submit)
    detail: dict[str, Any] = field(default_factory=dict)


class Run:
    """One seed: applies its schedule to a lane, heals, settles; the record the checker reads."""

    def __init__(self, lane: Lane, schedule: Schedule, workdir: Path) -> None:
        self.lane = lane
        self.schedule = schedule
        self.workdir = workdir
        self.fired: list[Fired] = []
        self.t0 = 0.0
        self.wall0 = 0.0
        self.stream = Stream()
        self.reports: list[dict[str, Any]] = []  # reconciler passes: {at, end, through_proxy, rc, report}
        self.killed: set[int] = set()  # pids killed (SIGKILL) on purpose
        self.termed: set[int] = set()  # pids sent SIGTERM on purpose (a deploy)
        self.stopped: dict[int, int] = {}  # event index -> pid stopped
        self.submitted: dict[str, float] = {}  # job -> wall time of its submit
        self.console: subprocess.Popen[bytes] | None = None
        self.console_url = ""
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.settled = False
        self.dead: set[str] = set()  # ids of the DLQ's messages after settling (the checker's)

    # -- the schedule --------------------------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def record(self, kind: str, event: int | None, **detail: Any) -> None:
        with self.lock:
            self.fired.append(Fired(self.now(), kind, event, detail))

    def start(self) -> None:
        if any(j.kind == "api" for j in self.schedule.jobs):
            add_library_voice(self.lane.env, API_VOICE)
            clock = {f"TTS_{k.upper()}": str(v) for k, v in self.schedule.settings.items()}
            console_env = {**self.lane.worker_env, **clock}
            self.console, self.console_url = start_console(console_env, self.workdir / "console.log", api_wait_s="60")
        for j in self.schedule.jobs:
            if j.kind == "dialogue":
                self.lane.prepare(REF["dialogue"], j.job)  # its second voice, in the library

    def play(self) -> None:
        """Every submit and event at its time; windows closed at their end."""
        timeline: list[tuple[float, int, Any]] = [(j.at, 0, j) for j in self.schedule.jobs]
        for i, e in enumerate(self.schedule.events):
            timeline.append((e.at, 1, (i, e, "start")))
            if e.until is not None:
                timeline.append((e.until, 2, (i, e, "end")))
        timeline.sort(key=lambda x: (x[0], x[1]))
        self.t0, self.wall0 = time.monotonic(), time.time()
        for at, _, item in timeline:
            time.sleep(max(0.0, at - (time.monotonic() - self.t0)))
            try:
                if isinstance(item, Job):
                    self.submit(item)
                else:
                    self.apply(*item)
            except Exception as e:  # a client call failing is part of the history, not a harness error
                self.record("error", None, what=repr(item)[:200], error=f"{type(e).__name__}: {e}"[:300])
        time.sleep(max(0.0, self.schedule.duration - (time.monotonic() - self.t0)))

    def submit(self, job: Job) -> None:
        self.submitted[job.job] = time.time()
        if job.kind == "api":
            self._spawn(self._stream_request)
            self.record("submit", None, job=job.job, via="speech API")
            return
        if job.via == "cli":
            self._spawn(lambda: self.record("submit end", None, job=job.job, **self._cli_submit(job.job)))
        else:
            self._put_manifest(job.job, job.kind)
        self.record("submit", None, job=job.job, via=job.via)

    def _cli_submit(self, job: str) -> dict[str, Any]:
        """``tts-pipeline submit`` as a user runs it (QUEUED written before the manifest)."""
        m = self.manifest(job, "short")
        args = ["--text", m["text"], "--voice", m["voice"], "--ref-text", m["ref_text"], "--job-id", job]
        args += ["--nfe-step", str(m["nfe_step"]), "--seed", str(m["seed"]), "--json"]
        p = subprocess.run([TTS, "submit", *args], env=self.lane.env, capture_output=True, text=True, timeout=120)
        return {"rc": p.returncode, "out": "" if p.returncode == 0 else (p.stderr or p.stdout)[-200:]}

    def manifest(self, job: str, kind: str) -> dict[str, Any]:
        ref = {"short": "one-chunk", "long": "chunks", "dialogue": "dialogue"}[kind]
        doc = REF[ref].manifest(job)
        if kind == "long":  # five times the sweep's: many durable chunks, in flight while faults come
            doc["text"] = doc["text"] * LONG_TIMES
        return doc

    def _put_manifest(self, job: str, kind: str) -> None:
        body = json.dumps(self.manifest(job, kind)).encode()
        self.lane.s3.put_object(Bucket=self.lane.bucket, Key=f"inbox/{job}.json", Body=body)

    def apply(self, index: int, e: Event, phase: str) -> None:
        handler = getattr(self, f"_{e.kind}")
        detail = handler(index, e, phase) or {}
        self.record(f"{e.kind}{'' if phase == 'start' else ' end'}", index, **detail)

    # -- workload actions ----------------------------------------------------------------------

    def _cancel(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        # In the background: a CLI process takes a second or more on a loaded machine, and the
        # schedule's next events must not wait for it.
        self._spawn(lambda: self.record("cancel end", index, job=e.job, **self.cancel(e.job or "")))
        return {"job": e.job}

    def cancel(self, job: str) -> dict[str, Any]:
        """``tts-pipeline cancel`` as a user runs it (straight to LocalStack)."""
        p = subprocess.run([TTS, "cancel", job], env=self.lane.env, capture_output=True, text=True, timeout=60)
        out = (p.stdout.strip() or p.stderr.strip())[-200:]
        state = None
        with contextlib.suppress(ValueError, TypeError):
            state = json.loads(p.stdout).get("state")
        return {"rc": p.returncode, "state": state, "out": out if state is None else ""}

    def _dup(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        """A second S3 event for the manifest, once it exists: S3 sends events only for objects
        that were written (a ``tts-pipeline submit`` may still be on its way)."""
        key = f"inbox/{e.job}.json"
        if self._exists(key):
            self._send_event(key)
            return {}
        self._spawn(lambda: self._dup_later(index, key))
        return {"postponed": "until the manifest exists"}

    def _dup_later(self, index: int, key: str) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not self.settled and not self._exists(key):
            time.sleep(0.2)
        if self._exists(key):
            self._send_event(key)
            self.record("dup (postponed)", index)

    def _exists(self, key: str) -> bool:
        return self.lane.s3.list_objects_v2(Bucket=self.lane.bucket, Prefix=key).get("KeyCount", 0) > 0

    def _send_event(self, key: str) -> None:
        url = self.lane.sqs.get_queue_url(QueueName=self.lane.bucket)["QueueUrl"]
        self.lane.sqs.send_message(QueueUrl=url, MessageBody=s3_event(self.lane.bucket, key))

    def _resubmit(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        job = next(j for j in self.schedule.jobs if j.job == e.job)
        if job.via == "cli":  # a client retrying its submit: refused (job ids are single-use)
            self._spawn(lambda: self.record("resubmit end", index, job=job.job, **self._cli_submit(job.job)))
            return {"via": "cli"}
        self._put_manifest(job.job, job.kind)  # the same manifest again: a second S3 event
        return {}

    def _stream_request(self) -> None:
        body = json.dumps({"model": "tts-1", "voice": API_VOICE, "input": API_TEXT, "response_format": "pcm"})
        req = urllib.request.Request(
            f"{self.console_url}/v1/audio/speech",
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        s, sent = self.stream, time.time()
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                s.status, s.job = resp.status, resp.headers.get("x-job-id")
                self.submitted[s.job or ""] = sent
                while part := resp.read(65536):
                    s.data += part
        except urllib.error.HTTPError as e:
            s.status, s.job, s.error = e.code, e.headers.get("x-job-id"), f"HTTP {e.code}: {e.read()[:300]!r}"
        except Exception as e:  # cut short mid-stream: "the stream ended in an error"
            s.error = f"{type(e).__name__}: {e}"[:300]
        finally:
            s.done = True
            self.record("stream end", None, job=s.job, status=s.status, bytes=len(s.data), error=s.error)

    # -- faults --------------------------------------------------------------------------------

    def _rule(self, index: int, e: Event, phase: str, **match: Any) -> dict[str, Any]:
        ident = f"e{index}"
        if phase == "end":
            self.lane.proxy.remove_rules([ident])
            return {}
        self.lane.proxy.add_rules([{"id": ident, "kind": e.params["fault"], "times": -1, **match}])
        return {}

    def _s3_outage(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        return self._rule(index, e, phase, op="^S3 ")

    def _sqs_outage(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        return self._rule(index, e, phase, op="^SQS ")

    def _brownout(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        return self._rule(index, e, phase, op="^S3 ", key=FAMILIES[e.params["family"]])

    def _visext(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        return self._rule(index, e, phase, op="^SQS ChangeMessageVisibility")

    def _hang(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        rule = {"id": f"e{index}", "op": e.params["op"], "agent": "worker", "kind": "hang", "hang_s": 30}
        self.lane.proxy.add_rules([{**rule, "times": e.params["count"]}])
        return {}

    def _victim(self, e: Event) -> LaneWorker | None:
        spared = {*self.stopped.values(), *self.termed, *self.killed}  # already hit: the next one is picked
        alive = sorted((w for w in self.lane.workers if w.alive() and w.pid not in spared), key=lambda w: w.pid)
        return alive[e.params["victim"] % len(alive)] if alive else None

    def _kill(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        w = self._victim(e)
        if w is None:
            return {"victim": None}
        self.killed.add(w.pid)
        os.kill(w.pid, signal.SIGKILL)
        self.lane.replace_in_background()
        return {"pid": w.pid}

    def _term(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        w = self._victim(e)  # a deploy: the old worker drains, a new one starts beside it
        if w is None:
            return {"victim": None}
        self.termed.add(w.pid)
        os.kill(w.pid, signal.SIGTERM)
        self.lane.replace_in_background()
        return {"pid": w.pid}

    def _stop(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        if phase == "end":
            pid = self.stopped.pop(index, None)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            return {"pid": pid}
        w = self._victim(e)
        if w is None:
            return {"victim": None}
        self.stopped[index] = w.pid
        os.kill(w.pid, signal.SIGSTOP)
        return {"pid": w.pid}

    def _reconcile(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        self._spawn(lambda: self.reconcile(e.params["older_than"], through_proxy=True))
        return {}

    def reconcile(self, older_than: float, *, through_proxy: bool) -> dict[str, Any]:
        """``tts-pipeline reconcile --older-than N --all``, its report kept for the checker."""
        env = self.lane.worker_env if through_proxy else {**self.lane.env, "TTS_NOTIFY_TOPIC_ARN": self.lane.topic}
        clock = ("visibility_timeout_s", "heartbeat_interval_s", "retry_base_s", "retry_max_s")
        extra = {f"TTS_{k.upper()}": str(self.schedule.settings[k]) for k in clock}
        start = time.time()
        cmd = [TTS, "reconcile", "--older-than", str(older_than), "--all"]
        try:
            p = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=120)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", "timed out"
        report: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            report = json.loads(out)
        doc = {"at": start, "end": time.time(), "through_proxy": through_proxy, "rc": rc, "report": report}
        if report is None:
            doc["stderr"] = err[-500:]
        with self.lock:
            self.reports.append(doc)
        return doc

    def _failed_write_cancel(self, index: int, e: Event, phase: str) -> dict[str, Any]:
        """The job's COMPLETED status write fails its whole retry budget (and more); a user cancels
        while it fails, and again once the job is handed back QUEUED."""
        self.lane.proxy.add_rules([_status_rule(f"e{index}", e.job or "", "COMPLETED", e.params["times"])])
        self._spawn(lambda: self._cancel_meets_failed_write(index, e.job or ""))
        return {}

    def _cancel_meets_failed_write(self, index: int, job: str) -> None:
        ident = f"e{index}"
        deadline = time.monotonic() + 300

        def hit() -> bool:
            return any(t.get("rule") == ident for t in self.lane.proxy.trace())

        while time.monotonic() < deadline and not self.settled and not hit():
            time.sleep(0.1)
        if not hit():
            self.record("failed_write_cancel unreached", index, job=job)
            return
        claims = self.schedule.events[index].params["claims"]
        self.lane.proxy.add_rules([_status_rule(f"{ident}b", job, "PROCESSING", claims)])  # it stays QUEUED
        self.record("cancel (during the failed write)", index, job=job, **self.cancel(job))
        while time.monotonic() < deadline and not self.settled:
            status = self.lane.status(job) or {}
            if status.get("state") == "QUEUED" or status.get("state") in TERMINAL:
                break
            time.sleep(0.05)
        status = self.lane.status(job) or {}
        if status.get("state") == "QUEUED":
            self.record("cancel (handed back QUEUED)", index, job=job, **self.cancel(job))

    def _spawn(self, fn: Any) -> None:
        t = threading.Thread(target=fn, daemon=True)
        t.start()
        self.threads.append(t)

    # -- heal and settle -----------------------------------------------------------------------

    def heal(self) -> None:
        """Every window's rule removed (a count-limited fault, a hang or a failed final write, is
        left to fire: it ends by itself), every stopped worker continued, two workers running."""
        windows = [f"e{i}" for i, e in enumerate(self.schedule.events) if e.until is not None]
        self.lane.proxy.remove_rules(windows)
        for index, pid in list(self.stopped.items()):
            os.kill(pid, signal.SIGCONT)
            self.stopped.pop(index, None)
        self.record("heal", None)
        self.lane.ensure_two()

    def jobs(self) -> list[str]:
        out = [j.job for j in self.schedule.jobs if j.kind != "api"]
        return out + ([self.stream.job] if self.stream.job else [])

    def quiet(self) -> bool:
        """Every job final and notified, both queues empty, no worker holding a job."""
        if any(j.kind == "api" for j in self.schedule.jobs) and not self.stream.done:
            return False
        for job in self.jobs():
            status = self.lane.status(job)
            if status is None or status["state"] not in TERMINAL or status.get("notified_at") is None:
                return False
        if sum(queue_depth(self.lane).values()):
            return False
        return all(w.in_flight() == 0 for w in self.lane.workers if w.alive())

    def settle(self) -> bool:
        """Reconciler passes until quiet (or the hang guard); then one more pass (orphan outputs)."""
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        last = 0.0
        while time.monotonic() < deadline:
            if self.quiet():
                self.reconcile(SETTLE_OLDER_THAN_S, through_proxy=False)
                if self.quiet():
                    break
            if time.monotonic() - last >= RECONCILE_EVERY_S:
                self.reconcile(SETTLE_OLDER_THAN_S, through_proxy=False)
                last = time.monotonic()
            time.sleep(1.0)
        ok = self.quiet()
        self.settled = True
        for t in self.threads:
            t.join(timeout=150)
        self.record("settled" if ok else "settle deadline", None)
        return ok

    def close(self) -> list[str]:
        problems = []
        if self.console is not None:
            self.console.terminate()
            try:
                code = self.console.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.console.kill()
                code = self.console.wait()
            if code != 0:
                problems.append(f"console exited {code}")
        for pid in self.stopped.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return problems + self.lane.close()


def _status_rule(ident: str, job: str, state: str, times: int) -> dict[str, Any]:
    """The worker's writes of ``job``'s status in ``state`` fail (the next ``times`` requests)."""
    rule = {"id": ident, "op": "^S3 PutObject$", "key": rf"^status/{job}\.json$", "state": state}
    return {**rule, "agent": "worker", "kind": "dropped", "times": times}


def queue_depth(lane: Lane) -> dict[str, int]:
    """Messages on the main and interactive queues (visible, in flight, delayed) and in the DLQ."""
    out = {}
    for name in (lane.bucket, f"{lane.bucket}-interactive"):
        url = lane.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        names.append("ApproximateNumberOfMessagesDelayed")
        attrs = lane.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        out[name.removeprefix(lane.bucket).lstrip("-") or "main"] = sum(int(attrs.get(n, 0)) for n in names)
    return out


def dlq_depth(lane: Lane) -> int:
    url = lane.sqs.get_queue_url(QueueName=f"{lane.bucket}-dlq")["QueueUrl"]
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = lane.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attrs.get(n, 0)) for n in names)


def dead_letters(lane: Lane) -> set[str]:
    """The ids of the messages in the DLQ (received with a visibility timeout: read once, left there)."""
    url = lane.sqs.get_queue_url(QueueName=f"{lane.bucket}-dlq")["QueueUrl"]
    ids: set[str] = set()
    while True:
        msgs = lane.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        if not msgs:
            return ids
        ids.update(m["MessageId"] for m in msgs)
