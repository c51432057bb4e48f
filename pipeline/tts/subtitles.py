"""SRT and WebVTT from word timings.

Cues group words until a sentence ends, a pause opens, or the line would get too long to read
(42 characters, the common broadcast limit), so subtitles follow the speech rather than a fixed
word count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Timed(Protocol):
    @property
    def word(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


MAX_CHARS = 42
MAX_CUE_S = 6.0
PAUSE_S = 0.6
_SENTENCE_END = (".", "!", "?", "…", "。", "！", "？")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def cues(words: Sequence[Timed]) -> list[Cue]:
    out: list[Cue] = []
    cur: list[Timed] = []
    for w in words:
        if cur:
            text_len = len(" ".join(x.word for x in cur)) + 1 + len(w.word)
            too_long = text_len > MAX_CHARS or w.end - cur[0].start > MAX_CUE_S
            if too_long or w.start - cur[-1].end > PAUSE_S:
                out.append(_cue(cur))
                cur = []
        cur.append(w)
        if w.word.endswith(_SENTENCE_END):
            out.append(_cue(cur))
            cur = []
    if cur:
        out.append(_cue(cur))
    return out


def _cue(words: list[Timed]) -> Cue:
    return Cue(start=words[0].start, end=max(words[-1].end, words[0].start), text=" ".join(w.word for w in words))


def _ts(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(words: Sequence[Timed]) -> str:
    blocks = [f"{i}\n{_ts(c.start, ',')} --> {_ts(c.end, ',')}\n{c.text}\n" for i, c in enumerate(cues(words), start=1)]
    return "\n".join(blocks)


def to_vtt(words: Sequence[Timed]) -> str:
    blocks = [f"{_ts(c.start, '.')} --> {_ts(c.end, '.')}\n{c.text}\n" for c in cues(words)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(fmt: str, words: Sequence[Timed]) -> str:
    return {"srt": to_srt, "vtt": to_vtt}[fmt](words)
