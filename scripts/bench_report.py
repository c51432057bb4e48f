"""Render docs/benchmarks.md from .cache/bench/*.json (written by `make bench`)."""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".cache" / "bench"
OUT = ROOT / "docs" / "benchmarks.md"


def main() -> int:
    cold = _load("cold_start")
    voice = _load("voice_cache")
    lines = [
        "# Benchmarks",
        "",
        "Side by side in one run each; ratios matter more than absolute numbers (LocalStack is a",
        "single Python process, not S3). Regenerate with `make bench`.",
        "",
        f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{cold.get('cpus', '?') if cold else '?'} CPU cores, Python {platform.python_version()}.",
        "",
    ]
    if cold:
        med = cold["cold_median_seconds"]
        cli = med.get("aws s3 cp --recursive")
        lines += [
            f"## Cold sync of a {cold['bundle_mb']} MB bundle from LocalStack",
            "",
            f"Checkpoint {cold['checkpoint_mb']} MB (random bytes in the real safetensors format), vocoder,",
            "aligner, ASR and vocab files of the tiny bundle. Median of "
            f"{cold['rounds']} interleaved rounds. *Ours* includes sha256 verification of every file and the",
            "atomic publish; the CLI neither verifies nor publishes atomically; runai-model-streamer reads",
            "only the checkpoint, into memory.",
            "",
            "| method | median s | all rounds s | vs aws s3 cp |",
            "|---|---|---|---|",
        ]
        for name, m in med.items():
            ratio = f"{cli / m:.2f}x" if cli else "–"
            lines.append(f"| {name} | {m} | {', '.join(map(str, cold['cold_seconds'][name]))} | {ratio} |")
        phases = cold.get("ours_phase_seconds_median", {})
        if phases:
            lines += [
                "",
                "Where *ours* spends its time (median seconds):",
                "",
                "| config | resolve | download | verify |",
                "|---|---|---|---|",
            ]
            lines += [f"| {n} | {p['resolve']} | {p['download']} | {p['verify']} |" for n, p in phases.items()]
            lines += [
                "",
                f"sha256 runs at {cold.get('sha256_mb_per_s', '?')} MB/s on this CPU (SHA-NI). Each file is hashed the",
                "moment its download completes, overlapping the other downloads; with one file holding 96 % of",
                "the bytes, its hash still runs after the last byte arrives, hence the verify column.",
                "",
                "**Against the goal (≥ 1.5x the CLI): not met here.** LocalStack serves S3 from one Python",
                "process on the same 2 cores as the client, so every method is server-bound: the download",
                "alone is ~1.3-1.4x faster than the CLI with 64 MB parts x 8 (s3transfer's 8 MB default is",
                "slower than the CLI), and verification adds ~1.2 s that the CLI does not spend. Closing the",
                "gap would need in-order hashing of the ranged parts while they stream (a custom",
                "downloader) or per-part hashes in bundle.json; not done. Against real S3 from a GPU host the",
                "client's parallelism, not LocalStack, decides; not measured here.",
            ]
        lines += [
            "",
            f"Push of the same bundle (upload, bundle.json last): {cold['push_seconds']} s.",
            "",
            "## Warm start",
            "",
            "Bundle already in the local cache (same bundle.json, files as stamped when verified): `sync`",
            f"takes **{cold['warm_sync_seconds_median']} s** with a pinned version and "
            f"**{cold['warm_sync_latest_seconds_median']} s** resolving `latest` (median of 5; one or two",
            "small S3 GETs and a stat of each file, no hashing, no download). A whole `tts-pipeline model",
            f"pull` process, Python start-up included: {cold['warm_pull_process_seconds_median']} s.",
            "",
        ]
    if voice:
        lines += [
            "## Repeated voice with an empty ref_text",
            "",
            f"{voice['jobs']} jobs on one voice, tiny bundle on CPU (reference preparation + synthesis of",
            "a short line at nfe 8). The tiny Whisper is much cheaper than whisper-large-v3-turbo, so the",
            "real saving per job is larger than shown.",
            "",
            "| mode | per-job median s |",
            "|---|---|",
        ]
        lines[-2] = "| mode | per-job median s | of which reference preparation s |"
        lines[-1] = "|---|---|---|"
        prep = voice.get("reference_prep_seconds_median", {})
        for name, s in voice["per_job_seconds_median"].items():
            lines.append(f"| {name} | {s} | {prep.get(name, '–')} |")
        lines += [
            "",
            f"Speed-up of the library over ASR-every-time: **{voice['speedup']}x**; the one-time",
            f"transcription took {voice['first_transcription_seconds']} s.",
            "",
        ]
    # The throughput section belongs to scripts/bench_gpu.py (often measured elsewhere, on a GPU):
    # carry it over unchanged.
    old = OUT.read_text() if OUT.exists() else ""
    start, end = "<!-- throughput:start -->", "<!-- throughput:end -->"
    if start in old and end in old:
        lines += ["", old[old.index(start) : old.index(end) + len(end)], ""]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")
    return 0


def _load(name: str) -> dict | None:
    path = BENCH / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
