"""The model cache's clean-up of temp entries left by dead syncs, on a real file system with real
processes and real file locks (the S3 side is in tests/integration/test_models.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.models.cache import STALE_AGE_S, CacheDiskFull, remove_stale_temps

_HOLD_LOCK = """
import fcntl, sys
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _entry(name_dir: Path, name: str) -> Path:
    path = name_dir / name
    (path / "f5").mkdir(parents=True)
    (path / "f5" / "model.safetensors.a1b2c3d4").write_bytes(b"partial")
    return path


@pytest.fixture
def lock_held_elsewhere(tmp_path: Path) -> Iterator[Path]:
    """Another live process holds version ``busy``'s lock, as a sync in another container would."""
    lock = tmp_path / "models" / "m" / ".busy.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    yield lock
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait()


def test_dead_pids_go_live_pids_stay(tmp_path: Path) -> None:
    root = tmp_path / "models"
    dead, alive = _dead_pid(), os.getpid()
    gone = [_entry(root / "m", f".v1.tmp-{dead}"), _entry(root / "other", f".v1.2.old-{dead}")]
    kept = [_entry(root / "m", f".v2.tmp-{alive}"), _entry(root / "m", "v1"), root / "m" / ".v1.lock"]
    kept[-1].touch()
    assert sorted(remove_stale_temps(root, holding=root / "m" / "v1")) == sorted(gone)
    assert [p.exists() for p in gone + kept] == [False] * len(gone) + [True] * len(kept)


def test_a_held_lock_protects_a_temp_whatever_its_pid_says(tmp_path: Path, lock_held_elsewhere: Path) -> None:
    """A pid from another PID namespace can look dead here: the lock is what proves a live sync."""
    name_dir = lock_held_elsewhere.parent
    busy = _entry(name_dir, f".busy.tmp-{_dead_pid()}")
    free = _entry(name_dir, f".idle.tmp-{_dead_pid()}")
    assert remove_stale_temps(tmp_path / "models", holding=name_dir / "v1") == [free]
    assert busy.exists() and not free.exists()


def test_a_live_pid_past_the_age_limit_is_taken_as_reused(tmp_path: Path) -> None:
    name_dir = tmp_path / "models" / "m"
    old, young = _entry(name_dir, f".v1.tmp-{os.getpid()}"), _entry(name_dir, f".v2.tmp-{os.getpid()}")
    past = time.time() - STALE_AGE_S - 60
    os.utime(old, (past, past))
    assert remove_stale_temps(tmp_path / "models", holding=name_dir / "v1") == [old]
    assert young.exists()


def test_no_cache_dir_yet(tmp_path: Path) -> None:
    assert remove_stale_temps(tmp_path / "models", holding=tmp_path / "models" / "m" / "v1") == []


def test_disk_full_message_names_the_path_and_the_bytes() -> None:
    e = CacheDiskFull(Path("/cache/models/m/v1"), needed=3 * 1024 * 1024, free=1024)
    assert str(e).startswith("model cache /cache/models/m/v1: not enough disk space")
    assert "needs 3145728 bytes (3.0 MB), 1024 bytes (0.0 MB) are free" in str(e)
    assert isinstance(e, RuntimeError)
    assert "filled up while downloading" in str(CacheDiskFull(Path("/c"), 2, 1, while_writing=True))
