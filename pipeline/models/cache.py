"""The S3 model cache: push bundles to ``models/<name>/<version>/`` and sync them to a local dir.

Push writes every file first and ``bundle.json`` last, then the ``models/<name>/latest`` pointer,
so a reader that finds a bundle.json finds a complete bundle. Sync downloads in parallel with
s3transfer, verifies sha256 against bundle.json, publishes with a directory rename (never a
half-written cache), and holds a file lock so several workers on one host share one copy. A warm
cache (bundle.json identical, files stamped with the size/mtime they had when verified) downloads
nothing but bundle.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from pipeline import aws, keys
from pipeline.config import Settings, sse_params
from pipeline.models.bundle import BUNDLE_FILE, Bundle, sha256_file, verify

log = logging.getLogger(__name__)

STAMP_FILE = ".verified.json"
MB = 1024 * 1024


class BundleNotFound(LookupError):
    pass


class BundleCorrupt(RuntimeError):
    pass


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
                    raise next(iter(errors.values()))

    # -- local -------------------------------------------------------------------------------

    def local_path(self, name: str, version: str) -> Path:
        return self.root / name / version

    @contextlib.contextmanager
    def _lock(self, name: str, version: str) -> Iterator[None]:
        lock_path = self.root / name / f".{version}.lock"
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
            if _is_warm(final, raw, bundle):
                seconds["download"] = seconds["verify"] = 0.0
                return SyncReport(path=final, bundle=bundle, warm=True, seconds=seconds)
            report = self._fetch(bundle, raw, final)
        report.seconds = {**seconds, **report.seconds}
        return report

    def _fetch(self, bundle: Bundle, raw: bytes, final: Path) -> SyncReport:
        prefix = keys.model_prefix(bundle.name, bundle.version)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        todo: list[str] = []
        t0 = time.perf_counter()
        for rel, entry in bundle.files.items():
            old = final / rel
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            # Reuse good files from an earlier (partial or corrupted) copy; fetch the rest.
            if old.is_file() and old.stat().st_size == entry.size and sha256_file(old) == entry.sha256:
                os.link(old, dst)
            else:
                todo.append(rel)
        # Verify each file the moment it lands, while the others still download.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as hashers:
            digests: dict[str, Future[str]] = {}
            self._transfer_all(
                "download",
                {rel: (tmp / rel, prefix + rel) for rel in todo},
                on_file_done=lambda rel: digests.__setitem__(rel, hashers.submit(sha256_file, tmp / rel)),
            )
            t1 = time.perf_counter()
            bad = [rel for rel in todo if digests[rel].result() != bundle.files[rel].sha256]
        if bad:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleCorrupt(f"{bundle.name}/{bundle.version}: sha256 mismatch after download: {bad}")
        (tmp / BUNDLE_FILE).write_bytes(raw)
        _write_stamp(tmp, bundle)
        t2 = time.perf_counter()
        _publish(tmp, final)
        fetched = sum(bundle.files[rel].size for rel in todo)
        log.info(
            "synced %s/%s: fetched %d/%d files (%.1f MB)",
            bundle.name,
            bundle.version,
            len(todo),
            len(bundle.files),
            fetched / MB,
        )
        return SyncReport(
            path=final,
            bundle=bundle,
            warm=False,
            files_fetched=todo,
            bytes_fetched=fetched,
            # verify: the part of hashing that did not overlap the downloads
            seconds={"download": t1 - t0, "verify": t2 - t1},
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


def _stat_map(directory: Path, bundle: Bundle) -> dict[str, list[int]]:
    out = {}
    for rel in bundle.files:
        st = (directory / rel).stat()
        out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _write_stamp(directory: Path, bundle: Bundle) -> None:
    (directory / STAMP_FILE).write_text(json.dumps(_stat_map(directory, bundle)))


def _is_warm(directory: Path, raw: bytes, bundle: Bundle) -> bool:
    """Same bundle.json and every file as it was when last verified (size and mtime)."""
    try:
        if (directory / BUNDLE_FILE).read_bytes() != raw:
            return False
        return json.loads((directory / STAMP_FILE).read_text()) == _stat_map(directory, bundle)
    except (OSError, ValueError):
        return False


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
