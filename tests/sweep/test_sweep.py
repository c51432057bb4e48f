"""The fault-point sweep on the real stack (tests/sweep/harness.py says what it does).

``make test`` runs the subset: every position of every reference job once, the fault kinds rotated
by a seed it prints (``TTS_SWEEP_SEED`` picks one). ``make sweep`` runs every position × every
kind and writes the matrix docs/reliability.md shows (``scripts/reliability_report.py``).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import FIGURES_DIR
from tests.sweep.harness import Cell, Lane, Sweep

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _lanes(make_stack: Any, localstack: Any, tmp: Path, n: int) -> list[Lane]:
    with ThreadPoolExecutor(n) as pool:  # each starts two workers: side by side
        return list(pool.map(lambda i: Lane(f"sw{i}", make_stack, localstack.endpoint, tmp / f"lane{i}"), range(n)))


@pytest.fixture(scope="module")
def sweep(make_stack: Any, localstack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    lanes = _lanes(make_stack, localstack, tmp_path_factory.mktemp("sweep"), int(os.environ.get("TTS_SWEEP_LANES", 3)))
    s = Sweep(lanes)
    try:
        s.record_references()
        yield s
    finally:
        problems = [p for lane in lanes for p in lane.close()]
        assert not problems, problems


def _only(cells: list[Cell]) -> list[Cell]:
    """``TTS_SWEEP_ONLY``: a regular expression on "<reference> <position> <kind>" (to rerun cells)."""
    pattern = os.environ.get("TTS_SWEEP_ONLY")
    if not pattern:
        return cells
    return [c for c in cells if re.search(pattern, f"{c.position.ref} {c.position.label} {c.kind}")]


def _report(s: Sweep, label: str) -> str:
    failed = [r for r in s.results if not r.passed]
    lines = [f"{label}: {len(s.results)} cells, {len(failed)} failed"]
    lines += [f"  {r.describe()}" for r in failed]
    return "\n".join(lines)


@pytest.mark.timeout(3600)
def test_every_request_position_once_with_rotated_fault_kinds(sweep: Sweep) -> None:
    """Every request position of the five reference jobs gets one fault; which kind rotates with a
    seed printed here. Each cell's job ends in its reference's final state with I0-I8 intact."""
    seed = int(os.environ.get("TTS_SWEEP_SEED", random.SystemRandom().randrange(1000)))
    print(f"\nfault sweep subset: seed {seed} (TTS_SWEEP_SEED={seed} reruns these cells)")
    cells = sweep.subset(seed)
    assert len(cells) == sum(len(p) for p in sweep.positions.values()) > 40, "too few positions recorded"
    sweep.run(_only(cells))
    assert all(r.passed for r in sweep.results), _report(sweep, f"seed {seed}")


@pytest.mark.sweep
@pytest.mark.timeout(3 * 3600)
def test_every_request_position_with_every_fault_kind(sweep: Sweep) -> None:
    """The whole matrix: every position × every fault kind it can take."""
    t0 = time.monotonic()
    cells = _only(sweep.all_cells())
    sweep.run(cells)
    assert all(r.passed for r in sweep.results), _report(sweep, "full sweep")
    if os.environ.get("TTS_SWEEP_ONLY"):
        return  # a partial run is not the matrix
    matrix = sweep.matrix()  # recorded only once every cell has passed
    matrix["seconds"] = round(time.monotonic() - t0)
    matrix["lanes"] = len(sweep.lanes)
    matrix["positions"] = {ref: len(p) for ref, p in sweep.positions.items()}
    matrix["commit"] = _commit()
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / "sweep.json").write_text(json.dumps(matrix, indent=1))


def _commit() -> str:
    """The commit the sweep ran on (with "+" if the tree had changes), for the report."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"
