"""Shared fixtures: the tiny model bundle (built by the project's own CLI), an engine and an
aligner on it, a real LocalStack process, and a real worker process. Nothing here is mocked."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.ops import localstack_host
from tests.helpers import (
    BUCKET,
    QUEUE,
    TEST_DEVICE,
    TTS,
    Holds,
    WorkerProcess,
    free_port,
    start_worker,
    stop_worker,
    wait_ready,
)

if TYPE_CHECKING:
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine


# The longest files first: with two test processes (`make test`), a long file that started last
# would leave one process idle while the other finishes it. Measured on 2 cores (--durations).
LONGEST_FIRST = (
    "tests/sweep/test_sweep.py",
    "tests/faults/test_faults.py",
    "tests/faults/test_defects.py",
    "tests/nemesis/test_nemesis.py",
    "tests/integration/test_model_paths.py",
    "tests/integration/test_hostile.py",
    "tests/integration/test_longform.py",
    "tests/integration/test_console.py",
    "tests/faults/test_policies.py",
)


# Worker and CLI processes the tests start run this checkout's code, also where the virtualenv's
# editable install points at another one (a git worktree sharing .venv).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__file__).resolve().parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = config.rootpath

    def key(item: pytest.Item) -> int:
        return rank.get(item.path.relative_to(root).as_posix(), len(rank))

    items.sort(key=key)  # stable: within a file, and among the rest, collection order stays


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session with `tts-pipeline model build-tiny`, the command users run."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    subprocess.run([TTS, "model", "build-tiny", str(out)], check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def engine(tiny_bundle: Path) -> F5Engine:
    from pipeline.tts.engine import F5Engine

    return F5Engine.load(tiny_bundle, device=TEST_DEVICE)


@pytest.fixture(scope="session")
def aligner(tiny_bundle: Path) -> Iterator[Aligner]:
    from pipeline.models.bundle import Bundle
    from pipeline.tts.align import Aligner

    a = Aligner(tiny_bundle / Bundle.load(tiny_bundle).aligner.model)
    yield a
    a.close()


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localstack_host.Instance]:
    """A LocalStack of our own on a free port (a demo instance on 4566 is left alone)."""
    state = tmp_path_factory.mktemp("localstack")
    inst = localstack_host.start(port=free_port(), state_dir=state)
    yield inst
    localstack_host.stop(state)


@pytest.fixture(scope="session")
def aws_env(localstack: localstack_host.Instance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for every process that talks to LocalStack (also applied to this one)."""
    env = {
        "AWS_ENDPOINT_URL": localstack.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TTS_BUCKET": BUCKET,
        "TTS_QUEUE": QUEUE,
        "TTS_MODEL_NAME": "f5tts-tiny",
        "TTS_CACHE_DIR": str(tmp_path_factory.mktemp("model-cache")),
        # Explicit, so that a GPU box runs the same suite as CI unless asked otherwise.
        "TTS_DEVICE": TEST_DEVICE,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {**os.environ, **env}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3(aws_env: dict[str, str]) -> Any:
    from pipeline.cloud.aws import sync_client

    return sync_client("s3")


@pytest.fixture(scope="session")
def sqs(aws_env: dict[str, str]) -> Any:
    from pipeline.cloud.aws import sync_client

    return sync_client("sqs")


@pytest.fixture(scope="session")
def pushed_bundle(aws_env: dict[str, str], tiny_bundle: Path) -> Path:
    subprocess.run([TTS, "model", "push", str(tiny_bundle)], env=aws_env, check=True, capture_output=True)
    return tiny_bundle


@pytest.fixture(scope="session")
def worker(
    aws_env: dict[str, str], pushed_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One long-running worker shared by the end-to-end tests (the model must load once)."""
    w = start_worker(aws_env, tmp_path_factory.mktemp("worker") / "worker.log")
    wait_ready(w)
    yield w
    code = stop_worker(w)
    assert code == 0, f"worker did not shut down cleanly on SIGTERM ({code}):\n{w.log()[-4000:]}"


@pytest.fixture
def holds(tmp_path: Path) -> Holds:
    """Job holds for this test's workers (pass ``**holds.settings`` when starting them)."""
    return Holds(tmp_path / "faults")


@pytest.fixture(scope="session")
def make_stack(aws_env: dict[str, str], tiny_bundle: Path) -> Any:
    """Factory: a bucket + queue + DLQ of its own (so a test controls which workers see its jobs),
    bootstrapped and holding the tiny bundle. Returns the environment for processes using it."""

    def make(name: str, **settings: str) -> dict[str, str]:
        env = {**aws_env, "TTS_BUCKET": name, "TTS_QUEUE": name}
        env.update({f"TTS_{k.upper()}": str(v) for k, v in settings.items()})
        subprocess.run([TTS, "bootstrap"], env=env, check=True, capture_output=True)
        subprocess.run([TTS, "model", "push", str(tiny_bundle)], env=env, check=True, capture_output=True)
        return env

    return make
