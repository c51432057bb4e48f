"""Pronunciation lexicons: grapheme -> alias maps that normalization applies before any rule.

A lexicon comes inline in a job manifest (a JSON object) or as a W3C PLS 1.0 document
(https://www.w3.org/TR/pronunciation-lexicon/). F5-TTS reads text, not phonemes, so only a lexeme's
``<alias>`` can be used; lexemes with only ``<phoneme>`` are skipped. ``LexiconError`` messages are
shown to the client in a FAILED status, so they say what is wrong in plain words.
"""

from __future__ import annotations

import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any
from xml.parsers import expat

__all__ = ["MAX_ENTRIES", "MAX_LENGTH", "MAX_PLS_BYTES", "LexiconError", "check", "merge", "parse_pls", "table"]

MAX_ENTRIES = 1000
MAX_LENGTH = 200  # characters in one grapheme or alias
MAX_PLS_BYTES = 1 << 20
_PLS_NS = "http://www.w3.org/2005/01/pronunciation-lexicon"


class LexiconError(ValueError):
    """A lexicon that cannot be used; the message is meant for the client."""


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _refuse_dtd(*_args: object) -> None:
    raise LexiconError("the lexicon may not contain a DOCTYPE or entity declarations")


def _screen(data: bytes) -> None:
    """Parse once with expat and refuse any DOCTYPE, entity declaration or external reference.

    ElementTree would expand internal entities (the "billion laughs") and expat on its own accepts
    a DOCTYPE; a pronunciation lexicon never needs either, so both are refused before ET sees it.
    """
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        reason = expat.ErrorString(exc.code)
        raise LexiconError(f"the lexicon is not well-formed XML: {reason} (line {exc.lineno})") from exc
    except LexiconError:
        raise
    except (LookupError, ValueError):
        # The XML declaration names an encoding Python does not know (LookupError) or one expat
        # cannot take (ValueError: "multi-byte encodings are not supported", e.g. shift_jis).
        raise LexiconError("the lexicon's XML declaration names an encoding that is not supported; use UTF-8") from None


def _text(element: ET.Element) -> str:
    return " ".join("".join(element.itertext()).split())


def parse_pls(data: bytes) -> dict[str, str]:
    """Grapheme -> alias from a PLS 1.0 document.

    Every ``<grapheme>`` of a lexeme maps to its alias: the first ``<alias prefer="true">``, else the
    first ``<alias>``. Lexemes without an alias (phonemes only) are skipped. When two lexemes list
    the same grapheme the first one wins, as in PLS. Whitespace inside graphemes and aliases is
    collapsed to single spaces.
    """
    if not isinstance(data, bytes | bytearray):
        raise LexiconError("the lexicon must be bytes")
    if len(data) > MAX_PLS_BYTES:
        raise LexiconError(f"the lexicon is larger than {MAX_PLS_BYTES} bytes")
    if not data.strip():
        raise LexiconError("the lexicon is empty")
    _screen(bytes(data))
    try:
        root = ET.fromstring(bytes(data))
    except ET.ParseError as exc:  # pragma: no cover - _screen already parsed it
        raise LexiconError(f"the lexicon is not well-formed XML: {exc}") from exc
    if _local(root.tag) != "lexicon":
        raise LexiconError(f"the lexicon's root element must be <lexicon>, not <{_local(root.tag)}>")
    namespace = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
    if namespace and namespace != _PLS_NS:
        raise LexiconError(f"the lexicon's namespace must be {_PLS_NS}, not {namespace}")
    table: dict[str, str] = {}
    for lexeme in root:
        if _local(lexeme.tag) != "lexeme":
            continue
        graphemes = [_text(e) for e in lexeme if _local(e.tag) == "grapheme"]
        aliases = [e for e in lexeme if _local(e.tag) == "alias"]
        if not graphemes:
            raise LexiconError("a <lexeme> in the lexicon has no <grapheme>")
        if not aliases:
            continue  # phonemes only: F5-TTS cannot use them
        preferred = [a for a in aliases if (a.get("prefer") or "").strip() == "true"]
        alias = _text((preferred or aliases)[0])
        for grapheme in graphemes:
            if not grapheme:
                raise LexiconError("a <grapheme> in the lexicon is empty")
            table.setdefault(grapheme, alias)
    return table


def merge(*lexicons: Mapping[str, str] | None) -> dict[str, str]:
    """One lexicon from several; for a grapheme in more than one, the later lexicon wins."""
    merged: dict[str, str] = {}
    for lexicon in lexicons:
        if lexicon:
            merged.update(lexicon)
    return merged


def _control(s: str) -> str | None:
    for c in s:
        if unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") or c in "\u2028\u2029":
            return f"U+{ord(c):04X}"
    return None


def check(lexicon: Mapping[str, str], max_entries: int = MAX_ENTRIES) -> None:
    """Raise ``LexiconError`` for a lexicon that cannot be used as given."""
    if not isinstance(lexicon, Mapping):
        raise LexiconError("the lexicon must be an object mapping words to what is said for them")
    if len(lexicon) > max_entries:
        raise LexiconError(f"the lexicon has {len(lexicon)} entries; at most {max_entries} are allowed")
    for grapheme, alias in lexicon.items():
        if not isinstance(grapheme, str) or not isinstance(alias, str):
            raise LexiconError("every lexicon entry must map a string to a string")
        shown = grapheme if len(grapheme) <= 40 else grapheme[:40] + "..."
        if not grapheme.strip():
            raise LexiconError("a lexicon entry has an empty word")
        if len(grapheme) > MAX_LENGTH:
            raise LexiconError(f"the lexicon word {shown!r} is longer than {MAX_LENGTH} characters")
        if len(alias) > MAX_LENGTH:
            raise LexiconError(f"the alias for {shown!r} is longer than {MAX_LENGTH} characters")
        for what, value in (("word", grapheme), ("alias", alias)):
            bad = _control(value)
            if bad:
                raise LexiconError(f"the lexicon {what} {shown!r} contains a control character ({bad})")


def table(items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Grapheme (its whitespace runs folded to one space, as the matchers expect) -> alias; empty
    graphemes dropped. What ``normalize`` and ``zh`` build their match patterns from."""
    out: dict[str, str] = {}
    for grapheme, alias in items:
        key = " ".join(grapheme.split())
        if key:
            out[key] = alias
    return out
