"""Batched F5-TTS sampling: several text chunks, of one job or of many, in one model call.

This is f5-tts's ``CFM.sample`` + ``infer_batch_process``'s per-chunk preparation (reference RMS
normalisation, mel, ``ref_text + chunk`` through ``convert_char_to_pinyin``, the duration rule,
slicing off the reference, Vocos decoding), line for line where it can be, with the three
changes that batching across jobs needs:

- **Per-item noise.** ``CFM.sample`` seeds every item of a call alike (``torch.manual_seed(seed)``
  once per item) or draws them one after another from the global generator, so an item's noise
  depends on its batch-mates. Here each item draws from its own generator seeded with its own
  seed: the same draws ``torch.manual_seed(seed)`` + ``torch.randn`` give, so a seed means the same
  audio as before batching existed.
- **Padding masked in attention.** Items of different lengths are padded to the longest. The text
  embedding and the convolutional position embedding already honour the padding mask, but the
  shipped F5TTS_v1_Base attends to padded keys (``attn_mask_enabled: False``), which makes a short
  item's audio depend on its batch-mates. Attention masking is switched on for calls whose items
  differ in length, and off (the faster kernel) when they are all the same length or alone.
- **A transformer callable** that may be ``torch.compile``'d (``pipeline.tts.compiler``).

Outputs are a function of each item alone: the batch-invariance test holds batched output to the
same item's output alone (and shows that without the mask the difference is large).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.text.zh import PINYIN_MARKED

HOP_LENGTH = 256
TARGET_RMS = 0.1
SWAY_SAMPLING_COEF = -1.0


@dataclass(frozen=True)
class Item:
    """One text chunk to synthesise against one reference (24 kHz mono float32)."""

    ref_audio: np.ndarray
    ref_text: str  # as prepared by f5-tts (ends with punctuation + space)
    text: str
    speed: float
    seed: int

    @property
    def ref_frames(self) -> int:
        return len(self.ref_audio) // HOP_LENGTH

    @property
    def frames(self) -> int:
        """Total mel frames of the model call for this item (reference + generated)."""
        return self.ref_frames + generated_frames(len(self.ref_audio), self.ref_text, self.text, self.speed)


def generated_frames(ref_samples: int, ref_text: str, text: str, speed: float) -> int:
    """infer_batch_process's duration rule for one chunk (frames generated after the reference).
    Marked pinyin counts as the Chinese characters it stands for (3 bytes a syllable)."""
    if len(ref_text[-1].encode("utf-8")) == 1:
        ref_text += " "
    text = PINYIN_MARKED.sub(lambda m: "\u4e00" * len(m.group(1).split()), text)
    local_speed = 0.3 if len(text.encode("utf-8")) < 10 else speed
    ref_frames = ref_samples // HOP_LENGTH
    return int(ref_frames / len(ref_text.encode("utf-8")) * len(text.encode("utf-8")) / local_speed)


def model_tokens(text: str, convert: Callable[[list[str]], list[list[str]]]) -> list[str]:
    """The model's text tokens: f5-tts's ``convert_char_to_pinyin`` (``convert``), except that
    marked pinyin ("{yin2 hang2}", ``pipeline.text.zh.pinyin_marked``: how a lexicon picks a
    polyphone's reading) becomes the pinyin tokens f5-tts makes of Chinese characters (" ", "yin2",
    " ", "hang2") instead of letters. Text without marks goes through ``convert`` unchanged."""
    if "{" not in text or not PINYIN_MARKED.search(text):
        return convert([text])[0]
    out: list[str] = []
    pos = 0
    for m in PINYIN_MARKED.finditer(text):
        if m.start() > pos:
            out.extend(convert([text[pos : m.start()]])[0])
        for syllable in m.group(1).split():
            out.extend((" ", syllable))
        pos = m.end()
    if pos < len(text):
        out.extend(convert([text[pos:]])[0])
    return out


TransformerFn = Callable[..., Any]


def sample(
    model: Any,
    vocoder: Any,
    items: Sequence[Item],
    *,
    nfe_step: int,
    cfg_strength: float,
    sway_sampling_coef: float = SWAY_SAMPLING_COEF,
    transformer: TransformerFn | None = None,
    attn_mask: bool | None = None,
    text_cache: bool = True,
) -> list[np.ndarray]:
    """Synthesise ``items`` in one CFM call; returns each item's float32 waveform.

    ``attn_mask``: None = only when lengths differ (the rule above); True/False force it (tests
    use False to show what an unmasked mixed batch does). ``text_cache=False`` recomputes the text
    embedding at every step, which CUDA-graph compilation needs.
    """
    import torch

    with torch.inference_mode():
        return _sample(
            model, vocoder, items, nfe_step, cfg_strength, sway_sampling_coef, transformer, attn_mask, text_cache
        )


def _sample(
    model: Any,
    vocoder: Any,
    items: Sequence[Item],
    nfe_step: int,
    cfg_strength: float,
    sway_sampling_coef: float | None,
    transformer: TransformerFn | None,
    attn_mask: bool | None,
    text_cache: bool,
) -> list[np.ndarray]:
    import torch
    import torch.nn.functional as F
    from f5_tts.model.utils import convert_char_to_pinyin, get_epss_timesteps, lens_to_mask, list_str_to_idx
    from torch.nn.utils.rnn import pad_sequence
    from torchdiffeq import odeint

    model.eval()  # as CFM.sample does: the DiT has dropout
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    transformer = model.transformer if transformer is None else transformer

    conds, rms_list = [], []
    for it in items:
        audio = torch.from_numpy(np.ascontiguousarray(it.ref_audio, dtype=np.float32)).unsqueeze(0)
        rms = torch.sqrt(torch.mean(torch.square(audio)))
        if rms < TARGET_RMS:
            audio = audio * TARGET_RMS / rms
        mel = model.mel_spec(audio.to(device)).permute(0, 2, 1)[0]  # frames x mels
        conds.append(mel.to(dtype))
        rms_list.append(float(rms))
    lens = torch.tensor([c.shape[0] for c in conds], device=device, dtype=torch.long)
    cond = pad_sequence(conds, batch_first=True, padding_value=0.0)

    texts = []
    for it in items:
        ref_text = it.ref_text + " " if len(it.ref_text[-1].encode("utf-8")) == 1 else it.ref_text
        texts.append(model_tokens(ref_text + it.text, convert_char_to_pinyin))
    text = list_str_to_idx(texts, model.vocab_char_map).to(device)

    duration = torch.tensor([it.frames for it in items], device=device, dtype=torch.long)
    duration = torch.maximum(torch.maximum((text != -1).sum(dim=-1), lens) + 1, duration).clamp(max=65536)
    max_duration = int(duration.amax())

    cond = F.pad(cond, (0, 0, 0, max_duration - cond.shape[1]), value=0.0)
    cond_mask = F.pad(lens_to_mask(lens), (0, max_duration - int(lens.amax())), value=False).unsqueeze(-1)
    step_cond = torch.where(cond_mask, cond, torch.zeros_like(cond))
    batch = len(items)
    mask = lens_to_mask(duration) if batch > 1 else None
    mixed = bool((duration != duration[0]).any())
    _set_attn_mask(model.transformer, mixed if attn_mask is None else attn_mask)

    def fn(t: Any, x: Any) -> Any:
        if cfg_strength < 1e-5:
            return transformer(
                x=x, cond=step_cond, text=text, time=t, mask=mask, drop_audio_cond=False, drop_text=False,
                cache=text_cache,
            )  # fmt: skip
        pred_cfg = transformer(x=x, cond=step_cond, text=text, time=t, mask=mask, cfg_infer=True, cache=text_cache)
        pred, null_pred = torch.chunk(pred_cfg, 2, dim=0)
        return pred + (pred - null_pred) * cfg_strength

    # Per-item noise: torch.manual_seed(seed) + torch.randn(...) draws, item by item.
    y0 = []
    for it, dur in zip(items, duration.tolist(), strict=True):
        gen = torch.Generator(device=device).manual_seed(it.seed)
        y0.append(torch.randn(dur, model.num_channels, device=device, dtype=step_cond.dtype, generator=gen))
    y0 = pad_sequence(y0, padding_value=0, batch_first=True)

    t = get_epss_timesteps(nfe_step, device=device, dtype=step_cond.dtype)
    if sway_sampling_coef is not None:
        t = t + sway_sampling_coef * (torch.cos(torch.pi / 2 * t) - 1 + t)

    try:
        trajectory = odeint(fn, y0, t, **model.odeint_kwargs)
    finally:
        model.transformer.clear_cache()
    out = torch.where(cond_mask, cond, trajectory[-1]).to(torch.float32)
    waves = []
    for i, it in enumerate(items):
        mel = out[i : i + 1, it.ref_frames : int(duration[i])].permute(0, 2, 1)
        wave = vocoder.decode(mel)
        if rms_list[i] < TARGET_RMS:
            wave = wave * rms_list[i] / TARGET_RMS
        waves.append(wave.squeeze().cpu().numpy().astype(np.float32, copy=False))
    return waves


def _set_attn_mask(dit: Any, enabled: bool) -> None:
    for block in getattr(dit, "transformer_blocks", ()):
        processor = getattr(getattr(block, "attn", None), "processor", None)
        if processor is not None and hasattr(processor, "attn_mask_enabled"):
            processor.attn_mask_enabled = enabled


def install_padding_mask_attention(dit: Any) -> int:
    """Replace the DiT's torch-backend attention processors with ``PaddingMaskAttnProcessor``.
    Returns how many were replaced (0 for other backbones or the flash_attn backend)."""
    from f5_tts.model.modules import AttnProcessor

    replaced = 0
    for block in getattr(dit, "transformer_blocks", ()):
        old = getattr(getattr(block, "attn", None), "processor", None)
        if type(old) is AttnProcessor and old.attn_backend == "torch":
            block.attn.processor = padding_mask_processor_class()(old.pe_attn_head, old.attn_mask_enabled)
            replaced += 1
    return replaced


@functools.cache
def padding_mask_processor_class() -> type:
    """Built on first use, so that importing this module does not import f5-tts (and torch)."""
    from f5_tts.model.modules import AttnProcessor, apply_rotary_pos_emb

    class _Processor(AttnProcessor):
        """f5-tts's ``AttnProcessor`` (torch backend), computing the same attention, with the padding
        mask passed to scaled_dot_product_attention as a broadcastable ``b 1 1 n`` key mask instead
        of an expanded ``b h n n`` one. The expanded mask drops SDPA onto its slow path (a mixed
        8-job call ran 2.1x slower on a 2-core CPU, docs/benchmarks.md; f5-tts warns of its GPU
        memory); the broadcast one keeps the fast kernel with identical results."""

        def __init__(self, pe_attn_head: int | None = None, attn_mask_enabled: bool = False) -> None:
            # Not super().__init__(): it warns that masking is slow, which is what this class fixes.
            self.pe_attn_head = pe_attn_head
            self.attn_backend = "torch"
            self.attn_mask_enabled = attn_mask_enabled

        def __call__(self, attn: Any, x: Any, mask: Any = None, rope: Any = None) -> Any:
            import torch.nn.functional as F

            batch_size = x.shape[0]
            query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
            head_dim = key.shape[-1] // attn.heads
            query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.q_norm is not None:
                query = attn.q_norm(query)
            if attn.k_norm is not None:
                key = attn.k_norm(key)
            if rope is not None:
                freqs, xpos_scale = rope
                q_scale, k_scale = (xpos_scale, xpos_scale**-1.0) if xpos_scale is not None else (1.0, 1.0)
                if self.pe_attn_head is not None:
                    pn = self.pe_attn_head
                    query[:, :pn, :, :] = apply_rotary_pos_emb(query[:, :pn, :, :], freqs, q_scale)
                    key[:, :pn, :, :] = apply_rotary_pos_emb(key[:, :pn, :, :], freqs, k_scale)
                else:
                    query = apply_rotary_pos_emb(query, freqs, q_scale)
                    key = apply_rotary_pos_emb(key, freqs, k_scale)
            key_mask = mask[:, None, None, :] if self.attn_mask_enabled and mask is not None else None
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
            if mask is not None:
                out = out.masked_fill(~mask.unsqueeze(-1), 0.0)
            return out

    return _Processor
