"""Pause markers in a job's text: the one piece of markup the pipeline understands.

Syntax (documented for clients)::

    [pause:1.5s]    [pause:500ms]    [pause:2s]    [Pause: 0.25 s]

* ``pause`` is case-insensitive, and so is the unit (``s`` or ``ms``);
* spaces or tabs are allowed after ``[``, around ``:``, between the number and the unit and
  before ``]`` (never a line break);
* the length is a plain decimal number (``2``, ``1.5``, ``.5``), greater than 0 and at most
  ``max_pause_s`` (10 s by default); the pauses of one text add up to at most
  ``max_total_pause_s`` (600 s by default);
* adjacent markers are kept as separate :class:`Pause` items (callers add them up).

A bracket that opens with the word ``pause`` followed by ``]``, ``:``, ``=`` or a digit is a
pause marker and must be well formed (``[pause]``, ``[pause:abc]``, ``[pause:1.5]``,
``[pause:-1s]``, ``[pause:0s]``, ``[pause 2s]`` are errors). Any other square-bracket text
(``[citation needed]``, ``[1]``, ``[pause for effect]``) is ordinary text and is spoken.

SSML and other XML-like markup is not supported and is rejected with a message giving the syntax
above: a tag-like ``<name>``, ``</name>``, ``<name/>``, ``<name attr="v" ...>``, ``<?xml ...?>``,
``<!-- ... -->`` or ``<!DOCTYPE ...>``. A ``<`` in prose (``a < b``, ``x<3``, ``<3``,
``<alice@example.com>``, ``a<b and c>d``) is ordinary text.

There is no escape: a literal ``[pause:1s]`` cannot be spoken.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["SYNTAX", "MarkupError", "Pause", "TextRun", "parse"]

SYNTAX = "[pause:1.5s] or [pause:500ms]"

_SNIPPET_MAX = 40


class MarkupError(ValueError):
    """Bad markup in a job's text. ``str(err)`` is meant for users (shown as INVALID_MARKUP)."""

    def __init__(self, message: str, *, offset: int, snippet: str) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.snippet = snippet


@dataclass(frozen=True)
class TextRun:
    """``source[start:end]`` is plain text to speak (may be whitespace-only: skip those)."""

    start: int
    end: int


@dataclass(frozen=True)
class Pause:
    """A pause of ``seconds``; ``source[start:end]`` is the marker itself."""

    seconds: float
    start: int
    end: int


_NAME = r"[A-Za-z_][\w.:-]*"
_ATTR = r"""\s+[A-Za-z_][\w.:-]*\s*=\s*(?:"[^"<>]{0,200}"|'[^'<>]{0,200}'|[^\s"'<>=/]+)"""
# Tag-like things only: a bare "<" in prose never matches. Bounded repeats keep parse() linear.
_TAG = re.compile(
    rf"<{_NAME}(?:{_ATTR})*\s*/?>"  # <speak>, <break time="1s"/>, <p/>
    rf"|</{_NAME}\s*>"  # </speak>
    r"|<\?xml\b[^<>]{0,200}>"  # <?xml version="1.0"?>
    r"|<!--(?:(?!-->).){0,100}(?:-->)?"  # <!-- comment --> (an unclosed one too)
    r"|<!DOCTYPE\b[^<>]{0,200}>",
    re.IGNORECASE | re.DOTALL,
)
# The start of something meant as a pause marker: "[pause" then "]", ":", "=" or a digit.
_PAUSE_START = re.compile(r"\[[ \t]*pause(?=[ \t]*[\]:=\d])", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_PAUSE = re.compile(rf"\[[ \t]*pause[ \t]*:[ \t]*(?P<num>{_NUMBER.pattern})[ \t]*(?P<unit>ms|s)[ \t]*\]", re.IGNORECASE)
_EXTENT = re.compile(r"[^\]\n\r]*\]?")
_CANDIDATE = re.compile(rf"(?P<tag>{_TAG.pattern})|(?P<pause>{_PAUSE_START.pattern})", re.IGNORECASE | re.DOTALL)


def _snippet(s: str) -> str:
    s = s if len(s) <= _SNIPPET_MAX else s[: _SNIPPET_MAX - 1] + "…"
    return s.replace("\n", "\\n").replace("\r", "\\r")


def _error(what: str, offset: int, snippet: str, hint: str) -> MarkupError:
    snip = _snippet(snippet)
    return MarkupError(f'{what} at offset {offset}: "{snip}"; {hint}', offset=offset, snippet=snip)


def _marker_extent(text: str, start: int) -> str:
    """The would-be marker from ``start``: up to its ``]`` on the same line, else to the line end."""
    m = _EXTENT.match(text, start)
    assert m is not None  # the pattern matches the empty string
    return m.group()


def _pause_seconds(raw: str, start: int, max_pause_s: float) -> float:
    hint = f"write pauses as {SYNTAX} (a number greater than 0, then s or ms, at most {max_pause_s:g}s)"
    if not raw.endswith("]"):
        raise _error("unclosed pause marker", start, raw, hint)
    m = _PAUSE.fullmatch(raw)
    if m is None:
        rest = raw[1:-1].strip()[len("pause") :].lstrip(" \t")
        value = rest[1:].strip(" \t")
        if not rest or (rest[0] in ":=" and not value):
            what = "pause marker without a length"
        elif rest[0] not in ":=":
            what = "pause marker without ':' before its length"
        elif rest[0] == "=":
            what = "pause marker with '=' instead of ':'"
        elif value.startswith("-"):
            what = "negative pause length"
        elif _NUMBER.fullmatch(value):
            what = "pause length without a unit (s or ms)"
        else:
            what = "invalid pause marker"
        raise _error(what, start, raw, hint)
    seconds = float(m["num"]) / (1000.0 if m["unit"].lower() == "ms" else 1.0)
    if seconds <= 0:
        raise _error("pause length must be greater than 0", start, raw, hint)
    if not math.isfinite(seconds) or seconds > max_pause_s:
        raise _error(f"pause longer than the maximum of {max_pause_s:g}s", start, raw, hint)
    return seconds


def parse(text: str, *, max_pause_s: float = 10.0, max_total_pause_s: float = 600.0) -> list[TextRun | Pause]:
    """Split ``text`` into runs of plain text and pauses, in order; raise :class:`MarkupError`.

    Runs are never empty (``start < end``) but may be whitespace-only; the markers themselves are
    in no run, so ``"".join(text[r.start:r.end] for r in runs)`` is the text without markers.
    The first error in the text (by offset) is the one raised.
    """
    out: list[TextRun | Pause] = []
    pos = 0
    total = 0.0
    for m in _CANDIDATE.finditer(text):
        start = m.start()
        if m["tag"] is not None:
            raise _error(
                "SSML/XML markup is not supported",
                start,
                m["tag"],
                f"write pauses as {SYNTAX}; other markup is not understood",
            )
        if start < pos:  # inside a marker already consumed (cannot happen: markers hold no "[")
            continue
        raw = _marker_extent(text, start)
        seconds = _pause_seconds(raw, start, max_pause_s)
        total += seconds
        if total > max_total_pause_s + 1e-9:
            raise _error(
                f"pauses add up to {total:g}s, over the maximum of {max_total_pause_s:g}s",
                start,
                raw,
                "use fewer or shorter pauses",
            )
        if start > pos:
            out.append(TextRun(pos, start))
        end = start + len(raw)
        out.append(Pause(seconds, start, end))
        pos = end
    if pos < len(text):
        out.append(TextRun(pos, len(text)))
    return out
