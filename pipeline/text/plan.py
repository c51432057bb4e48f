"""Sentences and chunk planning: which tokens go into one F5-TTS call.

Replaces f5-tts's ``chunk_text``. The planner works on :class:`~pipeline.text.tokens.Token` s, so
every chunk maps back to exact offsets in the client's text, and it never splits a token.

* :func:`sentences` groups tokens into sentences: one ends after a token whose spoken form ends
  with ``. ! ? … 。 ！ ？`` (closing quotes or brackets after it allowed: ``."``, ``?)``), and
  wherever the source between two tokens holds a line break (lines of a script are separate
  utterances). A sentence with no spoken words joins the previous sentence (the next one if it
  comes first), so every token is in exactly one sentence.
* :func:`pack` groups consecutive whole sentences into chunks of at most ``max_bytes`` bytes of
  spoken text (UTF-8, joined as ``chunk_spoken`` joins them), greedily. A sentence longer than that is split
  at clause punctuation (``, ; : — –`` and their CJK forms), then at token boundaries; its pieces
  are chunks of their own (never shared with the next sentence). A single token longer than
  ``max_bytes`` is a chunk by itself.

Both run in time linear in the number of tokens plus the length of the source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.text.tokens import Token
from pipeline.text.zh import join_spoken, joins_tight

__all__ = ["Sentence", "chunk_spoken", "pack", "sentences"]

SENTENCE_END = (".", "!", "?", "…", "。", "！", "？", "‼", "⁇", "⁈", "⁉")
CLAUSE_END = (",", ";", ":", "—", "–", "、", "，", "；", "：")
# Closing quotes and brackets that may follow the punctuation: `."`, `?)`, `!»`, `。」`.
_CLOSERS = "\"'”’»›)]}」』）】〉》〕"
# Line boundaries as str.splitlines() sees them.
_LINE_BREAK = re.compile(r"[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class Sentence:
    tokens: tuple[Token, ...]
    text_start: int  # tokens[0].start
    text_end: int  # tokens[-1].end
    spoken: str  # chunk_spoken(tokens)


def chunk_spoken(chunk: Sequence[Token]) -> str:
    """What is spoken for a chunk: the non-empty spoken forms of its tokens, joined by single
    spaces, or by nothing where the boundary is CJK (``normalize.spoken_text``)."""
    return join_spoken([t.spoken for t in chunk])


def _ends_with(spoken: str, marks: tuple[str, ...]) -> bool:
    return spoken.rstrip().rstrip(_CLOSERS).endswith(marks)


def _sentence(tokens: list[Token]) -> Sentence:
    return Sentence(tuple(tokens), tokens[0].start, tokens[-1].end, chunk_spoken(tokens))


def sentences(tokens: Sequence[Token], source: str) -> list[Sentence]:
    """Split ``tokens`` (in source order, over ``source``) into sentences; see the module doc."""
    groups: list[list[Token]] = []
    cur: list[Token] = []
    for i, tok in enumerate(tokens):
        if cur and _LINE_BREAK.search(source, cur[-1].end, tok.start) is not None:
            groups.append(cur)
            cur = []
        cur.append(tok)
        if tok.spoken and _ends_with(tok.spoken, SENTENCE_END) and i + 1 < len(tokens):
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)

    merged: list[list[Token]] = []
    pending: list[Token] = []  # silent groups before the first spoken one
    for group in groups:
        if not any(t.spoken for t in group):
            if merged:
                merged[-1].extend(group)
            else:
                pending.extend(group)
            continue
        if pending:
            group = pending + group
            pending = []
        merged.append(group)
    if pending:  # nothing spoken at all: one silent sentence keeps the tokens
        merged.append(pending)
    return [_sentence(g) for g in merged]


def _nbytes(spoken: str) -> int:
    return len(spoken.encode("utf-8"))


def _size(tokens: Sequence[Token]) -> int:
    """Bytes of ``chunk_spoken(tokens)``, without building it."""
    n = 0
    prev = ""
    for t in tokens:
        if t.spoken:
            n += _nbytes(t.spoken) + _sep(prev, t.spoken)
            prev = t.spoken
    return n


def _sep(left: str, right: str) -> int:
    """Bytes between two spoken forms once joined (``chunk_spoken``): a space, or none at CJK."""
    return 0 if not left or not right or joins_tight(left, right) else 1


def _edges(tokens: Sequence[Token]) -> tuple[str, str]:
    """The first and last non-empty spoken forms of ``tokens`` ("" if none)."""
    said = [t.spoken for t in tokens if t.spoken]
    return (said[0], said[-1]) if said else ("", "")


_Unit = tuple[Sequence[Token], int]  # tokens and the bytes of their spoken text


def _greedy(
    units: Sequence[_Unit],
    max_bytes: int,
    oversize: Callable[[Sequence[Token], list[tuple[Token, ...]]], None],
    out: list[tuple[Token, ...]],
) -> None:
    """Pack consecutive units into chunks of at most ``max_bytes``; hand oversize units on."""
    cur: list[Token] = []
    cur_bytes = 0
    last = ""  # the last non-empty spoken form in cur
    for tokens, nbytes in units:
        if nbytes > max_bytes:
            if cur:
                out.append(tuple(cur))
                cur, cur_bytes, last = [], 0, ""
            oversize(tokens, out)
            continue
        first, final = _edges(tokens)
        add = nbytes + _sep(last, first)
        if cur and cur_bytes + add > max_bytes:
            out.append(tuple(cur))
            cur, cur_bytes, add, last = [], 0, nbytes, ""
        cur.extend(tokens)
        cur_bytes += add
        last = final or last
    if cur:
        out.append(tuple(cur))


def _split_clauses(tokens: Sequence[Token]) -> list[_Unit]:
    units: list[_Unit] = []
    start = 0
    for i, t in enumerate(tokens):
        if t.spoken and _ends_with(t.spoken, CLAUSE_END):
            units.append((tokens[start : i + 1], _size(tokens[start : i + 1])))
            start = i + 1
    if start < len(tokens):
        units.append((tokens[start:], _size(tokens[start:])))
    return units


def pack(sentences: Sequence[Sentence], max_bytes: int, first_bytes: int | None = None) -> list[tuple[Token, ...]]:
    """Chunks of consecutive tokens, each at most ``max_bytes`` of spoken UTF-8 unless it is a
    single oversize token; every token in exactly one chunk, in order; no empty chunk.
    ``first_bytes``: the first chunk is the first sentence alone, or its first clauses (then
    tokens) within ``first_bytes``; what follows is packed as usual."""
    max_bytes = max(1, int(max_bytes))
    spoken = [s for s in sentences if s.tokens]
    if first_bytes is None or not spoken:
        return _pack(spoken, max_bytes)
    head = spoken[0]
    lead = _pack([head], max(1, min(int(first_bytes), max_bytes)))[0]
    rest = list(head.tokens[len(lead) :])
    return [lead, *_pack(([_sentence(rest)] if rest else []) + spoken[1:], max_bytes)]


def _pack(sentences: Sequence[Sentence], max_bytes: int) -> list[tuple[Token, ...]]:
    def single_tokens(tokens: Sequence[Token], out: list[tuple[Token, ...]]) -> None:
        out.extend((t,) for t in tokens)  # one token, over the limit by itself

    def by_tokens(tokens: Sequence[Token], out: list[tuple[Token, ...]]) -> None:
        _greedy([((t,), _size((t,))) for t in tokens], max_bytes, single_tokens, out)

    def by_clauses(tokens: Sequence[Token], out: list[tuple[Token, ...]]) -> None:
        _greedy(_split_clauses(tokens), max_bytes, by_tokens, out)

    out: list[tuple[Token, ...]] = []
    _greedy([(s.tokens, _size(s.tokens)) for s in sentences if s.tokens], max_bytes, by_clauses, out)
    return out
