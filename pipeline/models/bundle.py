"""Model bundles: a directory with ``bundle.json`` plus every file the worker needs.

``bundle.json`` is the bundle's manifest: what the files are (F5-TTS backbone architecture and
checkpoint, vocab, Vocos vocoder, ONNX aligner, optional ASR model) and each file's size and
sha256, so a copy can be verified anywhere. The same code path loads a tiny random test bundle and
the real F5TTS_v1_Base: only ``bundle.json`` differs.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.jobs.contract import utcnow

BUNDLE_FILE = "bundle.json"
_CHUNK = 8 * 1024 * 1024


class MelSpec(BaseModel):
    """Must equal f5-tts's inference constants (utils_infer), which the library hard-codes."""

    target_sample_rate: int = 24000
    n_mel_channels: int = 100
    hop_length: int = 256
    win_length: int = 1024
    n_fft: int = 1024
    mel_spec_type: Literal["vocos"] = "vocos"


class TtsSpec(BaseModel):
    backbone: Literal["DiT", "UNetT"] = "DiT"
    arch: dict[str, Any] = Field(description="Keyword arguments of the backbone class (a configs/*.yaml arch).")
    checkpoint: str
    vocab: str
    use_ema: bool = True
    mel_spec: MelSpec = Field(default_factory=MelSpec)


class VocoderSpec(BaseModel):
    type: Literal["vocos"] = "vocos"
    dir: str = Field(description="Holds config.yaml and pytorch_model.bin")


class AlignerSpec(BaseModel):
    type: Literal["ctc-forced-aligner-onnx"] = "ctc-forced-aligner-onnx"
    model: str = Field(description="ONNX model: input_values -> logits (T x 31), 20 ms frames")
    torch_dir: str | None = Field(
        default=None,
        description="The same CTC model as a transformers Wav2Vec2ForCTC save_pretrained() directory; "
        "GPU workers score audio with it on the GPU (absent: ONNX on the CPU)",
    )
    license: str = ""


class AsrSpec(BaseModel):
    type: Literal["transformers-whisper"] = "transformers-whisper"
    dir: str = Field(description="A transformers save_pretrained() directory (model + processor)")


class FileEntry(BaseModel):
    size: int
    sha256: str


class Bundle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    name: str
    version: str
    created_at: datetime = Field(default_factory=utcnow)
    random_weights: bool = False
    description: str = ""
    # What the model speaks (ISO 639-3). F5TTS_v1_Base was trained on Emilia's English and Chinese;
    # a bundle without the field (written before it existed) is taken to be such a model.
    languages: list[str] = Field(default_factory=lambda: ["eng", "zho"])
    tts: TtsSpec
    vocoder: VocoderSpec
    aligner: AlignerSpec
    asr: AsrSpec | None = None
    files: dict[str, FileEntry] = Field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> Bundle:
        return cls.model_validate_json((directory / BUNDLE_FILE).read_bytes())

    def save(self, directory: Path) -> None:
        (directory / BUNDLE_FILE).write_text(self.model_dump_json(indent=2) + "\n")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def inventory(directory: Path) -> dict[str, FileEntry]:
    """Size and sha256 of every file under ``directory`` except bundle.json and dotfiles."""
    out: dict[str, FileEntry] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if not path.is_file() or rel == BUNDLE_FILE or any(p.startswith(".") for p in rel.split("/")):
            continue
        out[rel] = FileEntry(size=path.stat().st_size, sha256=sha256_file(path))
    return out


def content_version(files: dict[str, FileEntry]) -> str:
    """A version derived from the files: identical content, identical version (idempotent pushes)."""
    digest = hashlib.sha256(json.dumps({k: v.sha256 for k, v in files.items()}, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def verify(directory: Path, bundle: Bundle) -> list[str]:
    """Return the files that are missing or do not match bundle.json (empty list: all good)."""
    bad = []
    for rel, entry in bundle.files.items():
        path = directory / rel
        if not path.is_file() or path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            bad.append(rel)
    return bad
