"""How long one call into a part that can hang (the model thread, the aligner's child process)
may take before the part is declared stuck.

A deadline is derived from the work, not fixed: a floor (start-up costs, a small item on a busy
machine) plus a generous allowance per second of audio the call makes or reads. It is a bound for
"this will never answer", not a performance target: the defaults are tens of times what the
slowest measured device needs (docs/benchmarks.md), so a slow machine never trips them, and a
hang is still caught in minutes instead of never (docs/reliability.md, "Containment").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    floor_s: float
    per_audio_s: float

    def of(self, audio_s: float) -> float:
        """Seconds one call over ``audio_s`` seconds of audio may take."""
        return self.floor_s + self.per_audio_s * max(0.0, audio_s)


# The settings' defaults (TTS_MODEL_DEADLINE_S, TTS_ALIGNER_DEADLINE_S, TTS_DEADLINE_PER_AUDIO_S),
# for the parts built outside a worker (tests, benchmarks).
MODEL = Deadline(floor_s=120.0, per_audio_s=30.0)
ALIGNER = Deadline(floor_s=60.0, per_audio_s=30.0)
