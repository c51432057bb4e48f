"""Run a real LocalStack as a plain process ("host mode", no Docker) for local runs and tests.

LocalStack lives in its own virtualenv (``localstack/.venv``, pinned by
``localstack/requirements.txt``) because its runtime pins boto3/awscli versions that clash with
aioboto3. The init hooks in ``localstack/init/ready.d/`` are copied into the instance's
``FILESYSTEM_ROOT`` so host mode and the official Docker image run the same hooks.

This module is dev tooling: the worker never imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime import procs

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALSTACK_DIR = REPO_ROOT / "localstack"
DEFAULT_STATE_DIR = REPO_ROOT / ".localstack"
SERVICES = "s3,sqs,sns,sts,iam,cloudformation"


class LocalStackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Instance:
    pid: int
    port: int
    state_dir: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def python_bin() -> Path:
    explicit = os.environ.get("TTS_LOCALSTACK_PYTHON")
    return Path(explicit) if explicit else LOCALSTACK_DIR / ".venv" / "bin" / "python"


def aws_cli() -> str:
    """The AWS CLI installed in LocalStack's virtualenv (v1, pinned with it), else the one on PATH."""
    local = python_bin().parent / "aws"
    if local.exists():
        return str(local)
    found = shutil.which("aws")
    if not found:
        raise LocalStackError("no aws CLI: run `make localstack-venv` or install awscli")
    return found


def _pid_file(state_dir: Path) -> Path:
    return state_dir / "localstack.json"


def running(state_dir: Path = DEFAULT_STATE_DIR) -> Instance | None:
    try:
        info = json.loads(_pid_file(state_dir).read_text())
    except (OSError, ValueError):
        return None
    inst = Instance(pid=int(info["pid"]), port=int(info["port"]), state_dir=state_dir)
    return inst if procs.alive(inst.pid) else None


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _prepare(state_dir: Path) -> Path:
    fs = state_dir / "fs"
    hooks = fs / "etc" / "localstack" / "init" / "ready.d"
    shutil.rmtree(hooks, ignore_errors=True)
    hooks.mkdir(parents=True)
    for hook in sorted((LOCALSTACK_DIR / "init" / "ready.d").iterdir()):
        dst = hooks / hook.name
        shutil.copyfile(hook, dst)  # follows the symlink to pipeline/ops/bootstrap.py
        dst.chmod(0o755)
    for sub in ("config", "home", "tmp"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    return fs


def _env(state_dir: Path, fs: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))}
    env.update(
        {
            "OVERRIDE_IN_DOCKER": "0",  # this machine looks like a container to LocalStack
            "FILESYSTEM_ROOT": str(fs),
            "CONFIG_DIR": str(state_dir / "config"),
            "HOME": str(state_dir / "home"),
            # LocalStack keeps S3 data under the system temp dir whatever FILESYSTEM_ROOT says;
            # a private TMPDIR keeps two instances (demo + tests) from sharing buckets.
            "TMPDIR": str(state_dir / "tmp"),
            "SERVICES": SERVICES,
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "GATEWAY_SERVER": "hypercorn",  # the default server ignores the host part
            "LOCALSTACK_HOST": f"localhost:{port}",
            "DNS_ADDRESS": "0",
            "DISABLE_EVENTS": "1",
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "SQS_ENDPOINT_STRATEGY": "path",
            # For the bootstrap hook, which runs inside LocalStack's process.
            "TTS_BOOTSTRAP_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "TTS_BUCKET": os.environ.get("TTS_BUCKET", "tts-jobs"),
            "TTS_QUEUE": os.environ.get("TTS_QUEUE", "tts-jobs"),
        }
    )
    if "S3_SKIP_SIGNATURE_VALIDATION" in os.environ:
        env["S3_SKIP_SIGNATURE_VALIDATION"] = os.environ["S3_SKIP_SIGNATURE_VALIDATION"]
    return env


def start(port: int = 4566, state_dir: Path = DEFAULT_STATE_DIR, timeout_s: float = 120.0) -> Instance:
    """Start LocalStack (or reuse the one this state dir already runs) and wait until its init
    hooks have completed."""
    state_dir = state_dir.resolve()
    existing = running(state_dir)
    if existing:
        _wait_ready(existing, timeout_s, proc=None)
        return existing
    py = python_bin()
    if not py.exists():
        raise LocalStackError(f"{py} not found: run `make localstack-venv` (LocalStack's own virtualenv)")
    if _get_json(f"http://127.0.0.1:{port}/_localstack/health") is not None:
        raise LocalStackError(f"port {port} already serves a LocalStack not started from {state_dir}")
    state_dir.mkdir(parents=True, exist_ok=True)
    fs = _prepare(state_dir)
    log_file = (state_dir / "localstack.log").open("ab")
    proc = subprocess.Popen(
        [str(py), "-m", "localstack.runtime.main"],
        env=_env(state_dir, fs, port),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the CLI that started it; stopped by pid
    )
    inst = Instance(pid=proc.pid, port=port, state_dir=state_dir)
    _pid_file(state_dir).write_text(json.dumps({"pid": proc.pid, "port": port}))
    try:
        _wait_ready(inst, timeout_s, proc=proc)
    except BaseException:
        stop(state_dir)
        raise
    return inst


def _wait_ready(inst: Instance, timeout_s: float, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"{inst.endpoint}/_localstack/init/ready"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalStackError(f"LocalStack exited with {proc.returncode}:\n{log_tail(inst.state_dir)}")
        ready = _get_json(url)
        if ready and ready.get("completed"):
            failed = [s for s in ready.get("scripts", []) if s.get("state") == "ERROR"]
            if failed:
                raise LocalStackError(f"init hook failed: {failed}\n{log_tail(inst.state_dir)}")
            return
        time.sleep(0.25)
    raise LocalStackError(f"LocalStack not ready after {timeout_s:.0f}s:\n{log_tail(inst.state_dir)}")


def log_tail(state_dir: Path, lines: int = 40) -> str:
    try:
        return "\n".join((state_dir / "localstack.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(state_dir: Path = DEFAULT_STATE_DIR, timeout_s: float = 20.0) -> bool:
    """Stop the instance started from ``state_dir``; True if one was running."""
    state_dir = state_dir.resolve()
    inst = running(state_dir)
    _pid_file(state_dir).unlink(missing_ok=True)
    if inst is None:
        return False
    try:
        os.killpg(inst.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not procs.alive(inst.pid) or _reap(inst.pid):
            return True
        time.sleep(0.2)
    os.killpg(inst.pid, signal.SIGKILL)
    _reap(inst.pid)
    return True


def _reap(pid: int) -> bool:
    """Collect the exit status if the process is our child (avoids waiting on a zombie)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid
