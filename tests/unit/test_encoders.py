"""The speech API's streaming encoders: what they emit piece by piece decodes as one file."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import soundfile as sf

from pipeline.web import encoders


def _pcm(n: int = 48000) -> np.ndarray:
    return (np.sin(np.arange(n) / 20) * 0.3 * 32767).astype(np.int16)


def _stream(fmt: str, pcm: np.ndarray, cuts: list[int]) -> list[bytes]:
    enc = encoders.for_format(fmt)
    bounds = [0, *cuts, len(pcm)]
    return [enc.encode(pcm[a:b]) for a, b in itertools.pairwise(bounds)] + [enc.finish()]


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_lossless_streams_carry_the_samples_exactly(fmt: str) -> None:
    pcm = _pcm()
    parts = _stream(fmt, pcm, [1, 7000, 30000])
    assert all(parts[:-1])  # every block sent something at once
    data = b"".join(parts)
    if fmt == "pcm":
        np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), pcm)
        return
    decoded, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == 24000
    np.testing.assert_array_equal(decoded, pcm)
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"  # length unknown while streaming


@pytest.mark.parametrize(("fmt", "name"), [("mp3", "MP3"), ("opus", "OGG")])
def test_compressed_streams_start_before_the_end_and_decode_whole(fmt: str, name: str) -> None:
    pcm = _pcm()
    parts = _stream(fmt, pcm, [12000, 24000, 36000])
    assert sum(len(p) for p in parts[:-1]) > 0  # bytes went out before the last block
    info = sf.info(io.BytesIO(b"".join(parts)))
    assert info.format == name and info.samplerate == 24000
    assert abs(info.frames - len(pcm)) < 4800  # codec delay and padding only


def test_flac_is_not_streamed() -> None:
    assert "flac" not in encoders.STREAMED
