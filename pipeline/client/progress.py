"""What the CLI shows a person: a progress bar while it waits for a job, a short summary of a job,
a table of recent jobs (``rich``).

Machine-readable output is the CLI's business, not this module's: the commands print the JSON
documents themselves when stdout is not a terminal or ``--json`` is given. The bar goes to stderr
(stdout keeps the final document or summary) and only when stdout and stderr are both terminals;
otherwise :class:`PlainWaitView` writes one plain line to stderr per change, with no escape codes.
Nothing here touches S3 or a model.

Every string taken from a job's documents (ids, notes, error messages, worker names, URIs) goes
through :mod:`pipeline.client.terminal` before it is drawn: the bucket is written by clients, and a
terminal acts on the escape sequences such text may carry.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pipeline.client.terminal import markup, safe, text
from pipeline.jobs.contract import JobResult, JobState, JobStatus, utcnow

STATE_STYLE = {
    JobState.QUEUED: "yellow",
    JobState.PROCESSING: "cyan",
    JobState.COMPLETED: "bold green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "magenta",
    JobState.EXPIRED: "red",
}


def is_terminal(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def stdout_is_terminal() -> bool:
    return is_terminal(sys.stdout)


# -- formatting ---------------------------------------------------------------------------------


def human_seconds(seconds: float) -> str:
    """``0.4s``, ``12s``, ``3m 05s``, ``2h 03m``, ``4d 02h``."""
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    n = int(s)
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m {n % 60:02d}s"
    if n < 86400:
        return f"{n // 3600}h {n % 3600 // 60:02d}m"
    return f"{n // 86400}d {n % 86400 // 3600:02d}h"


def age(at: datetime, now: datetime | None = None) -> str:
    return human_seconds(((now or utcnow()) - at).total_seconds())


def local_time(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def chunks_text(done: int, total: int, reused: int = 0) -> str:
    return f"{done}/{total} chunks" + (f" ({reused} reused)" if reused else "")


def state_text(state: JobState) -> Text:
    return Text(state.value, style=STATE_STYLE.get(state, ""))


# -- waiting for a job --------------------------------------------------------------------------


class WaitView(Protocol):
    """Shows a job's progress while ``client.wait`` polls: ``update`` with every status read,
    ``finish`` once with the last one (``chunks_total``: from the result, when the job ended
    before a status carried its progress)."""

    def __enter__(self) -> WaitView: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @property
    def wants_chunks_total(self) -> bool:
        """No status has carried the job's chunk count yet (pass the result's to ``finish``)."""
        ...

    def update(self, status: JobStatus) -> None: ...

    def finish(self, status: JobStatus, chunks_total: int | None = None) -> None: ...


def wait_view(job_id: str, *, timeout_s: float) -> WaitView:
    """A rich progress bar when stdout and stderr are terminals, plain lines on stderr otherwise."""
    if stdout_is_terminal() and is_terminal(sys.stderr):
        return RichWaitView(job_id, Console(stderr=True))
    return PlainWaitView(job_id, sys.stderr, timeout_s=timeout_s)


class _Chunks:
    """The last chunk counts seen (a final status carries no progress: keep what was shown)."""

    def __init__(self) -> None:
        self.attempt = -1
        self.done = 0
        self.total: int | None = None
        self.reused = 0

    def see(self, status: JobStatus) -> None:
        if status.attempt != self.attempt:  # a new attempt plans (and counts) again
            self.attempt = status.attempt
            self.done, self.total, self.reused = 0, None, 0
        if status.progress is not None:
            self.done = status.progress.chunks_done
            self.total = status.progress.chunks_total
            self.reused = status.progress.chunks_reused

    def final(self, status: JobStatus, chunks_total: int | None) -> None:
        if status.state is JobState.COMPLETED:
            self.total = chunks_total if chunks_total is not None else self.total
            if self.total is not None:
                self.done = self.total


class PlainWaitView:
    """One line per change of state, attempt or chunk count, e.g. ``job-1 PROCESSING 12/180 chunks``."""

    def __init__(self, job_id: str, stream: IO[str], *, timeout_s: float) -> None:
        self.job_id = job_id
        self.stream = stream
        self.timeout_s = timeout_s
        self.chunks = _Chunks()
        self._last: tuple[object, ...] | None = None

    @property
    def wants_chunks_total(self) -> bool:
        return self.chunks.total is None

    def __enter__(self) -> PlainWaitView:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def _line(self, status: JobStatus) -> None:
        key = (status.state, status.attempt, self.chunks.done, self.chunks.total)
        if key == self._last:
            return
        self._last = key
        parts = [safe(self.job_id), status.state.value]
        if self.chunks.total is not None and status.state in (JobState.PROCESSING, JobState.COMPLETED):
            parts.append(chunks_text(self.chunks.done, self.chunks.total, self.chunks.reused))
        if status.attempt > 1:
            parts.append(f"(attempt {status.attempt})")
        if status.error is not None:
            parts.append(f"{safe(status.error.code)}: {safe(status.error.message)}")
        print(" ".join(parts), file=self.stream, flush=True)

    def update(self, status: JobStatus) -> None:
        if status.state.terminal:
            return  # finish() draws the last line, with the chunk count from the result
        self.chunks.see(status)
        self._line(status)

    def finish(self, status: JobStatus, chunks_total: int | None = None) -> None:
        self.chunks.see(status)
        self.chunks.final(status, chunks_total)
        self._line(status)
        if not status.state.terminal:
            print(
                f"{safe(self.job_id)} still {status.state.value} after {self.timeout_s:g}s (--timeout)",
                file=self.stream,
                flush=True,
            )


class _MarkColumn(ProgressColumn):
    """A spinner while the job runs, then a mark for how it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.spinner = SpinnerColumn()

    def render(self, task: Task) -> RenderableType:
        state: JobState | None = task.fields.get("final")
        if state is None:
            # Not SpinnerColumn.render: that stops at chunks_done == chunks_total, while the job
            # still aligns, encodes and uploads.
            return self.spinner.spinner.render(task.get_time())
        if state is JobState.COMPLETED:
            return Text("✓", style="bold green")
        return Text("✗", style=STATE_STYLE.get(state, "red"))


class RichWaitView:
    """``⠋ job-1  PROCESSING  ━━━━━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━━━━  12/180 chunks  0:00:41``; the
    bar pulses while the job is QUEUED or has not planned its chunks yet."""

    def __init__(self, job_id: str, console: Console) -> None:
        self.job_id = job_id
        self.chunks = _Chunks()
        self.progress = Progress(
            _MarkColumn(),
            TextColumn("{task.fields[job]}", style="bold"),
            TextColumn("{task.fields[state]}"),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            expand=False,
        )
        # The text columns read their fields as rich markup.
        self.task = self.progress.add_task("wait", total=None, job=markup(job_id), state="", detail="", final=None)
        self._started = False

    @property
    def wants_chunks_total(self) -> bool:
        return self.chunks.total is None

    def __enter__(self) -> RichWaitView:
        return self  # the bar appears with the first status (not at all for an unknown job)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._started:
            self.progress.stop()

    def _draw(self, status: JobStatus, *, final: bool = False) -> None:
        state = status.state
        style = STATE_STYLE.get(state, "")
        state_markup = f"[{style}]{state.value}[/]" if style else state.value
        detail = ""
        total: float | None = None
        completed = 0.0
        if self.chunks.total is not None and (final or state in (JobState.PROCESSING, JobState.COMPLETED)):
            total = float(max(self.chunks.total, 1))
            completed = float(self.chunks.done)
            detail = chunks_text(self.chunks.done, self.chunks.total, self.chunks.reused)
        elif state is JobState.QUEUED:
            detail = "waiting for a worker"
        elif state is JobState.PROCESSING:
            detail = "planning chunks"
        if final and total is None:
            # No chunk count to show: a full bar for COMPLETED, an empty one otherwise.
            total, completed = 1.0, 1.0 if state is JobState.COMPLETED else 0.0
        if status.attempt > 1:
            detail += f" (attempt {status.attempt})"
        if final and status.error is not None:
            detail += f"  {markup(status.error.code)}"
        self.progress.update(
            self.task,
            total=total,
            completed=completed,
            state=state_markup,
            detail=detail.strip(),
            final=state if final and state.terminal else None,
        )
        if not self._started:
            self._started = True
            self.progress.start()

    def update(self, status: JobStatus) -> None:
        self.chunks.see(status)
        self._draw(status)

    def finish(self, status: JobStatus, chunks_total: int | None = None) -> None:
        self.chunks.see(status)
        self.chunks.final(status, chunks_total)
        self._draw(status, final=True)
        if status.state.terminal:
            self.progress.stop_task(self.task)  # freezes the elapsed time
        self.progress.refresh()


# -- one job ------------------------------------------------------------------------------------


def _grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


def status_summary(
    status: JobStatus,
    result: JobResult | None = None,
    *,
    audio_path: Path | None = None,
    now: datetime | None = None,
) -> RenderableType:
    """``tts-pipeline status`` on a terminal: the state and what matters about it."""
    now = now or utcnow()
    title = Text.assemble(
        text(status.job_id, "bold"), "  ", state_text(status.state), (f"  attempt {status.attempt}", "dim")
    )
    grid = _grid()
    grid.add_row("created", f"{local_time(status.created_at)} ({age(status.created_at, now)} ago)")
    if status.started_at is not None:
        grid.add_row("started", f"{local_time(status.started_at)} (queued {human_seconds(_waited(status))})")
    if status.finished_at is not None:
        took = (status.finished_at - status.created_at).total_seconds()
        grid.add_row("finished", f"{local_time(status.finished_at)} ({human_seconds(took)} after submission)")
    else:
        grid.add_row("updated", f"{local_time(status.updated_at)} ({age(status.updated_at, now)} ago)")
    if status.worker:
        worker = text(status.worker)
        if status.lease_expires_at is not None and not status.state.terminal:
            worker.append(f"  lease until {local_time(status.lease_expires_at)}", style="dim")
        grid.add_row("worker", worker)
    if status.progress is not None:
        p = status.progress
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(p.chunks_total, 1), completed=p.chunks_done, width=30),
            chunks_text(p.chunks_done, p.chunks_total, p.chunks_reused),
        )
        grid.add_row("progress", bar)
    if status.error is not None:
        grid.add_row("error", Text.assemble(text(status.error.code, "bold red"), ": ", text(status.error.message)))
    if result is not None:
        a = result.audio
        grid.add_row(
            "audio",
            Text.assemble(
                text(a.uri),
                (f"  {a.format.value}, {a.duration_s:.1f} s, {a.sample_rate // 1000} kHz, {human_bytes(a.bytes)}", ""),
            ),
        )
        if audio_path is not None:
            grid.add_row("saved", text(audio_path))
        for fmt, uri in sorted(result.subtitles.items()):
            grid.add_row(text(getattr(fmt, "value", fmt)), text(uri))
        chunks = f"{result.chunks}" + (f" ({result.chunks_reused} reused)" if result.chunks_reused else "")
        grid.add_row("chunks", chunks)
        grid.add_row("model", text(f"{result.model.name}/{result.model.version} on {result.model.device}"))
        if result.warnings:
            grid.add_row("warnings", text(", ".join(w.code for w in result.warnings), "yellow"))
    elif status.result_key:
        grid.add_row("result", text(status.result_key))
    hints = []
    if status.state is JobState.COMPLETED:
        hints.append(f"tts-pipeline result {safe(status.job_id)} [--out FILE] for the result JSON and the audio")
    elif not status.state.terminal:
        hints.append(f"tts-pipeline wait {safe(status.job_id)} to follow it")
    hints.append("--json for the status document")
    footer = Text("  ".join(hints), style="dim")
    return Group(title, grid, footer)


def _waited(status: JobStatus) -> float:
    if status.started_at is None:
        return 0.0
    return (status.started_at - status.created_at).total_seconds()


# -- many jobs ----------------------------------------------------------------------------------


def jobs_table(statuses: Iterable[JobStatus], *, now: datetime | None = None) -> Table:
    """``tts-pipeline jobs`` on a terminal."""
    now = now or utcnow()
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("JOB ID", overflow="fold")
    table.add_column("STATE", no_wrap=True)
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("ATTEMPT", justify="right", no_wrap=True)
    table.add_column("PROGRESS / TOOK", no_wrap=True)
    table.add_column("ERROR", overflow="fold")
    for st in statuses:
        if st.progress is not None:
            detail = f"{st.progress.chunks_done}/{st.progress.chunks_total} chunks"
        elif st.finished_at is not None:
            detail = f"took {human_seconds((st.finished_at - st.created_at).total_seconds())}"
        else:
            detail = "-"
        table.add_row(
            text(st.job_id),
            state_text(st.state),
            age(st.created_at, now),
            str(st.attempt),
            detail,
            text(st.error.code, "red") if st.error else "",
        )
    return table
