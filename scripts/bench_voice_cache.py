"""Repeated-voice jobs with an empty ref_text: per-job reference + synthesis time with the voice
library (transcribed once, then the stored transcript) vs without (transcribed on every job, what
a stateless handler does), measured side by side in one process on the tiny bundle.

The tiny Whisper is far cheaper than whisper-large-v3-turbo, so the absolute saving here is a
lower bound; the ratio of ASR-free to ASR-every-time is what carries over.
Results: .cache/bench/voice_cache.json (``make bench``).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models.tiny import build_tiny  # noqa: E402
from pipeline.tts.engine import F5Engine, SynthesisRequest  # noqa: E402
from tests.helpers import reference_voice  # noqa: E402

OUT = ROOT / ".cache" / "bench" / "voice_cache.json"
TEXT = "A repeated voice reads one more short line."


PREP: dict[str, list[float]] = {}


def job(engine: F5Engine, wave: np.ndarray, sr: int, ref_text: str, mode: str = "warm-up") -> float:
    t0 = time.perf_counter()
    ref = engine.prepare_reference(wave, sr, ref_text)
    PREP.setdefault(mode, []).append(time.perf_counter() - t0)
    engine.synthesize([SynthesisRequest(reference=ref, text=TEXT, nfe_step=8, seed=1)])
    return time.perf_counter() - t0


def main() -> int:
    jobs = 8
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny(Path(tmp) / "tiny")
        engine = F5Engine.load(Path(tmp) / "tiny", device="cpu")
        wave, sr, _ = reference_voice()
        job(engine, wave, sr, "warm-up text.")  # first-call costs (kernels, caches) out of the way
        without, library, cached = [], [], []
        transcript = None
        for _ in range(jobs):
            engine._refs.clear()  # stateless: every job prepares and transcribes the reference
            without.append(job(engine, wave, sr, "", "ASR on every job"))
            if transcript is None:  # the library's first job transcribes and stores the text...
                engine._refs.clear()
                t0 = time.perf_counter()
                transcript = engine.prepare_reference(wave, sr, "").text
                first = time.perf_counter() - t0
            engine._refs.clear()  # ...every later job, on any worker, reads voice.json instead
            library.append(job(engine, wave, sr, transcript, "voice library (stored transcript)"))
        job(engine, wave, sr, transcript)
        for _ in range(jobs):  # same worker again: the prepared reference is in its in-process cache
            cached.append(job(engine, wave, sr, transcript, "voice library + in-process reference cache"))
    result = {
        "jobs": jobs,
        "per_job_seconds_median": {
            "ASR on every job": round(statistics.median(without), 3),
            "voice library (stored transcript)": round(statistics.median(library), 3),
            "voice library + in-process reference cache": round(statistics.median(cached), 3),
        },
        "reference_prep_seconds_median": {m: round(statistics.median(v), 3) for m, v in PREP.items() if m != "warm-up"},
        "first_transcription_seconds": round(first, 3),
        "speedup": round(statistics.median(without) / statistics.median(library), 2),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
