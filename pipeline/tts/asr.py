"""The bundle's Whisper, called one way for everything the worker transcribes.

Two things are transcribed: a reference voice that came without its transcript
(``pipeline.tts.engine``: ``begin_reference`` / ``finish_reference``) and, when the quality gate
asks, every synthesised chunk (``pipeline.worker.quality``). Both are the same call on the same
transformers pipeline object, on the model's device, so in the worker both go through the batcher
as work of kind ``"transcription"`` and run on its model thread (one thread owns the device):
``runner`` is that kind's runner. Payloads are 16 kHz mono float32; the group is a Whisper
language code, or None to let the model detect the language (a reference voice's).

It is f5-tts's own ``transcribe()`` call (``task: transcribe``, no timestamps) without its
30-second chunking, which changes nothing for a reference: f5-tts clips references to about 12 s
and Whisper pads every input to 30 s.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

ASR_SAMPLE_RATE = 16000


def runner(pipe: Any) -> Callable[[Hashable, Sequence[np.ndarray]], list[str]]:
    """A transformers ASR pipeline in the batcher's runner shape: group = Whisper language code
    (None: let the model detect it); payloads: 16 kHz mono float32. One call for the batch."""
    lang_to_id = getattr(getattr(pipe.model, "generation_config", None), "lang_to_id", None) or {}

    def run(group: Hashable, waves: Sequence[np.ndarray]) -> list[str]:
        kwargs: dict[str, Any] = {"task": "transcribe"}
        if isinstance(group, str) and f"<|{group}|>" in lang_to_id:
            kwargs["language"] = group
        inputs = [{"raw": w, "sampling_rate": ASR_SAMPLE_RATE} for w in waves]
        out = pipe(inputs, batch_size=len(inputs), generate_kwargs=kwargs)
        return [str(o.get("text", "")).strip() for o in out]

    return run
