"""Pause markers: parsing, offsets, limits and every error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.text import markup
from pipeline.text.markup import MarkupError, Pause, TextRun


def _runs_text(text: str, items: list[TextRun | Pause]) -> str:
    return "".join(text[i.start : i.end] for i in items if isinstance(i, TextRun))


def _pauses(items: list[TextRun | Pause]) -> list[float]:
    return [i.seconds for i in items if isinstance(i, Pause)]


def test_plain_text_is_one_run() -> None:
    assert markup.parse("Hello there.") == [TextRun(0, 12)]
    assert markup.parse("") == []


def test_pauses_and_runs_with_offsets() -> None:
    text = "Hello.[pause:1.5s] Then [PAUSE:500ms]silence[pause:2s]"
    items = markup.parse(text)
    assert items == [
        TextRun(0, 6),
        Pause(1.5, 6, 18),
        TextRun(18, 24),
        Pause(0.5, 24, 37),
        TextRun(37, 44),
        Pause(2.0, 44, 54),
    ]
    assert text[6:18] == "[pause:1.5s]"
    assert _runs_text(text, items) == "Hello. Then silence"
    assert sum(_pauses(items)) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("marker", "seconds"),
    [
        ("[pause:1.5s]", 1.5),
        ("[pause:500ms]", 0.5),
        ("[pause:2s]", 2.0),
        ("[Pause:2S]", 2.0),
        ("[pause:250MS]", 0.25),
        ("[ pause : 1.5 s ]", 1.5),
        ("[pause:\t.5s]", 0.5),
        ("[pause:3.s]", 3.0),
        ("[pause:10s]", 10.0),  # the maximum is allowed
        ("[pause:10000ms]", 10.0),
        ("[pause:1ms]", 0.001),
    ],
)
def test_marker_forms(marker: str, seconds: float) -> None:
    items = markup.parse(f"a {marker} b")
    assert items == [
        TextRun(0, 2),
        Pause(pytest.approx(seconds), 2, 2 + len(marker)),
        TextRun(2 + len(marker), 4 + len(marker)),
    ]


def test_adjacent_pauses_stay_separate() -> None:
    items = markup.parse("[pause:1s][pause:2s]")
    assert items == [Pause(1.0, 0, 10), Pause(2.0, 10, 20)]


def test_whitespace_only_runs_are_kept_but_empty_ones_are_not() -> None:
    items = markup.parse("[pause:1s] \n [pause:1s]")
    assert items == [Pause(1.0, 0, 10), TextRun(10, 13), Pause(1.0, 13, 23)]


@pytest.mark.parametrize(
    "text",
    [
        "See [citation needed] here.",
        "Item [1] and [2].",
        "A [pause for effect] is spoken.",
        "[pauses] and [paused] and [pause-button]",
        "a < b and b > c",
        "x<3 and y>2",
        "I <3 you",
        "Write to <alice@example.com> or <https://example.com>.",
        "if a<b and c>d then",
        "<< quoted >>",
        "[",
        "]",
        "<",
    ],
)
def test_ordinary_text_is_not_markup(text: str) -> None:
    assert markup.parse(text) == [TextRun(0, len(text))]


@pytest.mark.parametrize(
    ("text", "offset", "snippet", "what"),
    [
        ('Hi <break time="1s"/> there', 3, '<break time="1s"/>', "SSML/XML markup is not supported"),
        ("<speak>Hello</speak>", 0, "<speak>", "SSML/XML markup is not supported"),
        ("Hello</speak>", 5, "</speak>", "SSML/XML markup is not supported"),
        ("a <p/> b", 2, "<p/>", "SSML/XML markup is not supported"),
        ("say <prosody rate='slow'>this", 4, "<prosody rate='slow'>", "SSML/XML markup is not supported"),
        ('<?xml version="1.0"?><speak/>', 0, '<?xml version="1.0"?>', "SSML/XML markup is not supported"),
        ("a <!-- note --> b", 2, "<!-- note -->", "SSML/XML markup is not supported"),
        ("a <!-- never closed", 2, "<!-- never closed", "SSML/XML markup is not supported"),
        ("<break time=1s/>", 0, "<break time=1s/>", "SSML/XML markup is not supported"),
        ("a <B>bold</B>", 2, "<B>", "SSML/XML markup is not supported"),
        ("Wait [pause] now", 5, "[pause]", "pause marker without a length"),
        ("Wait [pause:] now", 5, "[pause:]", "pause marker without a length"),
        ("Wait [pause:abc] now", 5, "[pause:abc]", "invalid pause marker"),
        ("Wait [pause:1.5 sec] now", 5, "[pause:1.5 sec]", "invalid pause marker"),
        ("Wait [pause:1e3ms] now", 5, "[pause:1e3ms]", "invalid pause marker"),
        ("Wait [pause:-1s] now", 5, "[pause:-1s]", "negative pause length"),
        ("Wait [pause:0s] now", 5, "[pause:0s]", "pause length must be greater than 0"),
        ("Wait [pause:0.000ms] now", 5, "[pause:0.000ms]", "pause length must be greater than 0"),
        ("Wait [pause:1.5] now", 5, "[pause:1.5]", "pause length without a unit"),
        ("Wait [pause 2s] now", 5, "[pause 2s]", "pause marker without ':'"),
        ("Wait [pause2s] now", 5, "[pause2s]", "pause marker without ':'"),
        ("Wait [pause=2s] now", 5, "[pause=2s]", "pause marker with '=' instead of ':'"),
        ("Wait [pause:20s] now", 5, "[pause:20s]", "pause longer than the maximum of 10s"),
        ("Wait [pause:10001ms] now", 5, "[pause:10001ms]", "pause longer than the maximum of 10s"),
        ("Wait [pause:1s now", 5, "[pause:1s now", "unclosed pause marker"),
        ("Wait [pause:1s\n] now", 5, "[pause:1s", "unclosed pause marker"),
    ],
)
def test_errors_name_offset_snippet_and_syntax(text: str, offset: int, snippet: str, what: str) -> None:
    with pytest.raises(MarkupError) as err:
        markup.parse(text)
    msg = str(err.value)
    assert msg.startswith(what), msg
    assert f"at offset {offset}:" in msg
    assert f'"{snippet}"' in msg
    assert "[pause:1.5s]" in msg
    assert err.value.offset == offset
    assert err.value.snippet == snippet
    assert isinstance(err.value, ValueError)


def test_ssml_message_says_not_supported_and_gives_syntax() -> None:
    with pytest.raises(MarkupError, match=r"SSML.*not supported.*\[pause:1\.5s\] or \[pause:500ms\]"):
        markup.parse('<speak>Hi <break time="1s"/></speak>')


def test_first_error_wins() -> None:
    with pytest.raises(MarkupError, match="at offset 2:"):
        markup.parse("a [pause:x] <speak>")
    with pytest.raises(MarkupError, match="at offset 2:"):
        markup.parse("a <speak> [pause:x]")


def test_long_snippet_is_shortened() -> None:
    text = "[pause:" + "x" * 100 + "]"
    with pytest.raises(MarkupError) as err:
        markup.parse(text)
    assert len(err.value.snippet) <= 40
    assert err.value.snippet.endswith("…")


def test_limits_are_configurable() -> None:
    assert _pauses(markup.parse("[pause:20s]", max_pause_s=30)) == [20.0]
    with pytest.raises(MarkupError, match="maximum of 1s"):
        markup.parse("[pause:1.5s]", max_pause_s=1)


def test_total_pause_limit() -> None:
    ok = "x [pause:10s]" * 60  # exactly 600 s
    assert sum(_pauses(markup.parse(ok))) == pytest.approx(600.0)
    tiny = "[pause:100ms]" * 6000  # 600 s in float steps of 0.1: rounding must not fail it
    assert sum(_pauses(markup.parse(tiny))) == pytest.approx(600.0)
    over = ok + " [pause:1s]"
    with pytest.raises(MarkupError) as err:
        markup.parse(over)
    assert err.value.offset == len(ok) + 1
    assert "pauses add up to 601s, over the maximum of 600s" in str(err.value)
    with pytest.raises(MarkupError, match="maximum of 3s"):
        markup.parse("[pause:2s] [pause:2s]", max_total_pause_s=3)


_pieces = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="[]<>"), max_size=20),
    st.sampled_from(["[1]", "[citation needed]", "a < b", "x<3", "[pause for effect]", "\n", " "]),
    st.builds(lambda n, u: f"[pause:{n}{u}]", st.integers(1, 9), st.sampled_from(["s", "ms", "S"])),
)


@given(st.lists(_pieces, max_size=20))
def test_runs_map_back_exactly(pieces: list[str]) -> None:
    text = "".join(pieces)
    items = markup.parse(text)
    pos = 0
    for item in items:  # in order, contiguous, non-empty, covering the whole text
        assert item.start == pos < item.end
        pos = item.end
        if isinstance(item, Pause):
            assert text[item.start : item.end].lower().startswith("[pause:")
    assert pos == len(text)
    markers = [p for p in pieces if p.startswith("[pause:")]
    assert _runs_text(text, items) == "".join(p for p in pieces if not p.startswith("[pause:"))
    expected = [int(m[7]) / (1000 if m[8:10].lower() == "ms" else 1) for m in markers]
    assert _pauses(items) == pytest.approx(expected)
