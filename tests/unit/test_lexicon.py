"""Pronunciation lexicons: PLS 1.0 parsing (and what it refuses), merging and checks."""

from __future__ import annotations

import pytest

from pipeline.text.lexicon import LexiconError, check, merge, parse_pls

PLS_NS = "http://www.w3.org/2005/01/pronunciation-lexicon"


def pls(body: str, root: str = "lexicon", namespace: str = PLS_NS) -> bytes:
    ns = f' xmlns="{namespace}"' if namespace else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{root} version="1.0"{ns} alphabet="ipa" xml:lang="en-US">\n{body}\n</{root}>\n'
    ).encode()


VALID = pls(
    """
    <lexeme><grapheme>GIF</grapheme><alias>jif</alias></lexeme>
    <lexeme>
      <grapheme>W3C</grapheme>
      <grapheme>W3</grapheme>
      <alias>World Wide Web Consortium</alias>
    </lexeme>
    <lexeme>
      <grapheme>  New
        York </grapheme>
      <alias>the   big apple</alias>
    </lexeme>
    <lexeme><grapheme>tomato</grapheme><phoneme>təˈmeɪtoʊ</phoneme></lexeme>
    <lexeme>
      <grapheme>SQL</grapheme>
      <phoneme>ˈsiːkwəl</phoneme>
      <alias>S Q L</alias>
      <alias prefer="true">sequel</alias>
    </lexeme>
    <lexeme><grapheme>GIF</grapheme><alias>graphics file</alias></lexeme>
    <lexeme><grapheme>v2</grapheme><alias>version 2</alias></lexeme>
    """
)


def test_parse_valid_pls() -> None:
    assert parse_pls(VALID) == {
        "GIF": "jif",  # the first lexeme with a grapheme wins
        "W3C": "World Wide Web Consortium",
        "W3": "World Wide Web Consortium",
        "New York": "the big apple",
        "SQL": "sequel",  # prefer="true"
        "v2": "version 2",
    }


def test_phoneme_only_lexemes_are_skipped() -> None:
    assert "tomato" not in parse_pls(VALID)
    only_phonemes = pls("<lexeme><grapheme>tomato</grapheme><phoneme>təˈmeɪtoʊ</phoneme></lexeme>")
    assert parse_pls(only_phonemes) == {}


def test_no_namespace_and_other_encodings_are_accepted() -> None:
    body = "<lexeme><grapheme>Zoë</grapheme><alias>Zoey</alias></lexeme>"
    assert parse_pls(pls(body, namespace="")) == {"Zoë": "Zoey"}
    utf16 = f'<?xml version="1.0" encoding="UTF-16"?><lexicon xmlns="{PLS_NS}">{body}</lexicon>'.encode("utf-16")
    assert parse_pls(utf16) == {"Zoë": "Zoey"}


def test_parsed_lexicon_drives_normalization() -> None:
    from pipeline.text.normalize import normalize, spoken_text

    lexicon = parse_pls(VALID)
    assert spoken_text(normalize("I love New York and GIF v2.", lexicon=lexicon)) == (
        "I love the big apple and jif version two."
    )


@pytest.mark.parametrize(
    "data",
    [
        b"<lexicon><lexeme>",
        b"<lexicon><lexeme></lexicon>",
        b"not xml at all",
        b"<lexicon>&undefined;</lexicon>",
        b"\xff\xfe\x00garbage",
    ],
)
def test_malformed_xml_is_refused(data: bytes) -> None:
    with pytest.raises(LexiconError, match="not well-formed XML"):
        parse_pls(data)


@pytest.mark.parametrize(
    "data",
    [
        # billion laughs
        b'<?xml version="1.0"?><!DOCTYPE lexicon [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b"<lexicon><lexeme><grapheme>x</grapheme><alias>&b;</alias></lexeme></lexicon>",
        # external entity (XXE)
        b'<?xml version="1.0"?><!DOCTYPE lexicon [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<lexicon><lexeme><grapheme>x</grapheme><alias>&xxe;</alias></lexeme></lexicon>",
        # external DTD, no entities at all
        b'<?xml version="1.0"?><!DOCTYPE lexicon SYSTEM "http://example.com/pls.dtd"><lexicon/>',
        # a harmless-looking internal subset
        b"<!DOCTYPE lexicon><lexicon/>",
    ],
)
def test_doctype_and_entities_are_refused(data: bytes) -> None:
    with pytest.raises(LexiconError, match="DOCTYPE"):
        parse_pls(data)


def test_wrong_root_is_refused() -> None:
    with pytest.raises(LexiconError, match="root element must be <lexicon>, not <speak>"):
        parse_pls(pls("<lexeme><grapheme>a</grapheme><alias>b</alias></lexeme>", root="speak"))
    with pytest.raises(LexiconError, match="namespace"):
        parse_pls(pls("<lexeme><grapheme>a</grapheme><alias>b</alias></lexeme>", namespace="urn:other"))


def test_lexeme_without_grapheme_or_with_empty_grapheme_is_refused() -> None:
    with pytest.raises(LexiconError, match="no <grapheme>"):
        parse_pls(pls("<lexeme><alias>b</alias></lexeme>"))
    with pytest.raises(LexiconError, match="empty"):
        parse_pls(pls("<lexeme><grapheme>  </grapheme><alias>b</alias></lexeme>"))


def test_empty_or_huge_input_is_refused() -> None:
    with pytest.raises(LexiconError, match="empty"):
        parse_pls(b"  \n")
    with pytest.raises(LexiconError, match="larger"):
        parse_pls(b"<lexicon>" + b" " * (1 << 20) + b"</lexicon>")


def test_merge_later_wins() -> None:
    assert merge({"a": "1", "b": "2"}, None, {"b": "3"}, {}, {"c": "4"}) == {"a": "1", "b": "3", "c": "4"}
    assert merge() == {}
    first = {"a": "1"}
    merge(first, {"a": "2"})
    assert first == {"a": "1"}  # inputs are not changed


def test_check_accepts_a_good_lexicon() -> None:
    check({"GIF": "jif", "New York": "the big apple", "Zoë": "Zoey", "x": ""})
    check({f"w{i}": "x" for i in range(1000)})


@pytest.mark.parametrize(
    ("lexicon", "message"),
    [
        ({"": "x"}, "empty word"),
        ({"   ": "x"}, "empty word"),
        ({"a" * 201: "x"}, "longer than 200"),
        ({"a": "b" * 201}, "longer than 200"),
        ({"a\x00b": "x"}, "control character"),
        ({"ab": "x\x1by"}, "control character"),
        ({"a\tb": "x"}, "control character"),
        ({f"w{i}": "x" for i in range(1001)}, "at most 1000"),
        ({"a": 5}, "string to a string"),
    ],
)
def test_check_refuses(lexicon: dict[str, str], message: str) -> None:
    with pytest.raises(LexiconError, match=message):
        check(lexicon)


def test_check_max_entries_is_configurable() -> None:
    with pytest.raises(LexiconError, match="at most 2"):
        check({"a": "1", "b": "2", "c": "3"}, max_entries=2)


def test_lexicon_error_is_a_value_error() -> None:
    assert issubclass(LexiconError, ValueError)
