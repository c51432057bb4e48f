"""SRT and WebVTT from word timings.

Cues group words until a sentence ends, a pause opens, or the line would get too long to read
(42 columns, the common broadcast limit; a Chinese, Japanese or fullwidth character takes two), so
subtitles follow the speech rather than a fixed word count. Cues break between words only: a
Chinese word (one segmented token) is never split. Chinese words join without spaces, and a
Chinese line past half its width also ends at clause punctuation (，、；：).

Words may also carry a ``speaker`` (a name) and a ``sentence`` (an int index, from the chunk
planner's sentences); both are optional and read with ``getattr``. A cue never spans two speakers
or two sentence indexes. When a word has a sentence index, that index decides where sentences end
(a word ending in "." no longer does); long sentences are still split by length, duration and
pauses. A speaker is shown as a WebVTT voice span, ``<v Alice>text</v>``, and in SRT as a
``Alice: text`` prefix; its label counts towards the 42 characters.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.text.zh import join_spoken, joins_tight


class Timed(Protocol):
    """A timed word. Optional, read with ``getattr``: ``speaker: str | None``, ``sentence: int | None``."""

    @property
    def word(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


MAX_CHARS = 42  # display columns: a CJK character counts two (21 Chinese characters a line)
MAX_CUE_S = 6.0
PAUSE_S = 0.6
_SENTENCE_END = (".", "!", "?", "…", "。", "！", "？")
_CLAUSE_END = ("，", "、", "；", "：", ",", ";", ":")


def width(text: str) -> int:
    """Display columns: East Asian wide and fullwidth characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    speaker: str | None = None
    sentence: int | None = None


def _speaker(w: Timed) -> str | None:
    return getattr(w, "speaker", None)


def _sentence(w: Timed) -> int | None:
    return getattr(w, "sentence", None)


def _label(speaker: str | None) -> str:
    """The speaker's name on one line, "" for none."""
    return " ".join(str(speaker).split()) if speaker is not None else ""


def cues(words: Sequence[Timed]) -> list[Cue]:
    out: list[Cue] = []
    cur: list[Timed] = []
    cols = 0  # width(_join(words of cur)), plus the speaker label and ": " when there is one
    for w in words:
        speaker, sentence = _speaker(w), _sentence(w)
        if cur:
            new_group = speaker != _speaker(cur[-1]) or sentence != _sentence(cur[-1])
            add = _sep(cur[-1].word, w.word) + width(w.word)
            too_long = cols + add > MAX_CHARS or w.end - cur[0].start > MAX_CUE_S
            if new_group or too_long or w.start - cur[-1].end > PAUSE_S:
                out.append(_cue(cur))
                cur = []
        if not cur:
            label = _label(speaker)
            cols = width(label) + 2 + width(w.word) if label else width(w.word)
        else:
            cols += add
        cur.append(w)
        if sentence is None and w.word.endswith(_SENTENCE_END):
            out.append(_cue(cur))
            cur = []
        elif _tight(w.word) and w.word.endswith(_CLAUSE_END) and cols * 2 >= MAX_CHARS:
            # Chinese runs long between full stops: a line past half full ends at its clause mark
            out.append(_cue(cur))
            cur = []
    if cur:
        out.append(_cue(cur))
    return out


def _tight(word: str) -> bool:
    return any(width(c) == 2 for c in word)


def _sep(left: str, right: str) -> int:
    """Columns between two words in a cue: none where either side is CJK, else a space."""
    return 0 if joins_tight(left, right) else 1


def _cue(words: list[Timed]) -> Cue:
    return Cue(
        start=words[0].start,
        end=max(words[-1].end, words[0].start),
        text=join_spoken([w.word for w in words]),
        speaker=_speaker(words[0]),
        sentence=_sentence(words[0]),
    )


def _ts(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _srt_text(c: Cue) -> str:
    label = _label(c.speaker)
    return f"{label}: {c.text}" if label else c.text


def _vtt_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_text(c: Cue) -> str:
    label = _label(c.speaker)
    text = _vtt_escape(c.text)
    return f"<v {_vtt_escape(label)}>{text}</v>" if label else text


def to_srt(words: Sequence[Timed]) -> str:
    blocks = [
        f"{i}\n{_ts(c.start, ',')} --> {_ts(c.end, ',')}\n{_srt_text(c)}\n" for i, c in enumerate(cues(words), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(words: Sequence[Timed]) -> str:
    blocks = [f"{_ts(c.start, '.')} --> {_ts(c.end, '.')}\n{_vtt_text(c)}\n" for c in cues(words)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(fmt: str, words: Sequence[Timed]) -> str:
    return {"srt": to_srt, "vtt": to_vtt}[fmt](words)
