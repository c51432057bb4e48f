"""The TTS engine: F5-TTS loaded once from a model bundle, behind a small batch-shaped interface.

Like f5-tts's own ``api.F5TTS`` this is a thin facade over the library's inference utilities
(``load_model``, ``load_vocoder``, ``preprocess_ref_audio_text``, ``chunk_text``), with the
differences a queue worker needs:

- the architecture comes from the bundle's ``bundle.json``, not a packaged config name, so one
  code path runs the tiny test bundle and the real F5TTS_v1_Base;
- nothing touches a model hub: checkpoint, vocoder and ASR model are local bundle files;
- synthesis is split in three so that chunks of *different jobs* can share one model call:
  ``plan`` (a job's text chunks, chunk ``i`` seeded ``seed + i``), ``run_batch`` (any chunks with
  the same nfe/cfg, one CFM call with per-item noise and masked padding: ``pipeline.tts.sampler``)
  and ``assemble`` (a job's chunks cross-faded exactly as F5-TTS joins them). The worker drives
  them through ``pipeline.tts.batcher``; ``synthesize`` runs one request on its own;
- a reference voice without a transcript is prepared in two steps around its ASR call
  (``begin_reference``: clip, trim, resample; CPU only; ``finish_reference``: the transcript in
  F5-TTS's form, cached), so that the worker can run the call itself on the model thread, through
  the batcher, like every other use of the device (``pipeline.worker.render``).
  ``prepare_reference`` does all three in the calling thread, for callers that own the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf

from pipeline.models.bundle import Bundle
from pipeline.runtime import metrics
from pipeline.tts import asr as asr_call
from pipeline.tts import audio as audio_utils
from pipeline.tts import sampler

log = logging.getLogger(__name__)

# f5-tts inference constants (utils_infer): the bundle's mel settings must equal these.
SAMPLE_RATE = 24000
HOP_LENGTH = sampler.HOP_LENGTH
CROSS_FADE_S = 0.15
# F5-TTS clips references to ~12 s and budgets chunks against a 22 s window (infer_process).
CHUNK_WINDOW_S = 22.0

ProgressFn = Callable[[int, int], None]


class EngineError(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Reference:
    """A reference voice prepared the way F5-TTS prepares it (clipped, edge-trimmed, 24 kHz mono)."""

    audio: np.ndarray
    sample_rate: int
    text: str
    text_source: Literal["manifest", "asr"]


@dataclass(frozen=True)
class UntranscribedReference:
    """A reference voice prepared as F5-TTS prepares it (``begin_reference``) whose transcript the
    bundle's ASR model has yet to give: ``asr_audio`` transcribed (``pipeline.tts.asr``), then
    ``finish_reference``."""

    key: tuple[str, str]  # the engine's cache key
    audio: np.ndarray  # 24 kHz mono, clipped and trimmed: the reference's audio
    sample_rate: int
    asr_audio: np.ndarray  # the same at 16 kHz: what the ASR model hears

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class SynthesisRequest:
    reference: Reference
    text: str
    speed: float = 1.0
    nfe_step: int = 32
    cfg_strength: float = 2.0
    seed: int = 0
    remove_silence: bool = False


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    chunks: list[str] = field(default_factory=list)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def duration_frames(ref_samples: int, ref_text: str, chunk: str, speed: float) -> int:
    """Mel frames F5-TTS generates for ``chunk`` (infer_batch_process's rule; audio = frames*hop).

    ``ref_text`` is the normalised reference text (as returned by preprocess_ref_audio_text).
    """
    return sampler.generated_frames(ref_samples, ref_text, chunk, speed)


def chunk_budget(ref_samples: int, ref_text: str, speed: float) -> int:
    """Max bytes per text chunk, as infer_process computes it."""
    ref_s = ref_samples / SAMPLE_RATE
    return int(len(ref_text.encode("utf-8")) / ref_s * (CHUNK_WINDOW_S - ref_s) * speed)


class _LogWriter(io.TextIOBase):
    """A file that turns f5-tts's print() chatter into DEBUG log lines."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.debug("f5-tts: %s", line.strip())
        return len(text)


_quiet_lock = threading.Lock()
_quiet_depth = [0]
_real_stdout: list[Any] = [None]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Keeps stdout clean for the CLI's JSON output, and the worker's log readable. sys.stdout is
    process-wide and reference preparation and synthesis run in different threads: the first to
    enter swaps it, the last to leave puts it back (nested redirect_stdout would not)."""
    with _quiet_lock:
        if _quiet_depth[0] == 0:
            _real_stdout[0] = sys.stdout
            sys.stdout = _LogWriter()
        _quiet_depth[0] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth[0] -= 1
            if _quiet_depth[0] == 0:
                sys.stdout = _real_stdout[0]


def _import_f5() -> Any:
    import warnings

    with warnings.catch_warnings():
        # pydub warns at import that ffmpeg is missing; we only hand it PCM WAV, which it reads natively.
        warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
        from f5_tts.infer import utils_infer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return utils_infer


@contextlib.contextmanager
def _oom_as_engine_error(device: str) -> Iterator[None]:
    """An out-of-memory fails the job, frees what the failed step cached, and leaves the worker up."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as e:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        log.error("out of memory on %s: %s", device, e)  # torch's words (sizes, process) stay in the log
        raise EngineError("SYNTHESIS_FAILED", f"out of memory on {device}") from e


# What f5-tts's preprocessing is given for a reference still to be transcribed: any text, so that
# it never runs its own ASR call (in whatever thread called it); its audio does not depend on it.
_NO_TEXT_YET = "-"


def _sentence_end(text: str) -> str:
    """A transcript as ``preprocess_ref_audio_text`` leaves one: ending in ". " (or "。")."""
    if not text.endswith(". ") and not text.endswith("。"):
        text += " " if text.endswith(".") else ". "
    return text


def transcription_failed(e: BaseException) -> EngineError:
    """A reference voice's ASR call failed (the library's words go to the log, not the job)."""
    log.error("reference transcription failed: %s: %s", type(e).__name__, e)
    return EngineError("TRANSCRIPTION_FAILED", "the reference voice could not be used: transcribing it failed")


class _SoundfileAsr:
    """Stands in for f5-tts's ``asr_pipe``: decodes the file itself (no ffmpeg) and calls the
    bundle's local transformers ASR pipeline. The engine never has f5-tts transcribe (its
    ``transcribe()`` runs in whatever thread calls it): references are transcribed through
    ``pipeline.tts.asr`` instead (``begin_reference``). It is set all the same, so that nothing in
    f5-tts could fetch its default Whisper from the hub."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __call__(self, path: str, **kwargs: Any) -> dict[str, Any]:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        return self.pipe({"raw": data.mean(axis=1), "sampling_rate": sr}, **kwargs)


class F5Engine:
    """F5-TTS + Vocos (+ optional Whisper ASR) from one bundle directory. Load once per process."""

    def __init__(self, bundle_dir: Path, bundle: Bundle, device: str) -> None:
        self.bundle_dir = bundle_dir
        self.bundle = bundle
        self.device = device
        self._ref_lock = threading.Lock()  # f5-tts's reference caches are module-level
        self._lock = threading.Lock()  # direct synthesize() callers; the worker's batcher owns its own thread
        self._refs: OrderedDict[tuple[str, str], Reference] = OrderedDict()
        self._refs_max = 32
        self.model: Any = None
        self.vocoder: Any = None
        # The DiT as the sampler calls it: the module itself, or a torch.compile'd wrapper of it.
        self.transformer: Any = None
        self.text_cache = True  # off under CUDA graphs (pipeline.tts.compiler)
        self.load_seconds = 0.0

    @classmethod
    def load(cls, bundle_dir: Path, device: str = "auto") -> F5Engine:
        bundle = Bundle.load(bundle_dir)
        engine = cls(bundle_dir, bundle, resolve_device(device))
        engine._load()
        return engine

    def _load(self) -> None:
        t0 = time.perf_counter()
        mel = self.bundle.tts.mel_spec
        with _quiet_stdout():
            ui = _import_f5()
            from f5_tts.model import DiT, UNetT

            expected = (ui.target_sample_rate, ui.n_mel_channels, ui.hop_length, ui.win_length, ui.n_fft)
            actual = (mel.target_sample_rate, mel.n_mel_channels, mel.hop_length, mel.win_length, mel.n_fft)
            if expected != actual:
                raise EngineError("INTERNAL_ERROR", f"bundle mel settings {actual} != f5-tts's {expected}")
            backbone = {"DiT": DiT, "UNetT": UNetT}[self.bundle.tts.backbone]
            self.model = ui.load_model(
                backbone,
                dict(self.bundle.tts.arch),
                str(self.bundle_dir / self.bundle.tts.checkpoint),
                mel_spec_type=mel.mel_spec_type,
                vocab_file=str(self.bundle_dir / self.bundle.tts.vocab),
                use_ema=self.bundle.tts.use_ema,
                device=self.device,
            )
            # Padding masks at full attention speed, so batching jobs of different lengths pays.
            sampler.install_padding_mask_attention(self.model.transformer)
            self.vocoder = ui.load_vocoder(
                "vocos", is_local=True, local_path=str(self.bundle_dir / self.bundle.vocoder.dir), device=self.device
            )
            ui.asr_pipe = self._load_asr() if self.bundle.asr else None
        self._ui = ui
        self.load_seconds = time.perf_counter() - t0
        metrics.MODEL_LOADS.inc()
        metrics.MODEL_LOAD_SECONDS.set(self.load_seconds)
        log.info(
            "engine loaded: %s/%s on %s in %.2fs", self.bundle.name, self.bundle.version, self.device, self.load_seconds
        )

    def _load_asr(self) -> _SoundfileAsr:
        import torch
        from transformers import pipeline

        assert self.bundle.asr is not None
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        pipe = pipeline(
            "automatic-speech-recognition",
            model=str(self.bundle_dir / self.bundle.asr.dir),
            dtype=dtype,
            device=self.device,
        )
        return _SoundfileAsr(pipe)

    @property
    def asr(self) -> Any:
        """The bundle's transformers ASR pipeline on the model's device (None: the bundle has none)."""
        wrapped = self._ui.asr_pipe
        return None if wrapped is None else getattr(wrapped, "pipe", None)

    # ----------------------------------------------------------------------------------------
    # Reference voices
    # ----------------------------------------------------------------------------------------

    def prepare_reference(self, audio: np.ndarray, sample_rate: int, ref_text: str) -> Reference:
        """Clip/trim the reference and settle its transcript, via f5-tts's own preprocessing.

        Empty ``ref_text`` runs the bundle's ASR model, here, in the calling thread: for callers
        that own the device (scripts, tests). The worker does not call this: it runs the ASR call
        on its model thread (``begin_reference``, a batcher item, ``finish_reference``).
        Results are cached (bounded LRU) by audio content and text, so a voice reused across jobs
        is prepared once per process.
        """
        step = self.begin_reference(audio, sample_rate, ref_text)
        if isinstance(step, Reference):
            return step
        try:
            with _quiet_stdout():
                [transcript] = asr_call.runner(self.asr)(None, [step.asr_audio])
        except Exception as e:
            raise transcription_failed(e) from e
        return self.finish_reference(step, transcript)

    def begin_reference(self, audio: np.ndarray, sample_rate: int, ref_text: str) -> Reference | UntranscribedReference:
        """The prepared reference (cached, or ``ref_text`` given), or, when it must be transcribed,
        the clip as the ASR model must hear it. No model call: CPU work only (f5-tts's clipping and
        trimming, resampling), safe in any thread."""
        audio = audio_utils.to_mono(audio)
        if sample_rate != SAMPLE_RATE:
            audio = audio_utils.resample(audio, sample_rate, SAMPLE_RATE)
        digest = hashlib.sha256(audio.tobytes()).hexdigest()
        key = (digest, ref_text.strip())
        with self._ref_lock:
            if key in self._refs:
                self._refs.move_to_end(key)
                return self._refs[key]
            if not ref_text.strip() and self.asr is None:
                raise EngineError(
                    "TRANSCRIPTION_FAILED",
                    f"ref_text is empty and model bundle {self.bundle.name}/{self.bundle.version} has no ASR model;"
                    " pass ref_text in the manifest",
                )
            processed, sr, text = self._preprocess_locked(audio, ref_text)
        if ref_text.strip():
            return self._cache(key, Reference(audio=processed, sample_rate=sr, text=text, text_source="manifest"))
        metrics.ASR_RUNS.inc()
        return UntranscribedReference(key, processed, sr, audio_utils.resample(processed, sr, asr_call.ASR_SAMPLE_RATE))

    def finish_reference(self, step: UntranscribedReference, transcript: str) -> Reference:
        """The reference with the ASR model's ``transcript`` of ``step.asr_audio``, in the form
        f5-tts's ``preprocess_ref_audio_text`` gives a transcript (ending in ". "), cached."""
        text = _sentence_end(transcript.strip())
        if not text.strip(" .。"):
            raise EngineError(
                "TRANSCRIPTION_FAILED", "the ASR model heard no words in the reference voice; pass ref_text"
            )
        ref = Reference(audio=step.audio, sample_rate=step.sample_rate, text=text, text_source="asr")
        return self._cache(step.key, ref)

    def _cache(self, key: tuple[str, str], ref: Reference) -> Reference:
        with self._ref_lock:
            if key in self._refs:  # prepared meanwhile by another caller: one object per key
                self._refs.move_to_end(key)
                return self._refs[key]
            self._refs[key] = ref
            while len(self._refs) > self._refs_max:
                self._refs.popitem(last=False)
            return ref

    def _preprocess_locked(self, audio: np.ndarray, ref_text: str) -> tuple[np.ndarray, int, str]:
        """f5-tts's clipping and trimming (and its text rule for a given ``ref_text``). Never its
        ASR: an empty ``ref_text`` is handed over as a placeholder (the audio does not depend on the
        text) and the caller transcribes."""
        ui = self._ui
        with tempfile.TemporaryDirectory(prefix="tts-ref-") as tmp:
            src = Path(tmp) / "ref.wav"
            sf.write(src, audio, SAMPLE_RATE, subtype="PCM_16")
            with _quiet_stdout():
                try:
                    given = ref_text if ref_text.strip() else _NO_TEXT_YET
                    processed_path, text = ui.preprocess_ref_audio_text(str(src), given, show_info=log.debug)
                except Exception as e:
                    log.error("reference preprocessing failed: %s", e)  # the library's words: the log's
                    raise EngineError(
                        "VOICE_UNREADABLE", "the reference voice could not be used: preparing it failed"
                    ) from e
            processed, sr = sf.read(processed_path, dtype="float32")
            # Our LRU owns caching; drop f5-tts's unbounded module-level entries and temp file.
            audio_hash = hashlib.md5(src.read_bytes()).hexdigest()
            ui._ref_audio_cache.pop(audio_hash, None)
            ui._ref_text_cache.pop(audio_hash, None)
            with contextlib.suppress(OSError):
                os.unlink(processed_path)
        if ref_text.strip() and not text.strip(" .。"):
            raise EngineError(
                "TRANSCRIPTION_FAILED", "the ASR model heard no words in the reference voice; pass ref_text"
            )
        return audio_utils.to_mono(processed), sr, text

    # ----------------------------------------------------------------------------------------
    # Synthesis: plan a request into chunks, run chunks (of any jobs) in batches, assemble a job
    # ----------------------------------------------------------------------------------------

    def chunks(self, ref: Reference, text: str, speed: float) -> list[str]:
        budget = chunk_budget(len(ref.audio), ref.text, speed)
        return self._ui.chunk_text(text, max_chars=max(budget, 1))

    def plan(self, req: SynthesisRequest) -> list[sampler.Item]:
        """The request's text chunks as model items; chunk ``i`` is seeded ``seed + i``."""
        chunks = self.chunks(req.reference, req.text, req.speed)
        if not chunks:
            raise EngineError("TEXT_NOT_SPEAKABLE", "text has nothing to synthesise after chunking")
        ref = req.reference
        return [
            sampler.Item(ref_audio=ref.audio, ref_text=ref.text, text=c, speed=req.speed, seed=req.seed + i)
            for i, c in enumerate(chunks)
        ]

    def run_batch(
        self, items: Sequence[sampler.Item], nfe_step: int, cfg_strength: float, *, attn_mask: bool | None = None
    ) -> list[np.ndarray]:
        """One model call over ``items`` (any jobs; same nfe/cfg). Raises torch.OutOfMemoryError as
        is: the caller (the batcher) splits the batch and retries, so one item cannot sink the rest."""
        with _quiet_stdout():
            return sampler.sample(
                self.model,
                self.vocoder,
                items,
                nfe_step=nfe_step,
                cfg_strength=cfg_strength,
                transformer=self.transformer,
                attn_mask=attn_mask,
                text_cache=self.text_cache,
            )

    def batch_runner(self) -> Callable[[Any, Sequence[sampler.Item]], list[np.ndarray]]:
        """``run_batch`` in the batcher's runner shape: group = (nfe_step, cfg_strength)."""

        def run(group: Any, items: Sequence[sampler.Item]) -> list[np.ndarray]:
            nfe_step, cfg_strength = group
            return self.run_batch(items, nfe_step, cfg_strength)

        return run

    def assemble(
        self, req: SynthesisRequest, items: Sequence[sampler.Item], waves: Sequence[np.ndarray]
    ) -> SynthesisResult:
        """A job's chunk waveforms, cross-faded exactly as F5-TTS joins them."""
        for i, wave in enumerate(waves):
            if wave.size == 0:
                raise EngineError("SYNTHESIS_FAILED", f"chunk {i + 1}/{len(waves)} produced no audio")
        out = audio_utils.cross_fade([np.asarray(w, dtype=np.float32) for w in waves], int(CROSS_FADE_S * SAMPLE_RATE))
        if req.remove_silence:
            out = self.remove_silence(out)
        if not np.all(np.isfinite(out)):
            raise EngineError("SYNTHESIS_FAILED", "model produced non-finite samples")
        return SynthesisResult(audio=out, sample_rate=SAMPLE_RATE, chunks=[it.text for it in items])

    def synthesize(
        self, requests: Sequence[SynthesisRequest], progress: ProgressFn | None = None, *, max_batch: int = 1
    ) -> list[SynthesisResult]:
        """Each request on its own, its chunks ``max_batch`` at a time (1: chunk by chunk, progress
        after each). The worker goes through ``pipeline.tts.batcher`` instead, which batches across jobs."""
        out = []
        with self._lock:
            for req in requests:
                items = self.plan(req)
                waves: list[np.ndarray] = []
                if progress:
                    progress(0, len(items))  # also the caller's chance to stop before any work
                for i in range(0, len(items), max_batch):
                    with _oom_as_engine_error(self.device):
                        waves += self.run_batch(items[i : i + max_batch], req.nfe_step, req.cfg_strength)
                    if progress:
                        progress(len(waves), len(items))
                out.append(self.assemble(req, items, waves))
        return out

    def remove_silence(self, wave: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="tts-out-") as tmp:
            path = Path(tmp) / "out.wav"
            sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")  # pydub reads PCM only
            self._ui.remove_silence_for_generated_wav(str(path))
            trimmed, _ = sf.read(path, dtype="float32")
        return audio_utils.to_mono(trimmed)
