"""Cold and warm start of the model cache, measured side by side in one run.

A bundle the size of the real F5TTS_v1_Base one (1.35 GB checkpoint + vocoder + the rest; random
bytes in the real safetensors format) is pushed to a LocalStack of its own, then fetched by:

- ours: ``ModelCache.sync`` (s3transfer, parallel ranged GETs, sha256 verification, atomic publish),
  with the default transfer settings and a few alternatives;
- ``aws s3 cp --recursive`` (the AWS CLI, files to disk, no verification);
- runai-model-streamer (the S3 loader vLLM uses): streams the checkpoint's tensors into memory
  (nothing written to disk, no verification; it only reads safetensors, so only the checkpoint).

Rounds interleave the methods so drift (page cache, other load) hits all of them. Then warm
starts: ``sync`` of a bundle already on disk. Results: .cache/bench/cold_start.json; render with
``python scripts/bench_report.py`` (``make bench`` does both).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models.bundle import Bundle, content_version, inventory  # noqa: E402
from pipeline.ops import localstack_host  # noqa: E402
from pipeline.ops.bootstrap import bootstrap  # noqa: E402

BUCKET = "bench-models"
OUT = ROOT / ".cache" / "bench" / "cold_start.json"
MB = 1024 * 1024

RUNAI_SNIPPET = """
import sys, time
from runai_model_streamer import SafetensorsStreamer
t = time.perf_counter(); total = 0
with SafetensorsStreamer() as s:
    s.stream_file(sys.argv[1])
    for _, tensor in s.get_tensors():
        total += tensor.numel() * tensor.element_size()
print(total, time.perf_counter() - t)
"""


def big_bundle(tiny: Path, out: Path, ckpt_mb: int, vocoder_mb: int = 54) -> Bundle:
    """The tiny bundle's layout with real-sized random files in the real formats."""
    from safetensors.numpy import save_file

    shutil.copytree(tiny, out)
    rng = np.random.default_rng(0)
    tensors = {}
    per = 64 * MB  # ~22 tensors of 64 MB, like a checkpoint's large weights
    for i in range(ckpt_mb * MB // per):
        tensors[f"ema_model.transformer.block{i}.weight"] = rng.integers(0, 255, per, dtype=np.uint8).view(np.float16)
    save_file(tensors, str(out / "f5" / "model.safetensors"))
    (out / "vocoder" / "pytorch_model.bin").write_bytes(rng.integers(0, 255, vocoder_mb * MB, dtype=np.uint8).tobytes())
    b = Bundle.load(out)
    files = inventory(out)
    b = b.model_copy(update={"name": "bench", "files": files, "version": content_version(files)})
    b.save(out)
    return b


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ckpt_mb = int(os.environ.get("BENCH_CKPT_MB", "1350"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    state = work / "localstack"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inst = localstack_host.start(port=port, state_dir=state)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": inst.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    try:
        return run(work, ckpt_mb, rounds)
    finally:
        localstack_host.stop(state)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, ckpt_mb: int, rounds: int) -> int:
    from boto3.s3.transfer import TransferConfig

    from pipeline.models import cache as cache_mod
    from pipeline.models.cache import ModelCache
    from pipeline.models.tiny import build_tiny

    bootstrap(BUCKET, BUCKET)
    tiny = work / "tiny"
    build_tiny(tiny)
    t0 = time.perf_counter()
    bundle = big_bundle(tiny, work / "big", ckpt_mb)
    print(f"built a {bundle.total_bytes / MB:.0f} MB bundle in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    push_s = timed(lambda: ModelCache(BUCKET, work / "push-cache").push(work / "big"))
    prefix = f"s3://{BUCKET}/models/{bundle.name}/{bundle.version}/"
    ckpt_uri = prefix + bundle.tts.checkpoint

    configs = {
        "ours (64 MB parts x 8)": TransferConfig(
            multipart_threshold=64 * MB, multipart_chunksize=64 * MB, max_concurrency=8
        ),
        "ours (16 MB parts x 16)": TransferConfig(
            multipart_threshold=16 * MB, multipart_chunksize=16 * MB, max_concurrency=16
        ),
        "ours (8 MB parts x 10, s3transfer defaults)": TransferConfig(
            multipart_threshold=8 * MB, multipart_chunksize=8 * MB, max_concurrency=10
        ),
    }
    default_config = cache_mod._transfer_config
    name_of = {id(c): n for n, c in configs.items()}
    phases: dict[str, list[dict[str, float]]] = {}

    def ours(config: TransferConfig) -> float:
        cache_dir = work / "cache-ours"
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_mod._transfer_config = lambda: config
        try:
            t0 = time.perf_counter()
            report = ModelCache(BUCKET, cache_dir).sync(bundle.name, bundle.version)
            elapsed = time.perf_counter() - t0
            phases.setdefault(name_of[id(config)], []).append(report.seconds)
            return elapsed
        finally:
            cache_mod._transfer_config = default_config
            shutil.rmtree(cache_dir, ignore_errors=True)

    def aws_cli() -> float:
        dest = work / "cache-cli"
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [localstack_host.aws_cli(), "s3", "cp", "--recursive", "--only-show-errors", prefix, str(dest)]
        s = timed(lambda: subprocess.run(cmd, check=True))
        shutil.rmtree(dest, ignore_errors=True)
        return s

    def runai() -> float:
        env = {**os.environ, "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0"}
        out = subprocess.run(
            [sys.executable, "-c", RUNAI_SNIPPET, ckpt_uri], env=env, check=True, capture_output=True, text=True
        ).stdout.split()
        assert int(out[0]) > ckpt_mb * MB * 0.9, out
        return float(out[1])

    methods = {**{name: (lambda c=c: ours(c)) for name, c in configs.items()}, "aws s3 cp --recursive": aws_cli}
    try:
        import runai_model_streamer  # noqa: F401

        methods["runai-model-streamer (checkpoint only, to memory)"] = runai
    except ImportError:
        print("runai-model-streamer not installed: `make bench` installs it", file=sys.stderr)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for m in order:
            times[m].append(methods[m]())
            print(f"round {r + 1}: {m}: {times[m][-1]:.2f}s", file=sys.stderr)

    # Warm start: the bundle is on disk and matches bundle.json.
    warm_cache = work / "cache-warm"
    cache = ModelCache(BUCKET, warm_cache)
    cache.sync(bundle.name, bundle.version)
    warm = [timed(lambda: ModelCache(BUCKET, warm_cache).sync(bundle.name, bundle.version)) for _ in range(5)]
    warm_latest = [timed(lambda: ModelCache(BUCKET, warm_cache).sync(bundle.name, "latest")) for _ in range(5)]
    proc = [
        timed(
            lambda: subprocess.run(
                [str(ROOT / ".venv" / "bin" / "tts-pipeline"), "model", "pull", bundle.name],
                env={**os.environ, "TTS_BUCKET": BUCKET, "TTS_CACHE_DIR": str(warm_cache)},
                check=True,
                capture_output=True,
            )
        )
        for _ in range(3)
    ]

    result = {
        "bundle_mb": round(bundle.total_bytes / MB),
        "checkpoint_mb": round(bundle.files[bundle.tts.checkpoint].size / MB),
        "rounds": rounds,
        "push_seconds": round(push_s, 2),
        "cold_seconds": {m: [round(t, 2) for t in ts] for m, ts in times.items()},
        "cold_median_seconds": {m: round(statistics.median(ts), 2) for m, ts in times.items()},
        "ours_phase_seconds_median": {
            name: {k: round(statistics.median(p[k] for p in ps), 2) for k in ("resolve", "download", "verify")}
            for name, ps in phases.items()
        },
        "sha256_mb_per_s": _sha256_speed(),
        "warm_sync_seconds_median": round(statistics.median(warm), 3),
        "warm_sync_latest_seconds_median": round(statistics.median(warm_latest), 3),
        "warm_pull_process_seconds_median": round(statistics.median(proc), 2),
        "cpus": len(os.sched_getaffinity(0)),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def _sha256_speed() -> int:
    import hashlib

    data = os.urandom(256 * MB)
    t0 = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return round(256 / (time.perf_counter() - t0))


if __name__ == "__main__":
    sys.exit(main())
