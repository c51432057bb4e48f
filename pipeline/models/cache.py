"""The S3 model cache: push bundles to ``models/<name>/<version>/`` and sync them to a local dir.

Push writes every file first and ``bundle.json`` last, then the ``models/<name>/latest`` pointer,
so a reader that finds a bundle.json finds a complete bundle. Sync downloads in parallel with
s3transfer, verifies sha256 against bundle.json, publishes with a directory rename (never a
half-written cache), and holds a file lock so several workers on one host share one copy.

Integrity on every start: a warm cache (local bundle.json byte-identical to the remote one) is
used only after every file's sha256 matches bundle.json again. Size and mtime prove nothing: bit
rot and in-place tampering keep both, and a model loaded from corrupt bytes either crashes every
job or, worse, quietly makes wrong audio. bundle.json already carries each file's sha256 and is
itself compared with S3 on every start, so it is the fingerprint; no sidecar is needed. The cost
is reading and hashing the bundle once per start: sha256 runs at 1-2 GB/s per core with SHA-NI
(files hash in parallel, one file on one core), so ~0.7-1.3 s for a 1.3 GB checkpoint, small next
to loading and compiling the model, whose own reads then mostly hit the page cache. Checking only
when size/mtime differ would be free but would miss exactly the corruption that keeps them. A
file that fails is logged and downloaded again, never loaded.

Disk full: free space is checked before downloading, and ENOSPC while writing, both become
:class:`CacheDiskFull` naming the cache path, the bytes needed and the bytes free; partial
downloads are removed. Retrying cannot help, so callers should exit with that message.

Temp dirs (``.<version>.tmp-<pid>`` downloads, ``.<version>.old-<pid>`` copies being deleted)
left by a process that died are removed at the next sync. Such an entry is only ever written
while its writer holds ``.<version>.lock``, so it is removed only if that lock is free and its
pid is gone or it is older than :data:`STALE_AGE_S`. The lock is the real proof that no sync is
live, in any process or container sharing the volume; a pid alone proves nothing across PID
namespaces (another container's pid 7 is not ours).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from pipeline.cloud import aws
from pipeline.config import Settings, sse_params
from pipeline.jobs import keys
from pipeline.models.bundle import BUNDLE_FILE, Bundle, sha256_file, verify

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Hashing threads: hashlib releases the GIL on large buffers, so files hash on several cores.
HASH_THREADS = min(4, os.cpu_count() or 1)
# A temp entry whose pid looks alive (pid reuse, another PID namespace) is still removed after
# this long, provided its version's lock is free; the lock, not the age, is what keeps live syncs safe.
STALE_AGE_S = 6 * 3600
_TEMP_ENTRY = re.compile(r"^\.(?P<version>.+)\.(?:tmp|old)-(?P<pid>\d+)$")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class BundleNotFound(LookupError):
    pass


class BundleCorrupt(RuntimeError):
    pass


class CacheDiskFull(RuntimeError):
    """The cache volume cannot hold the bundle. Fatal: no retry frees disk space, a person must."""

    def __init__(self, path: Path, needed: int, free: int, *, while_writing: bool = False) -> None:
        self.path, self.needed, self.free = path, needed, free
        when = " (the disk filled up while downloading)" if while_writing else ""
        super().__init__(
            f"model cache {path}: not enough disk space{when}: the sync needs {needed} bytes "
            f"({needed / MB:.1f} MB), {free} bytes ({free / MB:.1f} MB) are free there; free space on that "
            "volume or give TTS_CACHE_DIR a larger one"
        )


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * MB, multipart_chunksize=64 * MB, max_concurrency=8)


@contextlib.contextmanager
def _transfer_manager(s3: Any) -> Iterator[Any]:
    from s3transfer.manager import TransferManager

    with TransferManager(s3, config=_transfer_config()) as tm:
        yield tm


@dataclass
class SyncReport:
    path: Path
    bundle: Bundle
    warm: bool
    files_fetched: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class ModelCache:
    def __init__(
        self, bucket: str, cache_dir: Path, s3: Any | None = None, put_params: dict[str, str] | None = None
    ) -> None:
        self.bucket = bucket
        self.root = cache_dir / "models"
        self.s3 = s3 or aws.sync_client("s3")
        self.put_params = put_params or {}  # server-side encryption for pushed files

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelCache:
        return cls(settings.bucket, settings.cache_dir, put_params=sse_params(settings))

    # -- remote ------------------------------------------------------------------------------

    def _get(self, key: str) -> bytes:
        for attempt in aws.retrying():
            with attempt:
                try:
                    return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NoSuchBucket"}:
                        raise BundleNotFound(f"s3://{self.bucket}/{key} not found") from None
                    raise
        raise AssertionError("unreachable")

    def resolve_version(self, name: str, version: str = "latest") -> str:
        if version != "latest":
            return version
        return self._get(keys.model_latest_key(name)).decode().strip()

    def remote_bundle(self, name: str, version: str = "latest") -> tuple[Bundle, bytes]:
        version = self.resolve_version(name, version)
        raw = self._get(keys.model_prefix(name, version) + BUNDLE_FILE)
        return Bundle.model_validate_json(raw), raw

    def list_remote(self) -> dict[str, str]:
        """name -> latest version, for every bundle name with a ``latest`` pointer."""
        out: dict[str, str] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=keys.MODELS, Delimiter="/"):
            for prefix in page.get("CommonPrefixes", []):
                name = prefix["Prefix"][len(keys.MODELS) :].rstrip("/")
                with contextlib.suppress(BundleNotFound):
                    out[name] = self.resolve_version(name)
        return out

    def push(self, directory: Path, *, set_latest: bool = True) -> Bundle:
        bundle = Bundle.load(directory)
        bad = verify(directory, bundle)
        if bad:
            raise BundleCorrupt(f"{directory}: files do not match bundle.json: {', '.join(bad)}")
        prefix = keys.model_prefix(bundle.name, bundle.version)
        try:
            already = self.remote_bundle(bundle.name, bundle.version)[0].files == bundle.files
        except BundleNotFound:
            already = False
        if not already:
            self._transfer_all("upload", {rel: (directory / rel, prefix + rel) for rel in bundle.files})
            # bundle.json last: its presence means "complete".
            self._put(prefix + BUNDLE_FILE, (directory / BUNDLE_FILE).read_bytes(), "application/json")
            log.info(
                "pushed %s/%s (%d files, %d bytes)", bundle.name, bundle.version, len(bundle.files), bundle.total_bytes
            )
        else:
            log.info("%s/%s already in s3://%s/%s", bundle.name, bundle.version, self.bucket, prefix)
        if set_latest:
            self._put(keys.model_latest_key(bundle.name), f"{bundle.version}\n".encode(), "text/plain")
        return bundle

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        for attempt in aws.retrying():
            with attempt:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **self.put_params)

    def _transfer_all(
        self,
        direction: str,
        files: dict[str, tuple[Path, str]],
        on_file_done: Callable[[str], None] | None = None,
    ) -> None:
        """Upload or download ``{name: (local path, key)}`` in parallel with s3transfer; retry the
        transfers that failed transiently (our retry policy: SDK retries are off).
        ``on_file_done(name)`` runs as soon as each file is complete, while others still transfer."""
        pending = dict(files)
        for attempt in aws.retrying():
            with attempt, _transfer_manager(self.s3) as tm:
                futures = {
                    rel: tm.upload(str(path), self.bucket, key, extra_args=self.put_params or None)
                    if direction == "upload"
                    else tm.download(self.bucket, key, str(path), subscribers=_done_hook(rel, on_file_done))
                    for rel, (path, key) in pending.items()
                }
                errors = {}
                for rel, fut in futures.items():
                    try:
                        fut.result()
                    except Exception as e:
                        errors[rel] = e
                pending = {rel: pending[rel] for rel in errors}
                if errors:
                    # A full disk outranks whatever else failed beside it: it is the one to report.
                    raise next((e for e in errors.values() if _is_disk_full(e)), next(iter(errors.values())))

    # -- local -------------------------------------------------------------------------------

    def local_path(self, name: str, version: str) -> Path:
        return self.root / name / version

    @contextlib.contextmanager
    def _lock(self, name: str, version: str) -> Iterator[None]:
        lock_path = _lock_path(self.root / name, version)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def sync(self, name: str, version: str = "latest") -> SyncReport:
        t0 = time.perf_counter()
        bundle, raw = self.remote_bundle(name, version)
        seconds = {"resolve": time.perf_counter() - t0}
        final = self.local_path(bundle.name, bundle.version)
        with self._lock(bundle.name, bundle.version):
            remove_stale_temps(self.root, holding=final)
            t1 = time.perf_counter()
            same_manifest, good = _manifest_matches(final, raw), _verified_files(final, bundle)
            seconds["verify"] = time.perf_counter() - t1
            if same_manifest and good == set(bundle.files):
                seconds["download"] = 0.0
                return SyncReport(path=final, bundle=bundle, warm=True, seconds=seconds)
            if same_manifest:  # a copy that was complete and verified has gone bad on disk
                bad = sorted(set(bundle.files) - good)
                log.warning("model cache %s: %d file(s) fail sha256, downloading again: %s", final, len(bad), bad)
            report = self._fetch(bundle, raw, final, good)
        report.seconds = {**seconds, **report.seconds, "verify": seconds["verify"] + report.seconds["verify"]}
        return report

    def _fetch(self, bundle: Bundle, raw: bytes, final: Path, good: set[str]) -> SyncReport:
        """Download every file not in ``good`` into a temp dir (hard-linking the good ones from the
        current copy), verify, then publish it in place of ``final``."""
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        todo = [rel for rel in bundle.files if rel not in good]
        # Links to the good files cost no space; what is downloaded does.
        needed = _disk_bytes([bundle.files[rel].size for rel in todo] + [len(raw)], final.parent)
        _check_free_space(final, needed)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            report = self._fill(tmp, bundle, raw, final, todo)
            _publish(tmp, final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave partial files behind
            if _is_disk_full(e):
                raise CacheDiskFull(final, needed, _free_bytes(final.parent), while_writing=True) from e
            raise
        log.info(
            "synced %s/%s: fetched %d/%d files (%.1f MB)",
            bundle.name,
            bundle.version,
            len(todo),
            len(bundle.files),
            report.bytes_fetched / MB,
        )
        return report

    def _fill(self, tmp: Path, bundle: Bundle, raw: bytes, final: Path, todo: list[str]) -> SyncReport:
        prefix = keys.model_prefix(bundle.name, bundle.version)
        tmp.mkdir(parents=True)
        for rel in bundle.files:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel not in todo:
                os.link(final / rel, dst)  # verified a moment ago under the same lock
        t0 = time.perf_counter()
        # Verify each file the moment it lands, while the others still download.
        with ThreadPoolExecutor(max_workers=HASH_THREADS) as hashers:
            digests: dict[str, Future[str]] = {}
            self._transfer_all(
                "download",
                {rel: (tmp / rel, prefix + rel) for rel in todo},
                on_file_done=lambda rel: digests.__setitem__(rel, hashers.submit(sha256_file, tmp / rel)),
            )
            t1 = time.perf_counter()
            bad = [rel for rel in todo if digests[rel].result() != bundle.files[rel].sha256]
        if bad:
            raise BundleCorrupt(f"{bundle.name}/{bundle.version}: sha256 mismatch after download: {bad}")
        (tmp / BUNDLE_FILE).write_bytes(raw)
        return SyncReport(
            path=final,
            bundle=bundle,
            warm=False,
            files_fetched=todo,
            bytes_fetched=sum(bundle.files[rel].size for rel in todo),
            # verify: the part of hashing that did not overlap the downloads
            seconds={"download": t1 - t0, "verify": time.perf_counter() - t1},
        )


def _done_hook(name: str, fn: Callable[[str], None] | None) -> list[Any] | None:
    if fn is None:
        return None
    from s3transfer.subscribers import BaseSubscriber

    class _OnDone(BaseSubscriber):
        def on_done(self, future: Any, **kwargs: Any) -> None:
            try:
                future.result()
            except Exception:
                return  # failed transfers are retried; only complete files are handed on
            fn(name)

    return [_OnDone()]


# -- integrity ---------------------------------------------------------------------------------


def _verified_files(directory: Path, bundle: Bundle) -> set[str]:
    """The files of ``bundle`` present in ``directory`` with the size and sha256 bundle.json gives.
    Missing or wrong-size files are not hashed; the rest are, in parallel."""
    candidates = [rel for rel, entry in bundle.files.items() if _size(directory / rel) == entry.size]
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        digests = pool.map(lambda rel: _sha256_or_none(directory / rel), candidates)
        return {rel for rel, digest in zip(candidates, digests, strict=True) if digest == bundle.files[rel].sha256}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else -1
    except OSError:
        return -1


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:  # EIO from a failing disk is corruption too: download the file again
        return None


def _manifest_matches(directory: Path, raw: bytes) -> bool:
    try:
        return (directory / BUNDLE_FILE).read_bytes() == raw
    except OSError:
        return False


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


# -- disk space --------------------------------------------------------------------------------


def _disk_bytes(sizes: list[int], directory: Path) -> int:
    """Space that files of these sizes take there: each occupies whole blocks."""
    block = os.statvfs(directory).f_frsize or 4096
    return sum(-(-size // block) * block for size in sizes)


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _check_free_space(final: Path, needed: int) -> None:
    """Refuse before downloading what cannot fit, rather than fail minutes in with a full disk."""
    free = _free_bytes(final.parent)
    if needed > free:
        raise CacheDiskFull(final, needed, free)


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


# -- stale temp entries ------------------------------------------------------------------------


def _lock_path(name_dir: Path, version: str) -> Path:
    return name_dir / f".{version}.lock"


def remove_stale_temps(root: Path, holding: Path) -> list[Path]:
    """Remove the temp entries of syncs that died, under every bundle name in ``root``; return them.
    ``holding`` is the version dir whose lock the caller holds (its temps need no lock probe)."""
    removed = []
    for entry, version, pid in _temp_entries(root):
        if not _abandoned(entry, pid):
            continue
        held = entry.parent / version == holding
        try:
            with contextlib.nullcontext(True) if held else _lock_if_free(entry.parent, version) as free:
                if free:
                    _remove(entry)
                    removed.append(entry)
        except OSError as e:  # housekeeping: never the reason a sync fails
            log.warning("could not clean up %s: %s", entry, e)
    if removed:
        log.info("removed stale model cache temp entries: %s", [str(p) for p in removed])
    return removed


def _temp_entries(root: Path) -> Iterable[tuple[Path, str, int]]:
    """(entry, version, pid) for each temp entry under root/<name>/."""
    if not root.is_dir():
        return
    for name_dir in root.iterdir():
        if name_dir.is_dir() and not name_dir.is_symlink():
            for entry in name_dir.iterdir():
                if m := _TEMP_ENTRY.match(entry.name):
                    yield entry, m["version"], int(m["pid"])


def _abandoned(entry: Path, pid: int) -> bool:
    """Its writing process is gone, or it is too old to be anyone's (pid reused, other namespace)."""
    if _pid_gone(pid):
        return True
    try:
        return time.time() - entry.lstat().st_mtime > STALE_AGE_S
    except FileNotFoundError:
        return False


def _pid_gone(pid: int) -> bool:
    if pid <= 0:  # never a writer's pid; and os.kill(0, ...) would address our own process group
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


@contextlib.contextmanager
def _lock_if_free(name_dir: Path, version: str) -> Iterator[bool]:
    """Hold the version's lock if nobody does (yield True); yield False, without waiting, if taken."""
    with _lock_path(name_dir, version).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
