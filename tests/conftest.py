"""Shared fixtures: the tiny model bundle (built by the project's own CLI) and a loaded engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from pipeline.tts.align import Aligner
    from pipeline.tts.engine import F5Engine

BIN = Path(sys.executable).parent
TTS = str(BIN / "tts-pipeline")
SAMPLE_RATE = 24000


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session with `tts-pipeline model build-tiny`, the command users run."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    subprocess.run([TTS, "model", "build-tiny", str(out)], check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def engine(tiny_bundle: Path) -> F5Engine:
    from pipeline.tts.engine import F5Engine

    return F5Engine.load(tiny_bundle, device="cpu")


@pytest.fixture(scope="session")
def aligner(tiny_bundle: Path) -> Aligner:
    from pipeline.models.bundle import Bundle
    from pipeline.tts.align import Aligner

    return Aligner(tiny_bundle / Bundle.load(tiny_bundle).aligner.model)


def reference_voice() -> tuple[np.ndarray, int, str]:
    """F5-TTS's own example reference (a real recording shipped in the f5-tts wheel) and its text."""
    from importlib.resources import files

    import soundfile as sf

    path = files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")
    wave, sr = sf.read(str(path), dtype="float32")
    return wave, sr, "Some call me nature, others call me mother nature."


def reference_voice_path() -> Path:
    from importlib.resources import files

    return Path(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")))
