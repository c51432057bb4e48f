"""SRT and WebVTT from word timings.

Cues group words until a sentence ends, a pause opens, or the line would get too long to read
(42 characters, the common broadcast limit), so subtitles follow the speech rather than a fixed
word count.

Words may also carry a ``speaker`` (a name) and a ``sentence`` (an int index, from the chunk
planner's sentences); both are optional and read with ``getattr``. A cue never spans two speakers
or two sentence indexes. When a word has a sentence index, that index decides where sentences end
(a word ending in "." no longer does); long sentences are still split by length, duration and
pauses. A speaker is shown as a WebVTT voice span, ``<v Alice>text</v>``, and in SRT as a
``Alice: text`` prefix; its label counts towards the 42 characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Timed(Protocol):
    """A timed word. Optional, read with ``getattr``: ``speaker: str | None``, ``sentence: int | None``."""

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
    text_len = 0  # len(" ".join(words of cur)), plus the speaker label and ": " when there is one
    for w in words:
        speaker, sentence = _speaker(w), _sentence(w)
        if cur:
            new_group = speaker != _speaker(cur[-1]) or sentence != _sentence(cur[-1])
            too_long = text_len + 1 + len(w.word) > MAX_CHARS or w.end - cur[0].start > MAX_CUE_S
            if new_group or too_long or w.start - cur[-1].end > PAUSE_S:
                out.append(_cue(cur))
                cur = []
        if not cur:
            label = _label(speaker)
            text_len = len(label) + 2 + len(w.word) if label else len(w.word)
        else:
            text_len += 1 + len(w.word)
        cur.append(w)
        if sentence is None and w.word.endswith(_SENTENCE_END):
            out.append(_cue(cur))
            cur = []
    if cur:
        out.append(_cue(cur))
    return out


def _cue(words: list[Timed]) -> Cue:
    return Cue(
        start=words[0].start,
        end=max(words[-1].end, words[0].start),
        text=" ".join(w.word for w in words),
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
