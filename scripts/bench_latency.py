"""Issue 19's latency benchmarks in one run (CPU, tiny random bundle, real LocalStack, one worker).

    python scripts/bench_latency.py [ttfa] [priority] [overhead]    # default: all of them

* ``ttfa`` (scripts/latency/ttfa.py): time to first audio / time to last byte of a 10-sentence
  request through the streaming speech API, and what one poll for new chunks costs;
* ``priority`` (scripts/latency/priority.py): interactive latency with a bulk backlog against an
  idle worker; a second bulk submitter behind another's 200-job backlog;
* ``overhead`` (scripts/latency/overhead.py): per-job orchestration against a raw S3/SQS floor.

Each section starts its own stack and stops it. Figures go to stdout and
``docs/bench/latency-cpu.json`` (the figures docs/benchmarks.md quotes).
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "bench" / "latency-cpu.json"
SECTIONS = {"ttfa": "run", "priority": "measure", "overhead": "run"}


def main(argv: list[str]) -> int:
    wanted = argv or list(SECTIONS)
    unknown = [w for w in wanted if w not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    figures = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in wanted:
        module = importlib.import_module(f"scripts.latency.{name}")
        t0 = time.perf_counter()
        figures[name] = getattr(module, SECTIONS[name])()
        figures[name]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        figures[name]["recorded"] = time.strftime("%Y-%m-%d")
    figures["machine"] = f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores, tiny random bundle"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
