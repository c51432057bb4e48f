"""The Jepsen-style nemesis (tests/nemesis/harness.py) on the real stack, one test per seed.

``make test`` runs two short seeds (``TTS_NEMESIS_SHORT_SEEDS``, default ``1,2``); ``make nemesis``
runs the long schedules for ``TTS_NEMESIS_SEEDS`` (default ``0-19``; "3", "0-9", "1,5,7-9").
Each run's schedule, what fired when and the checker's findings go to
``.cache/nemesis/seed-<seed>-<short|long>.json``; the figures of the seeds that passed go to
``.cache/nemesis/summary.json`` (for a docs script).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from tests.nemesis.checker import Verdict, check
from tests.nemesis.harness import Run
from tests.nemesis.schedule import RETRY_BUDGET_S, SETTINGS, Schedule, draw
from tests.sweep.harness import Lane

OUT = Path(__file__).resolve().parents[2] / ".cache" / "nemesis"
_passed: list[dict[str, Any]] = []  # this session's passing runs, for summary.json


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


SHORT_SEEDS = parse_seeds(os.environ.get("TTS_NEMESIS_SHORT_SEEDS", "1,2"))
SEEDS = parse_seeds(os.environ.get("TTS_NEMESIS_SEEDS", "0-19"))


class LanePool:
    """Each run gets a fresh lane (its own stack, proxy and workers: seeds stay independent); the
    next test's lane is built in the background while this one runs (the setup is a third of a
    short seed's time)."""

    def __init__(self, make_stack: Any, upstream: str, root: Path) -> None:
        self.make_stack, self.upstream, self.root = make_stack, upstream, root
        self.executor = ThreadPoolExecutor(1)
        self.next: Future[Lane] | None = None
        self.count = 0

    def _build(self) -> Lane:
        self.count += 1
        name = f"nm{os.getpid()}-{self.count}"
        return Lane(name, self.make_stack, self.upstream, self.root / name, worker_settings=SETTINGS)

    def take(self, prefetch: bool) -> Lane:
        lane = self.next.result() if self.next is not None else self._build()
        self.next = self.executor.submit(self._build) if prefetch else None
        return lane

    def close(self) -> None:
        if self.next is not None:
            self.next.result().close()
        self.executor.shutdown()


@pytest.fixture(scope="module")
def pool(make_stack: Any, localstack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LanePool]:
    p = LanePool(make_stack, localstack.endpoint, tmp_path_factory.mktemp("nemesis"))
    yield p
    p.close()


@pytest.fixture
def lane(pool: LanePool, request: pytest.FixtureRequest) -> Lane:
    """A fresh lane; one is prefetched when a later selected test of this session needs one."""
    items = request.session.items
    later = items[items.index(request.node) + 1 :] if request.node in items else []
    return pool.take(prefetch=any("lane" in i.fixturenames for i in later))


@pytest.mark.integration
@pytest.mark.faults
@pytest.mark.parametrize("seed", SHORT_SEEDS)
def test_short_nemesis_schedule(seed: int, lane: Lane, tmp_path: Path) -> None:
    """A short seeded schedule of jobs and overlapping faults: every job's history intact."""
    _run_seed(draw(seed, short=True), lane, tmp_path)


@pytest.mark.nemesis
@pytest.mark.integration
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", SEEDS)
def test_nemesis_schedule(seed: int, lane: Lane, tmp_path: Path) -> None:
    """A long seeded schedule (more jobs, more and longer faults)."""
    _run_seed(draw(seed, short=False), lane, tmp_path)


SCHEDULE_FILES = [p for p in os.environ.get("TTS_NEMESIS_SCHEDULE", "").split(",") if p]


@pytest.mark.nemesis
@pytest.mark.integration
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", SCHEDULE_FILES)
def test_recorded_schedule(path: str, lane: Lane, tmp_path: Path) -> None:
    """Schedules from files (``TTS_NEMESIS_SCHEDULE``, comma-separated: a run's record, or its
    "schedule" with events dropped by hand): to replay a failure, or to check that a smaller
    schedule still fails."""
    doc = json.loads(Path(path).read_text())
    schedule = Schedule.from_dict(doc.get("schedule", doc))
    if schedule.settings != SETTINGS:  # the lanes run today's clock: the record says which it had
        print(f"{path}: recorded with {schedule.settings}, replayed with {SETTINGS}")
        schedule.settings = dict(SETTINGS)
    _run_seed(schedule, lane, tmp_path)


def _run_seed(schedule: Schedule, lane: Lane, tmp_path: Path) -> None:
    t0 = time.monotonic()
    run = Run(lane, schedule, tmp_path)
    try:
        run.start()
        run.play()
        run.heal()
        run.settle()
        verdict = check(run)
    finally:
        problems = run.close()
    seconds = round(time.monotonic() - t0, 1)
    path = _write_record(run, verdict, seconds, problems)
    if not verdict.passed or problems:  # the workers' logs and the proxy's trace, for whoever looks
        shutil.copytree(lane.workdir, path.with_suffix(""), dirs_exist_ok=True)
    if not verdict.passed or problems:
        pytest.fail(_message(run, verdict, problems, path), pytrace=False)
    _passed.append({**verdict.figures, "seconds": seconds})
    _write_summary()


def _write_record(run: Run, verdict: Verdict, seconds: float, problems: list[str]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    s = run.schedule
    path = OUT / f"seed-{s.seed}-{'short' if s.short else 'long'}.json"
    doc = {
        "schedule": s.as_dict(),
        "retry_budget_s": RETRY_BUDGET_S,
        "fired": [asdict(f) for f in run.fired],
        "reconciler": run.reports,
        "stream": {"status": run.stream.status, "job": run.stream.job, "bytes": len(run.stream.data)}
        | {"error": run.stream.error},
        "jobs": [asdict(o) for o in verdict.jobs],
        "broken": verdict.broken + problems,
        "figures": verdict.figures,
        "seconds": seconds,
    }
    path.write_text(json.dumps(doc, indent=1, default=str))
    return path


def _message(run: Run, verdict: Verdict, problems: list[str], path: Path) -> str:
    s = run.schedule
    lines = [f"nemesis seed {s.seed} ({'short' if s.short else 'long'}) broke invariants; record: {path}"]
    lines += [f"  {b}" for b in verdict.broken + problems]
    for o in verdict.jobs:
        if not o.broken:
            continue
        ended = f"{o.final}{f' {o.code}' if o.code else ''}"
        lines.append(f"  job {o.job} ({o.kind}) ended {ended}, life {o.life[0]}-{o.life[1]}s:")
        lines += [f"    {b}" for b in o.broken]
        smaller = _around(s, o.job, o.life)
        lines.append("    events that overlapped its life (the minimal schedule to try first):")
        lines += [f"      {e.label()}" for e in smaller.events] or ["      (none)"]
        replay = path.with_name(f"{path.stem}-{o.job}.json")
        replay.write_text(json.dumps(smaller.as_dict(), indent=1))
        lines.append(f"    replay: TTS_NEMESIS_SCHEDULE={replay} .venv/bin/pytest -m nemesis tests/nemesis -k recorded")
    lines.append(s.describe())
    lines.append(f"rerun: TTS_NEMESIS_{'SHORT_' if s.short else ''}SEEDS={s.seed}")
    return "\n".join(lines)


def _around(s: Schedule, job: str, life: tuple[float, float]) -> Schedule:
    """The failing job alone (an API job keeps its slot) with the events that overlapped its life."""
    jobs = [j for j in s.jobs if j.job == job] or [j for j in s.jobs if j.kind == "api"]
    events = [e for e in s.events if e.overlaps(*life) and (e.job is None or e.job == job)]
    return Schedule(s.seed, s.short, s.duration, jobs, events, s.settings)


def _commit() -> str | None:
    """The checkout the seeds ran on (``+`` when it had uncommitted changes), for the docs."""
    root = OUT.parents[1]
    try:
        git = {"cwd": root, "capture_output": True, "text": True}
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline"], **git)
    except OSError:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def _write_summary() -> None:
    jobs: dict[str, int] = {}
    faults: dict[str, int] = {}
    for r in _passed:
        for k, v in r["jobs_by_final_state"].items():
            jobs[k] = jobs.get(k, 0) + v
        for k, v in r["faults_by_kind"].items():
            faults[k] = faults.get(k, 0) + v
    summary = {
        "seeds": [r["seed"] for r in _passed],
        "runs": _passed,
        "jobs_by_final_state": jobs,
        "faults_by_kind": faults,
        "checks_passed": len(_passed),
        "retry_budget_s": RETRY_BUDGET_S,
        "settings": SETTINGS,
        "commit": _commit(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
