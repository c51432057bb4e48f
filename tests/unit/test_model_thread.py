"""One thread owns the device (``pipeline/tts/batcher.py``): every call a job makes into the bundle's
ASR pipeline, the one object that transcribes reference voices and the quality gate's chunks,
runs on the batcher's model thread. Real f5-tts and Whisper on the tiny bundle, the real batcher,
renderer and gate, in this process; the pipeline object is only watched (each call's thread noted)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.jobs.contract import Manifest, ResultWarning
from pipeline.runtime.faults import FaultHooks
from pipeline.text import script
from pipeline.tts import asr
from pipeline.tts.batcher import Batcher, model_thread
from pipeline.tts.engine import F5Engine
from pipeline.worker.inputs import JobInputs, VoiceInput
from pipeline.worker.render import Renderer
from pipeline.worker.signals import Abort, Progress
from tests.helpers import reference_voice


@dataclass
class _Attempt:
    """What the renderer reads of an attempt (``pipeline.worker.attempt.Attempt``)."""

    job_id: str = "thread-job"
    number: int = 1
    abort: Abort = field(default_factory=Abort)
    progress: Progress = field(default_factory=lambda: Progress("thread-job", 1.0))
    chunks: set[str] = field(default_factory=set)

    def check(self) -> None:
        self.abort.check()


def test_reference_asr_and_the_gates_transcriptions_run_on_the_model_thread(
    engine: F5Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A job whose voice comes without ``ref_text`` and whose chunks are transcribed by the gate:
    the reference's transcription and the chunk's both call the shared ASR pipeline, and both on
    the model thread, none in a default-executor thread beside it."""
    pipe = engine.asr
    assert pipe is not None
    threads: list[tuple[int, str]] = []  # (ident, name) of each call's thread

    class Watched:
        """The same pipeline object; notes the thread of each call."""

        def __getattr__(self, name: str) -> Any:
            return getattr(pipe, name)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            threads.append((threading.get_ident(), threading.current_thread().name))
            return pipe(*args, **kwargs)

    monkeypatch.setattr(engine._ui.asr_pipe, "pipe", Watched())  # what engine.asr hands out
    monkeypatch.setattr(engine, "_refs", OrderedDict())  # the voice is not prepared yet in this process

    wave, sr, _ = reference_voice()
    manifest = Manifest(
        text="Hello there.", voice="voices/a.wav", nfe_step=2, word_timings=False, quality={"max_wer": 100.0}
    )
    voice = VoiceInput(
        "voices/a.wav", "voices/a.wav", wave, sr, "", "manifest", hashlib.sha256(wave.tobytes()).hexdigest()
    )
    inputs = JobInputs(manifest, script.analyse(manifest, {}), [voice], [0])
    warnings: list[ResultWarning] = []

    async def job() -> Any:
        gpu = model_thread()
        model = await asyncio.get_running_loop().run_in_executor(gpu, threading.get_ident)
        runners = {"synthesis": engine.batch_runner(), "transcription": asr.runner(engine.asr)}
        batcher = Batcher(runners, max_batch=1, max_wait_s=0.0, executor=gpu)
        dispatcher = asyncio.create_task(batcher.run())
        renderer = Renderer(Settings(), None, engine, None, batcher, FaultHooks(None))  # type: ignore[arg-type]
        attempt = _Attempt()
        try:
            refs = await renderer.references(inputs, "tiny", attempt)  # type: ignore[arg-type]
            rendered = await renderer.render(inputs, refs, 7, "tiny", attempt, tmp_path, warnings)  # type: ignore[arg-type]
        finally:
            dispatcher.cancel()
            gpu.shutdown(wait=True)
        return refs, rendered, model

    refs, rendered, model = asyncio.run(job())
    assert refs[0].text_source == "asr" and refs[0].text.strip()
    assert rendered.quality is not None and rendered.quality.transcribed
    assert rendered.quality.chunks[0].transcript is not None
    # The reference's transcription, then the one chunk's: both on the model thread.
    assert [ident for ident, _ in threads] == [model, model], f"ASR pipeline called from threads {threads}"
