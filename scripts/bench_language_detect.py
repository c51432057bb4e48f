"""Language detectors side by side for `language: "auto"`: lingua (chosen) against langdetect.

    python scripts/bench_language_detect.py     # needs both installed (langdetect is not a dependency)

One table of sentences a job may hold (short and long, Chinese mixed with English, the languages
most often confused with the model's two), each with the language a person would name; per
detector: sentences right, time per sentence, set-up (first call, which loads its models). "ours" is
``pipeline.text.languages`` (script rules first, then lingua restricted to ``DETECTABLE``).
Prints a Markdown table for docs/normalization.md.
"""

from __future__ import annotations

import time

CASES = [
    ("Hello there, how are you today?", "eng"),
    ("The meeting starts at ten tomorrow morning.", "eng"),
    ("OK.", "eng"),
    ("Yes, please.", "eng"),
    ("你好，世界。", "zho"),
    ("今天天气很好。", "zho"),
    ("我用 iPhone 15 Pro 拍的。", "zho"),
    ("银行", "zho"),
    ("AI改变了世界。", "zho"),
    ("こんにちは、お元気ですか？", "jpn"),
    ("東京に行きます。", "jpn"),
    ("안녕하세요, 반갑습니다.", "kor"),
    ("Guten Tag, wie geht es dir heute?", "deu"),
    ("Bonjour, comment allez-vous aujourd'hui ?", "fra"),
    ("Hola, ¿cómo estás hoy?", "spa"),
    ("Buongiorno, come stai oggi?", "ita"),
    ("Olá, como você está hoje?", "por"),
    ("Goedemorgen, hoe gaat het vandaag met je?", "nld"),
    ("Привет, как дела сегодня?", "rus"),
    ("مرحبا، كيف حالك اليوم؟", "ara"),
]

ISO1 = {
    "en": "eng",
    "zh-cn": "zho",
    "zh-tw": "zho",
    "ja": "jpn",
    "ko": "kor",
    "de": "deu",
    "fr": "fra",
    "es": "spa",
    "it": "ita",
    "pt": "por",
    "nl": "nld",
    "ru": "rus",
    "ar": "ara",
}


def ours(text: str) -> str:
    from pipeline.text.languages import detect

    spans = detect(text)
    return max(spans, key=lambda s: s.end - s.start).language


def lingua_all(text: str) -> str:
    from lingua import LanguageDetectorBuilder

    global _LINGUA
    try:
        d = _LINGUA
    except NameError:
        d = _LINGUA = LanguageDetectorBuilder.from_all_languages().build()
    found = d.detect_language_of(text)
    return found.iso_code_639_3.name.lower() if found else "?"


def langdetect_(text: str) -> str:
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0
    try:
        return ISO1.get(detect(text), "?")
    except Exception:
        return "?"


def main() -> None:
    rows = []
    for name, fn in [
        ("ours (script rules + lingua, 12 languages)", ours),
        ("lingua, all 75 languages", lingua_all),
        ("langdetect 1.0.9", langdetect_),
    ]:
        t0 = time.perf_counter()
        fn("warm up the models")
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        right = sum(fn(text) == lang for text, lang in CASES)
        per = (time.perf_counter() - t0) / len(CASES) * 1000
        wrong = [f"{text!r}→{fn(text)}" for text, lang in CASES if fn(text) != lang]
        rows.append(f"| {name} | {right}/{len(CASES)} | {per:.2f} | {setup:.2f} | {'; '.join(wrong) or '–'} |")
    print("| detector | right | ms/sentence | set-up s | wrong |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
