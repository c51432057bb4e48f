"""Audio IO: every output format round-trips through soundfile at 24 kHz; decode rejects junk."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from pipeline.tts import audio


def _tone(seconds: float = 1.0, sr: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_encode_round_trip(fmt: str) -> None:
    wave = _tone(1.0)
    data, content_type = audio.encode(wave, 24000, fmt)
    assert content_type.startswith("audio/")
    decoded, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == 24000
    # Lossy codecs pad a little; the duration stays within a frame or two.
    assert abs(len(decoded) - len(wave)) < 0.06 * 24000


def test_decode_mixes_stereo_down_and_keeps_rate() -> None:
    stereo = np.stack([_tone(0.5, 16000), np.zeros(8000, dtype=np.float32)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 16000, format="WAV")
    wave, sr = audio.decode(buf.getvalue())
    assert sr == 16000 and wave.ndim == 1 and len(wave) == 8000
    assert np.allclose(wave, stereo.mean(axis=1), atol=1e-4)


@pytest.mark.parametrize("junk", [b"", b"RIFF", b"hello world" * 100, b'{"text": "json"}'])
def test_probe_rejects_non_audio(junk: bytes) -> None:
    with pytest.raises(audio.AudioDecodeError):
        audio.probe(junk)


def test_probe_reads_duration_from_the_header() -> None:
    buf = io.BytesIO()
    sf.write(buf, _tone(2.0, 16000), 16000, format="FLAC")
    info = audio.probe(buf.getvalue())
    assert (info.sample_rate, info.channels) == (16000, 1)
    assert info.duration_s == pytest.approx(2.0)


def test_zero_length_audio_is_rejected() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, dtype=np.float32), 24000, format="WAV")
    with pytest.raises(audio.AudioDecodeError, match="no samples"):
        audio.decode(buf.getvalue())


def test_resample() -> None:
    out = audio.resample(_tone(1.0, 24000), 24000, 16000)
    assert len(out) == 16000


def test_cross_fade_matches_f5_tts_join() -> None:
    """Our join of separately synthesised chunks must equal f5-tts's own (infer_batch_process)."""
    a = np.linspace(0, 1, 5000, dtype=np.float32)
    b = np.linspace(1, 0, 7000, dtype=np.float32)
    n = 3600  # 0.15 s at 24 kHz
    out = audio.cross_fade([a, b], n)
    assert len(out) == len(a) + len(b) - n
    expected_overlap = a[-n:] * np.linspace(1, 0, n) + b[:n] * np.linspace(0, 1, n)
    assert np.allclose(out[len(a) - n : len(a)], expected_overlap, atol=1e-6)
    assert np.array_equal(audio.cross_fade([a], n), a)
    # Chunks shorter than the fade overlap by what they have.
    assert len(audio.cross_fade([a[:100], b[:50]], n)) == 100
