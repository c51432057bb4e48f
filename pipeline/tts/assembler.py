"""A job's audio joined piece by piece, holding only one cross-fade's worth in memory.

Chunks of one turn are joined with the linear cross-fade F5-TTS uses (``audio.cross_fade`` gives
the same samples for a whole list); pauses and turn changes are joined end to end. ``Joiner`` is
the arithmetic alone: it takes pieces and hands back the samples that are final (everything but
the tail a next cross-fade may still change). Two users, one rule, so they agree sample for sample:

* the worker's ``StreamingAssembler`` writes them to the job's audio file; each ``add`` returns
  the sample where its piece starts in the output, which shifts a chunk's word timings into the
  job's timeline. A 2-hour chapter needs one chunk and one fade tail in RAM, not 700 MB of floats;
* the speech API's stream (``pipeline.web.stream``) re-joins a job's durable chunks while the job
  runs and sends each final sample as soon as it exists: the bytes a listener hears early are the
  bytes of the finished file.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.tts.audio import ENCODINGS


def pcm16(wave: np.ndarray) -> np.ndarray:
    """Final samples as the audio file holds them: the exact inverse of how a PCM16 chunk decodes
    (k / 32768), so a chunk's samples outside a cross-fade come back unchanged. Done here, not
    left to the encoder library, so the API's stream computes the file's samples by the same rule.
    """
    return np.clip(np.rint(np.asarray(wave, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


class Joiner:
    def __init__(self, fade_samples: int) -> None:
        self.fade = max(0, fade_samples)
        self._tail = np.zeros(0, dtype=np.float32)  # the last samples, held back for a cross-fade
        self.final = 0  # samples handed out so far

    def start_of(self, length: int, *, cross_fade: bool) -> int:
        """Where a piece of ``length`` samples would begin if it were added now."""
        n = min(len(self._tail), length) if cross_fade else 0
        return self.final + len(self._tail) - n

    def add(self, wave: np.ndarray, *, cross_fade: bool) -> tuple[int, np.ndarray]:
        """Append ``wave``: (the sample where it begins, the samples that became final)."""
        wave = np.asarray(wave, dtype=np.float32)
        start = self.start_of(len(wave), cross_fade=cross_fade)
        n = min(len(self._tail), len(wave)) if cross_fade else 0
        if n > 0:
            head = self._tail[:-n]
            overlap = self._tail[-n:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
            buffer = np.concatenate([head, overlap.astype(np.float32), wave[n:]])
        else:
            buffer = np.concatenate([self._tail, wave])
        keep = min(self.fade, len(buffer))
        out = buffer[: len(buffer) - keep]
        self._tail = buffer[len(buffer) - keep :].copy()
        self.final += len(out)
        return start, np.clip(out, -1.0, 1.0)

    def flush(self) -> np.ndarray:
        """The held-back tail: the piece added last was the last one."""
        out, self._tail = self._tail, np.zeros(0, dtype=np.float32)
        self.final += len(out)
        return np.clip(out, -1.0, 1.0)

    @property
    def samples(self) -> int:
        return self.final + len(self._tail)


class StreamingAssembler:
    """The job's audio file, written as its pieces arrive. Encoding is CPU work (an mp3 or ogg
    chunk of 20 s takes ~0.1 s): it runs on a thread, never on the event loop that beats every
    job's lease. The arithmetic (``Joiner``) stays on the caller's side, so ``add`` still answers
    where a piece begins at once; writes go to the file one at a time, in the order added."""

    def __init__(self, path: Path, sample_rate: int, fmt: str, fade_samples: int) -> None:
        sf_format, subtype, self.content_type = ENCODINGS[fmt]
        self.path = path
        self.sample_rate = sample_rate
        self.joiner = Joiner(fade_samples)
        self._file = sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, format=sf_format, subtype=subtype)
        self._order = asyncio.Lock()  # FIFO: pieces reach the file in the order they were added
        self._io = threading.Lock()  # libsndfile is not thread-safe: one write, close or abort at a time

    def start_of(self, length: int, *, cross_fade: bool) -> int:
        return self.joiner.start_of(length, cross_fade=cross_fade)

    async def add(self, wave: np.ndarray, *, cross_fade: bool) -> int:
        """Append ``wave``; returns the sample index where it begins in the output."""
        start, out = self.joiner.add(wave, cross_fade=cross_fade)
        if len(out):
            async with self._order:
                await asyncio.to_thread(self._write, out)
        return start

    def _write(self, out: np.ndarray) -> None:
        with self._io:
            if not self._file.closed:  # aborted meanwhile: the file is being thrown away
                self._file.write(pcm16(out))

    @property
    def samples(self) -> int:
        return self.joiner.samples

    def close(self) -> int:
        """Write what is held back and close the file; returns the total samples. Blocking: call
        it on a thread."""
        tail = self.joiner.flush()
        with self._io:
            if len(tail):
                self._file.write(pcm16(tail))
            self._file.close()
        return self.joiner.final

    def abort(self) -> None:
        """Close the file without finishing it; waits for a write in progress on its thread (a
        cancelled ``add`` leaves its write running) rather than closing under it."""
        with self._io:
            if not self._file.closed:
                self._file.close()
