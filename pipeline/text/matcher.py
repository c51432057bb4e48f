"""Lexicon matching in time linear in the text: every grapheme of a lexicon found in one pass.

``normalize`` and ``zh`` used to match a lexicon with one alternation regex (every grapheme,
longest first). Python's ``re`` tries each alternative at each position, so the cost was text
length x lexicon size, with the GIL held throughout: 1,000 graphemes of 200 characters that almost
match (``"a " * 98 + "b001"``...) over ``"a " * 50000`` took 73-76 s. ``Matcher`` gives the same
matches with an Aho-Corasick automaton (pyahocorasick, C) in 0.05 s. Measured side by side with
RE2 (google-re2) and a trie walked in Python (docs/benchmarks.md, "The text front-end's bounds"):
RE2 has no lookarounds and an ASCII ``\\w`` (boundaries would have to be emulated, not the same
characters as ``re``'s), and through its Python wrapper each search from a position re-reads the
text (quadratic: 3 s for 20,000 matches); the Python trie takes 0.8 s on the near misses. The
automaton's own worst case is whole-word occurrences nested at every position: at most
``lexicon.MAX_LENGTH`` end at one position, so the work is bounded by the text's length times 200
(2.4 s measured for "." ... "." * 200 over 100,000 dots, where the regex took 0.4 ms), far below
the CPU limit the text front-end runs under (``pipeline.text.sandbox``).

What "the same matches" means, and why this gives them
    The regex was ``(?:g1|g2|...)`` with the graphemes sorted longest first (then by text), a
    space inside a grapheme written ``\\s+``, and boundary lookarounds: ``(?<!\\w)`` and ``(?!\\w)``
    around every grapheme for English, for Chinese only at an end of a grapheme that is a letter
    or digit of a non-Chinese script. ``finditer`` reports, from left to right, at the first
    position where one alternative matches, the first alternative (in that order) that matches
    there, lookarounds included, and goes on after it.

    Graphemes are folded (``lexicon.table``): no whitespace but single spaces inside, none at
    either end. So each ``\\s+`` takes a whole run of whitespace, and a grapheme matches the text
    at a position exactly when it matches the text with each whitespace run folded to one space
    (a run reads as a space, never a letter, on both sides of the fold). The matcher searches
    that folded text, with the boundaries woven in as marks (``Matcher``), so the automaton
    reports only occurrences whose boundaries hold. Two graphemes of the same length that match at
    one position are the same folded string, so "the first alternative in the regex's order" is
    "the longest grapheme that matches there": the matcher keeps the longest occurrence per start,
    then takes starts from left to right, skipping those inside the previous match, as
    ``finditer`` does, and maps offsets back. ``tests/unit/test_lexicon_match.py`` checks this
    against the old regexes on random lexicons and texts.
"""

from __future__ import annotations

import itertools
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable

import ahocorasick

__all__ = ["Matcher"]

_RUN = re.compile(r"\s+")
# Whitespace that folding changes: any whitespace but a space, or two in a row.
_FOLDS = re.compile(r"[^\S ]|  ")
# Where the marks (below) come from: noncharacters, then the private use planes. ``lexicon.check``
# refuses both in a grapheme, so the first three are free for any lexicon a job can have.
_RESERVED = (range(0xFDD0, 0xFDF0), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))


class Matcher:
    """The graphemes (folded, non-empty) of one lexicon, ready to be found in any text.

    ``edge``: a regex for one character that may not touch an end of a grapheme that needs a
    boundary (``\\w`` for English). ``always``: both ends of every grapheme need one (English);
    otherwise only an end whose own character is an edge does (Chinese).

    Boundaries are woven into the searched text as marks, so that the automaton finds only
    matches whose boundaries hold (checking them afterwards meant going through every occurrence:
    ``"a" * k`` graphemes over ``"a" * 100_000`` have 20 M, none a whole word). ``open`` follows
    every character that is not an edge (and starts the text): a grapheme that needs a boundary
    before it starts with ``open``. ``close`` comes before every such character (and ends the
    text): a grapheme that needs a boundary after it ends with ``close``. A grapheme gets the same
    marks around its own non-edge characters, so it matches the marked text exactly where it
    matched the text. The marks are characters no grapheme has; a text's own copies of them are
    replaced by a third such character, not an edge either, so no boundary moves and they match
    nothing.
    """

    __slots__ = ("_automaton", "_close", "_closes", "_not_edge", "_open", "_own")

    def __init__(self, graphemes: Iterable[str], edge: str, *, always: bool) -> None:
        graphemes = list(graphemes)
        used = set().union(*graphemes)
        free = (chr(c) for c in itertools.chain(*_RESERVED) if chr(c) not in used)
        try:
            self._open, self._close, stand_in = next(free), next(free), next(free)
        except StopIteration:  # pragma: no cover - 2 M characters: no checked lexicon comes close
            raise ValueError("the lexicon uses every private character the matcher could mark with") from None
        self._own = str.maketrans({self._open: stand_in, self._close: stand_in})
        self._closes = re.compile(re.escape(self._close))
        self._not_edge = re.compile(rf"(?!{edge}).", re.S)
        is_edge = re.compile(edge).match
        self._automaton = ahocorasick.Automaton()
        for g in graphemes:
            first_edge, last_edge = is_edge(g[0]) is not None, is_edge(g[-1]) is not None
            left, right = always or first_edge, always or last_edge
            marked = (self._open if left else "") + self._weave(g) + (self._close if right else "")
            lead = int(left) + int(not first_edge)  # marks before its first character
            self._automaton.add_word(marked, (len(marked), len(g), lead))
        self._automaton.make_automaton()

    def _weave(self, s: str) -> str:
        if self._open in s or self._close in s:
            s = s.translate(self._own)
        return self._not_edge.sub(f"{self._close}\\g<0>{self._open}", s)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, grapheme) of every match in ``text``, in order, never overlapping: what the
        alternation regex's ``finditer`` found (see the module doc)."""
        folded, where = _fold(text)
        marked = self._open + self._weave(folded) + self._close
        # Every occurrence found has its boundaries: keep the longest at each start.
        best: dict[int, int] = {}  # index of its first character in ``marked`` -> its length
        for end, (size, n, lead) in self._automaton.iter(marked):
            # Occurrences come by their end: at one start, each is longer than the one before.
            best[end - size + 1 + lead] = n
        if not best:
            return []
        # Back from ``marked`` to ``folded``: before a character stand the text's ``open``, an
        # ``open`` and a ``close`` for each non-edge character before it, and its own ``close`` if
        # it is one.
        closes = array("q", (m.start() for m in self._closes.finditer(marked)))
        close = self._close
        found: list[tuple[int, int, str]] = []
        pos = 0
        for start in sorted(best):
            i = start - 1 - 2 * bisect_left(closes, start) + (marked[start - 1] == close)
            if i < pos:  # inside the previous match: the regex never looked here
                continue
            end = i + best[start]
            grapheme = folded[i:end]
            if where is None:
                found.append((i, end, grapheme))
            else:  # a grapheme starts and ends on a non-space: one character of the text each
                found.append((where[i], where[end - 1] + 1, grapheme))
            pos = end
        return found


def _fold(text: str) -> tuple[str, array[int] | None]:
    """``text`` with every whitespace run folded to one space, and each folded character's offset
    in ``text`` (None when folding changes nothing, the usual case: offsets are the same)."""
    if _FOLDS.search(text) is None:
        return text, None
    parts: list[str] = []
    where = array("q")
    pos = 0
    for m in _RUN.finditer(text):
        start, end = m.span()
        parts.append(text[pos:start])
        where.extend(range(pos, start))
        parts.append(" ")
        where.append(start)
        pos = end
    parts.append(text[pos:])
    where.extend(range(pos, len(text)))
    return "".join(parts), where
