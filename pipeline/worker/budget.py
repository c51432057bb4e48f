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
   without the condition).

A job whose ``ref_text`` is empty has its reference transcribed before step 3 (the plan depends on
the transcript); step 2 bounds that to ``max_references`` transcriptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.jobs.contract import ErrorCode
from pipeline.text.script import Piece
from pipeline.tts.engine import Reference
from pipeline.tts.sampler import HOP_LENGTH, generated_frames
from pipeline.worker.failures import fail


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


def check(settings: Settings, name: str, amount: int, detail: str = "") -> None:
    """Fail the job if ``amount`` of ``name`` is over its limit."""
    limit = limits(settings)[name]
    if amount > limit.value:
        extra = f" ({detail})" if detail else ""
        fail(
            ErrorCode.JOB_TOO_COSTLY,
            f"the job needs {amount:,} {limit.what}{extra}; the limit is {limit.value:,} ({limit.setting})",
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


def check_plan(
    settings: Settings,
    pieces: Sequence[Piece],
    refs: Sequence[Reference],
    turn_voice: Sequence[int],
    nfe_step: int,
    cfg: float,
) -> int:
    """Chunks and model work of a planned job; returns the work."""
    speech = sum(1 for p in pieces if not p.is_pause)
    check(settings, "chunks", speech)
    work = model_work(pieces, refs, turn_voice, nfe_step, cfg)
    check(settings, "work", work, f"{speech} chunks at {nfe_step} steps")
    return work
