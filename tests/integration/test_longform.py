"""Long-form jobs: 100,000 characters in one job, chunks durable as they finish, and a job whose
worker is killed (-9) resumes from its durable chunks instead of starting over.

One worker (with fault holds) runs three jobs at once: a short job straight through (A), the same
manifest held after 2 chunks (B), and the 100,000-character job held after 20 chunks (L). With B
and L held, the chunks they finished are listed in S3, then the worker is killed. A second worker
takes both over once their leases lapse; its metrics count what it synthesised and what it reused,
and B's audio must equal A's byte for byte.
"""

from __future__ import annotations

import json
import re
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.runtime import scratch
from tests.helpers import (
    REF_TEXT,
    Holds,
    WorkerProcess,
    aws,
    drop_manifest,
    get_json,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
)
from tests.integration.test_text import _check_marks

pytestmark = pytest.mark.integration

NAME = "longform"
VISIBILITY_S = 6
SHORT = "This is a sentence of moderate length. " * 12  # a few chunks with the test voice
HELD_SHORT = 2
HELD_LONG = 20
LONG_CHARS = 100_000
# Written only after every assertion passed; docs/benchmarks.md quotes it.
FIGURES = Path(__file__).resolve().parents[2] / ".cache" / "longform" / "figures.json"


def long_text(n: int = LONG_CHARS) -> str:
    """Prose of exactly ``n`` characters, with numbers, money and dates to normalise."""
    words = ["river", "stone", "quiet", "morning", "lantern", "harbor", "walked", "gently", "across", "the"]
    words += ["old", "market", "square"]
    sentences = []
    i = 0
    while sum(len(s) + 1 for s in sentences) < n:
        w = [words[(i * 7 + k * 3) % len(words)] for k in range(6 + i % 5)]
        extra = ["", f" in {1900 + i % 120}", f" for ${i % 50}.{i % 100:02d}", f" on day {i % 28 + 1}"][i % 4]
        sentences.append(" ".join(w).capitalize() + extra + ".")
        if i % 9 == 8:
            sentences[-1] += "\n"
        i += 1
    text = " ".join(sentences)
    return text[: n - 1].rstrip().ljust(n - 1, "a") + "."


@pytest.fixture(scope="module")
def env(make_stack: Any) -> dict[str, str]:
    e = make_stack(NAME)
    aws(e, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return e


def _worker(env: dict[str, str], log: Path, holds: Holds | None = None) -> WorkerProcess:
    w = start_worker(
        env,
        log,
        visibility_timeout_s=VISIBILITY_S,
        heartbeat_interval_s=1,
        progress_interval_s=0.5,
        job_timeout_s=3600,
        **(holds.settings if holds else {}),
    )
    wait_ready(w)
    return w


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        stop_worker(w)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _chunks(s3: Any, job_id: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=NAME, Prefix=f"outputs/{job_id}/chunks/")
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


def _chunk_metrics(w: WorkerProcess) -> dict[str, float]:
    m = w.metrics()
    return {src: m.get(f'tts_chunks_total{{source="{src}"}}', 0.0) for src in ("synthesized", "reused")}


def _scratch_of(env: dict[str, str], pid: int) -> Path:
    top = scratch.root(env.get("TMPDIR") or tempfile.gettempdir())
    found = list(top.glob(f"{pid}-*"))
    assert len(found) == 1, (top, found)
    return found[0]


def test_long_job_resumes_after_kill_9_from_its_durable_chunks(
    env: dict[str, str], s3: Any, holds: Holds, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    text = long_text()
    assert len(text) == LONG_CHARS
    base = {"voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 1}
    short = {**base, "text": SHORT, "seed": 3}
    # Speed 4 packs the most text into each second of audio that the aligner can still place.
    long = {**base, "text": text, "speed": 4.0, "output_format": "wav"}
    holds.hold("lf-b", after_chunks=HELD_SHORT, attempts=[1])
    holds.hold("lf-long", after_chunks=HELD_LONG, attempts=[1])
    w1 = _worker(env, tmp_path / "w1.log", holds)
    workers.append(w1)
    for job_id, manifest in (("lf-a", short), ("lf-b", short), ("lf-long", long)):
        drop_manifest(env, tmp_path, job_id, manifest, bucket=NAME)
    assert wait_for_state(s3, "lf-a", worker=w1, bucket=NAME, timeout_s=600)["state"] == "COMPLETED"
    held = {j: holds.wait_held(j, w1, timeout_s=1800) for j in ("lf-b", "lf-long")}

    # Partial outputs: what was finished is durable and listable, audio + record per chunk.
    for job_id, n in (("lf-b", HELD_SHORT), ("lf-long", HELD_LONG)):
        assert held[job_id]["chunks_done"] == n
        keys = _chunks(s3, job_id)
        assert len([k for k in keys if k.endswith(".flac")]) == n, keys
        assert len([k for k in keys if k.endswith(".json")]) == n, keys
        assert [int(Path(k).name[:5]) for k in sorted(k for k in keys if k.endswith(".flac"))] == list(range(n))
    status = get_json(s3, "status/lf-long.json", NAME)
    assert status is not None and status["progress"]["chunks_prefix"] == "outputs/lf-long/chunks/"
    total_long = held["lf-long"]["chunks_total"]
    total_short = held["lf-b"]["chunks_total"]
    assert total_long > HELD_LONG * 3

    # What w1 has in /tmp is all under its scratch directory (pipeline.runtime.scratch).
    w1_scratch = _scratch_of(env, w1.proc.pid)
    assert w1_scratch.is_dir(), w1_scratch
    w1.proc.send_signal(signal.SIGKILL)
    w1.proc.wait()
    assert w1_scratch.is_dir()  # a kill runs no cleanup
    # The successor holds the long job once more, a third of the way in: the memory it gains from
    # there to the end is what rendering the remaining two thirds cost.
    mid = total_long // 3
    holds.hold("lf-long", after_chunks=mid, attempts=[2])
    (holds.root / "held" / "lf-long").unlink()  # the killed worker's marker
    w2 = _worker(env, tmp_path / "w2.log", holds)
    workers.append(w2)
    assert holds.wait_held("lf-long", w2, timeout_s=1800)["attempt"] == 2
    assert not w1_scratch.exists(), "the successor's start did not remove what the killed worker left"
    rss_mid = _peak_rss_kib(w2.proc.pid)
    holds.release("lf-long")
    for job_id in ("lf-b", "lf-long"):
        assert wait_for_state(s3, job_id, worker=w2, bucket=NAME, timeout_s=3600)["state"] == "COMPLETED"
    rss_end = _peak_rss_kib(w2.proc.pid)

    # The successor synthesised only what was missing, and reused the rest.
    counts = _chunk_metrics(w2)
    assert counts["reused"] == HELD_SHORT + HELD_LONG
    assert counts["synthesized"] == (total_short - HELD_SHORT) + (total_long - HELD_LONG)
    rb = get_json(s3, "results/lf-b.json", NAME)
    rl = get_json(s3, "results/lf-long.json", NAME)
    ra = get_json(s3, "results/lf-a.json", NAME)
    assert rb and rl and ra
    assert (rb["chunks_reused"], rl["chunks_reused"], ra["chunks_reused"]) == (HELD_SHORT, HELD_LONG, 0)
    status = get_json(s3, "status/lf-long.json", NAME)
    assert status is not None and status["attempt"] == 2

    # Resumed is exact: B (killed and resumed) has A's audio (uninterrupted, same manifest).
    def audio(r: dict[str, Any]) -> bytes:
        return s3.get_object(Bucket=NAME, Key=r["audio"]["uri"].removeprefix(f"s3://{NAME}/"))["Body"].read()

    assert audio(rb) == audio(ra)
    assert rb["word_timings"] == ra["word_timings"]

    # The long job's marks are monotonic and cover the text; nothing was skipped.
    assert not [w for w in rl["warnings"] if w["code"] == "ALIGNMENT_SKIPPED"], rl["warnings"]
    _check_marks(text, rl)
    assert rl["chunks"] == total_long and rl["text"] == text
    assert len(rl["sentences"]) >= len(re.findall(r"\.", text)) // 2

    # Bounded memory: the last two thirds of the job, published, cost less than holding their
    # audio would (as float32, what the model produces). What does grow with the text is the
    # speech marks the result document carries.
    after_mid_kib = rl["audio"]["duration_s"] * (total_long - mid) / total_long * rl["audio"]["sample_rate"] * 4 / 1024
    growth_kib = rss_end - rss_mid
    assert growth_kib < after_mid_kib, (growth_kib, after_mid_kib)

    # A finished job's chunks are gone, before its final status is written: its audio replaces them.
    for job_id in ("lf-a", "lf-b", "lf-long"):
        assert _chunks(s3, job_id) == []
    figures = {
        "long_chars": len(text),
        "long_chunks": total_long,
        "long_audio_s": rl["audio"]["duration_s"],
        "long_audio_bytes": rl["audio"]["bytes"],
        "chunks_reused_after_kill": counts["reused"],
        "chunks_synthesized_after_kill": counts["synthesized"],
        "words": len(rl["word_timings"]),
        "sentences": len(rl["sentences"]),
        "peak_rss_at_a_third_mib": round(rss_mid / 1024, 1),
        "peak_rss_at_end_mib": round(rss_end / 1024, 1),
        "rest_audio_float32_mib": round(after_mid_kib / 1024, 1),
    }
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")
