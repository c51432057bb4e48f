"""Lexicon matching and the word split, linear now (issue 25), give what the old regexes gave.

The old implementations are kept here, verbatim, as the reference: the alternation regexes of
``normalize._lexicon_re`` and ``zh._lexicon_re`` and ``normalize._SPLIT``.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.text import lexicon, normalize, zh
from pipeline.text.matcher import Matcher
from pipeline.text.zh import _HAN

# -- the old implementations -------------------------------------------------------------------


def old_english(items: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    table = lexicon.table(items)
    keys = sorted(table, key=lambda g: (-len(g), g))
    alts = "|".join(r"\s+".join(re.escape(part) for part in g.split(" ")) for g in keys)
    return re.compile(rf"(?<!\w)(?:{alts})(?!\w)")


def old_chinese(items: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    table = lexicon.table(items)
    edge = rf"[^\W{_HAN}]"
    alts = []
    for g in sorted(table, key=lambda g: (-len(g), g)):
        body = r"\s+".join(re.escape(part) for part in g.split(" "))
        left = rf"(?<!{edge})" if re.match(edge, g[0]) else ""
        right = rf"(?!{edge})" if re.match(edge, g[-1]) else ""
        alts.append(f"{left}{body}{right}")
    return re.compile("|".join(alts))


OLD_SPLIT = re.compile(rf"([{normalize._LEAD}]*)(.*?)([{normalize._TRAIL}]*)", re.S)


def old_found(pattern: re.Pattern[str], text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), " ".join(m.group().split())) for m in pattern.finditer(text)]


# -- strategies: few characters, so that graphemes overlap, nest and almost match -----------------

# Letters and digits (Latin, accented, Han, an astral Han and an astral letter), "_", whitespace of
# several kinds, punctuation that lexicons and the split care about, a combining mark (not \w), a
# noncharacter like the matcher's own marks.
ALPHABET = ["a", "b", "A", "1", "é", "中", "国", "\U00020000", "\U0001d538", "_", " ", "  ", "\t", "\n", "\u00a0"]
ALPHABET += [".", "-", "'", '"', "(", ")", ",", "+", "&", "\u0301", "\ufdd0", "\ufdd1"]
pieces = st.sampled_from(ALPHABET)
graphemes = st.lists(pieces, min_size=1, max_size=6).map("".join).filter(lambda g: g.split())
lexicons = st.lists(graphemes, min_size=1, max_size=8, unique=True).map(lambda gs: tuple((g, "x") for g in gs))


@st.composite
def lexicon_and_text(draw: st.DrawFn) -> tuple[tuple[tuple[str, str], ...], str]:
    """A lexicon and a text made of its graphemes (their spaces as other whitespace, sometimes)
    and random pieces, so that most examples have matches, near misses and touching words."""
    items = draw(lexicons)
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            g = draw(st.sampled_from(items))[0]
            parts.append(g.replace(" ", draw(st.sampled_from([" ", "\n ", "\t", "  ", "\u3000"]))))
        else:
            parts.append(draw(pieces))
    return items, "".join(parts)


def english(items: tuple[tuple[str, str], ...]) -> Matcher:
    return Matcher(lexicon.table(items), r"\w", always=True)


def chinese(items: tuple[tuple[str, str], ...]) -> Matcher:
    return Matcher(lexicon.table(items), rf"[^\W{_HAN}]", always=False)


@settings(max_examples=1500, deadline=None)
@given(lexicon_and_text())
@example(((("New York", "x"), ("New", "y")), "New Yorker in New  York."))
@example(((("a", "x"), ("a a", "y"), ("a a a", "z")), "a a a a a"))
@example(((("C++", "x"), ("C", "y")), "C++ and C+ and xC++"))
@example(((("AI", "x"),), "我们AI的 MAIL AI5"))
def test_the_matcher_finds_what_the_alternation_regex_found(case: tuple[tuple[tuple[str, str], ...], str]) -> None:
    items, text = case
    assert english(items).find(text) == old_found(old_english(items), text)
    assert chinese(items).find(text) == old_found(old_chinese(items), text)


@settings(max_examples=300, deadline=None)
@given(lexicon_and_text(), st.sampled_from(["eng", "zho", "deu"]))
def test_normalize_with_a_lexicon_is_unchanged(case: tuple[tuple[tuple[str, str], ...], str], language: str) -> None:
    """End to end: the tokens ``normalize`` makes with the new matcher equal those it makes with
    the old regex put in its place."""
    items, text = case
    lex = dict(items)
    new = normalize.normalize(text, language, lex)
    key = tuple(sorted(lex.items()))
    old_en, old_zh = normalize._lexicon_matcher, zh._lexicon_matcher

    class Old:
        def __init__(self, pattern: re.Pattern[str]) -> None:
            self.pattern = pattern

        def find(self, s: str) -> list[tuple[int, int, str]]:
            return old_found(self.pattern, s)

    table = lexicon.table(key)
    try:
        normalize._lexicon_matcher = lambda k: (Old(old_english(k)), table)  # type: ignore[assignment]
        zh._lexicon_matcher = lambda k: (Old(old_chinese(k)), table)  # type: ignore[assignment]
        old = normalize.normalize(text, language, lex)
    finally:
        normalize._lexicon_matcher, zh._lexicon_matcher = old_en, old_zh
    assert new == old


SPLIT_ALPHABET = [*sorted(normalize._LEAD_SET | normalize._TRAIL_SET), "a", "1", " ", "\\", "\n", "-"]


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.sampled_from(SPLIT_ALPHABET), max_size=12) | st.text(max_size=12))
@example("")
@example('"')
@example("''")
@example("'hello'")
@example("(a.)")
@example(".....a")
@example("a.b.")
def test_the_split_is_the_old_regex(word: str) -> None:
    m = OLD_SPLIT.fullmatch(word)
    assert m is not None
    assert normalize._split(word) == m.groups()
