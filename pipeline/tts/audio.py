"""Audio IO and small signal helpers: decode (soundfile), resample, mix down, cross-fade, encode."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

# output_format -> (soundfile format, subtype, content type)
ENCODINGS: dict[str, tuple[str, str | None, str]] = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", None, "audio/mpeg"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
}


class AudioDecodeError(ValueError):
    pass


@dataclass(frozen=True)
class AudioHeader:
    frames: int
    sample_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe(data: bytes) -> AudioHeader:
    """Read only the header: duration limits are checked before decoding the whole file."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError variously
        log.info("audio header unreadable: %s", e)  # libsndfile's words stay in the log
        raise AudioDecodeError("not a readable audio file (WAV, FLAC, OGG, MP3, ...)") from None
    return AudioHeader(frames=int(info.frames), sample_rate=int(info.samplerate), channels=int(info.channels))


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any soundfile-supported format to float32 (frames,) mono + sample rate."""
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        log.info("audio unreadable: %s", e)
        raise AudioDecodeError("not a readable audio file (WAV, FLAC, OGG, MP3, ...)") from None
    if wave.size == 0:
        raise AudioDecodeError("audio file has no samples")
    wave = to_mono(wave)
    if not np.all(np.isfinite(wave)):
        raise AudioDecodeError("audio contains NaN or infinite samples")
    return wave, int(sr)


def to_mono(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    if orig_sr == new_sr:
        return wave
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig_sr, new_sr).numpy()


def cross_fade(waves: list[np.ndarray], fade_samples: int) -> np.ndarray:
    """Join chunks with a linear cross-fade, as f5-tts's infer_batch_process joins its chunks."""
    if not waves:
        return np.zeros(0, dtype=np.float32)
    out = waves[0]
    for nxt in waves[1:]:
        n = min(fade_samples, len(out), len(nxt))
        if n <= 0:
            out = np.concatenate([out, nxt])
            continue
        overlap = out[-n:] * np.linspace(1, 0, n) + nxt[:n] * np.linspace(0, 1, n)
        out = np.concatenate([out[:-n], overlap, nxt[n:]])
    return out.astype(np.float32)


def encode(wave: np.ndarray, sample_rate: int, fmt: str) -> tuple[bytes, str]:
    """Encode float mono audio; returns (bytes, content type)."""
    sf_format, subtype, content_type = ENCODINGS[fmt]
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, format=sf_format, subtype=subtype)
    return buf.getvalue(), content_type
