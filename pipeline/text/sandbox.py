"""The text front-end in a child process, where a runaway step cannot stop the worker's heartbeat.

``script.analyse`` (markup, lexicons, normalization, sentences) is pure Python and regex work: it
holds the GIL while it runs, so running it in a thread (``asyncio.to_thread``) does not keep the
event loop, and with it the lease heartbeat, going. Every step is linear in the text now
(``pipeline.text.matcher``, ``normalize._split``), but linear with a large constant is still
seconds at the limits, and the next quadratic corner would stall every job on the worker again. So
the worker hands the analysis to one long-lived child process and awaits it:

* **CPU bound.** Before each analysis the child sets its own ``RLIMIT_CPU`` to what it has used
  plus the job's share (``Limits.for_text``: ``TTS_TEXT_CPU_S`` for a text of 100,000 characters,
  proportionally less for a shorter one, never under ``MIN_CPU_S``). Past it the kernel ends the
  child with SIGXCPU: a bound that does not depend on how busy the machine is. CPU time is counted
  by the kernel whatever the child is doing, inside a regex included.
* **Wall bound.** The worker waits at most ``Limits.wall_s`` (three times the CPU share plus 5 s:
  the child shares the cores with the model) and then kills the child. Either way the job fails
  ``TEXT_TOO_COMPLEX`` (``TextTooComplex``) and the next job gets a fresh child.
* **Dies with the worker.** The child asks the kernel for SIGKILL when its parent goes
  (``prctl(PR_SET_PDEATHSIG)``, Linux), and leaves at once if the parent went before it asked.
  The signal follows the *thread* that started the child: the sandbox starts it from the thread
  that calls ``analyse``, the worker's event loop thread, which lives as long as the worker.
* **A fresh interpreter.** The ``spawn`` start method: the child is not a fork of the worker (torch
  threads, CUDA state, hundreds of MB of model), and imports only the text modules (~0.5 s of CPU,
  ~70 MB; lingua's models, ~190 MB, are loaded on the first ``language: "auto"`` job, before its
  CPU share starts counting).

One child serves the worker's jobs one at a time (``asyncio.Lock``); an analysis is milliseconds
for a normal job (figures in docs/benchmarks.md, "The text front-end in a child process").
Results come back as values (``Analysis`` pickles); the child's errors come back as tagged tuples
and are raised here as ``script.ScriptError`` (with the job's code), ``SpokenOverLimit`` (the work
budget, stopped while expanding) or ``TextTooComplex``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing as mp
import os
import resource
import signal
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from pipeline.jobs.contract import ErrorCode, Manifest
from pipeline.text import script

log = logging.getLogger(__name__)

__all__ = [
    "FULL_TEXT_CHARS",
    "MIN_CPU_S",
    "Limits",
    "SpokenOverLimit",
    "TextSandbox",
    "TextSandboxUnavailable",
    "TextTooComplex",
]

# CPU share: TTS_TEXT_CPU_S is for a text this long; a shorter one gets its share of it...
FULL_TEXT_CHARS = 100_000
# ...but never less than this: the lexicon's automaton (up to 200,000 characters of graphemes) and
# the child's own bookkeeping are paid whatever the text's length.
MIN_CPU_S = 2.0
_WALL_FACTOR = 3.0
_WALL_EXTRA_S = 5.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_START_S = 60.0  # a fresh child imports the text modules (~0.5 s of CPU): far more than enough
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class TextTooComplex(Exception):
    """The analysis went over its CPU or wall time (or its process died); its child was killed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TextSandboxUnavailable(Exception):
    """The child could not do the analysis for a reason that is not the text's: it would not start,
    it was killed from outside (the OOM killer, an operator), or it did not answer within its wall
    time without having used its CPU share (a stopped child, a machine too busy). The worker's
    fault, not the job's: a job that meets it is handed back, never failed."""


class SpokenOverLimit(Exception):
    """The text, expanded, reached ``spoken`` characters, over the job's limit: stopped there."""

    def __init__(self, spoken: int) -> None:
        super().__init__(f"{spoken} spoken characters")
        self.spoken = spoken


@dataclass(frozen=True)
class Limits:
    cpu_s: float
    wall_s: float

    @classmethod
    def for_text(cls, chars: int, cpu_s_full: float) -> Limits:
        """The share of ``cpu_s_full`` (the CPU seconds for ``FULL_TEXT_CHARS``) of a text of
        ``chars`` characters, and the wall time it may take on a busy machine."""
        cpu = max(MIN_CPU_S, cpu_s_full * chars / FULL_TEXT_CHARS)
        return cls(cpu, _WALL_FACTOR * cpu + _WALL_EXTRA_S)


class TextSandbox:
    """One long-lived child process that runs ``script.analyse`` under a CPU and a wall limit."""

    def __init__(self, cpu_s_full: float) -> None:
        self.cpu_s_full = cpu_s_full
        self._pool: ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self._procs: list[Any] = []  # the pool's process objects: how the child ended
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id while one is running (tests watch it go)."""
        return self._pid

    async def analyse(
        self,
        manifest: Manifest,
        lexicon: Mapping[str, str],
        *,
        max_pause_s: float,
        max_total_pause_s: float,
        max_spoken: int,
        limits: Limits | None = None,
    ) -> script.Analysis:
        """``script.analyse`` in the child. Raises ``script.ScriptError``, ``SpokenOverLimit`` (the
        expanded text went over ``max_spoken``), ``TextTooComplex`` (the text's fault) or
        ``TextSandboxUnavailable`` (the worker's)."""
        chars = len(manifest.full_text)
        limits = limits or Limits.for_text(chars, self.cpu_s_full)
        args = (manifest, dict(lexicon), max_pause_s, max_total_pause_s, max_spoken, limits.cpu_s)
        async with self._lock:
            future = await self._submit(args)
            try:
                outcome = await asyncio.wait_for(asyncio.wrap_future(future), limits.wall_s)
            except TimeoutError:
                # Over its wall time: the text's fault only if the child spent its CPU share on it; a
                # stopped child, or one starved by a busy machine, is the worker's.
                used = _cpu_s(self._pid)
                self._kill("over its wall time")
                if used is not None and used < limits.cpu_s / 2:
                    raise TextSandboxUnavailable(
                        f"the text front-end's process did not answer in {limits.wall_s:g}s "
                        f"having used {used:.1f}s of CPU"
                    ) from None
                raise TextTooComplex(_too_complex(chars, len(lexicon), limits)) from None
            except BrokenProcessPool:  # it ended: at the CPU limit (SIGXCPU), or killed from outside
                code = await asyncio.to_thread(self._exit_code)  # it may take the pool a moment to reap
                self._kill("ended", signal_it=False)
                if code == -signal.SIGXCPU:
                    raise TextTooComplex(_too_complex(chars, len(lexicon), limits)) from None
                raise TextSandboxUnavailable(f"the text front-end's process ended ({_ending(code)})") from None
            except asyncio.CancelledError:  # the job went away: its text stops using the CPU too
                self._kill("cancelled")
                raise
        kind = outcome[0]
        if kind == "ok":
            return outcome[1]
        if kind == "script":
            raise script.ScriptError(ErrorCode(outcome[1]), outcome[2])
        raise SpokenOverLimit(outcome[1])

    async def _submit(self, args: tuple[Any, ...]) -> Any:
        """The analysis submitted to a live child: a child that died while idle (its pool is broken)
        is replaced first, and one that will not start is the worker's fault."""
        for _ in range(2):
            pool = await self._running()
            try:
                return pool.submit(_child_analyse, *args)
            except BrokenProcessPool:
                self._kill("was gone while idle", signal_it=False)
        raise TextSandboxUnavailable("the text front-end's process keeps dying")

    def _exit_code(self) -> int | None:
        """How the child ended. The pool's own thread reaps it too: whichever ``waitpid`` loses the
        race reads nothing, so the shared process object is asked again until the status is in."""
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            for proc in self._procs:
                code = proc.exitcode
                if code is not None:
                    return code
            time.sleep(0.02)
        return None

    async def start(self) -> None:
        """Start the child now (the worker's first job then does not wait ~0.5 s for it)."""
        async with self._lock:
            await self._running()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self._pid = None

    async def _running(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Submitted from this (the event loop's) thread: the child is started by it, and
            # PR_SET_PDEATHSIG follows this thread.
            pool = ProcessPoolExecutor(
                max_workers=1, mp_context=mp.get_context("spawn"), initializer=_child_init, initargs=(os.getpid(),)
            )
            try:
                self._pid = await asyncio.wait_for(asyncio.wrap_future(pool.submit(os.getpid)), _START_S)
            except (TimeoutError, BrokenProcessPool, OSError) as e:
                for proc in list(pool._processes.values()):  # one that hangs in its imports
                    with contextlib.suppress(Exception):
                        proc.kill()
                pool.shutdown(wait=False, cancel_futures=True)
                raise TextSandboxUnavailable(f"the text front-end's process did not start ({type(e).__name__})") from e
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            self._procs = list(pool._processes.values())
            self._pool = pool
            log.info("text front-end: child process %d started", self._pid)
        return self._pool

    def _kill(self, why: str, *, signal_it: bool = True) -> None:
        pid, pool = self._pid, self._pool
        self._pool = None
        self._pid = None
        log.warning("text front-end: child process %s %s: a new one starts with the next job", pid, why)
        # Only while it is still this process's child: once the pool has reaped a dead one, its
        # pid may already be another process's.
        if signal_it and pid is not None and _parent_of(pid) in (os.getpid(), _NO_PROC):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _ending(code: int | None) -> str:
    if code is None:
        return "how, unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used; None if it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


_NO_PROC = -1  # no /proc to ask (not Linux): signal it anyway


def _parent_of(pid: int) -> int | None:
    """The parent of ``pid``; None if there is no such process."""
    if not os.path.isdir("/proc/self"):
        return _NO_PROC
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _too_complex(chars: int, entries: int, limits: Limits) -> str:
    lexicon = f" with a lexicon of {entries:,} entries" if entries else ""
    return (
        f"the text ({chars:,} characters{lexicon}) could not be prepared for speech within its limits, "
        f"{limits.cpu_s:g} s of CPU and {limits.wall_s:g} s in all (TTS_TEXT_CPU_S is the CPU for "
        f"{FULL_TEXT_CHARS:,} characters; a shorter text gets its share): simplify the text or its lexicon"
    )


# -- the child ---------------------------------------------------------------------------------


def _child_init(parent: int) -> None:
    """Die with the worker; no core file when SIGXCPU ends this process; the text modules loaded."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pool's own shutdown ends it
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker went before the signal was asked for
        os._exit(0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Warm: the first job's CPU share should not pay for num2words' and jieba's loading.
    script.analyse(Manifest(text="Warm up 1.", voice="warm"), {})
    script.analyse(Manifest(text="预热2。", voice="warm", language="zho"), {})


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Over(Exception):
    def __init__(self, spoken: int) -> None:
        super().__init__(spoken)
        self.spoken = spoken


def _child_analyse(
    manifest: Manifest,
    lexicon: dict[str, str],
    max_pause_s: float,
    max_total_pause_s: float,
    max_spoken: int,
    cpu_s: float,
) -> tuple[Any, ...]:
    if manifest.language == "auto":
        from pipeline.text import languages

        languages.warm()  # lingua's models load once per child, before the job's CPU share counts

    def over(spoken: int) -> None:
        if spoken > max_spoken:
            raise _Over(spoken)

    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(_cpu_used() + cpu_s)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    try:
        analysis = script.analyse(
            manifest, lexicon, max_pause_s=max_pause_s, max_total_pause_s=max_total_pause_s, on_spoken=over
        )
    except script.ScriptError as e:  # sent back as values: ScriptError does not unpickle
        return ("script", str(e.code), e.message)
    except _Over as e:
        return ("spoken", e.spoken)
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    return ("ok", analysis)
