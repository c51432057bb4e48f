"""The streaming assembler writes what audio.cross_fade computes on the whole list, in bounded memory,
and says where each piece starts; durable chunks round-trip bit-exactly."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.jobs import chunks as chunk_io
from pipeline.tts import audio as audio_utils
from pipeline.tts.assembler import Joiner, StreamingAssembler, pcm16

SR = 24000


def _waves(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [chunk_io.dequantize(chunk_io.quantize(rng.uniform(-0.5, 0.5, n).astype(np.float32))) for n in lengths]


def _add(asm: StreamingAssembler, wave: np.ndarray, *, cross_fade: bool) -> int:
    return asyncio.run(asm.add(wave, cross_fade=cross_fade))


@pytest.mark.parametrize("lengths", [[5000], [5000, 7000, 6000], [100, 5000, 50, 4000], [3600, 3600], [10, 20, 30]])
def test_same_samples_as_cross_fade_of_the_whole_list(tmp_path: Path, lengths: list[int]) -> None:
    waves = _waves(1, lengths)
    fade = 3600
    asm = StreamingAssembler(tmp_path / "a.wav", SR, "wav", fade)
    starts = [_add(asm, w, cross_fade=True) for w in waves]
    total = asm.close()
    written, sr = sf.read(tmp_path / "a.wav", dtype="float32")
    expected = audio_utils.cross_fade(list(waves), fade)
    assert sr == SR and total == len(expected) == len(written)
    assert np.max(np.abs(written - expected)) <= 1.5 / 32768  # both through PCM16
    # Each piece starts where the previous one's fade began.
    for i in range(1, len(waves)):
        n = min(fade, starts[i - 1] + len(waves[i - 1]), len(waves[i]))
        assert starts[i] == starts[i - 1] + len(waves[i - 1]) - n


def test_pauses_and_turn_changes_join_end_to_end(tmp_path: Path) -> None:
    a, b = _waves(2, [8000, 9000])
    silence = np.zeros(SR // 2, dtype=np.float32)
    asm = StreamingAssembler(tmp_path / "a.flac", SR, "flac", 3600)
    assert _add(asm, a, cross_fade=True) == 0
    assert _add(asm, silence, cross_fade=False) == len(a)
    assert _add(asm, b, cross_fade=False) == len(a) + len(silence)
    assert asm.close() == len(a) + len(silence) + len(b)
    written, _ = sf.read(tmp_path / "a.flac", dtype="float32")
    assert np.all(written[len(a) : len(a) + len(silence)] == 0)
    assert np.max(np.abs(written[: len(a)] - a)) <= 1.5 / 32768


def test_a_chunk_round_trips_through_flac_bit_exactly() -> None:
    wave = np.random.default_rng(3).normal(0, 0.4, 48000).astype(np.float32)  # some samples clip
    pcm = chunk_io.quantize(wave)
    buf = io.BytesIO()
    sf.write(buf, pcm, SR, format="FLAC", subtype="PCM_16")
    decoded, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="int16")
    assert np.array_equal(decoded, pcm)
    floats, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
    assert np.array_equal(floats, chunk_io.dequantize(pcm))


def test_chunk_digest_changes_with_every_input() -> None:
    base = chunk_io.ChunkSpec("m/1", "abc", "ref", "hello there.", 7, 1.0, 32, 2.0, False, "eng")
    fields = {
        "model": "m/2",
        "voice_sha256": "abd",
        "ref_text": "ref2",
        "spoken": "hello there!",
        "seed": 8,
        "speed": 1.1,
        "nfe_step": 16,
        "cfg_strength": 2.5,
        "remove_silence": True,
        "align_language": None,
        "quality": "signal/r2",
    }
    from dataclasses import replace

    digests = {replace(base, **{k: v}).digest() for k, v in fields.items()}
    assert base.digest() not in digests and len(digests) == len(fields)
    assert base.digest() == chunk_io.ChunkSpec(*[getattr(base, f) for f in base.__dataclass_fields__]).digest()


def test_the_file_holds_exactly_what_a_joiner_hands_out_and_chunks_come_back_unchanged(tmp_path: Path) -> None:
    """The speech API's stream re-joins chunks with a Joiner and pcm16: its samples must be the
    file's, bit for bit, and a chunk's own samples (outside a fade) must be the stored PCM16."""
    pcms = [chunk_io.quantize(np.random.default_rng(s).normal(0, 0.5, n)) for s, n in [(4, 9000), (5, 7000)]]
    waves = [chunk_io.dequantize(p) for p in pcms]
    asm = StreamingAssembler(tmp_path / "a.wav", SR, "wav", 3600)
    joiner = Joiner(3600)
    out = []
    for i, w in enumerate(waves):
        start, final = joiner.add(w, cross_fade=i > 0)
        assert _add(asm, w, cross_fade=i > 0) == start
        out.append(pcm16(final))
    out.append(pcm16(joiner.flush()))
    asm.close()
    written, _ = sf.read(tmp_path / "a.wav", dtype="int16")
    np.testing.assert_array_equal(np.concatenate(out), written)
    np.testing.assert_array_equal(written[: 9000 - 3600], pcms[0][: 9000 - 3600])
    np.testing.assert_array_equal(written[9000:], pcms[1][3600:])


@pytest.mark.parametrize("fmt", ["mp3", "ogg", "flac"])
async def test_encoding_runs_off_the_event_loop_in_the_order_added(tmp_path: Path, fmt: str) -> None:
    """Issue 25, defect 5: an mp3 or ogg chunk's encoding (~0.1 s) must not stop the loop that
    beats every job's lease. Every write of the file happens on another thread, and pieces added
    concurrently still reach the file in the order they were added."""
    loop_thread = threading.get_ident()
    asm = StreamingAssembler(tmp_path / f"a.{fmt}", SR, fmt, 0)
    writers: list[int] = []
    real = asm._file.write

    def spy(data: np.ndarray) -> None:
        writers.append(threading.get_ident())
        real(data)

    asm._file.write = spy  # type: ignore[method-assign]
    waves = [np.full(2400, v, dtype=np.float32) for v in (0.1, 0.2, 0.3, 0.4)]
    starts = await asyncio.gather(*(asm.add(w, cross_fade=False) for w in waves))
    total = await asyncio.to_thread(asm.close)
    assert starts == [0, 2400, 4800, 7200] and total == 9600
    assert writers and loop_thread not in writers
    if fmt == "flac":  # lossless: the pieces are in the file in order
        written, _ = sf.read(tmp_path / "a.flac", dtype="float32")
        levels = [round(float(np.median(written[i * 2400 : (i + 1) * 2400])), 2) for i in range(4)]
        assert levels == [0.1, 0.2, 0.3, 0.4]


async def test_abort_waits_for_a_write_in_progress(tmp_path: Path) -> None:
    """A cancelled add leaves its write running on its thread: abort closes the file after it, not
    under it (libsndfile is not thread-safe: a write into a file closed meanwhile fails or worse)."""
    asm = StreamingAssembler(tmp_path / "a.flac", SR, "flac", 0)
    entered, go_on, aborting = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []
    real = asm._file.write

    def slow(data: np.ndarray) -> None:
        entered.set()
        go_on.wait(30)
        try:
            real(data)
        except BaseException as e:
            errors.append(e)

    def abort() -> None:
        aborting.set()
        asm.abort()

    asm._file.write = slow  # type: ignore[method-assign]
    task = asyncio.create_task(asm.add(np.zeros(2400, dtype=np.float32), cross_fade=False))
    await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    closer = asyncio.create_task(asyncio.to_thread(abort))
    await asyncio.to_thread(aborting.wait, 30)
    go_on.set()
    await closer
    assert errors == [] and asm._file.closed
    with pytest.raises(asyncio.CancelledError):
        await task
