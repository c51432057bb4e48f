"""The scratch space: what a process killed with SIGKILL left in /tmp is removed by the next
process's claim, and nothing of a live process is touched (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.runtime import scratch

# A process that claims its scratch space, imports what a worker imports that makes temporary
# directories at import (f5-tts's trainer imports wandb), writes a file of its own, says where,
# and waits to be killed.
CHILD = """
import sys, tempfile, time
from pipeline.runtime import scratch
d = scratch.claim(sys.argv[1])
import f5_tts.model  # noqa: F401  (wandb's import-time TemporaryDirectory)
with tempfile.NamedTemporaryFile(delete=False) as f:
    f.write(b"x" * 1000)
print(d, flush=True)
time.sleep(600)
"""


def _start(base: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(base)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the child said nothing"
    return proc, Path(line)


def test_a_killed_process_leaves_nothing_the_next_claim_keeps(tmp_path: Path) -> None:
    killed, killed_dir = _start(tmp_path)
    live, live_dir = _start(tmp_path)
    try:
        assert killed_dir.parent == live_dir.parent == scratch.root(tmp_path)
        # Everything the process and its libraries made is inside its own directory.
        assert any("wandb" in p.name for p in killed_dir.iterdir()), list(killed_dir.iterdir())
        assert [p for p in tmp_path.iterdir()] == [scratch.root(tmp_path)]
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_dir.exists()  # no cleanup ran: that is what a kill leaves

        # A stranger's entry and a recycled pid's: the first is not ours, the second is dead.
        (scratch.root(tmp_path) / "notes").mkdir()
        (scratch.root(tmp_path) / f"{live.pid}-1").mkdir()
        assert scratch.sweep(scratch.root(tmp_path)) == 2
        assert not killed_dir.exists()
        assert not (scratch.root(tmp_path) / f"{live.pid}-1").exists()
        assert live_dir.exists() and (scratch.root(tmp_path) / "notes").exists()
    finally:
        for p in (killed, live):
            p.kill()
            p.wait()


def test_a_normal_exit_removes_its_own_directory(tmp_path: Path) -> None:
    code = "import sys; from pipeline.runtime import scratch; print(scratch.claim(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    mine = Path(out.stdout.strip())
    assert mine.parent == scratch.root(tmp_path)
    assert not mine.exists()


def test_tag_is_the_running_process_and_nothing_for_a_dead_one() -> None:
    assert scratch.tag(os.getpid()).startswith(f"{os.getpid()}-")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert scratch.tag(proc.pid) == ""


def test_a_root_that_is_not_ours_is_neither_used_nor_swept(tmp_path: Path) -> None:
    """In a shared /tmp another user (or a symlink) may hold the name: nothing under it is swept,
    the process gets a private directory instead."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "123-456").mkdir(parents=True)  # looks like a dead process's directory
    scratch.root(tmp_path).symlink_to(elsewhere)
    code = "import sys; from pipeline.runtime import scratch; print(scratch.claim(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert (elsewhere / "123-456").is_dir()
    assert not out.stdout.strip().startswith(str(scratch.root(tmp_path)))


def test_odd_entries_never_stop_a_sweep(tmp_path: Path) -> None:
    """A sweep runs first thing in a worker: an entry it cannot read must not crash the start.
    Found in review: a name of Unicode digits ("²") passed ``isdigit`` and broke ``int``; a pid no
    process can have overflowed ``os.kill``."""
    top = scratch.root(tmp_path)
    top.mkdir(mode=0o700)
    for name in ("²-x", "9999999999-1", "12-"):
        (top / name).mkdir()
    assert scratch.sweep(top) == 2  # the two that name no running process; "²-x" is not ours
    assert [p.name for p in top.iterdir()] == ["²-x"]
