"""The S3 model cache: seeding through the real huggingface_hub code (offline, against a hub cache
this test lays out), push/verify, one copy per host shared by concurrent workers, corruption on
disk, a full disk and the temp dirs of dead syncs."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.models import cache as cache_module
from pipeline.models.bundle import BUNDLE_FILE, Bundle, sha256_file, verify
from pipeline.models.cache import CacheDiskFull, ModelCache
from pipeline.models.seed import ALIGNER_FILE, ALIGNER_REPO, ALIGNER_TORCH_REPO, ASR_REPO, CHECKPOINTS, VOCODER_REPO
from pipeline.models.tiny import TINY_ARCH
from tests.helpers import (
    BUCKET,
    REF_TEXT,
    TTS,
    aws,
    get_json,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
)

pytestmark = pytest.mark.integration

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_put(hub: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay files out the way huggingface_hub caches them: refs/main -> snapshots/<commit>/<path>."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    for path_in_repo, src in files.items():
        dst = root / "snapshots" / COMMIT / path_in_repo
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def hub_cache(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding the tiny models under the real repo ids and file names."""
    hub = tmp_path_factory.mktemp("hf-hub")
    ckpt = CHECKPOINTS["F5TTS_v1_Base"]
    _hub_put(hub, ckpt.repo, {ckpt.path: tiny_bundle / "f5" / "model.safetensors"})
    _hub_put(hub, VOCODER_REPO, {f: tiny_bundle / "vocoder" / f for f in ("config.yaml", "pytorch_model.bin")})
    _hub_put(hub, ALIGNER_REPO, {ALIGNER_FILE: tiny_bundle / "aligner" / "model.onnx"})
    _hub_put(hub, ALIGNER_TORCH_REPO, {p.name: p for p in (tiny_bundle / "aligner" / "hf").iterdir()})
    _hub_put(hub, ASR_REPO, {p.name: p for p in (tiny_bundle / "asr").iterdir()})
    return hub


def test_seed_through_the_offline_hub_then_a_job_runs_on_the_seeded_bundle(
    make_stack: Any, hub_cache: Path, s3: Any, tmp_path: Path
) -> None:
    env = make_stack("models-seed")
    config = tmp_path / "tiny.yaml"  # the tiny checkpoint's architecture, in f5-tts configs/*.yaml form
    config.write_text(
        yaml.safe_dump({"model": {"backbone": "DiT", "arch": TINY_ARCH, "mel_spec": {"mel_spec_type": "vocos"}}})
    )
    hub_env = {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(tmp_path / "hf-home")}
    out = tmp_path / "seeded"
    run = subprocess.run(
        [TTS, "model", "seed", "--name", "F5TTS_v1_Base", "--config", str(config), "--out", str(out)],
        env=hub_env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    bundle = Bundle.load(out)
    assert bundle.name == "F5TTS_v1_Base" and not bundle.random_weights
    assert bundle.tts.checkpoint == "f5/model_1250000.safetensors" and bundle.asr is not None
    assert bundle.aligner.torch_dir == "aligner/hf" and (out / "aligner" / "hf" / "config.json").is_file()
    assert "pushed to s3://models-seed/models/F5TTS_v1_Base/" in run.stdout
    listed = subprocess.run([TTS, "model", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"F5TTS_v1_Base\t{bundle.version}" in listed

    # The real hub code refuses what the offline cache lacks: no silent network use.
    missing = subprocess.run(
        [TTS, "model", "seed", "--name", "F5TTS_Base", "--config", str(config), "--out", str(tmp_path / "x")],
        env=hub_env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0

    # A worker on the seeded bundle (TTS_MODEL_NAME's default) completes a job, with ASR from it.
    aws(env, "s3", "cp", str(reference_voice_path()), "s3://models-seed/voices/alice.wav")
    worker_env = {k: v for k, v in env.items() if k != "TTS_MODEL_NAME"}
    w = start_worker(worker_env, tmp_path / "w.log")
    try:
        wait_ready(w)
        s3.put_object(
            Bucket="models-seed",
            Key="inbox/seeded-1.json",
            Body=json.dumps({"text": "Seeded.", "voice": "voices/alice.wav", "nfe_step": 2}).encode(),
        )
        status = wait_for_state(s3, "seeded-1", bucket="models-seed", worker=w)
        assert status["state"] == "COMPLETED", status
        result = get_json(s3, "results/seeded-1.json", "models-seed")
        assert (result["model"]["name"], result["model"]["version"]) == ("F5TTS_v1_Base", bundle.version)
        assert result["ref_text_source"] == "asr"
    finally:
        assert stop_worker(w) == 0


def test_verify_a_bundle_and_detect_tampering(aws_env: dict[str, str], pushed_bundle: Path, tmp_path: Path) -> None:
    ok = subprocess.run([TTS, "model", "verify"], env=aws_env, capture_output=True, text=True)
    assert ok.returncode == 0 and "all sha256 match" in ok.stdout
    copy = tmp_path / "b"
    shutil.copytree(pushed_bundle, copy)
    (copy / "vocoder" / "config.yaml").write_text("# tampered\n")
    bad = subprocess.run([TTS, "model", "verify", str(copy)], env=aws_env, capture_output=True, text=True)
    assert bad.returncode == 1 and "vocoder/config.yaml" in bad.stderr
    refused = subprocess.run([TTS, "model", "push", str(copy)], env=aws_env, capture_output=True, text=True)
    assert refused.returncode == 1 and "do not match bundle.json" in refused.stderr


def test_concurrent_pulls_on_one_host_download_one_copy(
    aws_env: dict[str, str], pushed_bundle: Path, tmp_path: Path
) -> None:
    """Four processes sync the same bundle into one empty cache dir at once: the file lock makes one
    of them download, the others find it warm."""
    env = {**aws_env, "TTS_CACHE_DIR": str(tmp_path / "shared-cache")}

    def pull(_: int) -> dict[str, Any]:
        out = subprocess.run([TTS, "model", "pull"], env=env, capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(pull, range(4)))
    fetched = [len(r["files_fetched"]) for r in reports]
    assert sorted(fetched) == [0, 0, 0, len(Bundle.load(pushed_bundle).files)], reports
    assert sum(r["warm"] for r in reports) == 3
    ok = subprocess.run([TTS, "model", "verify", reports[0]["path"]], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_voice_library_transcribes_each_voice_once_across_jobs_and_workers(
    make_stack: Any, s3: Any, tmp_path: Path
) -> None:
    """A library voice without a transcript: the first job's worker runs ASR and stores the text in
    voice.json; a second job on a second worker process uses it and runs no ASR."""
    env = make_stack("voices-once")
    add = subprocess.run(
        [TTS, "voices", "add", "narrator", str(reference_voice_path())],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(add.stdout)["ref_text"] == ""
    listed = subprocess.run([TTS, "voices", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["name"] for line in listed.splitlines()] == ["narrator"]

    asr_runs = []
    for n in (1, 2):
        w = start_worker(env, tmp_path / f"w{n}.log")
        try:
            wait_ready(w)
            s3.put_object(
                Bucket="voices-once",
                Key=f"inbox/lib-{n}.json",
                Body=json.dumps({"text": f"Library job {n}.", "voice": "narrator", "nfe_step": 2}).encode(),
            )
            assert wait_for_state(s3, f"lib-{n}", bucket="voices-once", worker=w)["state"] == "COMPLETED"
            asr_runs.append(w.metrics().get("tts_asr_runs_total", 0))
        finally:
            assert stop_worker(w) == 0
    assert asr_runs == [1.0, 0.0]

    record = get_json(s3, "voices/narrator/voice.json", "voices-once")
    assert record["ref_text"] and record["ref_text_source"] == "asr" and record["transcribed_by"]
    first, second = (get_json(s3, f"results/lib-{n}.json", "voices-once") for n in (1, 2))
    assert (first["ref_text_source"], first["ref_text_from_asr"]) == ("asr", True)
    assert (second["ref_text_source"], second["ref_text_from_asr"]) == ("voice_library", True)
    assert second["ref_text"].strip() == record["ref_text"].strip() == first["ref_text"].strip()
    assert second["voice_key"] == "voices/narrator/audio.wav"

    # A transcript given by the user wins, and is never replaced by ASR.
    subprocess.run(
        [TTS, "voices", "add", "narrator", str(reference_voice_path()), "--ref-text", REF_TEXT],
        env=env,
        check=True,
        capture_output=True,
    )
    assert get_json(s3, "voices/narrator/voice.json", "voices-once")["ref_text_source"] == "user"
    rm = subprocess.run([TTS, "voices", "rm", "narrator"], env=env, capture_output=True, text=True)
    assert rm.returncode == 0 and get_json(s3, "voices/narrator/voice.json", "voices-once") is None


# -- the local cache: integrity, disk full, stale temp dirs ------------------------------------


def _leftovers(cache: ModelCache, name: str) -> list[str]:
    """Everything in the bundle name's cache dir but the lock files."""
    return sorted(p.name for p in (cache.root / name).iterdir() if not p.name.endswith(".lock"))


def test_a_same_size_same_mtime_corruption_is_detected_and_downloaded_again(
    aws_env: dict[str, str], pushed_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bit rot or tampering that keeps size and mtime: a stat check calls the copy good; the
    sha256 check on every start finds the file, downloads it again, and loads nothing corrupt."""
    bundle = Bundle.load(pushed_bundle)
    cache = ModelCache(BUCKET, tmp_path)
    cold = cache.sync(bundle.name, bundle.version)
    assert not cold.warm and sorted(cold.files_fetched) == sorted(bundle.files)
    assert cache.sync(bundle.name, bundle.version).warm

    rel = bundle.tts.checkpoint
    target = cold.path / rel
    before = target.stat()
    with target.open("r+b") as f:  # flip bytes in place: same inode, same size
        f.seek(before.st_size // 2)
        chunk = f.read(16)
        f.seek(before.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert sha256_file(target) != bundle.files[rel].sha256

    with caplog.at_level(logging.WARNING, logger=cache_module.__name__):
        repaired = cache.sync(bundle.name, bundle.version)
    assert not repaired.warm and repaired.files_fetched == [rel]  # the good files were kept
    assert verify(repaired.path, bundle) == []
    assert rel in caplog.text and "sha256" in caplog.text
    assert cache.sync(bundle.name, bundle.version).warm
    assert _leftovers(cache, bundle.name) == [bundle.version]


def test_too_little_free_space_fails_before_downloading_with_the_numbers(
    aws_env: dict[str, str], pushed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = Bundle.load(pushed_bundle)
    cache = ModelCache(BUCKET, tmp_path)
    real_usage = shutil.disk_usage
    # The volume reports 4096 bytes free (the file system is real; only its free figure is not).
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=4096))
    with pytest.raises(CacheDiskFull) as failed:
        cache.sync(bundle.name, bundle.version)
    message = str(failed.value)
    assert str(cache.local_path(bundle.name, bundle.version)) in message
    assert f"needs {failed.value.needed} bytes" in message and "4096 bytes" in message and "are free" in message
    assert _fits(bundle, pushed_bundle, failed.value.needed) and failed.value.free == 4096
    assert _leftovers(cache, bundle.name) == []


def _fits(bundle: Bundle, directory: Path, needed: int) -> bool:
    """``needed`` is the bundle's bytes, each file rounded up to whole blocks (4 KiB to 64 KiB)."""
    exact = bundle.total_bytes + len((directory / BUNDLE_FILE).read_bytes())
    return exact <= needed <= exact + (len(bundle.files) + 1) * 64 * 1024


class _DiskFillsUp:
    """A file on a disk with ``room`` bytes left: writes land for real up to that, then ENOSPC."""

    def __init__(self, f: Any, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._f.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def test_enospc_while_writing_is_a_clear_error_and_leaves_no_partial_files(
    aws_env: dict[str, str], pushed_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free-space check passes, then the disk fills up half-way through the checkpoint."""
    from s3transfer.utils import OSUtils

    bundle = Bundle.load(pushed_bundle)
    real_open = OSUtils.open
    partial: list[str] = []

    def open_on_a_filling_disk(self: OSUtils, filename: str, mode: str) -> Any:
        f = real_open(self, filename, mode)  # s3transfer opens every file it downloads here
        # its temp name for f5/model.safetensors is f5/model.safetensors.<random>
        if "w" in mode and f"{Path(filename).parent.name}/{Path(filename).name}".startswith(bundle.tts.checkpoint):
            partial.append(filename)
            return _DiskFillsUp(f, room=bundle.files[bundle.tts.checkpoint].size // 2)
        return f

    monkeypatch.setattr(OSUtils, "open", open_on_a_filling_disk)
    cache = ModelCache(BUCKET, tmp_path)
    with pytest.raises(CacheDiskFull) as failed:
        cache.sync(bundle.name, bundle.version)
    message = str(failed.value)
    assert str(cache.local_path(bundle.name, bundle.version)) in message and "filled up while downloading" in message
    assert f"needs {failed.value.needed} bytes" in message and _fits(bundle, pushed_bundle, failed.value.needed)
    assert f"{failed.value.free} bytes" in message and failed.value.free > 0
    assert isinstance(failed.value.__cause__, OSError) and failed.value.__cause__.errno == errno.ENOSPC
    assert partial and not any(Path(p).exists() for p in partial)
    assert _leftovers(cache, bundle.name) == []

    monkeypatch.undo()  # space freed: the next start syncs normally
    assert verify(cache.sync(bundle.name, bundle.version).path, bundle) == []


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sync_removes_the_temp_dirs_of_dead_processes_only(
    aws_env: dict[str, str], pushed_bundle: Path, tmp_path: Path
) -> None:
    bundle = Bundle.load(pushed_bundle)
    cache = ModelCache(BUCKET, tmp_path)
    name_dir = cache.root / bundle.name
    dead, alive = _dead_pid(), os.getpid()
    entries = {
        "dead download": name_dir / f".{bundle.version}.tmp-{dead}",
        "dead delete": name_dir / f".1.0.old-{dead}",
        "live download": name_dir / f".2.0.tmp-{alive}",
    }
    for entry in entries.values():
        (entry / "f5").mkdir(parents=True)
        (entry / "f5" / "model.safetensors.a1b2c3d4").write_bytes(b"partial")
    report = cache.sync(bundle.name, bundle.version)
    assert not entries["dead download"].exists() and not entries["dead delete"].exists()
    assert (entries["live download"] / "f5" / "model.safetensors.a1b2c3d4").read_bytes() == b"partial"
    assert verify(report.path, bundle) == []
    assert _leftovers(cache, bundle.name) == sorted([bundle.version, entries["live download"].name])
