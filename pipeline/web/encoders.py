"""Audio encoders that emit bytes as samples arrive, for the speech API's streams.

Each takes PCM16 blocks (24 kHz mono, the worker's samples) and returns what can be sent now:

* ``pcm``: the samples as they are (OpenAI's ``pcm``: 24 kHz 16-bit signed little-endian);
* ``wav``: a RIFF header whose sizes say "unknown" (0xFFFFFFFF, as streaming servers write it;
  libsndfile, ffmpeg and browsers read to the end), then the samples;
* ``mp3``: LAME through ``lameenc``, frame by frame (libsndfile's MP3 writer rewrites its first
  frame when it closes, which a stream cannot take back: measured, its output then decodes to a
  quarter of the audio);
* ``opus``: Ogg Opus through libsndfile, whose writer only appends once it has started.

FLAC is not streamed: its header carries the total length and checksum, written at the end.
"""

from __future__ import annotations

import io
import struct
from typing import Protocol

import lameenc
import numpy as np
import soundfile as sf

from pipeline.tts.engine import SAMPLE_RATE

STREAMED = ("pcm", "wav", "mp3", "opus")
CONTENT_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
}
MP3_KBPS = 64  # mono speech at 24 kHz


class Encoder(Protocol):
    def encode(self, pcm: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


class Pcm:
    def encode(self, pcm: np.ndarray) -> bytes:
        return np.asarray(pcm, dtype="<i2").tobytes()

    def finish(self) -> bytes:
        return b""


class Wav(Pcm):
    def __init__(self) -> None:
        self._header: bytes | None = wav_header()

    def encode(self, pcm: np.ndarray) -> bytes:
        head, self._header = self._header or b"", None
        return head + super().encode(pcm)

    def finish(self) -> bytes:
        head, self._header = self._header or b"", None
        return head


def wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """PCM16 mono, with the RIFF and data sizes unknown."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF)


class Mp3:
    def __init__(self) -> None:
        self._lame = lameenc.Encoder()
        self._lame.set_bit_rate(MP3_KBPS)
        self._lame.set_in_sample_rate(SAMPLE_RATE)
        self._lame.set_channels(1)
        self._lame.set_quality(2)

    def encode(self, pcm: np.ndarray) -> bytes:
        return bytes(self._lame.encode(np.asarray(pcm, dtype="<i2").tobytes()))

    def finish(self) -> bytes:
        return bytes(self._lame.flush())


class _Sink(io.RawIOBase):
    """Where libsndfile writes: bytes are taken away as soon as they are written."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # libsndfile asks; Ogg only seeks to where it already is

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self._out += bytes(b)
        self._pos += len(b)
        return len(b)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset, io.SEEK_END: self._pos + offset}[whence]
        if target != self._pos:
            raise OSError("a stream cannot be rewritten")
        return self._pos

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out


class Opus:
    def __init__(self) -> None:
        self._sink = _Sink()
        self._file = sf.SoundFile(self._sink, "w", samplerate=SAMPLE_RATE, channels=1, format="OGG", subtype="OPUS")

    def encode(self, pcm: np.ndarray) -> bytes:
        self._file.write(np.asarray(pcm, dtype=np.int16))
        return self._sink.take()

    def finish(self) -> bytes:
        self._file.close()
        return self._sink.take()


def for_format(fmt: str) -> Encoder:
    encoders: dict[str, type[Pcm] | type[Mp3] | type[Opus]] = {"pcm": Pcm, "wav": Wav, "mp3": Mp3, "opus": Opus}
    return encoders[fmt]()
