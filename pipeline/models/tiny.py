"""Build a tiny, randomly initialised model bundle, offline, with the real libraries' own classes.

Every component is built by the library that will load it and saved in that library's real
on-disk format, so the worker exercises exactly the loading and inference code it uses for the
real F5TTS_v1_Base bundle:

- F5-TTS: ``CFM(DiT(...))`` state dict saved as ``ema_model.*`` safetensors + the packaged vocab.
- Vocoder: ``Vocos.from_hparams(config.yaml)`` saved as ``pytorch_model.bin``.
- Aligner: transformers ``Wav2Vec2ForCTC`` (vocab = ctc-forced-aligner's 31 tokens) exported to
  ONNX with ``input_values`` -> ``logits``, what ctc-forced-aligner's ONNX path runs, and the same
  weights saved with ``save_pretrained`` for the torch (GPU) path.
- ASR: transformers ``WhisperForConditionalGeneration`` + processor via ``save_pretrained``.

Random weights make noise; output *structure* (sample rate, duration rule, alignment shapes) is
still exactly the real code's. Seeded, so a rebuild yields the same files and the same version.
"""

from __future__ import annotations

import shutil
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

TINY_NAME = "f5tts-tiny"
SEED = 1234

# Small enough to run in well under a second per job on 2 CPU cores; the shape of F5TTS_v1_Base
# (configs/F5TTS_v1_Base.yaml) with every size shrunk.
TINY_ARCH: dict[str, Any] = {
    "dim": 64,
    "depth": 2,
    "heads": 2,
    "dim_head": 32,
    "ff_mult": 2,
    "text_dim": 32,
    "text_mask_padding": True,
    "qk_norm": None,
    "conv_layers": 2,
    "pe_attn_head": None,
    "attn_backend": "torch",
    "attn_mask_enabled": False,
    "checkpoint_activations": False,
}


# Vocos backbone (dim, intermediate_dim, num_layers) and the aligner's Wav2Vec2Config sizes.
TINY_VOCOS = (64, 128, 2)
TINY_ALIGNER: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}
# Full size, for benchmarks: charactr/vocos-mel-24khz's backbone and MMS-300m's encoder (the model
# ctc-forced-aligner uses), with random weights. F5TTS_v1_Base's arch comes from f5-tts's config.
FULL_VOCOS = (512, 1536, 8)
FULL_ALIGNER: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "conv_dim": (512,) * 7,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
}


def build_tiny(out: Path, *, name: str = TINY_NAME) -> Bundle:
    return _build(out, name, TINY_ARCH, TINY_VOCOS, TINY_ALIGNER, with_asr=True, what="Tiny")


def build_full_size(out: Path, *, name: str = "F5TTS_v1_Base-random") -> Bundle:
    """F5TTS_v1_Base + Vocos + an MMS-300m-sized aligner, random weights (GPU benchmarks; no ASR)."""
    from pipeline.models.seed import architecture

    _, arch, _ = architecture("F5TTS_v1_Base")
    return _build(out, name, arch, FULL_VOCOS, FULL_ALIGNER, with_asr=False, what="Full-size")


def _build(
    out: Path,
    name: str,
    arch: dict[str, Any],
    vocos: tuple[int, int, int],
    aligner: dict[str, Any],
    *,
    with_asr: bool,
    what: str,
) -> Bundle:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    mel = MelSpec()
    _build_f5(out / "f5", mel, arch)
    _build_vocos(out / "vocoder", mel, vocos)
    _build_aligner(out / "aligner", aligner)
    if with_asr:
        _build_whisper(out / "asr")

    files = inventory(out)
    bundle = Bundle(
        name=name,
        version=content_version(files),
        random_weights=True,
        description=f"{what} randomly initialised F5-TTS + Vocos + aligner{' + Whisper' if with_asr else ''}"
        " for offline tests and benchmarks. Its audio is noise.",
        tts=TtsSpec(arch=arch, checkpoint="f5/model.safetensors", vocab="f5/vocab.txt", mel_spec=mel),
        vocoder=VocoderSpec(dir="vocoder"),
        aligner=AlignerSpec(model="aligner/model.onnx", torch_dir="aligner/hf", license="random weights (test only)"),
        asr=AsrSpec(dir="asr") if with_asr else None,
        files=files,
    )
    bundle.save(out)
    return bundle


def _build_f5(d: Path, mel: MelSpec, arch: dict[str, Any]) -> None:
    import torch
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    vocab = d / "vocab.txt"
    shutil.copyfile(str(package_files("f5_tts").joinpath("infer/examples/vocab.txt")), vocab)
    vocab_char_map, vocab_size = get_tokenizer(str(vocab), "custom")
    model = CFM(
        transformer=DiT(**arch, text_num_embeds=vocab_size, mel_dim=mel.n_mel_channels),
        mel_spec_kwargs=mel.model_dump(),
        vocab_char_map=vocab_char_map,
    )
    # DiT zero-initialises its AdaLN modulations and output projection (a fresh model predicts a
    # flow of exactly 0 whatever its input), which would make attention, padding and batch-mates
    # invisible in the output. Give those weights small random values too, as training would, so
    # that tests can see what a real model would do (e.g. attend to padding without a mask).
    with torch.no_grad():
        for param in model.transformer.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    # Non-persistent buffers (mel filterbank, window) are rebuilt at load; save parameters only,
    # under the "ema_model." prefix that f5-tts's load_checkpoint expects for safetensors.
    state = {f"ema_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))


def _build_vocos(d: Path, mel: MelSpec, sizes: tuple[int, int, int]) -> None:
    import torch
    from vocos import Vocos

    d.mkdir(parents=True, exist_ok=True)
    config = {
        "feature_extractor": {
            "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
            "init_args": {
                "sample_rate": mel.target_sample_rate,
                "n_fft": mel.n_fft,
                "hop_length": mel.hop_length,
                "n_mels": mel.n_mel_channels,
                "padding": "center",
            },
        },
        "backbone": {
            "class_path": "vocos.models.VocosBackbone",
            "init_args": {
                "input_channels": mel.n_mel_channels,
                "dim": sizes[0],
                "intermediate_dim": sizes[1],
                "num_layers": sizes[2],
            },
        },
        "head": {
            "class_path": "vocos.heads.ISTFTHead",
            "init_args": {"dim": sizes[0], "n_fft": mel.n_fft, "hop_length": mel.hop_length, "padding": "same"},
        },
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    vocos = Vocos.from_hparams(str(d / "config.yaml"))
    torch.save(vocos.state_dict(), d / "pytorch_model.bin")


def _build_aligner(d: Path, sizes: dict[str, Any]) -> None:
    import torch
    from ctc_forced_aligner import VOCAB_DICT
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    d.mkdir(parents=True, exist_ok=True)
    # Same conv strides as MMS/wav2vec2 (320 samples = 20 ms per frame at 16 kHz).
    config = Wav2Vec2Config(
        vocab_size=len(VOCAB_DICT),
        **sizes,
        pad_token_id=VOCAB_DICT["<pad>"],
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
    )
    model = Wav2Vec2ForCTC(config).eval()

    class _Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_values: torch.Tensor) -> torch.Tensor:
            return self.inner(input_values).logits

    torch.onnx.export(
        _Logits(model),
        (torch.zeros(1, 16000),),
        str(d / "model.onnx"),
        input_names=["input_values"],
        output_names=["logits"],
        dynamic_axes={"input_values": {0: "batch", 1: "samples"}, "logits": {0: "batch", 1: "frames"}},
        opset_version=17,
        dynamo=False,
    )
    model.save_pretrained(str(d / "hf"))


def _build_whisper(d: Path) -> None:
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    d.mkdir(parents=True, exist_ok=True)
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for tok in specials:
        vocab[tok] = len(vocab)
    tokenizer = WhisperTokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in specials}
    config = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        is_multilingual=True,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        lang_to_id={"<|en|>": ids["<|en|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        # Random weights rarely emit end-of-text: cap the transcript length.
        max_length=24,
    )
    model.save_pretrained(d)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(d)
