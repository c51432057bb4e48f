"""Model bundles: the tiny bundle's on-disk formats and bundle.json verification."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.models.bundle import Bundle, content_version, inventory, verify
from pipeline.models.tiny import TINY_NAME


def test_tiny_bundle_is_complete_and_verifiable(tiny_bundle: Path) -> None:
    b = Bundle.load(tiny_bundle)
    assert b.name == TINY_NAME and b.random_weights
    assert b.version == content_version(b.files)
    expected = {
        b.tts.checkpoint,
        b.tts.vocab,
        f"{b.vocoder.dir}/config.yaml",
        f"{b.vocoder.dir}/pytorch_model.bin",
        b.aligner.model,
    }
    assert expected <= set(b.files)
    assert b.asr is not None and any(f.startswith(b.asr.dir + "/") for f in b.files)
    assert verify(tiny_bundle, b) == []


def test_real_formats(tiny_bundle: Path) -> None:
    """The files load with the loaders the real weights use."""
    import onnxruntime as ort
    from safetensors.torch import load_file

    b = Bundle.load(tiny_bundle)
    state = load_file(str(tiny_bundle / b.tts.checkpoint))
    assert state and all(k.startswith("ema_model.") for k in state)
    sess = ort.InferenceSession(str(tiny_bundle / b.aligner.model))
    assert [i.name for i in sess.get_inputs()] == ["input_values"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]


def test_verify_detects_corruption_and_missing_files(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    b = Bundle.load(copy)
    (copy / b.tts.vocab).write_text("tampered")
    (copy / b.aligner.model).unlink()
    assert sorted(verify(copy, b)) == sorted([b.tts.vocab, b.aligner.model])


def test_inventory_ignores_bundle_json_and_dotfiles(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    (tmp_path / ".verified.json").write_text("{}")
    (tmp_path / "bundle.json").write_text("{}")
    assert list(inventory(tmp_path)) == ["a"]
