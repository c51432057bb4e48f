"""What the quality gate costs: ASR time per audio second, and the share of model time it adds.

    python scripts/bench_quality.py [--bundle DIR] [--chunks 6] [--nfe 32] [--device cpu]

Synthesises ``--chunks`` chunks of a job (the engine's own batch runner, one chunk per call, as a
CPU worker runs them), then runs the gate on each: the signal checks, and one transcription call per
chunk through the same runner the worker registers for the batcher's "transcription" kind
(``pipeline.tts.asr.runner``; resampling to 16 kHz included, as the gate does it). Without
``--bundle`` it builds the tiny random bundle (its Whisper is tiny too, and with random weights it
rarely stops before its 64-token limit: the worst case for decoding steps). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

TEXT = (
    "The quality gate listens to every chunk before it ships. A skipped phrase, a repeated word or a "
    "mumbled sentence shows in the transcript, and the chunk is made again with another seed. "
) * 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--nfe", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from pipeline.models.tiny import build_tiny
    from pipeline.tts import audio as audio_utils
    from pipeline.tts.asr import ASR_SAMPLE_RATE
    from pipeline.tts.asr import runner as asr_runner
    from pipeline.tts.engine import SAMPLE_RATE, F5Engine, SynthesisRequest
    from pipeline.worker import quality
    from tests.helpers import reference_voice

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "tiny"
            build_tiny(bundle)
        engine = F5Engine.load(bundle, device=args.device)
        assert engine.asr is not None, "the bundle has no ASR model"
        wave, sr, text = reference_voice()
        ref = engine.prepare_reference(wave, sr, text)
        items = engine.plan(SynthesisRequest(reference=ref, text=TEXT, nfe_step=args.nfe, seed=1))[: args.chunks]
        asr = asr_runner(engine.asr)
        rate = quality.reference_rate(ref.audio, SAMPLE_RATE, ref.text)
        # Warm both models once (first calls pay one-off costs a running worker has paid).
        w0 = engine.run_batch(items[:1], args.nfe, 2.0)[0]
        asr("en", [audio_utils.resample(w0, SAMPLE_RATE, ASR_SAMPLE_RATE)])
        synth_s = asr_s = signal_s = audio_s = 0.0
        for item in items:
            t0 = time.perf_counter()
            [w] = engine.run_batch([item], args.nfe, 2.0)
            t1 = time.perf_counter()
            quality.signal_problems(w, SAMPLE_RATE, item.text, rate, 1.0)
            t2 = time.perf_counter()
            asr("en", [audio_utils.resample(w, SAMPLE_RATE, ASR_SAMPLE_RATE)])
            t3 = time.perf_counter()
            synth_s += t1 - t0
            signal_s += t2 - t1
            asr_s += t3 - t2
            audio_s += len(w) / SAMPLE_RATE
        print(
            json.dumps(
                {
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {engine.device}",
                    "bundle": f"{engine.bundle.name} (random_weights={engine.bundle.random_weights})",
                    "chunks": len(items),
                    "nfe_step": args.nfe,
                    "audio_s": round(audio_s, 2),
                    "synthesis_s_per_audio_s": round(synth_s / audio_s, 4),
                    "asr_s_per_audio_s": round(asr_s / audio_s, 4),
                    "signal_checks_ms_per_audio_s": round(signal_s / audio_s * 1000, 3),
                    "asr_share_of_model_time": round(asr_s / (synth_s + asr_s), 3),
                    "asr_added_to_model_time": round(asr_s / synth_s, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
