"""Issue 27, defect 8: text from the bucket never drives the operator's terminal. A job's error
message (an unknown manifest key is quoted in ``INVALID_MANIFEST``), a planted status's worker or
job id, reach every CLI view escaped: no ESC, no C1 control, no BiDi override; rich markup in them
is shown, not applied. The CLI itself, on a pseudo-terminal: tests/integration/test_cli_human.py."""

from __future__ import annotations

import io
import json
import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from pipeline.client import jobs as client
from pipeline.client.progress import PlainWaitView, RichWaitView, jobs_table, status_summary
from pipeline.client.terminal import json_text, markup, safe, safe_lines
from pipeline.jobs.contract import JobErrorInfo, JobState, JobStatus

# What a manifest can make a worker quote, and what a planted status can say: clear the screen,
# set the window title, an 8-bit CSI, a right-to-left override, a line of its own, rich markup.
HOSTILE = "\x1b[2J\x1b]0;owned\x07 \x9b31m \u202eevil\u202c\nFORGED [bold red]x[/] [/]"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours and styles rich itself draws


def _unsafe(s: str) -> list[str]:
    return [c for c in s if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp", "Cs"}]


def _unescape(s: str) -> str:
    short = {"n": "\n", "r": "\r", "t": "\t"}
    return re.sub(
        r"\\(?:([nrt])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))",
        lambda m: short[m[1]] if m[1] else chr(int(m[2] or m[3] or m[4], 16)),
        s,
    )


@given(st.text())
def test_safe_leaves_nothing_a_terminal_acts_on(s: str) -> None:
    out = safe(s)
    assert _unsafe(out) == []
    assert safe(out) == out  # escaping twice changes nothing more
    if "\\" not in s:  # readable: the escapes spell the characters that were there
        assert _unescape(out) == s


@given(st.text(alphabet=st.characters(exclude_categories=("Cc", "Cf", "Zl", "Zp", "Cs"))))
def test_safe_text_is_shown_as_it_is(s: str) -> None:
    assert safe(s) == s  # Chinese, accents, emoji, brackets, backslashes: unchanged


def test_the_escapes_are_visible() -> None:
    assert safe("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert safe("\x9b\u202e\u2066\n") == "\\x9b\\u202e\\u2066\\n"
    assert safe_lines("one\x1b\ntwo") == "one\\x1b\ntwo"
    assert markup("[bold]x[/]") == "\\[bold]x\\[/]"


@given(st.dictionaries(st.text(), st.text()))
def test_json_text_is_the_same_json_with_nothing_a_terminal_acts_on(doc: dict[str, str]) -> None:
    for raw in (json.dumps(doc, ensure_ascii=False), json.dumps(doc, ensure_ascii=False, indent=2)):
        out = json_text(raw)
        assert json.loads(out) == doc
        assert [c for c in _unsafe(out) if c not in "\n"] == []  # the document's own line breaks stay


def _hostile_status() -> JobStatus:
    status = JobStatus.new("job-\u202eevil\x1b[2J").moved_to(JobState.PROCESSING, worker=HOSTILE, lease_s=60)
    return status.moved_to(JobState.FAILED, error=JobErrorInfo(code=f"CODE{HOSTILE}", message=HOSTILE), note=HOSTILE)


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system="truecolor", width=400), out


def _assert_shown_safely(drawn: str) -> None:
    rest = SGR.sub("", drawn)
    assert "\x1b" not in rest, repr(rest)
    assert _unsafe(rest.replace("\n", "").replace("\r", "")) == [], repr(rest)
    assert "\\x1b[2J" in rest and "\\u202e" in rest and "\\x9b" in rest, rest
    assert "FORGED [bold red]x[/] [/]" in rest, rest  # markup shown as written, not applied


def test_the_status_summary_escapes_what_the_status_says() -> None:
    console, out = _terminal()
    console.print(status_summary(_hostile_status()))
    _assert_shown_safely(out.getvalue())


def test_the_jobs_table_escapes_ids_and_codes() -> None:
    console, out = _terminal()
    console.print(jobs_table([_hostile_status()]))
    drawn = SGR.sub("", out.getvalue())
    assert "\x1b" not in drawn and _unsafe(drawn.replace("\n", "")) == [], repr(drawn)
    assert "job-\\u202eevil\\x1b[2J" in drawn and "CODE\\x1b[2J" in drawn, drawn


def test_the_plain_wait_view_writes_one_escaped_line() -> None:
    out = io.StringIO()
    with PlainWaitView("job-1", out, timeout_s=1) as view:
        view.finish(_hostile_status())
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\x1b" not in lines[0] and _unsafe(lines[0]) == [], lines
    assert lines[0].startswith("job-1 FAILED CODE\\x1b[2J") and "\\nFORGED [bold red]x[/] [/]" in lines[0]


def test_the_progress_bar_escapes_the_error_code() -> None:
    console, out = _terminal()
    status = _hostile_status()
    with RichWaitView(status.job_id, console) as view:  # a markup error would raise here
        view.finish(status)
    drawn = re.sub(r"\x1b\[\?25[lh]|\r|\x1b\[2K|\x1b\[1A", "", SGR.sub("", out.getvalue()))  # rich's live redraws
    assert "\x1b" not in drawn and _unsafe(drawn.replace("\n", "")) == [], repr(drawn)
    assert "CODE\\x1b[2J" in drawn and "job-\\u202eevil" in drawn, drawn


def test_printed_documents_stay_json_and_escape_c1_and_bidi() -> None:
    status = _hostile_status()
    printed = client.dump(status)
    assert JobStatus.model_validate_json(printed) == status
    assert "\x1b" not in printed and "\x9b" not in printed and "\u202e" not in printed
    assert "\\u001b[2J" in printed and "\\u009b" in printed and "\\u202e" in printed
