"""Language codes, and ``language: "auto"``: which language each sentence of a text is in.

Codes are ISO 639-3 ("eng", "zho"); a manifest may also give the two-letter ISO 639-1 code or a
common alias ("zh", "cmn", "chi", "en", "de"...), which ``canonical`` maps to the one code the rest
of the pipeline uses (normalization rules, the aligner, the bundle's ``languages``).

``detect`` splits a text into sentences (at sentence punctuation, Western or CJK, and line breaks)
and names each one's language with lingua (``lingua-language-detector``: its models ship in the
wheel, nothing is downloaded at run time; measured in docs/normalization.md). Two rules make it
dependable on the short sentences a detector gets wrong:

- a sentence with kana is Japanese, with hangul Korean, and else with Chinese characters Chinese
  (mixed "我用 iPhone 15 Pro 拍的" too): scripts only one of these languages writes;
- a sentence with fewer than ``MIN_LETTERS`` letters ("OK.", "AI") takes the language of the
  sentence before it (of the first detected one, at the start; English if none is).

Neighbouring sentences in one language are merged into one span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

AUTO = "auto"
ALIASES = {
    "en": "eng",
    "zh": "zho",
    "cmn": "zho",
    "chi": "zho",
    "de": "deu",
    "ger": "deu",
    "fr": "fra",
    "fre": "fra",
    "es": "spa",
    "it": "ita",
    "pt": "por",
    "nl": "nld",
    "dut": "nld",
    "ja": "jpn",
    "ko": "kor",
    "ru": "rus",
    "ar": "ara",
}
# What "auto" can tell apart: the languages F5-TTS models are trained on (English, Chinese) and
# those whose text is most often mistaken for them or sent by mistake.
DETECTABLE = ("eng", "zho", "jpn", "kor", "deu", "fra", "spa", "ita", "por", "nld", "rus", "ara")
MIN_LETTERS = 12

_SENTENCE = re.compile(r"[^.!?…。！？\n]*(?:[.!?…。！？]+[\"'”’»)\]」』）]*|\n|$)")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")


def canonical(code: str) -> str:
    """The ISO 639-3 code for ``code`` ("zh" -> "zho"); "auto" and unknown codes as given."""
    code = code.strip().lower()
    return ALIASES.get(code, code)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    language: str


def detect(text: str) -> list[Span]:
    """Spans covering ``text`` in order, each in one language (see the module doc)."""
    found: list[tuple[int, int, str | None]] = []
    for m in _SENTENCE.finditer(text):
        if m.end() > m.start():
            found.append((m.start(), m.end(), _language_of(m.group())))
    default = next((lang for _, _, lang in found if lang is not None), "eng")
    spans: list[Span] = []
    for start, end, lang in found:
        lang = lang or (spans[-1].language if spans else default)
        if spans and spans[-1].language == lang:
            spans[-1] = Span(spans[-1].start, end, lang)
        else:
            spans.append(Span(start, end, lang))
    return spans or [Span(0, len(text), default)]


def _language_of(sentence: str) -> str | None:
    if _KANA.search(sentence):  # scripts only one of these languages writes
        return "jpn"
    if _HANGUL.search(sentence):
        return "kor"
    if _HAN.search(sentence):
        return "zho"
    if sum(c.isalpha() for c in sentence) < MIN_LETTERS:
        return None
    found = _detector().detect_language_of(sentence)
    return found.iso_code_639_3.name.lower() if found is not None else None


def warm() -> None:
    """Load the detector and its models now (~1.4 s of CPU and ~190 MB, once per process)."""
    _detector().detect_language_of("The models are loaded on the first sentence they are asked about.")


@lru_cache(maxsize=1)
def _detector():  # type: ignore[no-untyped-def]
    from lingua import IsoCode639_3, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_3(getattr(IsoCode639_3, code.upper())) for code in DETECTABLE]
    return LanguageDetectorBuilder.from_languages(*languages).build()
