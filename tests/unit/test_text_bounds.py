"""Hostile text finishes (issue 25): inputs on which the old code ran for minutes with the GIL held.

Each input is sized so that the code before issue 25 took minutes on a 2-core machine (figures in
docs/benchmarks.md) and the code now takes well under a second; ``pytest.mark.timeout`` is the
failure mechanism, a hang guard, not a measure of speed. What each test checks besides finishing
is the result.
"""

from __future__ import annotations

import pytest

from pipeline.jobs.contract import ErrorCode, Manifest, Segment
from pipeline.text import normalize, script


def hostile_lexicon(tag: str) -> dict[str, str]:
    """Issue 25: 1,000 graphemes of 200 characters that almost match "a a a ...". The old
    alternation regex tried every one of them at every word: ~1 minute per 100,000 characters."""
    return {("a " * 98 + f"{tag}{i:03d}"): "x" for i in range(1000)}


@pytest.mark.timeout(60)
def test_a_lexicon_of_near_misses_over_the_longest_text_finishes() -> None:
    text = "a " * 50_000
    for language, tag in (("eng", "b"), ("zho", "c")):  # the English and the Chinese matcher
        tokens = normalize.normalize(text, language, hostile_lexicon(tag))
        assert len(tokens) == 50_000 and all(t.spoken == "a" for t in tokens)


@pytest.mark.timeout(60)
def test_a_lexicon_match_at_the_end_of_near_misses_is_found() -> None:
    lexicon = hostile_lexicon("b")
    text = "a " * 49_900 + "a " * 98 + "b007 done"
    tokens = normalize.normalize(text, "eng", lexicon)
    assert [t.spoken for t in tokens[-2:]] == ["x", "done"]
    assert text[tokens[-2].start : tokens[-2].end] == "a " * 98 + "b007"


@pytest.mark.timeout(60)
def test_one_long_word_of_punctuation_finishes() -> None:
    """The old lead/core/trail regex retried the trail run from every position: ~35 s for one
    100,000-character word, per language that splits words (English, the "basic" ones, auto)."""
    word = "." * 99_999 + "a"
    for language in ("eng", "deu"):
        (token,) = normalize.normalize(word, language)
        assert token.spoken == word
    inner = "a" + "." * 99_998 + "b"
    (token,) = normalize.normalize(inner, "eng")
    assert token.spoken == inner


@pytest.mark.timeout(60)
def test_one_long_word_fails_as_text_that_cannot_be_spoken() -> None:
    """Not SYNTHESIS_FAILED after a model call on one enormous chunk: the planner never splits a word."""
    text = "Before. " + "." * 99_990 + "a"
    for language in ("eng", "auto"):
        with pytest.raises(script.ScriptError) as err:
            script.analyse(Manifest(text=text, voice="v", language=language), {})
        assert err.value.code is ErrorCode.TEXT_NOT_SPEAKABLE
        assert "offset 8" in err.value.message and "99,991 characters" in err.value.message
    # Chinese segmentation makes the dots a silent token of their own: there is nothing too long.
    analysis = script.analyse(Manifest(text=text, voice="v", language="zho"), {})
    assert analysis.normalized_text == "Before. a"


def test_a_long_but_speakable_word_is_kept() -> None:
    url = "https://example.com/" + "/".join(f"part{i}" for i in range(20))
    analysis = script.analyse(Manifest(text=f"See {url} now.", voice="v"), {})
    assert "slash" in analysis.normalized_text


def test_a_dialogue_turn_with_a_long_word_is_named() -> None:
    manifest = Manifest(segments=[Segment(text="Fine."), Segment(text="9" * 5000)], voice="v")
    with pytest.raises(script.ScriptError) as err:
        script.analyse(manifest, {})
    assert err.value.code is ErrorCode.TEXT_NOT_SPEAKABLE and err.value.message.startswith("segments[1]: ")


@pytest.mark.timeout(60)
def test_thousands_of_pauses_before_the_text_plan_in_linear_time() -> None:
    """The planner looked back over every piece so far for each run of text (a short first chunk
    is only for the first): 60,000 pauses then 60,000 runs were 3.6 G steps."""
    text = "[pause:1ms]" * 60_000 + "a [pause:1ms]" * 60_000
    analysis = script.analyse(Manifest(text=text, voice="v"), {}, max_total_pause_s=1e6)
    pieces = analysis.plan(lambda turn, speed: 300, first_short=True)
    assert len(pieces) == 180_000
    assert sum(1 for p in pieces if not p.is_pause) == 60_000


def test_the_spoken_budget_is_checked_while_a_lexicon_expands() -> None:
    """Every one-letter word said as 200 characters: 10 M characters if built whole. The budget
    hears the count while the words are expanded and stops the analysis a few thousand characters
    past its limit, not after the whole text."""
    heard: list[int] = []

    class Over(Exception):
        pass

    def budget(n: int) -> None:
        heard.append(n)
        if n > 300_000:
            raise Over

    with pytest.raises(Over):
        script.analyse(Manifest(text="a " * 50_000, voice="v"), {"a": "b" * 200}, on_spoken=budget)
    assert 300_000 < heard[-1] <= 300_000 + normalize.REPORT_EVERY + 200
    with pytest.raises(Over):
        script.analyse(Manifest(text="啊" * 50_000, voice="v", language="zho"), {"啊": "好" * 200}, on_spoken=budget)
    assert 300_000 < heard[-1] <= 300_000 + normalize.REPORT_EVERY + 200


def test_the_spoken_budget_sees_the_exact_count_after_each_run() -> None:
    heard: list[int] = []
    analysis = script.analyse(Manifest(text="One [pause:1s] two.", voice="v"), {}, on_spoken=heard.append)
    assert heard == [3, len("".join(analysis.normalized_text.split("\n")))]  # runs joined by line breaks
