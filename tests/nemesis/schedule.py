"""The nemesis's seeded schedule: a workload and overlapping faults on a compressed clock.

Everything random is drawn here, from ``random.Random(seed)``, before anything runs: the same seed
gives the same schedule (what happens *because* of it still depends on this machine's timing,
which is why each run records what fired when). Times are seconds from the schedule's start.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.sweep.harness import WORKER_SETTINGS

# The compressed clock. The sweep's (6 s visibility/lease, 1.5 s beats, 2 s per call attempt), with
# a job-level retry budget (TTS_RETRY_MAX_S: 72 s, twelve leases) long enough that deliveries which
# skip the backoff (redelivered after a lease) come well inside it: an outage shorter than the
# budget must never fail a job (check (e), tests/nemesis/checker.py).
SETTINGS: dict[str, Any] = {**WORKER_SETTINGS, "retry_base_s": 6, "retry_max_s": 72}
MAX_RECEIVE_COUNT = 5  # pipeline/ops/bootstrap.py: deliveries before the DLQ
JITTER_LOW = 1.0  # pipeline/worker/backoff.py: jitter only lengthens a delay


def backoffs(settings: dict[str, Any] = SETTINGS) -> list[float]:
    """The shortest waits the policy puts between delivery d and d+1 (pipeline/worker/backoff.py):
    exponential steps, and a last gap (before the last delivery) of at least the budget."""
    base, budget = float(settings["retry_base_s"]), float(settings["retry_max_s"])
    steps = [JITTER_LOW * min(base * 2 ** (d - 1), max(budget, base)) for d in range(1, MAX_RECEIVE_COUNT - 1)]
    last = MAX_RECEIVE_COUNT - 1
    return [*steps, JITTER_LOW * max(base * 2 ** (last - 1), budget)]


RETRY_BUDGET_S = float(SETTINGS["retry_max_s"])  # an outage shorter than this never fails a job

# Fault kinds. Windows (start..end): proxy rules, or a stopped worker. Instants: the rest.
WINDOW_KINDS = ("s3_outage", "sqs_outage", "brownout", "visext", "stop")
INSTANT_KINDS = ("hang", "kill", "term", "reconcile", "failed_write_cancel")
FAMILIES = {
    "status": r"^status/",
    "results": r"^results/",
    "outputs": r"^outputs/",
    "chunks": r"^outputs/[^/]+/chunks/",
}
HANG_OPS = ("^S3 GetObject$", "^S3 PutObject$", "^S3 HeadObject$", "^SQS ReceiveMessage$", "^SQS DeleteMessage$")


@dataclass
class Job:
    job: str
    kind: str  # short | long | dialogue | api
    at: float  # submitted
    via: str = "s3"  # s3: the manifest put in the inbox; cli: `tts-pipeline submit` (QUEUED at once)


@dataclass
class Event:
    at: float
    kind: str  # a fault kind, or a workload action: cancel, dup, resubmit
    until: float | None = None  # end of a window
    job: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def overlaps(self, start: float, end: float) -> bool:
        return self.at <= end and (self.until if self.until is not None else self.at) >= start

    def label(self) -> str:
        span = f"{self.at:5.1f}-{self.until:5.1f}s" if self.until is not None else f"{self.at:5.1f}s      "
        detail = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{span} {self.kind}{f' {self.job}' if self.job else ''}{f' ({detail})' if detail else ''}"


@dataclass
class Schedule:
    seed: int
    short: bool
    duration: float
    jobs: list[Job]
    events: list[Event]
    settings: dict[str, Any] = field(default_factory=lambda: dict(SETTINGS))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Schedule:
        """A schedule as recorded (``.cache/nemesis/seed-*.json``'s "schedule"), maybe trimmed by hand."""
        jobs = [Job(**j) for j in doc["jobs"]]
        events = [Event(**e) for e in doc["events"]]
        return cls(doc["seed"], doc["short"], doc["duration"], jobs, events, doc.get("settings", dict(SETTINGS)))

    def describe(self) -> str:
        lines = [f"seed {self.seed} ({'short' if self.short else 'long'}, {self.duration:.0f}s):"]
        lines += [f"  {j.at:5.1f}s       submit {j.job} ({j.kind})" for j in sorted(self.jobs, key=lambda j: j.at)]
        lines += [f"  {e.label()}" for e in sorted(self.events, key=lambda e: e.at)]
        return "\n".join(lines)


def draw(seed: int, short: bool) -> Schedule:
    rng = random.Random(seed)
    duration = 30.0 if short else 60.0
    jobs = _workload(rng, seed, short, duration)
    client = _client_events(rng, jobs)
    cancelled = {e.job for e in client if e.kind == "cancel"}
    plain = [j for j in jobs if j.kind != "api"]
    targets = [j for j in plain if j.job not in cancelled] or plain  # for a failed final write
    events = client + _faults(rng, targets, short, duration)
    events.sort(key=lambda e: e.at)
    return Schedule(seed, short, duration, jobs, events)


def _workload(rng: random.Random, seed: int, short: bool, duration: float) -> list[Job]:
    kinds = ["short"] * (rng.randint(2, 3) if short else rng.randint(4, 7)) + ["long", "dialogue"]
    kinds += [] if short else ["long"] * rng.randint(0, 1)
    if not short or rng.random() < 0.5:
        kinds.append("api")
    rng.shuffle(kinds)
    return [
        Job(
            f"n{seed:04d}-{i:02d}-{kind}",
            kind,
            round(rng.uniform(0, duration * 0.5), 1),
            "cli" if kind == "short" and rng.random() < 0.4 else "s3",
        )
        for i, kind in enumerate(kinds)
    ]


def _client_events(rng: random.Random, jobs: list[Job]) -> list[Event]:
    """Cancels, duplicate S3 events and idempotent re-submits, each some time after the submit."""
    out: list[Event] = []
    plain = [j for j in jobs if j.kind != "api"]  # an API job's id is known only once it answers
    cancelled = {j.job for j in plain if rng.random() < 0.2} or {rng.choice(plain).job}
    for j in plain:
        if j.job in cancelled:
            out.append(Event(round(j.at + rng.uniform(0.5, 15), 1), "cancel", job=j.job))
        if rng.random() < 0.35:
            out.append(Event(round(j.at + rng.uniform(0, 10), 1), "dup", job=j.job))
        if rng.random() < 0.2:
            out.append(Event(round(j.at + rng.uniform(0, 20), 1), "resubmit", job=j.job))
    return out


def _faults(rng: random.Random, targets: list[Job], short: bool, duration: float) -> list[Event]:
    n = rng.randint(3, 4) if short else rng.randint(6, 9)
    kinds = [*WINDOW_KINDS, *INSTANT_KINDS]
    weights = [3, 2, 3, 2, 1, 1, 2, 1, 2, 2]
    out = [_fault(rng, k, targets, short, duration) for k in rng.choices(kinds, weights, k=n)]
    out.append(_fault(rng, "reconcile", targets, short, duration))  # at least one pass mid-run
    windows = [e for e in out if e.until is not None]
    if len(windows) >= 2:  # faults overlap: the second window starts inside the first
        a, b = windows[0], windows[1]
        length = b.until - b.at  # type: ignore[operator]
        b.at = round(rng.uniform(a.at, a.until), 1)  # type: ignore[arg-type]
        b.until = round(b.at + length, 1)
    return out


def _fault(rng: random.Random, kind: str, targets: list[Job], short: bool, duration: float) -> Event:
    at = round(rng.uniform(0, duration * 0.8), 1)
    longest = 15.0 if short else 60.0

    def window(lo: float, hi: float, **params: Any) -> Event:
        return Event(at, kind, until=round(at + rng.uniform(lo, hi), 1), params=params)

    if kind == "s3_outage":
        return window(3, longest, fault=rng.choice(["dropped", "reset"]))
    if kind == "sqs_outage":
        return window(3, min(longest, 30), fault=rng.choice(["dropped", "reset"]))
    if kind == "brownout":
        return window(3, min(longest, 30), family=rng.choice(sorted(FAMILIES)), fault="dropped")
    if kind == "visext":  # visibility extensions fail for half a lease to three leases
        vis = SETTINGS["visibility_timeout_s"]
        return window(vis * 0.5, vis * 3, fault="dropped")
    if kind == "stop":
        return window(2, 15, victim=rng.randrange(1000))
    if kind in ("kill", "term"):
        return Event(at, kind, params={"victim": rng.randrange(1000)})
    if kind == "hang":
        return Event(at, kind, params={"op": rng.choice(HANG_OPS), "count": rng.randint(1, 3)})
    if kind == "reconcile":
        return Event(at, kind, params={"older_than": round(rng.uniform(0.5, 8), 1)})
    if kind == "failed_write_cancel":
        # The job's COMPLETED write fails its whole budget (``times`` tries), then its next claims
        # (``claims`` tries of the PROCESSING write): a user's cancel meets it handed back QUEUED.
        target = rng.choice(targets)
        params = {"times": rng.randint(6, 8), "claims": rng.randint(6, 12)}
        return Event(target.at, kind, job=target.job, params=params)  # armed at submit
    raise ValueError(kind)
