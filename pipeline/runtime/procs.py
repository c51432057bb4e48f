"""Whether a process runs, and which one it is: for the files a process leaves that name it (the
scratch directories, LocalStack's pid file)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """A process ``pid`` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none; a pid no process can have
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> str | None:
    """``pid``'s start time in clock ticks since boot (what tells a recycled pid from the process
    that had it); "" without /proc (not Linux) while it runs; None if it does not run."""
    try:
        line = Path(f"/proc/{pid}/stat").read_bytes()  # the name in it is any bytes, not UTF-8
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # /proc exists: the process does not
        return "" if alive(pid) else None
    except OSError:
        return None
    fields = line.rsplit(b")", 1)[-1].split()  # field 22 of proc(5) is fields[19], counted after "(comm)"
    return fields[19].decode("ascii", "replace") if len(fields) > 19 else None
