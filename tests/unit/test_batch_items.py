"""A batch's items (issue 28): read from inline lists, JSONL, CSV and text; refused whole or
failed per line; deterministic item ids and manifests. The readers are total (hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.jobs.batch import (
    BatchRefused,
    Item,
    item_manifest,
    job_ids,
    read_inline,
    read_source,
    source_kind,
)


def test_jsonl_lines_are_items_and_a_bad_line_fails_alone() -> None:
    data = (
        b'{"text": "One."}\n\n{"text": "Two.", "id": "two", "speed": 1.5}\n'
        b'not json\n[1, 2]\n{"text": "x", "items": []}\n'
    )
    items = read_source(data, "jsonl", 100)
    assert [i.line for i in items] == [1, 3, 4, 5, 6]  # blank lines keep their numbers
    assert items[0] == Item(1, {"text": "One."})
    assert items[1] == Item(3, {"text": "Two.", "speed": 1.5}, "two")
    assert [i.problem is not None for i in items] == [False, False, True, True, True]
    assert items[2].problem.startswith("line 4:") and "items" in (items[4].problem or "")


def test_csv_columns_are_fields_text_columns_stay_text() -> None:
    data = (
        'id,text,speed,subtitles\r\nA1,"Hello, world.",1.25,"[""srt""]"\r\n'
        "A2,123,,\r\n,,,\r\nA3,too,many,cells,here\r\n"
    )
    items = read_source(data.encode(), "csv", 100)
    assert items[0] == Item(2, {"text": "Hello, world.", "speed": 1.25, "subtitles": ["srt"]}, "A1")
    assert items[1] == Item(3, {"text": "123"}, "A2")  # a number in the text column is text
    assert items[2].line == 5 and items[2].problem and "cells" in items[2].problem  # the blank row skipped
    with pytest.raises(BatchRefused, match="no text column"):
        read_source(b"voice,speed\nv,1\n", "csv", 10)


def test_a_text_file_is_one_item_per_line() -> None:
    items = read_source("Première ligne.\r\n\n  Second line.  \n".encode(), "text", 10)
    assert items == [Item(1, {"text": "Première ligne."}), Item(3, {"text": "Second line."})]


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        (b"\xff\xfe not utf-8", "text", "not UTF-8"),
        (b"a\x00b", "text", "NUL"),
        (b"\n\n  \n", "jsonl", "no items"),
        (b"a\nb\nc\n", "text", "more than 2"),
        (b'text\n"unterminated\n', "csv", "does not parse"),
    ],
)
def test_a_batch_that_cannot_be_read_whole_is_refused(data: bytes, kind: str, message: str) -> None:
    with pytest.raises(BatchRefused, match=message):
        read_source(data, kind, 2)


def test_item_ids_are_the_batchs_and_repeats_are_refused() -> None:
    items = [Item(1, {"text": "a"}), Item(2, {"text": "b"}, "intro"), Item(7, {"text": "c"})]
    assert job_ids("book-1", items) == ["book-1~000001", "book-1~intro", "book-1~000007"]
    with pytest.raises(BatchRefused, match="line 3: id 'intro' repeats line 2"):
        job_ids("b", [Item(2, {}, "intro"), Item(3, {}, "intro")])
    with pytest.raises(BatchRefused, match="line 4: id must match"):
        job_ids("b", [Item(4, {}, "../x")])


def test_the_item_manifest_is_deterministic_and_the_batch_fixes_its_place() -> None:
    defaults = {"voice": "alice", "speed": 1.0, "items_from": "batches/x.jsonl", "batch": {"id": "other"}}
    a = item_manifest(defaults, Item(3, {"text": "Hi.", "speed": 1.5}), "b1")
    assert a == item_manifest(dict(reversed(list(defaults.items()))), Item(3, {"speed": 1.5, "text": "Hi."}), "b1")
    assert json.loads(a) == {"voice": "alice", "speed": 1.5, "text": "Hi.", "batch": {"id": "b1", "line": 3}}


def test_inline_items_have_their_own_limit() -> None:
    assert read_inline([{"text": "a"}, 5])[1].problem == "line 2: an item must be a JSON object, got int"
    with pytest.raises(BatchRefused, match="limit inline is 2"):
        read_inline([{}, {}, {}], max_items=2)
    with pytest.raises(BatchRefused, match="must be a list"):
        read_inline({"text": "a"})


def test_source_kind_by_suffix() -> None:
    assert [source_kind(k) for k in ("b/a.JSONL", "b/a.csv", "b/a.txt", "b/a.json")] == ["jsonl", "csv", "text", None]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), kind=st.sampled_from(["jsonl", "csv", "text"]))
def test_the_readers_are_total_over_bytes(data: bytes, kind: str) -> None:
    try:
        items = read_source(data, kind, 50)
    except BatchRefused:
        return
    assert 0 < len(items) <= 50 and all(isinstance(i, Item) for i in items)
    try:
        ids = job_ids("b", items)
    except BatchRefused:
        return
    assert len(set(ids)) == len(ids)
    for item in items:
        if item.problem is None:
            json.loads(item_manifest({}, item, "b"))


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=400),
    kind=st.sampled_from(["jsonl", "csv", "text"]),
)
def test_the_readers_are_total_over_text(text: str, kind: str) -> None:
    try:
        items = read_source(text.encode(), kind, 50)
    except BatchRefused:
        return
    lines = text.count("\n") + 1
    assert all(1 <= i.line <= lines for i in items)


def test_lines_the_manifest_could_not_hold_fail_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: an item nested just under the JSON reader's limit made ``item_manifest``
    raise RecursionError from a deeper stack; ``1e999`` read as infinity made manifest bytes that
    are not JSON; a CSV cell over the line limit refused the whole batch."""
    from pipeline.jobs import batch

    deep = '{"text": "x", "lexicon": ' + "[" * 40 + "]" * 40 + "}"
    items = read_source(f'{deep}\n{{"text": "y", "speed": 1e999}}\n{{"text": "z"}}\n'.encode(), "jsonl", 10)
    assert [bool(i.problem) for i in items] == [True, True, False]
    assert "nested deeper" in (items[0].problem or "") and "out of range" in (items[1].problem or "")
    monkeypatch.setattr(batch, "MAX_LINE_CHARS", 10)
    rows = read_source(b"text\nshort\n" + b"x" * 50 + b"\nfine\n", "csv", 10)
    assert [(r.line, bool(r.problem)) for r in rows] == [(2, False), (3, True), (4, False)]
