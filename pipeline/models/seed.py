"""Seed a model bundle from the Hugging Face hub: the one step that touches a hub.

``tts-pipeline model seed`` downloads the real weights with ``huggingface_hub`` (so its cache,
``HF_HUB_CACHE``/``HF_HOME``, ``HF_HUB_OFFLINE`` and tokens all work as usual), copies them into a
bundle directory with a ``bundle.json``, and pushes it to the S3 model cache. Every worker cold start
after that is hub-free.

Sources (each overridable):

- F5-TTS checkpoint ``SWivid/F5-TTS:<name>/model_<step>.safetensors``; architecture from f5-tts's
  packaged ``configs/<name>.yaml`` (or ``--config`` for a fine-tune); vocab: f5-tts's packaged
  ``infer/examples/vocab.txt``, which is what ``F5TTS()`` uses for these checkpoints.
- Vocoder ``charactr/vocos-mel-24khz`` (``config.yaml`` + ``pytorch_model.bin``).
- Aligner: the ONNX model ctc-forced-aligner downloads by default (``deskpai/ctc_forced_aligner``,
  MMS-300m: licensed CC-BY-NC 4.0; swap it for commercial use), and the transformers weights of the
  model it is exported from (``MahmoudAshraf/mms-300m-1130-forced-aligner``) for GPU workers;
  without those (``--no-aligner-torch``, or not on the hub) GPU workers align on the CPU.
- ASR ``openai/whisper-large-v3-turbo`` (the model f5-tts uses for empty ``ref_text``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from typing import Any

import yaml

from pipeline.models.bundle import (
    AlignerSpec,
    AsrSpec,
    Bundle,
    MelSpec,
    TtsSpec,
    VocoderSpec,
    content_version,
    inventory,
)

VOCODER_REPO = "charactr/vocos-mel-24khz"
ALIGNER_REPO = "deskpai/ctc_forced_aligner"
ALIGNER_FILE = "04ac86b67129634da93aea76e0147ef3.onnx"
ALIGNER_LICENSE = "MMS-300m forced aligner, CC-BY-NC 4.0 (non-commercial)"
ALIGNER_TORCH_REPO = "MahmoudAshraf/mms-300m-1130-forced-aligner"
ALIGNER_TORCH_PATTERNS = ["config.json", "*.safetensors"]
ASR_REPO = "openai/whisper-large-v3-turbo"
ASR_PATTERNS = ["*.json", "*.safetensors", "*.txt"]


@dataclass(frozen=True)
class Checkpoint:
    repo: str
    path: str


# The checkpoints f5-tts's own F5TTS() facade downloads for these names (api.py).
CHECKPOINTS = {
    "F5TTS_v1_Base": Checkpoint("SWivid/F5-TTS", "F5TTS_v1_Base/model_1250000.safetensors"),
    "F5TTS_Base": Checkpoint("SWivid/F5-TTS", "F5TTS_Base/model_1200000.safetensors"),
    "E2TTS_Base": Checkpoint("SWivid/E2-TTS", "E2TTS_Base/model_1200000.safetensors"),
}


class SeedError(RuntimeError):
    pass


def architecture(name: str, config: Path | None = None) -> tuple[str, dict[str, Any], MelSpec]:
    """(backbone, arch kwargs, mel settings) from a configs/*.yaml file (packaged, or given)."""
    path = config or Path(str(package_files("f5_tts").joinpath(f"configs/{name}.yaml")))
    if not path.is_file():
        raise SeedError(f"no architecture config for {name!r}; pass --config PATH (an f5-tts configs/*.yaml)")
    model = yaml.safe_load(path.read_text())["model"]
    mel = MelSpec(**{k: v for k, v in model["mel_spec"].items() if k in MelSpec.model_fields})
    return model["backbone"], dict(model["arch"]), mel


# The F5-TTS model cards: F5TTS_v1_Base, F5TTS_Base and E2TTS_Base were trained on Emilia's
# Chinese and English speech. A fine-tune in another language says so with `model seed --languages`.
MODEL_CARD_LANGUAGES = ("eng", "zho")


def seed(
    name: str,
    out: Path,
    *,
    config: Path | None = None,
    checkpoint: Checkpoint | None = None,
    with_asr: bool = True,
    with_aligner_torch: bool = True,
    cache_dir: Path | None = None,
    languages: tuple[str, ...] = MODEL_CARD_LANGUAGES,
) -> Bundle:
    from huggingface_hub import hf_hub_download, snapshot_download

    ckpt = checkpoint or CHECKPOINTS.get(name)
    if ckpt is None:
        raise SeedError(f"unknown model {name!r}: known {sorted(CHECKPOINTS)}; or pass --checkpoint REPO:PATH")
    backbone, arch, mel = architecture(name, config)
    out.mkdir(parents=True, exist_ok=True)

    def fetch(repo: str, filename: str, dest: Path) -> None:
        src = hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)  # a real copy: the bundle must not point into the hub cache

    ckpt_name = Path(ckpt.path).name
    fetch(ckpt.repo, ckpt.path, out / "f5" / ckpt_name)
    shutil.copyfile(str(package_files("f5_tts").joinpath("infer/examples/vocab.txt")), out / "f5" / "vocab.txt")
    for f in ("config.yaml", "pytorch_model.bin"):
        fetch(VOCODER_REPO, f, out / "vocoder" / f)
    fetch(ALIGNER_REPO, ALIGNER_FILE, out / "aligner" / "model.onnx")
    if with_aligner_torch:
        snap = Path(
            snapshot_download(repo_id=ALIGNER_TORCH_REPO, allow_patterns=ALIGNER_TORCH_PATTERNS, cache_dir=cache_dir)
        )
        if not (snap / "config.json").is_file() or not list(snap.glob("*.safetensors")):
            raise SeedError(f"{ALIGNER_TORCH_REPO} has no config.json + safetensors; pass --no-aligner-torch")
        shutil.copytree(snap, out / "aligner" / "hf", dirs_exist_ok=True)
    if with_asr:
        snap = Path(snapshot_download(repo_id=ASR_REPO, allow_patterns=ASR_PATTERNS, cache_dir=cache_dir))
        shutil.copytree(snap, out / "asr", dirs_exist_ok=True)

    files = inventory(out)
    bundle = Bundle(
        name=name,
        version=content_version(files),
        random_weights=False,
        description=f"{name} seeded from the Hugging Face hub ({ckpt.repo}:{ckpt.path}, {VOCODER_REPO}, "
        f"{ALIGNER_REPO}{', ' + ALIGNER_TORCH_REPO if with_aligner_torch else ''}"
        f"{', ' + ASR_REPO if with_asr else ''})",
        tts=TtsSpec(backbone=backbone, arch=arch, checkpoint=f"f5/{ckpt_name}", vocab="f5/vocab.txt", mel_spec=mel),
        vocoder=VocoderSpec(dir="vocoder"),
        aligner=AlignerSpec(
            model="aligner/model.onnx",
            torch_dir="aligner/hf" if with_aligner_torch else None,
            license=ALIGNER_LICENSE,
        ),
        asr=AsrSpec(dir="asr") if with_asr else None,
        languages=list(languages),
        files=files,
    )
    bundle.save(out)
    return bundle
