"""The process's scratch space: one directory per process under one root, swept of the
directories of processes that no longer run each time a process claims its own.

A process killed with SIGKILL (an OOM kill, ``kill -9``, a node drain past its grace) runs no
cleanup: the temporary files it had open stay in ``/tmp`` forever, one set per kill. A worker
makes several: a job's rendered audio (``pipeline.worker.runner``), the engine's reference and
output files, and the two directories ``wandb`` makes at import (f5-tts's trainer module imports
it). So the worker calls ``claim()`` first: ``tempfile`` and ``TMPDIR`` then point at
``<tmp>/tts-pipeline-<uid>/<pid>-<start>/``, so the libraries and child processes (the text
sandbox) put their files there too, and the directories of dead processes are removed.

What stays is bounded: one directory per live process, plus those of processes killed since the
last start on this machine (the next start removes them). A directory is its process's while a
process with that pid *and that start time* runs (``/proc/<pid>/stat``), so a recycled pid does
not keep a dead process's files. Without ``/proc`` (not Linux) the pid alone decides.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from pipeline.runtime import procs

log = logging.getLogger(__name__)

_claimed: Path | None = None
_ENTRY = re.compile(r"([0-9]{1,10})-.*", re.ASCII)  # <pid>-<start time>: a process's directory


def root(base: str | os.PathLike[str] | None = None) -> Path:
    """Where every process's scratch directory lives (one root per user: 0700)."""
    return Path(base if base is not None else tempfile.gettempdir()) / f"tts-pipeline-{os.getuid()}"


def claim(base: str | os.PathLike[str] | None = None) -> Path:
    """Sweep, then make this process's scratch directory and point ``tempfile``/``TMPDIR`` at it.
    Idempotent within a process. Removed at a normal exit; after a kill, by the next claim."""
    global _claimed
    if _claimed is not None:
        return _claimed
    top = root(base)
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _ours(top):
        # In a shared /tmp another user may have made the name first (or a symlink to elsewhere):
        # nothing there is swept; this process gets a private directory of its own.
        log.warning("%s is not a directory of this user's: scratch space not shared, nothing swept", top)
        _claimed = Path(tempfile.mkdtemp(prefix="tts-pipeline-"))
        _point_at(_claimed)
        return _claimed
    removed = sweep(top)
    if removed:
        log.info("removed the scratch directories of %d process(es) that no longer run", removed)
    mine = top / tag(os.getpid())
    mine.mkdir(mode=0o700, exist_ok=True)
    _point_at(mine)
    _claimed = mine
    return mine


def _point_at(mine: Path) -> None:
    tempfile.tempdir = str(mine)
    os.environ["TMPDIR"] = str(mine)  # child processes, and libraries that read it themselves
    atexit.register(shutil.rmtree, mine, True)


def _ours(top: Path) -> bool:
    """``top`` is a real directory (not a symlink) of this user's, closed to others."""
    try:
        st = os.lstat(top)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def sweep(top: Path) -> int:
    """Remove the directories under ``top`` whose process no longer runs. Returns how many."""
    removed = 0
    try:
        entries = list(top.iterdir())
    except OSError:
        return 0
    for d in entries:
        named = _ENTRY.fullmatch(d.name)
        try:
            if named is None or d.name == tag(int(named[1])):  # not ours, or its process still runs
                continue
            shutil.rmtree(d)
            removed += 1
        except Exception as e:  # one odd entry must not keep a worker from starting
            log.warning("scratch directory %s left in place: %s", d, e)
    return removed


def tag(pid: int) -> str:
    """The directory name of process ``pid`` as it runs now ("" start time where unknown); a
    process that no longer runs has no tag any directory can match."""
    start = procs.start_time(pid)
    if start is None:
        return ""
    return f"{pid}-{start}"
