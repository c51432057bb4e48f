"""Text from the bucket on its way to a person's terminal.

Error messages, history notes, worker names, URIs and job ids in listings are written by workers
from what clients sent (an unknown manifest key is quoted in ``INVALID_MANIFEST``), or planted by
anyone who may write the bucket. A terminal acts on what it is sent: ESC sequences clear the screen,
retitle the window or move the cursor, C1 controls (U+0080-U+009F) do the same on terminals that
take them in UTF-8, and BiDi overrides make a line read otherwise than it is stored. rich passes
all of these through (it removes a few C0 codes only), and it reads ``[...]`` in strings as markup.

So every view of the CLI writes such text through :func:`safe` (or :func:`markup` where rich parses
markup, :func:`text` where it takes a ``Text``), and the JSON documents the CLI prints through
:func:`json_text`.
"""

from __future__ import annotations

import unicodedata

from rich.markup import escape
from rich.text import Text

# Categories a terminal may act on or that change how the text around them reads: control
# characters (C0, DEL, C1), format characters (BiDi embeddings, overrides and isolates, zero-width
# marks), line and paragraph separators, and lone surrogates (undecodable bytes).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_char(char: str) -> str:
    """A visible, Python-style escape: ``\\n``, ``\\x1b``, ``\\x9b``, ``\\u202e``."""
    if char in _SHORT:
        return _SHORT[char]
    n = ord(char)
    if n <= 0xFF:
        return f"\\x{n:02x}"
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def safe(value: object) -> str:
    """``str(value)`` with every character a terminal could act on written as a visible escape
    (ESC as ``\\x1b``, a right-to-left override as ``\\u202e``; a newline as ``\\n`` too, so one
    field cannot forge a line of its own). Text with none of them comes back unchanged."""
    s = str(value)
    if not any(is_unsafe(c) for c in s):
        return s
    return "".join(escape_char(c) if is_unsafe(c) else c for c in s)


def safe_lines(value: object) -> str:
    """:func:`safe`, line by line: a message of several lines (a validation error) keeps them."""
    return "\n".join(safe(line) for line in str(value).split("\n"))


def markup(value: object) -> str:
    """:func:`safe`, with rich's markup escaped: for strings rich renders as markup (table cells
    given as ``str``, ``TextColumn`` fields), where ``[bold]`` or ``[/]`` would be read as a tag."""
    return escape(safe(value))


def text(value: object, style: str = "") -> Text:
    """:func:`safe` as a rich ``Text``, which is never parsed as markup."""
    return Text(safe(value), style=style)


def json_text(document: str) -> str:
    """A JSON document with the characters a terminal acts on written as ``\\uXXXX`` escapes.

    Pydantic's JSON escapes C0 controls (JSON requires it) but writes DEL, C1 controls and format
    characters as they are. Outside ASCII such characters only occur inside JSON strings, where an
    escape is the same character: the document parses to exactly the same value. C0 characters
    are left alone (the document's own newlines and indentation)."""
    if document.isascii() and "\x7f" not in document:
        return document
    return "".join(_json_escape(c) if ord(c) >= 0x7F and is_unsafe(c) else c for c in document)


def _json_escape(char: str) -> str:
    n = ord(char)
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    n -= 0x10000  # JSON spells a character past the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"
