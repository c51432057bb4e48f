"""A job's audio written piece by piece to a file, holding only one cross-fade's worth in memory.

Chunks of one turn are joined with the linear cross-fade F5-TTS uses (``audio.cross_fade`` gives
the same samples for a whole list); pauses and turn changes are joined end to end. Each ``add``
returns the sample where its piece starts in the output, which is what shifts a chunk's word
timings into the job's timeline. A 2-hour chapter therefore needs one chunk and one fade tail in
RAM, not its 700 MB of float samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.tts.audio import ENCODINGS


class StreamingAssembler:
    def __init__(self, path: Path, sample_rate: int, fmt: str, fade_samples: int) -> None:
        sf_format, subtype, self.content_type = ENCODINGS[fmt]
        self.path = path
        self.sample_rate = sample_rate
        self.fade = max(0, fade_samples)
        self._file = sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, format=sf_format, subtype=subtype)
        self._tail = np.zeros(0, dtype=np.float32)  # the last samples, held back for a cross-fade
        self._written = 0

    def add(self, wave: np.ndarray, *, cross_fade: bool) -> int:
        """Append ``wave``; returns the sample index where it begins in the output."""
        wave = np.asarray(wave, dtype=np.float32)
        n = min(len(self._tail), len(wave)) if cross_fade else 0
        if n > 0:
            head = self._tail[:-n]
            overlap = self._tail[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
            buffer = np.concatenate([head, overlap.astype(np.float32), wave[n:]])
        else:
            buffer = np.concatenate([self._tail, wave])
        start = self._written + len(self._tail) - n
        self._flush(buffer)
        return start

    def _flush(self, buffer: np.ndarray) -> None:
        keep = min(self.fade, len(buffer))
        out = buffer[: len(buffer) - keep]
        if len(out):
            self._file.write(np.clip(out, -1.0, 1.0))
            self._written += len(out)
        self._tail = buffer[len(buffer) - keep :].copy()

    @property
    def samples(self) -> int:
        return self._written + len(self._tail)

    def close(self) -> int:
        """Write what is held back and close the file; returns the total samples."""
        if len(self._tail):
            self._file.write(np.clip(self._tail, -1.0, 1.0))
            self._written += len(self._tail)
            self._tail = np.zeros(0, dtype=np.float32)
        self._file.close()
        return self._written

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
