"""The GPU image really builds: its runtime stage installs wheels only (scripts/image_lock.py).

No Docker engine here, so the image is not built; what would break it is checked instead: the
exact install set must resolve to wheels for the image's Python and platform on the package index
(pip, metadata only), sdists must be built in the builder stage, and the lock must be current.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_lock", ROOT / "scripts" / "image_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["image_lock"] = module
    spec.loader.exec_module(module)
    return module


def test_the_image_install_set_is_consistent_and_installs_as_wheels(image_lock: ModuleType) -> None:
    assert image_lock.check() == []


def test_the_check_fails_on_a_distribution_without_a_wheel(image_lock: ModuleType) -> None:
    problems, _ = image_lock._resolve_wheels({"encodec": "0.1.1"})  # sdist only on PyPI
    assert problems and "encodec" in " ".join(problems)


def test_the_check_fails_on_a_compiler_in_the_runtime_stage(
    image_lock: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = tmp_path / "Dockerfile"
    text = (ROOT / "Dockerfile").read_text()
    dockerfile.write_text(
        text.replace("FROM python AS runtime\n", "FROM python AS runtime\nRUN apt-get install -y g++\n")
    )
    monkeypatch.setattr(image_lock, "DOCKERFILE", dockerfile)
    assert any("compiler" in p for p in image_lock._dockerfile_problems())


def test_the_check_fails_on_an_incomplete_or_inconsistent_lock(image_lock: ModuleType) -> None:
    lock = image_lock.read_lock()
    requires = {"tts-pipeline": image_lock._project_requires(), "torch": ["filelock", "sympy>=1.13.3"]}
    assert image_lock._unsatisfied(lock, requires) == []
    missing = {n: v for n, v in lock.items() if n != "filelock"}
    assert any("filelock" in p for p in image_lock._unsatisfied(missing, requires))
    assert any("torch" in p for p in image_lock._unsatisfied({**lock, "torch": "2.10.0"}, requires))
