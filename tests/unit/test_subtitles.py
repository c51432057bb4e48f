"""SRT/WebVTT rendering from word timings."""

from __future__ import annotations

from pipeline.contract import WordTiming
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
