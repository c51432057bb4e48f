"""The quality gate: every synthesised chunk is checked before it ships; a bad one is made again.

Flow-matching TTS sometimes skips or repeats words, mumbles or drifts, and nobody listens to a
whole audiobook. So each chunk, after synthesis (and silence removal) and before it is aligned,
made durable or joined, is judged:

- **signal checks** (cheap, numpy, every chunk): non-finite or empty audio, clipping (more than
  ``CLIP_FRACTION`` of the samples at full scale), a chunk with no voiced frame at all, a long
  inner silence (``LONG_SILENCE_S``), and the speech rate: text bytes per voiced second against
  the reference voice's own, times the speed, for texts of ``RATE_MIN_BYTES`` or more (F5-TTS
  allots a chunk's duration from its text length, so a skipped or mumbled phrase shows as voiced
  time missing from that duration);
- **ASR** (when the policy says so): the chunk is transcribed by the bundle's Whisper, through the
  batcher (work of kind ``"transcription"``, ``pipeline.tts.asr``: chunks of many jobs, and
  reference voices being transcribed, share a call on the model thread and device), and compared
  with what was meant to be spoken: the chunk's normalized spoken text against the transcript
  passed through the same normalizer (``pipeline.text.normalize``), both case-folded with
  punctuation dropped; WER over words, or CER over characters for Chinese (and mixed
  Chinese-English), the edit distance from rapidfuzz. The score is that error rate (0 is perfect);
  over ``max_wer`` fails.

A chunk that fails is synthesised again with the seed ``retry_seed(job seed, chunk, try)``, up to
``max_retries`` times, and the best try is kept (passing first, then the lowest error rate, then
the fewest failed checks, then the earliest). A regeneration whose model call fails (out of
memory, say) ends the chunk's retries: the best try so far is kept, and the job completes with a
``QUALITY_BELOW_THRESHOLD`` warning that says so (a worker fault, ``BatcherUnavailable``, still
hands the job back). Try 0 keeps the chunk's usual seed, so a job whose chunks pass is the job it
was without the gate. Everything is deterministic: a resumed attempt re-plans the same seeds, and a
chunk made durable carries its verdict (``ChunkRecord.quality``: tries, kept try, seed, score,
transcript), reused as is. The policy (``Policy.tag``) is part of the chunk's digest
(``pipeline.jobs.chunks.ChunkSpec``); the kept try is not: it is an outcome, recorded.

The policy: a manifest's ``quality`` (false: off; an object: its fields) over the worker's
``TTS_QUALITY_*``. By default chunks are transcribed only where the bundle's ASR model has real
weights: the tiny test bundle (``random_weights``) transcribes noise and would fail every chunk,
so there the default is the signal checks only, whose cost is nothing next to the model's; a job
(or ``TTS_QUALITY_ASR=on``) can still ask for transcription.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rapidfuzz.distance import Levenshtein

from pipeline.jobs.contract import ChunkQuality, QualitySpec, QualitySummary
from pipeline.runtime import metrics
from pipeline.runtime.faults import NO_FAULTS, FaultHooks
from pipeline.text import normalize, zh
from pipeline.tts import audio as audio_utils
from pipeline.tts.asr import ASR_SAMPLE_RATE
from pipeline.tts.batcher import BULK, Batcher, BatcherUnavailable, Work, settled
from pipeline.tts.shares import NOBODY, Tenant
from pipeline.worker.failures import JobFailed

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.models.bundle import Bundle
    from pipeline.worker.attempt import Attempt

log = logging.getLogger(__name__)

FRAME_S = 0.02
SILENCE_FLOOR = 1e-3  # frame RMS below this is silence, whatever the chunk's level
SILENCE_REL = 0.01  # ... and so is a frame 40 dB below the chunk's loudest
LONG_SILENCE_S = 2.0  # an inner pause longer than this is a problem
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.001
RATE_RANGE = (0.4, 2.5)  # text bytes per voiced second, over the reference's times the speed
RATE_MIN_BYTES = 16  # shorter texts get F5-TTS's minimum duration: their rate says nothing

# ISO 639-3 -> Whisper's language codes (for forcing the language of a transcription call).
WHISPER_LANGUAGES = {"eng": "en", "zho": "zh", "cmn": "zh", "deu": "de", "fra": "fr", "spa": "es", "jpn": "ja"}


@dataclass(frozen=True)
class Policy:
    """What the gate does for one job."""

    asr: bool  # transcribe and hold to max_wer
    max_wer: float | None  # None when not transcribing
    max_retries: int

    @property
    def tag(self) -> str:
        """The policy as it enters a chunk's digest."""
        return f"asr:{self.max_wer:g}/r{self.max_retries}" if self.asr else f"signal/r{self.max_retries}"


def resolve(settings: Settings, asked: bool | QualitySpec | None, bundle: Bundle) -> Policy | None:
    """The job's policy, or None when the gate is off for it."""
    if asked is False or (asked is None and not settings.quality):
        return None
    spec = asked if isinstance(asked, QualitySpec) else QualitySpec()
    has_asr = bundle.asr is not None and settings.quality_asr != "off"
    if spec.max_wer is not None:  # asked for by the job
        asr = has_asr
    else:
        asr = has_asr and (settings.quality_asr == "on" or not bundle.random_weights)
    max_wer = (spec.max_wer if spec.max_wer is not None else settings.quality_max_wer) if asr else None
    retries = spec.max_retries if spec.max_retries is not None else settings.quality_max_retries
    return Policy(asr=asr, max_wer=max_wer, max_retries=retries)


def retry_seed(job_seed: int, chunk: int, attempt_try: int) -> int:
    """The seed of try ``attempt_try`` (>= 1) of speech chunk ``chunk``: a function of the three only."""
    digest = hashlib.sha256(f"quality-retry:{job_seed}:{chunk}:{attempt_try}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


# -- signal checks -------------------------------------------------------------------------------


def frame_rms(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    n = max(1, round(FRAME_S * sample_rate))
    frames = len(wave) // n
    if frames == 0:
        return np.sqrt(np.mean(np.square(wave, dtype=np.float64), keepdims=True)) if len(wave) else np.zeros(0)
    x = wave[: frames * n].astype(np.float64).reshape(frames, n)
    return np.sqrt(np.mean(x * x, axis=1))


def voiced_mask(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    rms = frame_rms(wave, sample_rate)
    if rms.size == 0:
        return rms.astype(bool)
    return rms > max(SILENCE_FLOOR, SILENCE_REL * float(rms.max()))


def voiced_seconds(wave: np.ndarray, sample_rate: int) -> float:
    return float(voiced_mask(wave, sample_rate).sum()) * FRAME_S


def signal_problems(
    wave: np.ndarray, sample_rate: int, text: str, reference_rate: float | None, speed: float
) -> list[str]:
    """Checks needing no model. ``reference_rate``: the reference voice's text bytes per voiced
    second (None: no rate check)."""
    if wave.size == 0:
        return ["empty"]
    if not np.all(np.isfinite(wave)):
        return ["non_finite"]
    problems = []
    if float(np.mean(np.abs(wave) >= CLIP_LEVEL)) > CLIP_FRACTION:
        problems.append("clipping")
    voiced = voiced_mask(wave, sample_rate)
    if not voiced.any():
        return [*problems, "silent"]
    idx = np.flatnonzero(voiced)
    inner = ~voiced[idx[0] : idx[-1] + 1]
    if inner.any() and _longest_run(inner) * FRAME_S > LONG_SILENCE_S:
        problems.append("long_silence")
    if reference_rate and len(text.encode("utf-8")) >= RATE_MIN_BYTES:
        rate = len(text.encode("utf-8")) / (voiced.sum() * FRAME_S)
        ratio = rate / (reference_rate * speed)
        if not RATE_RANGE[0] <= ratio <= RATE_RANGE[1]:
            problems.append("speech_rate")
    return problems


def _longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for v in mask:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def reference_rate(ref_audio: np.ndarray, sample_rate: int, ref_text: str) -> float | None:
    voiced = voiced_seconds(ref_audio, sample_rate)
    return len(ref_text.strip().encode("utf-8")) / voiced if voiced > 0 else None


# -- error rate ------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Case-folded, punctuation and symbols turned into spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(" " if unicodedata.category(c)[0] in "PSC" else c for c in text)


def _is_cjk(text: str) -> bool:
    return any(zh.joins_tight(c, c) for c in text if not c.isspace())


def error_rate(expected: str, transcript: str, language: str) -> tuple[float, str]:
    """(error rate, "wer" | "cer") of ``transcript`` against ``expected`` (already normalized spoken
    text); the transcript goes through the same normalizer first."""
    try:
        heard = normalize.spoken_text(normalize.normalize(transcript, language))
    except Exception:  # garbage in (random weights emit anything): compare it as it came
        heard = transcript
    cer = language in normalize.CHINESE or _is_cjk(expected)
    if cer:
        ref: Sequence[str] = "".join(_fold(expected).split())
        hyp: Sequence[str] = "".join(_fold(heard).split())
    else:
        ref, hyp = _fold(expected).split(), _fold(heard).split()
    if not ref:
        return (0.0 if not hyp else 1.0), "cer" if cer else "wer"
    return Levenshtein.distance(ref, hyp) / len(ref), "cer" if cer else "wer"


# -- the gate ----------------------------------------------------------------------------------------


@dataclass
class _Try:
    index: int
    seed: int
    problems: list[str]
    score: float | None
    metric: str | None
    transcript: str | None

    def key(self) -> tuple[bool, bool, float, int, int]:
        unusable = bool({"empty", "non_finite"} & set(self.problems))
        return (bool(self.problems), unusable, self.score or 0.0, len(self.problems), self.index)


class Gate:
    """One job's gate (``_Render`` builds it when the policy is not None)."""

    def __init__(
        self,
        policy: Policy,
        batcher: Batcher,
        attempt: Attempt,
        job_seed: int,
        sample_rate: int,
        faults: FaultHooks = NO_FAULTS,
        priority: int = BULK,
        tenant: Tenant = NOBODY,
    ) -> None:
        self.policy = policy
        self.batcher = batcher
        self.priority = priority  # the job's place in the batcher's queue, as for its synthesis
        self.tenant = tenant
        # Model work regenerations may still spend: TTS_MAX_MODEL_WORK less the plan's (the
        # renderer sets it; a resumed job charges its reused chunks' tries in the same order).
        self.regen_left = 0
        self.attempt = attempt
        self.job_seed = job_seed
        self.sample_rate = sample_rate
        self.faults = faults
        self._ref_rates: dict[int, float | None] = {}
        # (chunk, why) of each regeneration whose model call failed: its chunk kept its best try.
        self.regenerations_failed: list[tuple[int, str]] = []

    def reference_rate(self, key: int, ref_audio: np.ndarray, ref_text: str) -> float | None:
        if key not in self._ref_rates:
            self._ref_rates[key] = reference_rate(ref_audio, self.sample_rate, ref_text)
        return self._ref_rates[key]

    async def settle(
        self,
        chunk: int,
        text: str,
        language: str,
        speed: float,
        ref_rate: float | None,
        first: np.ndarray,
        first_seed: int,
        again: Callable[[int], Awaitable[np.ndarray]],
        cost: int = 0,
    ) -> tuple[np.ndarray, ChunkQuality]:
        """The kept wave and its verdict; ``again(seed)`` synthesises the chunk once more, which
        costs ``cost`` model work from the job's regeneration budget (``regen_left``), and raises
        ``JobFailed`` when that model call fails: then the chunk keeps its best try so far (the
        failed try counts in ``tries``: it was sent to the model and its budget is spent) and
        ``regenerations_failed`` says so."""
        best: tuple[_Try, np.ndarray] | None = None
        wave, seed, t = first, first_seed, 0
        while True:
            wave = self.faults.chunk_audio(self.attempt.job_id, self.attempt.number, chunk, t, wave)
            judged = await self._judge(t, seed, wave, text, language, speed, ref_rate)
            if best is None or judged.key() < best[0].key():
                best = (judged, wave)
            if not judged.problems or t >= self.policy.max_retries:
                break
            if cost > self.regen_left:  # the job's TTS_MAX_MODEL_WORK is spent: keep the best so far
                log.warning("chunk %d: no model-work budget left to synthesise it again", chunk + 1)
                break
            self.regen_left -= cost
            t += 1
            seed = retry_seed(self.job_seed, chunk, t)
            metrics.QUALITY_REGENERATIONS.inc()
            why = ",".join(judged.problems)
            log.info("chunk %d failed the quality gate (%s): try %d, seed %d", chunk + 1, why, t, seed)
            try:
                wave = await again(seed)
            except JobFailed as e:
                # This try's model call failed (out of memory, a shape error: the job's own
                # synthesis error, which render turns into JobFailed as for any chunk). The tries
                # made stand: the best is kept and the job goes on, with a warning (render). Worker
                # faults (BatcherUnavailable, ModelCallStuck) and the attempt's signals (JobAborted,
                # a lost claim) are not JobFailed: they end the attempt as anywhere else.
                log.warning("chunk %d: its regeneration (try %d) failed, the best try is kept: %s", chunk + 1, t, e)
                self.regenerations_failed.append((chunk, e.message))
                break
        kept, kept_wave = best
        if kept.score is not None:
            metrics.QUALITY_SCORE.observe(kept.score)
        metrics.QUALITY_CHUNKS.labels("passed" if not kept.problems else "failed").inc()
        return kept_wave, ChunkQuality(
            chunk=chunk,
            text=text,
            score=None if kept.score is None else round(kept.score, 4),
            metric=kept.metric,  # type: ignore[arg-type]
            transcript=kept.transcript,
            problems=kept.problems,
            tries=t + 1,
            kept=kept.index,
            seed=kept.seed,
        )

    async def _judge(
        self, t: int, seed: int, wave: np.ndarray, text: str, language: str, speed: float, ref_rate: float | None
    ) -> _Try:
        problems = signal_problems(wave, self.sample_rate, text, ref_rate, speed)
        score = metric = transcript = None
        if self.policy.asr and not {"empty", "non_finite"} & set(problems):
            transcript = await self._transcribe(wave, language)
            if transcript is not None:
                score, metric = error_rate(text, transcript, language)
                assert self.policy.max_wer is not None
                if score > self.policy.max_wer or math.isnan(score):
                    problems = ["error_rate", *problems]
            else:
                # Not silently "passed": the chunk is marked for a person to listen to (and, like any
                # failing chunk, tried again, which also retries the transcription).
                problems = ["not_transcribed", *problems]
        return _Try(t, seed, problems, score, metric, transcript)

    async def _transcribe(self, wave: np.ndarray, language: str) -> str | None:
        """The transcript (None: the call failed, logged; the chunk is marked ``not_transcribed``)."""
        audio16 = await asyncio.to_thread(audio_utils.resample, wave, self.sample_rate, ASR_SAMPLE_RATE)
        a = self.attempt
        seconds = len(audio16) / ASR_SAMPLE_RATE
        work = Work(
            "transcription",
            WHISPER_LANGUAGES.get(language),
            1,
            a.job_id,
            audio16,
            a.number,
            self.priority,
            seconds,
            self.tenant,
        )
        answer = await settled(self.batcher, work, a.abort.event, a.check)
        try:
            return str(answer.result())
        except BatcherUnavailable:
            raise  # the worker's fault, not the chunk's: the job goes back to the queue
        except Exception as e:
            log.warning("transcription of a chunk failed (%s: %s): marked not_transcribed", type(e).__name__, e)
            return None


def summary(policy: Policy, chunks: list[ChunkQuality]) -> QualitySummary:
    scores = [c.score for c in chunks if c.score is not None]
    return QualitySummary(
        transcribed=policy.asr,
        max_wer=policy.max_wer,
        max_retries=policy.max_retries,
        mean_score=round(sum(scores) / len(scores), 4) if scores else None,
        worst_score=max(scores) if scores else None,
        chunks_checked=len(chunks),
        chunks_regenerated=sum(1 for c in chunks if c.tries > 1),
        chunks_failed=sum(1 for c in chunks if c.problems),
        chunks=chunks,
    )
