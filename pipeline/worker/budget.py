"""The work one job may cost, counted after expansion and checked before the model runs.

``max_text_chars`` bounds what a client sends; it does not bound what the job costs. A lexicon
alias can multiply the spoken text ~200x; a one-character ``ref_text`` shrinks the chunk budget to
a few bytes (tens of thousands of chunks) and stretches every generated second; ``nfe_step`` 128
and speed 0.25 multiply again; hundreds of dialogue turns can each name a clip with another
transcript. So each of these is counted where it becomes known, and a job over any limit fails
``JOB_TOO_COSTLY`` with a message naming the limit and its setting:

1. while the text is expanded (``pipeline.text.script``): spoken characters, turns;
2. once the references are read (``pipeline.worker.inputs``): distinct references, i.e.
   (clip content, transcript) pairs, each prepared once;
3. once the chunks are planned (``Renderer.render``, before the first synthesis call): chunks,
   and the model work, estimated with f5-tts's own duration rule as mel frames (reference +
   generated, per chunk) x flow steps x 2 with classifier-free guidance (one pass with and one
   without the condition), **at its worst case with the quality gate** (issue 27): every chunk
   failing every try, i.e. synthesised ``1 + max_retries`` times and, when the job's chunks are
   transcribed, transcribed as many times, each transcription counted as ``TRANSCRIPTION_WORK``.

A job whose ``ref_text`` is empty has its reference transcribed before step 3 (the plan depends on
the transcript); step 2 bounds that to ``max_references`` transcriptions, and step 3 counts those
that ran in the job's total too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import Settings
from pipeline.jobs.contract import ErrorCode
from pipeline.text.script import Piece
from pipeline.tts.engine import Reference
from pipeline.tts.sampler import HOP_LENGTH, generated_frames
from pipeline.worker.failures import fail

if TYPE_CHECKING:
    from pipeline.worker.quality import Policy

# What one Whisper transcription counts for, in model work (one mel frame through one pass of
# F5-TTS's DiT: 22 layers of width 1024, ~0.34 B parameters, ~0.7 GFLOP). Whisper sees every input
# as a 30 s window whatever its length (its feature extractor pads to 30 s; pipeline.tts.asr), so a
# transcription costs the same for any chunk: the bundle's whisper-large-v3-turbo runs the window's
# 1,500 encoder positions through 32 layers of width 1280 (~0.64 B parameters, ~1.9 TFLOP: ~2,900
# units of arithmetic), then decodes the transcript one sequential step per token (~3 tokens a
# second of speech), which is bound by latency, not arithmetic. 1,000 units per second of the
# window, ~10x the encoder's arithmetic, covers that decoding and the pipeline's per-call
# overhead: a transcription counts as about a third of synthesising the ~10 s chunk it checks at
# the defaults (~1,440 frames x 32 steps x 2 passes = ~92,000), in line with Whisper turbo running
# several times faster than F5-TTS's 32-step synthesis of the same audio. Erring high is the safe
# side: it only makes a job whose chunks are all transcribed and retried reach its limit sooner.
WHISPER_WINDOW_S = 30
TRANSCRIPTION_WORK = WHISPER_WINDOW_S * 1_000


@dataclass(frozen=True)
class Limit:
    what: str
    setting: str
    value: int


def limits(s: Settings) -> dict[str, Limit]:
    return {
        "spoken": Limit(
            "spoken characters after normalization and lexicons", "TTS_MAX_SPOKEN_CHARS", s.max_spoken_chars
        ),
        "turns": Limit("dialogue turns", "TTS_MAX_TURNS", s.max_turns),
        "references": Limit("distinct references (clip and transcript)", "TTS_MAX_REFERENCES", s.max_references),
        "chunks": Limit("text chunks", "TTS_MAX_CHUNKS", s.max_chunks),
        "work": Limit("model work (mel frames x steps x guidance passes)", "TTS_MAX_MODEL_WORK", s.max_model_work),
    }


def check(settings: Settings, name: str, amount: int, detail: str = "", advice: str = "") -> None:
    """Fail the job if ``amount`` of ``name`` is over its limit (``advice``: what would make it fit)."""
    limit = limits(settings)[name]
    if amount > limit.value:
        extra = f" ({detail})" if detail else ""
        hint = f"; {advice}" if advice else ""
        fail(
            ErrorCode.JOB_TOO_COSTLY,
            f"the job needs {amount:,} {limit.what}{extra}; the limit is {limit.value:,} ({limit.setting}){hint}",
        )


def model_work(
    pieces: Sequence[Piece], refs: Sequence[Reference], turn_voice: Sequence[int], nfe_step: int, cfg: float
) -> int:
    """Mel frames the model computes for ``pieces``, times steps and guidance passes."""
    passes = 2 if cfg >= 1e-5 else 1
    frames = 0
    for p in pieces:
        if p.is_pause:
            continue
        ref = refs[turn_voice[p.turn]]
        frames += len(ref.audio) // HOP_LENGTH + generated_frames(len(ref.audio), ref.text, p.spoken, p.speed)
    return frames * nfe_step * passes


@dataclass(frozen=True)
class Worst:
    """What a planned job can make the GPU do at most, in model work."""

    synthesis: int  # the plan's work x tries
    tries: int  # per chunk: 1, or 1 + max_retries with the quality gate on
    transcriptions: int  # chunks' (chunks x tries when the gate transcribes) + the references'

    @property
    def total(self) -> int:
        return self.synthesis + self.transcriptions * TRANSCRIPTION_WORK


def worst_case(work: int, chunks: int, policy: Policy | None, reference_transcriptions: int = 0) -> Worst:
    """``work`` (the plan's) at its worst: the gate (``policy``; None: off) may find every try of
    every chunk bad, so each chunk is synthesised, and transcribed if the policy says so, up to
    ``1 + max_retries`` times (pipeline.worker.quality.Gate.settle); a signal-only gate regenerates
    too. ``reference_transcriptions``: references transcribed for the job (empty ``ref_text``)."""
    tries = 1 + policy.max_retries if policy is not None else 1
    asr = policy is not None and policy.asr
    return Worst(work * tries, tries, (chunks * tries if asr else 0) + reference_transcriptions)


def check_plan(
    settings: Settings,
    pieces: Sequence[Piece],
    refs: Sequence[Reference],
    turn_voice: Sequence[int],
    nfe_step: int,
    cfg: float,
    policy: Policy | None = None,
) -> int:
    """Chunks and the worst-case work of a planned job (``policy``: its quality gate's, None when
    off); returns the plan's own work (one try per chunk)."""
    speech = sum(1 for p in pieces if not p.is_pause)
    check(settings, "chunks", speech)
    work = model_work(pieces, refs, turn_voice, nfe_step, cfg)
    asr_refs = sum(1 for r in {id(r): r for r in refs}.values() if r.text_source == "asr")
    worst = worst_case(work, speech, policy, asr_refs)
    check(settings, "work", worst.total, _detail(speech, nfe_step, worst), _advice(worst, policy))
    return work


def _detail(chunks: int, nfe_step: int, worst: Worst) -> str:
    what = f"{chunks} chunks at {nfe_step} steps"
    if worst.tries > 1:
        what += f", each synthesised up to {worst.tries} times by the quality gate"
    if worst.transcriptions:
        what += f"; {worst.transcriptions:,} transcriptions at {TRANSCRIPTION_WORK:,} each"
    return what


def _advice(worst: Worst, policy: Policy | None) -> str:
    if policy is None or (worst.tries == 1 and not worst.transcriptions):
        return "to fit, send less text or ask for fewer steps"
    fixes = [f"lower quality.max_retries (now {policy.max_retries})"]
    if policy.asr:
        fixes.append(
            "have chunks not transcribed (quality: false, or no quality.max_wer where the worker "
            "does not transcribe by default)"
        )
    else:
        fixes.append("set quality to false")
    return "to fit, " + ", or ".join(fixes) + ", or send less text"
