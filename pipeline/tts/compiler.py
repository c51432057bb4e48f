"""``torch.compile`` of the DiT, its on-disk cache, and a warm model before the worker is ready.

``TTS_COMPILE``:

- ``auto`` (default): ``default`` on CUDA, ``off`` elsewhere (on a CPU worker compiling costs more
  start-up than it saves);
- ``default`` / ``max-autotune``: inductor, ``dynamic=True`` so one graph serves every sequence
  length (measured on an H100: one compile served 4-17 s outputs); a batch of one is its own graph;
- ``reduce-overhead``: CUDA graphs, the best single-job latency measured (RTF 0.020 at batch 1 vs
  0.099 eager on an H200). f5-tts's DiT caches the text embedding across ODE steps in a tensor
  that CUDA graphs overwrite, so this mode recomputes it every step (``text_cache=False``, +13 %
  eager work). CUDA graphs are recorded per input shape: expect re-recording for new lengths;
- ``off``.

The compiled artefacts (inductor's FX graph cache, autotuning results, Triton kernels) go to
``TORCHINDUCTOR_CACHE_DIR``, set to ``<TTS_CACHE_DIR>/compile`` unless the operator set it: on a
persistent cache volume a worker's second start re-traces (seconds) but does not compile again.

Warm-up runs the model for every call shape the batcher produces (one item; several of equal
length; several of mixed length, which switches the attention mask on) before the worker reports
ready, so no job pays for compilation. The FX-graph cache hits and
misses of warm-up are exported (``tts_compile_cache_events_total``) and logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.runtime import metrics
from pipeline.tts import sampler

if TYPE_CHECKING:
    from pipeline.tts.engine import F5Engine

log = logging.getLogger(__name__)

MODES = ("auto", "off", "default", "max-autotune", "reduce-overhead")
WARMUP_NFE = 2  # the graph is the same for any number of steps
RECOMPILE_LIMIT = 64
ALIGN_WINDOW_SAMPLES = (30 + 2 * 2) * 16000  # ctc-forced-aligner's window + context, 16 kHz


def resolve_mode(mode: str, device: str) -> str:
    if mode not in MODES:
        raise ValueError(f"TTS_COMPILE must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        return "default" if device.startswith("cuda") else "off"
    return mode


def use_cache_dir(model_cache: Path) -> str:
    """Point inductor's on-disk cache next to the model cache unless the operator chose a place.

    Must run before anything asks torch for its cache directory: the first such call sets
    ``TORCHINDUCTOR_CACHE_DIR`` to a temp dir. Inductor keys its entries by torch/Triton version,
    device and graph, so one directory serves every GPU type and upgrade."""
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(model_cache / "compile"))


def compile_engine(engine: F5Engine, mode: str) -> None:
    """Make the engine call a compiled DiT (mode already resolved; ``off`` leaves it eager)."""
    if mode == "off":
        return
    import torch

    # Graph variants per DiT frame: batch of one (torch specialises size 1), several of equal length,
    # several with the padding mask on, with/without CFG, and CUDA-graph recordings. Past dynamo's
    # default limit of 8 it would silently run the rest eagerly.
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    options = {} if mode == "default" else {"mode": mode}
    engine.transformer = torch.compile(engine.model.transformer, dynamic=True, **options)
    engine.text_cache = mode != "reduce-overhead"
    log.info(
        "DiT compiled with torch.compile(mode=%s, dynamic=True); cache %s",
        mode,
        os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
    )


def warm_up(
    engine: F5Engine, max_batch: int, emissions: Callable[[Any, list[np.ndarray]], Any] | None = None
) -> dict[str, float]:
    """One model call per call shape the batcher can produce (and one alignment window when the
    aligner runs on the model's device); returns seconds per shape."""
    ref = _warmup_reference()
    texts = ["Warming up the model.", "Warming up the model again, with a longer sentence this time."]
    shapes: dict[str, list[sampler.Item]] = {"batch1": [_item(ref, texts[0], 0)]}
    if max_batch > 1:
        shapes["batch2_equal"] = [_item(ref, texts[0], i) for i in range(2)]
        shapes["batch2_mixed"] = [_item(ref, t, i) for i, t in enumerate(texts)]
    if max_batch > 2:
        shapes[f"batch{max_batch}_mixed"] = [_item(ref, texts[i % 2], i) for i in range(max_batch)]
    before = _fx_cache_counters()
    seconds = {}
    for name, items in shapes.items():
        t0 = time.perf_counter()
        engine.run_batch(items, WARMUP_NFE, 2.0)
        seconds[name] = round(time.perf_counter() - t0, 2)
    if emissions is not None:
        t0 = time.perf_counter()
        emissions(None, [np.zeros(ALIGN_WINDOW_SAMPLES, dtype=np.float32)])
        seconds["aligner_window"] = round(time.perf_counter() - t0, 2)
    after = _fx_cache_counters()
    for event in ("hit", "miss"):
        metrics.COMPILE_CACHE_EVENTS.labels(event).inc(after[event] - before[event])
    log.info(
        "warm-up: %s (compile cache: %d hit(s), %d miss(es))",
        " ".join(f"{k}={v}s" for k, v in seconds.items()),
        after["hit"] - before["hit"],
        after["miss"] - before["miss"],
    )
    return seconds


def _warmup_reference() -> tuple[np.ndarray, str]:
    """A 3 s synthetic voice (a gliding tone with light noise): any audio serves to trace the graph."""
    t = np.arange(3 * 24000) / 24000
    wave = 0.1 * np.sin(2 * np.pi * (140 + 40 * t) * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    return wave.astype(np.float32), "This is a short reference voice. "


def _item(ref: tuple[np.ndarray, str], text: str, seed: int) -> sampler.Item:
    return sampler.Item(ref_audio=ref[0], ref_text=ref[1], text=text, speed=1.0, seed=seed)


def _fx_cache_counters() -> dict[str, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return {"hit": 0, "miss": 0}
    inductor = counters["inductor"]
    return {"hit": int(inductor["fxgraph_cache_hit"]), "miss": int(inductor["fxgraph_cache_miss"])}
