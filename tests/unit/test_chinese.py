"""Chinese beyond normalization (issue 20): language codes and detection, what the model and the
aligner are given, polyphones as pinyin, and subtitles laid out by display width."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pipeline.jobs.contract import ManifestError, parse_manifest
from pipeline.models.bundle import Bundle
from pipeline.text import languages, normalize, plan, script, zh
from pipeline.tts import subtitles
from pipeline.tts.sampler import generated_frames, model_tokens

# -- codes and detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("zh", "zho"),
        ("cmn", "zho"),
        ("chi", "zho"),
        ("zho", "zho"),
        ("en", "eng"),
        ("eng", "eng"),
        ("auto", "auto"),
        ("de", "deu"),
    ],
)
def test_a_manifest_language_is_stored_as_iso_639_3(given: str, stored: str) -> None:
    m = parse_manifest(json.dumps({"text": "x", "voice": "alice", "language": given}).encode())
    assert m.language == stored


@pytest.mark.parametrize("bad", ["english", "ZH", "z", "zh-CN", ""])
def test_other_language_values_are_refused(bad: str) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps({"text": "x", "voice": "alice", "language": bad}).encode())


def test_detection_follows_the_sentences() -> None:
    text = "The meeting starts at ten tomorrow morning. 会议明天上午开始。OK. Guten Tag, wie geht es dir heute?"
    spans = languages.detect(text)
    assert [s.language for s in spans] == ["eng", "zho", "deu"]
    assert "".join(text[s.start : s.end] for s in spans) == text
    assert text[spans[1].start : spans[1].end].strip() == "会议明天上午开始。OK."  # a short one takes its neighbour's


@pytest.mark.parametrize(
    ("text", "lang"),
    [("我用 iPhone 15 Pro 拍的。", "zho"), ("こんにちは。", "jpn"), ("안녕하세요.", "kor"), ("Yes.", "eng")],
)
def test_scripts_decide_before_the_detector(text: str, lang: str) -> None:
    assert [s.language for s in languages.detect(text)] == [lang]


def test_auto_analysis_records_each_sentences_language_and_reads_it_in_that_language() -> None:
    m = parse_manifest(
        json.dumps({"text": "It is 10:30 now, my friend. 现在是10:30。", "voice": "a", "language": "auto"}).encode()
    )
    a = script.analyse(m, {})
    assert [s.language for s in a.sentences] == ["eng", "zho"]
    assert set(a.languages) == {"eng", "zho"}
    assert "ten thirty" in a.normalized_text and "十点三十分" in a.normalized_text


def test_a_bundle_without_languages_is_an_f5_tts_model_card_one() -> None:
    factory = Bundle.model_fields["languages"].default_factory
    assert factory is not None and factory() == ["eng", "zho"]


# -- what the model and the aligner get ----------------------------------------------------------


def _chunk(text: str, lexicon: dict[str, str] | None = None) -> str:
    tokens = normalize.normalize(text, "zho", lexicon)
    return plan.chunk_spoken(tokens)


def test_chinese_reaches_the_model_without_spaces_and_english_with_them() -> None:
    assert _chunk("你好，世界。我用 iPhone 15 Pro 拍的。") == "你好，世界。我用iPhone十五Pro拍的。"
    assert plan.chunk_spoken(normalize.normalize("It costs $3.50.", "eng")) == "It costs three dollars fifty cents."


def test_a_polyphone_is_read_as_the_pinyin_the_lexicon_gives() -> None:
    from f5_tts.model.utils import convert_char_to_pinyin

    text = _chunk("我去银行取钱。", {"银行": "yin2 hang2"})
    assert text == "我去{yin2 hang2}取钱。"
    tokens = model_tokens(text, convert_char_to_pinyin)
    assert tokens == convert_char_to_pinyin(["我去银行取钱。"])[0]  # as f5-tts reads the characters
    assert model_tokens("我去行走。", convert_char_to_pinyin) == convert_char_to_pinyin(["我去行走。"])[0]
    plain = "Hello, world."
    assert model_tokens(plain, convert_char_to_pinyin) == convert_char_to_pinyin([plain])[0]
    held = model_tokens(_chunk("银行", {"银行": "hang2 hang2"}), convert_char_to_pinyin)
    assert [t for t in held if t.strip()] == ["hang2", "hang2"]
    # The duration rule counts a marked syllable as the character it stands for.
    assert generated_frames(24000 * 5, "a. ", text, 1.0) == generated_frames(24000 * 5, "a. ", "我去银行取钱。", 1.0)


def test_the_aligner_gets_one_latin_word_per_spoken_word() -> None:
    tokens = normalize.normalize("今天是2026年12月1日，去银行。", "zho", {"银行": "yin2 hang2"})
    words = [w for t in tokens for w in t.words]
    romanized = [zh.for_aligner(w) for w in words]
    assert len(romanized) == len(words) and all(r.isascii() and r.isalpha() for r in romanized), romanized
    assert "erlingerliu" in romanized and romanized[-2:] == ["yin", "hang"]
    assert zh.for_aligner("iPhone") == "iPhone" and zh.for_aligner("hello,") == "hello,"


# -- subtitles -----------------------------------------------------------------------------------


@dataclass
class W:
    word: str
    start: float
    end: float
    sentence: int | None = None


def test_chinese_cues_count_two_columns_a_character_and_break_between_words() -> None:
    words = normalize.normalize("今天天气很好，我们一起去公园散步吧，然后去银行取钱，再回家吃饭。", "zho")
    timed = [
        W(("今天天气很好，我们一起去公园散步吧，然后去银行取钱，再回家吃饭。")[t.start : t.end], i * 0.2, i * 0.2 + 0.2)
        for i, t in enumerate(words)
    ]
    cues = subtitles.cues(timed)
    assert len(cues) > 1
    assert (
        "".join(c.text for c in cues) == "今天天气很好，我们一起去公园散步吧，然后去银行取钱，再回家吃饭。"
    )  # no spaces added
    assert all(subtitles.width(c.text) <= subtitles.MAX_CHARS for c in cues)
    sources = [w.word for w in timed]
    for c in cues:  # whole words only
        assert any("".join(sources[i:j]) == c.text for i in range(len(sources)) for j in range(i + 1, len(sources) + 1))
    assert subtitles.width("你好ab") == 6


def test_english_cues_are_unchanged() -> None:
    sentence = "The quick brown fox jumps over the dog."
    words = [W(w, i * 0.3, i * 0.3 + 0.25) for i, w in enumerate(sentence.split())]
    assert [c.text for c in subtitles.cues(words)] == [sentence]
