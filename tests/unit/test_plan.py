"""Sentence splitting and chunk planning over tokens."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text import plan
from pipeline.text.plan import Sentence
from pipeline.text.tokens import Token


def _tokens(text: str) -> list[Token]:
    """A trivial tokenizer: every run of non-space characters is spoken as written."""
    return [Token(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]


def _texts(text: str) -> list[str]:
    return [s.spoken for s in plan.sentences(_tokens(text), text)]


def _flat(chunks: list[tuple[Token, ...]]) -> list[Token]:
    return [t for c in chunks for t in c]


def _nbytes(chunk: tuple[Token, ...]) -> int:
    return len(plan.chunk_spoken(chunk).encode())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world. How are you? Fine!", ["Hello world.", "How are you?", "Fine!"]),
        ("No end punctuation", ["No end punctuation"]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("(Really?) Yes.", ["(Really?)", "Yes."]),
        ("What?! No way…", ["What?!", "No way…"]),
        ("Wait... what?", ["Wait...", "what?"]),
        ("Line one\nLine two\n\nLine three", ["Line one", "Line two", "Line three"]),
        ("One\r\nTwo\rThree\u2028Four", ["One", "Two", "Three", "Four"]),
        ("你好。再见！真的？", ["你好。再见！真的？"]),  # one token: never split inside a token
        ("你好。 再见！ 真的？", ["你好。", "再见！", "真的？"]),
        ("「你好。」 再见", ["「你好。」", "再见"]),
        ("Ends with comma, continues", ["Ends with comma, continues"]),
        ("", []),
    ],
)
def test_sentences(text: str, expected: list[str]) -> None:
    assert _texts(text) == expected


def test_sentence_offsets_and_fields() -> None:
    text = "  Hi there.  Bye now.\n"
    ss = plan.sentences(_tokens(text), text)
    assert [(s.text_start, s.text_end) for s in ss] == [(2, 11), (13, 21)]
    assert text[ss[0].text_start : ss[0].text_end] == "Hi there."
    assert ss[1].tokens == (Token(13, 16, "Bye"), Token(17, 21, "now."))


def test_silent_tokens_stay_in_a_sentence() -> None:
    text = "— Hello. — there. —"
    toks = [Token(t.start, t.end, "" if t.spoken == "—" else t.spoken) for t in _tokens(text)]
    ss = plan.sentences(toks, text)
    assert [s.spoken for s in ss] == ["Hello.", "there."]
    assert [len(s.tokens) for s in ss] == [2, 3]  # leading dash joins the first, trailing the last
    assert [t for s in ss for t in s.tokens] == toks


def test_silent_line_joins_previous_sentence() -> None:
    text = "Hello\n—\nWorld"
    toks = [Token(t.start, t.end, "" if t.spoken == "—" else t.spoken) for t in _tokens(text)]
    ss = plan.sentences(toks, text)
    assert [s.spoken for s in ss] == ["Hello", "World"]
    assert ss[0].tokens == (toks[0], toks[1])


def test_nothing_spoken_is_one_silent_sentence() -> None:
    toks = [Token(0, 1, ""), Token(2, 3, "")]
    assert plan.sentences(toks, "- -") == [Sentence(tuple(toks), 0, 3, "")]


def test_pack_whole_sentences_greedily() -> None:
    text = "One two. Three four. Five six."
    ss = plan.sentences(_tokens(text), text)
    chunks = plan.pack(ss, 20)
    assert [plan.chunk_spoken(c) for c in chunks] == ["One two. Three four.", "Five six."]
    assert [plan.chunk_spoken(c) for c in plan.pack(ss, 1000)] == [text]
    assert [plan.chunk_spoken(c) for c in plan.pack(ss, 19)] == ["One two.", "Three four.", "Five six."]


def test_long_sentence_splits_at_clauses_then_tokens() -> None:
    text = "Short. alpha beta, gamma delta; epsilon zeta eta theta iota kappa. End."
    ss = plan.sentences(_tokens(text), text)
    chunks = [plan.chunk_spoken(c) for c in plan.pack(ss, 26)]
    assert chunks == [
        "Short.",  # the long sentence does not share a chunk with its neighbours
        "alpha beta, gamma delta;",
        "epsilon zeta eta theta",
        "iota kappa.",
        "End.",
    ]


def test_oversize_token_is_its_own_chunk() -> None:
    text = "a b supercalifragilistic c d"
    chunks = plan.pack(plan.sentences(_tokens(text), text), 5)
    assert [plan.chunk_spoken(c) for c in chunks] == ["a b", "supercalifragilistic", "c d"]


def test_max_bytes_counts_utf8_and_floor_is_one() -> None:
    text = "ééé ééé"  # 6 bytes a word
    ss = plan.sentences(_tokens(text), text)
    assert len(plan.pack(ss, 12)) == 2
    assert len(plan.pack(ss, 13)) == 1
    assert [len(c) for c in plan.pack(ss, 0)] == [1, 1]
    assert [len(c) for c in plan.pack(ss, -5)] == [1, 1]


def test_silent_tokens_cost_nothing() -> None:
    toks = [Token(0, 1, "ab"), Token(2, 3, ""), Token(4, 5, "cd")]
    chunks = plan.pack(plan.sentences(toks, "a - c"), 5)
    assert chunks == [tuple(toks)]
    assert plan.chunk_spoken(chunks[0]) == "ab cd"


def test_empty_input() -> None:
    assert plan.pack([], 100) == []
    assert plan.sentences([], "") == []


_words = st.one_of(
    st.text(alphabet="abcé中 ", min_size=1, max_size=12),
    st.sampled_from([".", "!", "?", ",", ";", "—", "…", '."', "?)", "\n", "\n\n", " ", "  "]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_words, max_size=60), st.integers(-2, 60), st.booleans())
def test_pack_covers_every_token_once_in_order(parts: list[str], max_bytes: int, silent: bool) -> None:
    text = "".join(parts)
    toks = _tokens(text)
    if silent:  # some tokens say nothing
        toks = [Token(t.start, t.end, "" if i % 3 == 0 else t.spoken) for i, t in enumerate(toks)]
    ss = plan.sentences(toks, text)
    assert [t for s in ss for t in s.tokens] == toks
    for s in ss:
        assert s.tokens
        assert (s.text_start, s.text_end) == (s.tokens[0].start, s.tokens[-1].end)
        assert s.spoken == plan.chunk_spoken(s.tokens)
        assert s.spoken or len(ss) == 1  # a silent sentence only when nothing at all is spoken
    chunks = plan.pack(ss, max_bytes)
    assert _flat(chunks) == toks
    for c in chunks:
        assert c
        assert _nbytes(c) <= max(max_bytes, 1) or sum(1 for t in c if t.spoken) == 1
    # A chunk is either whole sentences or a piece of one sentence; greedy: the next sentence did not fit.
    sentence_of = {t.start: i for i, s in enumerate(ss) for t in s.tokens}
    whole = []
    for c in chunks:
        first, last = sentence_of[c[0].start], sentence_of[c[-1].start]
        is_whole = c[0] == ss[first].tokens[0] and c[-1] == ss[last].tokens[-1]
        assert is_whole or first == last
        whole.append(is_whole)
    for i in range(len(chunks) - 1):
        nxt = ss[sentence_of[chunks[i + 1][0].start]]
        if whole[i] and chunks[i + 1][0] == nxt.tokens[0]:
            size = len(plan.chunk_spoken((*chunks[i], *nxt.tokens)).encode())
            assert size > max(max_bytes, 1)


def test_a_short_first_chunk_is_the_first_sentence_or_its_first_clauses() -> None:
    text = "Hello there. The second sentence is here. A third one. And a fourth."
    ss = plan.sentences(_tokens(text), text)
    assert [plan.chunk_spoken(c) for c in plan.pack(ss, 60, first_bytes=15)] == [
        "Hello there.",  # alone, although the budget would take more with it
        "The second sentence is here. A third one. And a fourth.",
    ]
    long_first = "One two three, four five six, seven eight. Next sentence."
    ss = plan.sentences(_tokens(long_first), long_first)
    assert [plan.chunk_spoken(c) for c in plan.pack(ss, 60, first_bytes=15)] == [
        "One two three,",  # the first clause; the rest of its sentence packs as usual
        "four five six, seven eight. Next sentence.",
    ]


@given(st.lists(_words, max_size=60), st.integers(1, 60), st.integers(1, 60))
def test_a_short_first_chunk_keeps_every_token_once_in_order(parts: list[str], max_bytes: int, first: int) -> None:
    text = "".join(parts)
    ss = plan.sentences(_tokens(text), text)
    chunks = plan.pack(ss, max_bytes, first_bytes=first)
    assert _flat(chunks) == _tokens(text)
    if chunks:
        assert _nbytes(chunks[0]) <= min(first, max_bytes) or len(chunks[0]) == 1
    assert chunks == plan.pack(ss, max_bytes, first_bytes=first)  # a retried job plans the same


def _prose(n_chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    words = ["the", "voice", "clone", "naïve", "café", "über", "日本語", "said", "quickly", "and", "then"]
    out: list[str] = []
    size = 0
    while size < n_chars:
        w = rng.choice(words)
        r = rng.random()
        w += "." if r < 0.06 else "," if r < 0.12 else "?" if r < 0.14 else ""
        w += "\n" if rng.random() < 0.01 else " "
        out.append(w)
        size += len(w)
    return "".join(out)[:n_chars]


def test_planning_100k_chars_covers_every_token_within_the_budget() -> None:
    """The size a long-form job has. No clock here: pytest-timeout catches a hang, and a test that
    compares elapsed time fails on a slower machine."""
    text = _prose(100_000)
    toks = _tokens(text)
    chunks = plan.pack(plan.sentences(toks, text), 135)
    assert _flat(chunks) == toks
    assert all(_nbytes(c) <= 135 for c in chunks)


def test_one_huge_sentence_without_punctuation_is_split_at_words() -> None:
    text = " ".join(["word"] * 25_000)  # 125k chars, no punctuation at all
    toks = _tokens(text)
    chunks = plan.pack(plan.sentences(toks, text), 100)
    assert _flat(chunks) == toks
