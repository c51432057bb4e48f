"""Throughput benchmark: audio-seconds per model-second, side by side in one run.

    make bench-gpu                      # GPU: full-size random bundle; CPU: the tiny bundle
    python scripts/bench_gpu.py --bundle tiny --device cpu

Measures, in one process and one run (so ratios are fair):

1. upstream f5-tts ``infer_batch_process`` on one 12 s job (the code the worker replaced);
2. the project's engine on the same job at batch 1: eager, compiled (``torch.compile`` default
   mode) and with CUDA graphs (``reduce-overhead``; GPU only);
3. jobs/hour and RTF per job with 1, 4, 8 and 16 jobs in flight through the batcher (each job:
   plan, chunks through ``pipeline.tts.batcher``, assemble: what ``pipeline.worker.render`` does per job), on
   12 s jobs and on a mix of 3-33 word jobs;
4. word-alignment scoring of 10 s of audio: onnxruntime on the CPU (CPU workers) vs the same
   model in torch on the model's device (GPU workers);
5. start-up: engine load + compile + warm-up with an empty compile cache (first start) and again in
   a fresh process on the filled cache (second start);
6. peak GPU memory.

Random weights: the figures are speed, not sound. A GPU run names the card. Results go to
``docs/bench/throughput-<label>.json`` and are rendered into docs/benchmarks.md's throughput
section (``--json`` also writes them elsewhere, e.g. ``$OUT`` on the lent GPU machine).

On the lent GPU machine (no network; see ../shared/GPU.md): carry the wheels listed there, plus
this repo; ``PYTHONPATH=<wheels>:<repo>:scripts/bench_stubs`` (two-line stand-ins for ``wandb``
and ``datasets``, which f5-tts's trainer imports and inference never calls). Each phase is
guarded: one that fails records its error and the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.tts import compiler  # noqa: E402
from pipeline.tts.batcher import Batcher, Work  # noqa: E402
from pipeline.tts.engine import F5Engine, Reference, SynthesisRequest  # noqa: E402
from pipeline.tts.sampler import Item  # noqa: E402

REF_TEXT = "Some call me nature, others call me mother nature."
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
DOCS = ROOT / "docs" / "bench"
BENCH_MD = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- throughput:start -->", "<!-- throughput:end -->"


def main() -> int:
    args = _args()
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    kind = args.bundle if args.bundle != "auto" else ("full" if device.startswith("cuda") else "tiny")
    if args.probe_start:
        print(json.dumps(_start(Path(args.probe_start), device, args.compile, args.max_batch)))
        return 0
    card = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    label = args.label or f"{kind}-{'gpu' if device.startswith('cuda') else 'cpu'}"
    report: dict[str, Any] = {
        "label": label,
        "device": device,
        "card": card,
        "bundle": kind,
        "nfe_step": args.nfe,
        "max_batch": args.max_batch,
        "max_length_ratio": args.max_length_ratio,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "phases": {},
        "errors": {},
    }
    previous = DOCS / f"throughput-{label}.json"
    if args.merge and previous.exists():  # a run split over several commands (time-limited machines)
        old = json.loads(previous.read_text())
        report["phases"], report["errors"] = old.get("phases", {}), {}
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-gpu-"))
    bundle_dir = _bundle(work / kind, kind)
    cache = work / "compile-cache"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    compile_mode = compiler.resolve_mode(args.compile, device)
    report["compile_mode"] = compile_mode

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        if name in args.skip:
            return None
        print(f"--- {name}", flush=True)
        try:
            report["phases"][name] = fn()
        except Exception as e:  # record and go on: one broken phase must not cost the others
            report["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        _save(report, args.json)
        return report["phases"].get(name)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine = F5Engine.load(bundle_dir, device)
    load_s = time.perf_counter() - t0
    ref = _reference(engine)
    job_text = _text_for(ref, seconds=12.0)
    rounds = args.rounds

    phase("upstream_batch1", lambda: _upstream(engine, ref, job_text, args.nfe, rounds))
    phase("engine_eager_batch1", lambda: _engine_batch1(engine, ref, job_text, args.nfe, rounds))
    phase("padding_mask_batch8", lambda: _mask_cost(engine, ref, args.nfe, rounds))
    if compile_mode != "off":
        first = phase("first_start", lambda: _first_start(engine, compile_mode, args.max_batch, load_s))
        phase("engine_compiled_batch1", lambda: _engine_batch1(engine, ref, job_text, args.nfe, rounds))
        phase("second_start", lambda: _second_start(bundle_dir, device, args.compile, args.max_batch, first))
    if device.startswith("cuda"):
        phase("engine_cudagraphs_batch1", lambda: _cudagraphs(engine, ref, job_text, args.nfe, rounds))
        if compile_mode != "off":
            compiler.compile_engine(engine, compile_mode)  # back to the mode the worker uses
    for n in args.in_flight:
        phase(f"in_flight_{n}", lambda n=n: _in_flight(engine, ref, [job_text] * args.jobs, n, args))
    words = (SENTENCE * 3).split()
    mixed = [" ".join(words[: 3 + (30 * i) // max(args.jobs - 1, 1)]) + "." for i in range(args.jobs)]
    phase("in_flight_8_mixed_lengths", lambda: _in_flight(engine, ref, mixed, 8, args))
    phase("in_flight_1_mixed_lengths", lambda: _in_flight(engine, ref, mixed, 1, args))
    phase("alignment_10s", lambda: _alignment(bundle_dir, device, rounds))
    if device.startswith("cuda"):
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    _save(report, args.json)
    _render()
    print(json.dumps(report, indent=2))
    return 0


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", choices=["auto", "tiny", "full"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="auto", choices=compiler.MODES)
    p.add_argument("--nfe", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timed repetitions per batch-1 measurement (median)")
    p.add_argument("--in-flight", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16])
    p.add_argument("--jobs", type=int, default=32, help="jobs per in-flight run")
    p.add_argument("--max-batch", type=int, default=16, help="TTS_MAX_BATCH for the in-flight runs")
    p.add_argument("--max-length-ratio", type=float, default=2.0, help="TTS_BATCH_MAX_LENGTH_RATIO")
    p.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(), help="phases to skip")
    p.add_argument("--label", default=None)
    p.add_argument("--work", default=None, help="bundle + compile cache dir (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--merge", action="store_true", help="keep this label's earlier phases (split runs)")
    p.add_argument("--probe-start", default=None, help=argparse.SUPPRESS)  # second-start child
    return p.parse_args()


# -- set-up --------------------------------------------------------------------------------------


def _bundle(d: Path, kind: str) -> Path:
    from pipeline.models.tiny import build_full_size, build_tiny

    if not (d / "bundle.json").exists():
        t0 = time.perf_counter()
        (build_full_size if kind == "full" else build_tiny)(d)
        print(f"built the {kind} bundle in {time.perf_counter() - t0:.0f}s", flush=True)
    return d


def _reference(engine: F5Engine) -> Reference:
    from importlib.resources import files

    import soundfile as sf

    wave, sr = sf.read(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")), dtype="float32")
    return engine.prepare_reference(wave, sr, REF_TEXT)


def _text_for(ref: Reference, seconds: float) -> str:
    """Text whose output lasts about ``seconds`` by F5-TTS's duration rule (one chunk)."""
    words = (SENTENCE * 20).split()
    for n in range(4, len(words)):
        text = " ".join(words[:n])
        if _item(ref, text, 0).frames * 256 / 24000 - len(ref.audio) / 24000 >= seconds:
            return text
    return " ".join(words)


def _item(ref: Reference, text: str, seed: int) -> Item:
    return Item(ref_audio=ref.audio, ref_text=ref.text, text=text, speed=1.0, seed=seed)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, rounds: int) -> tuple[list[float], Any]:
    out = fn()  # warm-up (and, when compiled, the compile)
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def _rtf(times: list[float], audio_s: float) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "seconds": [round(t, 4) for t in times],
        "median_s": round(med, 4),
        "audio_s": round(audio_s, 2),
        "rtf": round(med / audio_s, 4),
        "audio_s_per_model_s": round(audio_s / med, 1),
    }


# -- phases --------------------------------------------------------------------------------------


def _upstream(engine: F5Engine, ref: Reference, text: str, nfe: int, rounds: int) -> dict[str, Any]:
    import torch

    def run() -> np.ndarray:
        torch.manual_seed(0)
        wave, _, _ = next(
            engine._ui.infer_batch_process(
                (torch.from_numpy(ref.audio).unsqueeze(0), 24000),
                ref.text,
                [text],
                engine.model,
                engine.vocoder,
                progress=None,
                nfe_step=nfe,
                cfg_strength=2.0,
                sway_sampling_coef=-1.0,
                device=engine.device,
            )
        )
        return wave

    times, wave = _timed(run, engine.device, rounds)
    return _rtf(times, len(wave) / 24000)


def _engine_batch1(engine: F5Engine, ref: Reference, text: str, nfe: int, rounds: int) -> dict[str, Any]:
    item = _item(ref, text, 0)
    times, [wave] = _timed(lambda: engine.run_batch([item], nfe, 2.0), engine.device, rounds)
    return _rtf(times, len(wave) / 24000)


def _mask_cost(engine: F5Engine, ref: Reference, nfe: int, rounds: int) -> dict[str, Any]:
    """8 jobs of different lengths in one call: padding masked the way this project does (broadcast
    key mask), the way f5-tts does (mask expanded to b x h x n x n), or not masked (wrong: batch-mates
    leak into short items). Eager, so that swapping processors does not recompile."""
    import warnings

    from f5_tts.model.modules import AttnProcessor

    words = (SENTENCE * 4).split()
    items = [_item(ref, " ".join(words[: 20 + 3 * i]) + ".", i) for i in range(8)]
    blocks = engine.model.transformer.transformer_blocks
    ours = [b.attn.processor for b in blocks]
    out: dict[str, Any] = {"frames": [it.frames for it in items]}
    runs = {
        "broadcast_mask_s": lambda: engine.run_batch(items, nfe, 2.0),
        "no_mask_s": lambda: engine.run_batch(items, nfe, 2.0, attn_mask=False),
    }
    for name, fn in runs.items():
        out[name] = round(statistics.median(_timed(fn, engine.device, rounds)[0]), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # f5-tts warns that its masked path is slow: measured here
        for b in blocks:
            b.attn.processor = AttnProcessor(pe_attn_head=b.attn.processor.pe_attn_head, attn_mask_enabled=True)
    try:
        times, _ = _timed(lambda: engine.run_batch(items, nfe, 2.0), engine.device, rounds)
        out["f5_tts_expanded_mask_s"] = round(statistics.median(times), 4)
    finally:
        for b, processor in zip(blocks, ours, strict=True):
            b.attn.processor = processor
    out["expanded_vs_broadcast"] = round(out["f5_tts_expanded_mask_s"] / out["broadcast_mask_s"], 2)
    return out


def _cudagraphs(engine: F5Engine, ref: Reference, text: str, nfe: int, rounds: int) -> dict[str, Any]:
    compiler.compile_engine(engine, "reduce-overhead")
    item = _item(ref, text, 0)
    t0 = time.perf_counter()
    engine.run_batch([item], nfe, 2.0)
    first = time.perf_counter() - t0
    result = _engine_batch1(engine, ref, text, nfe, rounds)
    return {**result, "first_call_s": round(first, 1)}


def _first_start(engine: F5Engine, mode: str, max_batch: int, load_s: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    compiler.compile_engine(engine, mode)
    shapes = compiler.warm_up(engine, max_batch)
    return {"load_s": round(load_s, 1), "compile_and_warmup_s": round(time.perf_counter() - t0, 1), "shapes": shapes}


def _second_start(bundle: Path, device: str, mode: str, max_batch: int, first: dict[str, Any] | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--probe-start", str(bundle), "--device", device, "--compile", mode]
    out = subprocess.run([*cmd, "--max-batch", str(max_batch)], env=env, capture_output=True, text=True, check=True)
    second = json.loads(out.stdout.strip().splitlines()[-1])
    if first:
        second["compile_and_warmup_vs_first"] = round(
            second["compile_and_warmup_s"] / max(first["compile_and_warmup_s"], 1e-9), 3
        )
    return second


def _start(bundle: Path, device: str, mode: str, max_batch: int) -> dict[str, Any]:
    """A worker's model start-up in this fresh process: load, compile, warm up."""
    from torch._dynamo.utils import counters

    t0 = time.perf_counter()
    engine = F5Engine.load(bundle, device)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    compiler.compile_engine(engine, compiler.resolve_mode(mode, device))
    shapes = compiler.warm_up(engine, max_batch)
    return {
        "load_s": round(load_s, 1),
        "compile_and_warmup_s": round(time.perf_counter() - t1, 1),
        "shapes": shapes,
        "fx_cache_hits": int(counters["inductor"]["fxgraph_cache_hit"]),
        "fx_cache_misses": int(counters["inductor"]["fxgraph_cache_miss"]),
    }


def _in_flight(engine: F5Engine, ref: Reference, texts: list[str], n: int, args: argparse.Namespace) -> dict:
    """``len(texts)`` jobs, ``n`` in flight at a time, through one batcher: jobs/hour, RTF per job."""

    async def run() -> tuple[float, list[float], list[float], int]:
        batcher = Batcher(
            {"synthesis": engine.batch_runner()},
            max_batch=args.max_batch,
            max_wait_s=0.02,
            max_length_ratio=args.max_length_ratio,
        )
        dispatcher = asyncio.create_task(batcher.run())
        gate = asyncio.Semaphore(n)
        loop = asyncio.get_running_loop()

        async def job(i: int, text: str) -> tuple[float, float]:
            async with gate:
                t0 = time.perf_counter()
                req = SynthesisRequest(reference=ref, text=text, nfe_step=args.nfe, seed=i)
                items = engine.plan(req)
                futures = [batcher.submit(Work("synthesis", (args.nfe, 2.0), it.frames, f"job{i}", it)) for it in items]
                waves = await asyncio.gather(*futures)
                out = await loop.run_in_executor(None, engine.assemble, req, items, waves)
                return time.perf_counter() - t0, len(out.audio) / 24000

        t0 = time.perf_counter()
        done = await asyncio.gather(*(job(i, t) for i, t in enumerate(texts)))
        wall = time.perf_counter() - t0
        dispatcher.cancel()
        return wall, [d[0] for d in done], [d[1] for d in done], batcher.calls

    run_once = lambda: asyncio.run(run())  # noqa: E731
    run_once()  # warm-up: new batch shapes, allocator
    _sync(engine.device)
    wall, latencies, audio, calls = run_once()
    total_audio = sum(audio)
    return {
        "jobs": len(texts),
        "in_flight": n,
        "wall_s": round(wall, 3),
        "audio_s": round(total_audio, 1),
        "rtf_per_job": round(wall / total_audio, 4),
        "audio_s_per_model_s": round(total_audio / wall, 1),
        "jobs_per_hour": round(len(texts) / wall * 3600),
        "model_calls": calls,
        "median_job_latency_s": round(statistics.median(latencies), 3),
    }


def _alignment(bundle: Path, device: str, rounds: int) -> dict[str, Any]:
    import ctc_forced_aligner as cfa
    import onnxruntime as ort

    from pipeline.models.bundle import Bundle
    from pipeline.tts.align import ctc_runner, load_ctc_model

    spec = Bundle.load(bundle).aligner
    wave = np.random.default_rng(0).normal(0, 0.1, 16000 * 10).astype(np.float32)
    session = ort.InferenceSession(str(bundle / spec.model), providers=["CPUExecutionProvider"])
    cpu_times, _ = _timed(lambda: cfa.generate_emissions(session, wave), "cpu", rounds)
    out: dict[str, Any] = {"onnx_cpu_median_s": round(statistics.median(cpu_times), 3), "cpu_threads": os.cpu_count()}
    if spec.torch_dir:
        run = ctc_runner(load_ctc_model(bundle / spec.torch_dir, device))

        class Session:
            def run(self, _names: list[str], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
                return [np.stack(run(None, list(inputs["input_values"])))]

        times, _ = _timed(lambda: cfa.generate_emissions(Session(), wave), device, rounds)
        out[f"torch_{device}_median_s"] = round(statistics.median(times), 4)
        out["speedup"] = round(out["onnx_cpu_median_s"] / max(statistics.median(times), 1e-9), 1)
    return out


# -- output --------------------------------------------------------------------------------------


def _save(report: dict[str, Any], extra: Path | None) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (DOCS / f"throughput-{report['label']}.json").write_text(text + "\n")
    if extra is not None:
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(text + "\n")


def _render() -> None:
    """docs/benchmarks.md's throughput section, from every docs/bench/throughput-*.json."""
    reports = [json.loads(p.read_text()) for p in sorted(DOCS.glob("throughput-*.json"))]
    lines = [START, "## Throughput: jobs in flight, batching, compilation (`make bench-gpu`)", ""]
    lines += [
        "Side by side in one process per run (`scripts/bench_gpu.py`); random weights, so speed, not",
        "sound. RTF = model seconds per audio second (lower is better); nfe 32, cfg 2, one reference",
        "voice. In-flight runs: each job is planned, its chunks go through the batcher, and it is",
        "assembled, as in the worker (S3/SQS excluded).",
        "",
    ]
    for r in reports:
        lines += render_report(r)
    if not any(r["device"].startswith("cuda") for r in reports):
        lines += [
            "### On a GPU: not measured yet",
            "",
            "No GPU was available where these figures were taken. The script is ready to run unattended:",
            "`make bench-gpu` on a CUDA machine (full-size random F5TTS_v1_Base + Vocos + MMS-300m-sized",
            "aligner), or on a lent machine without network, with the wheels listed in ../shared/GPU.md on",
            "`PYTHONPATH` together with this repo and `scripts/bench_stubs`:",
            "`python3 scripts/bench_gpu.py --json $OUT/throughput.json` (`--skip`/`--merge` split a run",
            "over several time-limited commands). The H100 figures that motivated this work",
            "(../shared/GPU.md) were taken with standalone scripts, not with this one.",
            "",
        ]
    lines.append(END)
    block = "\n".join(lines)
    text = BENCH_MD.read_text() if BENCH_MD.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    BENCH_MD.write_text(text)


def render_report(r: dict[str, Any]) -> list[str]:
    p = r["phases"]
    title = (
        f"### {r['card']}: {r['bundle']} bundle on {r['device']}, compile {r.get('compile_mode', '?')}, "
        f"TTS_MAX_BATCH={r.get('max_batch', '?')}"
    )
    lines = [title, "", f"{r['date']}, torch {r['torch']}, Python {r['python']}.", ""]
    if any(k.endswith("_batch1") for k in p):
        lines += ["| one 12 s job, batch 1 | median s | RTF | audio s per model s | vs upstream |"]
        lines += ["|---|---|---|---|---|"]
    base = p.get("upstream_batch1", {}).get("median_s")
    names = {
        "upstream_batch1": "upstream `infer_batch_process`",
        "engine_eager_batch1": "engine, eager",
        "engine_compiled_batch1": "engine, compiled",
        "engine_cudagraphs_batch1": "engine, CUDA graphs",
    }
    for key, name in names.items():
        if key in p:
            m = p[key]
            vs = f"{base / m['median_s']:.2f}x" if base else "-"
            lines.append(f"| {name} | {m['median_s']} | {m['rtf']} | {m['audio_s_per_model_s']} | {vs} |")
    lines += ["", "| jobs in flight | jobs | model calls | wall s | RTF per job | audio s per model s | jobs/hour |"]
    lines.append("|---|---|---|---|---|---|---|")
    one = p.get("in_flight_1", {}).get("audio_s_per_model_s")
    for key, m in p.items():
        if key.startswith("in_flight_"):
            gain = f" ({m['audio_s_per_model_s'] / one:.2f}x)" if one and "mixed" not in key else ""
            label = f"{m['in_flight']}{' (3-33 words)' if 'mixed' in key else ''}"
            lines.append(
                f"| {label} | {m['jobs']} | {m['model_calls']} | {m['wall_s']} | {m['rtf_per_job']} | "
                f"{m['audio_s_per_model_s']}{gain} | {m['jobs_per_hour']} |"
            )
    if "padding_mask_batch8" in p:
        m = p["padding_mask_batch8"]
        lines += [
            "",
            f"One call of 8 jobs of different lengths ({min(m['frames'])}-{max(m['frames'])} frames), eager: padding "
            f"masked as this project does {m['broadcast_mask_s']} s, as f5-tts does "
            f"{m['f5_tts_expanded_mask_s']} s ({m['expanded_vs_broadcast']}x), not masked {m['no_mask_s']} s "
            "(not masking lets batch-mates change short items' audio).",
        ]
    if "alignment_10s" in p:
        a = p["alignment_10s"]
        torch_key = next((k for k in a if k.startswith("torch_")), None)
        lines += ["", f"Alignment scoring of 10 s: onnxruntime CPU {a['onnx_cpu_median_s']} s"]
        if torch_key:
            lines[-1] += f", torch on {r['device']} {a[torch_key]} s ({a['speedup']}x)."
    for key, what in (("first_start", "First start"), ("second_start", "Second start (filled compile cache)")):
        if key in p:
            s = p[key]
            hits = (
                f", FX-graph cache {s['fx_cache_hits']} hits / {s['fx_cache_misses']} misses"
                if key == "second_start"
                else ""
            )
            lines += ["", f"{what}: load {s['load_s']} s, compile + warm-up {s['compile_and_warmup_s']} s{hits}."]
    if "peak_gpu_memory_gb" in r:
        lines += ["", f"Peak GPU memory: {r['peak_gpu_memory_gb']} GB."]
    if r.get("errors"):
        lines += ["", "Phases that failed: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    return [*lines, ""]


if __name__ == "__main__":
    raise SystemExit(main())
