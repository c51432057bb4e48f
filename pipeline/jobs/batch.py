"""A batch's items (issue 28; docs/batches.md): read from the batch manifest's ``items`` or from a
source object (JSONL, CSV or plain text), checked as a whole, and each turned into its item's
manifest bytes.

Every function here is total over outside bytes: a value, ``BatchRefused`` (the whole batch is
refused before any item exists: over a limit, not text, duplicate or invalid ids), or, for one bad
line, an ``Item`` that carries its ``problem`` (that item fails with its line number; the others
go on). Nothing here touches S3: the worker's fan-out feeds it and writes what it returns.

Item job ids are ``<batch_id>~<line>`` (zero-padded to 6) or ``<batch_id>~<id>`` for an item that
names its own: ``~`` is not in a job id a client chooses, so an item's id names its batch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

ITEM_SEPARATOR = "~"
MAX_INLINE_ITEMS = 1000
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # an item's own id (fullmatch)
MAX_JOB_ID = 128 + 1 + 64  # batch id, "~", item id
MAX_LINE_CHARS = 1_000_000  # one line of a source (a CSV field too): beyond it, the line is refused
MAX_DEPTH = 32  # nesting of an item's values (a manifest needs 4): deeper is that line's problem
# The fields a batch fixes for its items: an item cannot make itself a batch, or claim another.
RESERVED = frozenset({"items", "items_from", "batch"})
# CSV cells are text; a cell in any other column is read as JSON when it parses (1.5, true, ["srt"]),
# as text when it does not. These columns are text whatever they look like ("123" is a text).
CSV_TEXT_COLUMNS = frozenset({"id", "text", "voice", "ref_text", "language", "output_format", "requester", "priority"})
SOURCE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "text"}


class BatchRefused(ValueError):
    """The whole batch is refused (no item is created); the message names the line where one does."""


@dataclass(frozen=True)
class Item:
    line: int  # 1-based: the source's line (a CSV's header is line 1), or the position in ``items``
    fields: dict[str, Any] = field(default_factory=dict)  # the item's own fields (over the defaults)
    client_id: str | None = None
    problem: str | None = None  # a malformed line: why (the item fails with it; fields are empty)


def source_kind(key: str) -> str | None:
    """``jsonl``, ``csv`` or ``text`` by the key's suffix; None for anything else."""
    lower = key.lower()
    return next((kind for suffix, kind in SOURCE_KINDS.items() if lower.endswith(suffix)), None)


def read_inline(items: object, max_items: int = MAX_INLINE_ITEMS) -> list[Item]:
    """The manifest's ``items`` list."""
    if not isinstance(items, list):
        raise BatchRefused(f"items must be a list, got {type(items).__name__}")
    if not items:
        raise BatchRefused("items is empty")
    if len(items) > max_items:
        raise BatchRefused(f"items has {len(items)} entries; the limit inline is {max_items} (use items_from)")
    return [_item(n, obj) for n, obj in enumerate(items, start=1)]


def read_source(data: bytes, kind: str, max_items: int) -> list[Item]:
    """The items of a source object's bytes (``kind`` from ``source_kind``)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BatchRefused(f"the item source is not UTF-8 text (byte {e.start})") from None
    if "\x00" in text:
        raise BatchRefused("the item source has a NUL character: it is not text")
    if kind == "csv":
        items = list(_csv_items(text, max_items))
    elif kind == "jsonl":
        items = list(_counted(_jsonl_items(text), max_items))
    elif kind == "text":
        items = list(_counted(_text_items(text), max_items))
    else:
        raise BatchRefused(f"unknown item source kind {kind!r}: .jsonl, .csv or .txt")
    if not items:
        raise BatchRefused("the item source has no items")
    return items


def job_ids(batch_id: str, items: Iterable[Item]) -> list[str]:
    """Each item's job id, in order; ``BatchRefused`` for an invalid or repeated one."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for item in items:
        if item.client_id is not None:
            if not CLIENT_ID_RE.fullmatch(item.client_id) or item.client_id in {".", ".."}:
                raise BatchRefused(f"line {item.line}: id must match [A-Za-z0-9._-]{{1,64}}")
            suffix = item.client_id
        else:
            suffix = f"{item.line:06d}"
        job_id = f"{batch_id}{ITEM_SEPARATOR}{suffix}"
        if job_id in seen:
            raise BatchRefused(f"line {item.line}: id {suffix!r} repeats line {seen[job_id]}")
        seen[job_id] = item.line
        out.append(job_id)
    return out


def item_manifest(defaults: dict[str, Any], item: Item, batch_id: str) -> bytes:
    """The item's manifest: the defaults, the item's fields over them, and its place in the batch.
    Deterministic bytes (sorted keys): a fan-out that runs again writes the same object, and a
    manifest found in its place can be compared with it."""
    merged = {k: v for k, v in defaults.items() if k not in RESERVED}
    merged.update(item.fields)
    merged["batch"] = {"id": batch_id, "line": item.line}
    # allow_nan=False: the readers let no non-finite number through; were one to come, an error, not
    # bytes that are not JSON.
    return json.dumps(merged, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# -- readers -------------------------------------------------------------------------------------


def _item(line: int, obj: object) -> Item:
    if not isinstance(obj, dict):
        return Item(line, problem=f"line {line}: an item must be a JSON object, got {type(obj).__name__}")
    if _depth(obj) > MAX_DEPTH:
        return Item(line, problem=f"line {line}: nested deeper than {MAX_DEPTH}")
    fields = {str(k): v for k, v in obj.items()}
    client_id = fields.pop("id", None)
    reserved = sorted(RESERVED & fields.keys())
    if reserved:
        return Item(line, problem=f"line {line}: an item cannot set {', '.join(reserved)}")
    if client_id is not None and not isinstance(client_id, str):
        client_id = json.dumps(client_id)  # refused by job_ids with its line: ids are strings
    return Item(line, fields, client_id)


def _counted(items: Iterator[Item], max_items: int) -> Iterator[Item]:
    for n, item in enumerate(items, start=1):
        if n > max_items:
            raise BatchRefused(f"the item source has more than {max_items} items (TTS_MAX_BATCH_ITEMS)")
        yield item


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # Lines as an editor numbers them: "\n" (and "\r\n") only, not every separator str.splitlines knows.
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield n, line


def _jsonl_items(text: str) -> Iterator[Item]:
    for n, line in _lines(text):
        if len(line) > MAX_LINE_CHARS:
            yield Item(n, problem=f"line {n}: over {MAX_LINE_CHARS} characters")
            continue
        try:
            obj = _loads(line)
        except RecursionError:
            yield Item(n, problem=f"line {n}: JSON nested too deeply")
            continue
        except ValueError as e:
            yield Item(n, problem=f"line {n}: not a JSON object ({e})")
            continue
        yield _item(n, obj)


def _text_items(text: str) -> Iterator[Item]:
    for n, line in _lines(text):
        if len(line) > MAX_LINE_CHARS:
            yield Item(n, problem=f"line {n}: over {MAX_LINE_CHARS} characters")
        else:
            yield Item(n, {"text": line.strip()})


def _csv_items(text: str, max_items: int) -> Iterator[Item]:
    csv.field_size_limit(len(text) + 1)  # a cell over MAX_LINE_CHARS is its line's problem, not the reader's error
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise BatchRefused(f"line 1: the CSV header does not parse ({e})") from None
    if header is None:
        return
    columns = [c.strip() for c in header]
    if "text" not in columns:
        raise BatchRefused("line 1: the CSV has no text column")
    if len(set(columns)) != len(columns) or "" in columns:
        raise BatchRefused("line 1: the CSV's column names must be present and distinct")
    count = 0
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a broken quote: the rest cannot be split into rows
            raise BatchRefused(f"line {line}: the CSV does not parse ({e})") from None
        if not any(cell.strip() for cell in row):
            continue
        count += 1
        if count > max_items:
            raise BatchRefused(f"the item source has more than {max_items} items (TTS_MAX_BATCH_ITEMS)")
        if len(row) != len(columns):
            yield Item(line, problem=f"line {line}: {len(row)} cells where the header has {len(columns)}")
            continue
        if any(len(cell) > MAX_LINE_CHARS for cell in row):
            yield Item(line, problem=f"line {line}: a cell over {MAX_LINE_CHARS} characters")
            continue
        yield _item(line, {c: _cell(c, v) for c, v in zip(columns, row, strict=True) if v != ""})


def _cell(column: str, value: str) -> Any:
    if column in CSV_TEXT_COLUMNS:
        return value
    try:
        return _loads(value)
    except (ValueError, RecursionError):
        return value


def _loads(text: str) -> Any:
    """JSON without NaN/Infinity, whether written so or overflowing (1e999): no manifest field
    means them, and they would make the item's manifest bytes that are not JSON."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (iteratively: no recursion on outside data)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest
