"""SRT/WebVTT rendering from word timings."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.jobs.contract import WordTiming
from pipeline.tts import subtitles


def _words(*spec: tuple[str, float, float]) -> list[WordTiming]:
    return [WordTiming(word=w, start=s, end=e) for w, s, e in spec]


WORDS = _words(
    ("Hello", 0.0, 0.4),
    ("world.", 0.5, 0.9),
    ("This", 1.0, 1.2),
    ("is", 1.25, 1.3),
    ("after", 3.0, 3.4),  # a pause of 1.7 s starts a new cue
    ("a", 3.5, 3.55),
    ("pause", 3.6, 3.9),
)


def test_cues_break_at_sentence_end_and_at_pauses() -> None:
    cues = subtitles.cues(WORDS)
    assert [c.text for c in cues] == ["Hello world.", "This is", "after a pause"]
    assert (cues[0].start, cues[0].end) == (0.0, 0.9)


def test_long_lines_are_split() -> None:
    words = _words(*[(f"word{i:02d}", i * 0.3, i * 0.3 + 0.25) for i in range(20)])
    cues = subtitles.cues(words)
    assert len(cues) > 1
    assert all(len(c.text) <= subtitles.MAX_CHARS for c in cues)
    assert " ".join(c.text for c in cues) == " ".join(w.word for w in words)


def test_srt_format() -> None:
    srt = subtitles.to_srt(WORDS[:2])
    assert srt == "1\n00:00:00,000 --> 00:00:00,900\nHello world.\n"


def test_vtt_format_and_hours() -> None:
    vtt = subtitles.to_vtt(_words(("late", 3725.5, 3726.25)))
    assert vtt == "WEBVTT\n\n01:02:05.500 --> 01:02:06.250\nlate\n"


def test_empty() -> None:
    assert subtitles.to_srt([]) == ""
    assert subtitles.to_vtt([]) == "WEBVTT\n\n"


@dataclass(frozen=True)
class _Word:
    word: str
    start: float
    end: float
    speaker: str | None = None
    sentence: int | None = None


def _spoken(*spec: tuple[str, float, float, str | None, int | None]) -> list[_Word]:
    return [_Word(*s) for s in spec]


def test_cues_never_span_two_speakers() -> None:
    words = _spoken(
        ("Hi", 0.0, 0.2, "Alice", None),
        ("Bob", 0.25, 0.5, "Alice", None),
        ("hello", 0.55, 0.9, "Bob", None),
        ("Alice", 0.95, 1.3, "Bob", None),
    )
    cues = subtitles.cues(words)
    assert [(c.speaker, c.text) for c in cues] == [("Alice", "Hi Bob"), ("Bob", "hello Alice")]


def test_sentence_indexes_decide_sentence_ends() -> None:
    words = _spoken(
        ("It", 0.0, 0.2, None, 0),
        ("costs", 0.25, 0.5, None, 0),
        ("three", 0.55, 0.8, None, 1),  # a new sentence without a full stop (a new script line)
        ("dollars.", 0.85, 1.2, None, 1),
        ("fifty", 1.25, 1.5, None, 1),  # same sentence index: the full stop does not end the cue
    )
    cues = subtitles.cues(words)
    assert [(c.sentence, c.text) for c in cues] == [(0, "It costs"), (1, "three dollars. fifty")]


def test_long_sentences_still_split_and_labels_count_towards_the_limit() -> None:
    words = [_Word(f"word{i:02d}", i * 0.3, i * 0.3 + 0.25, "Alice", 0) for i in range(20)]
    cues = subtitles.cues(words)
    assert len(cues) > 1
    assert all(len(f"Alice: {c.text}") <= subtitles.MAX_CHARS for c in cues)
    assert " ".join(c.text for c in cues) == " ".join(w.word for w in words)
    paused = _spoken(("a", 0.0, 0.1, None, 0), ("b", 2.0, 2.1, None, 0))
    assert [c.text for c in subtitles.cues(paused)] == ["a", "b"]


def test_srt_speaker_prefix() -> None:
    words = _spoken(("Hello.", 0.0, 0.5, "Alice", 0), ("Hi.", 0.6, 0.9, "Bob", 1), ("Bye.", 1.0, 1.2, None, 2))
    assert subtitles.render("srt", words) == (
        "1\n00:00:00,000 --> 00:00:00,500\nAlice: Hello.\n\n"
        "2\n00:00:00,600 --> 00:00:00,900\nBob: Hi.\n\n"
        "3\n00:00:01,000 --> 00:00:01,200\nBye.\n"
    )


def test_vtt_voice_spans_and_escaping() -> None:
    words = _spoken(
        ("a<b", 0.0, 0.5, "Alice", 0),
        ("&", 0.6, 0.7, "Alice", 0),
        ("c>d.", 0.8, 0.9, "Alice", 0),
        ("x&y", 1.0, 1.2, None, 1),
        ("Hi.", 1.3, 1.5, "Dr <X>", 2),
    )
    assert subtitles.render("vtt", words) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:00.900\n<v Alice>a&lt;b &amp; c&gt;d.</v>\n\n"
        "00:00:01.000 --> 00:00:01.200\nx&amp;y\n\n"
        "00:00:01.300 --> 00:00:01.500\n<v Dr &lt;X&gt;>Hi.</v>\n"
    )


def test_word_timings_without_the_new_fields_are_unchanged() -> None:
    cues = subtitles.cues(WORDS)
    assert all(c.speaker is None and c.sentence is None for c in cues)
    assert subtitles.render("srt", WORDS[:2]) == subtitles.to_srt(WORDS[:2])
