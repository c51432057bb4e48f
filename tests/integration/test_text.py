"""What the text means, end to end on the shared worker: normalization (digits get real timings),
speech marks tied to the client's text, pauses, lexicons, markup errors, and dialogue jobs."""

from __future__ import annotations

import io
import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import (
    BUCKET,
    REF_TEXT,
    TTS,
    WorkerProcess,
    aws,
    drop_manifest,
    get_json,
    reference_voice,
    wait_for_state,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def library(aws_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two library voices: alice (f5-tts's example recording) and bob (the same recording, faster
    and higher: a different reference for the model), added with the CLI users run."""
    from pipeline.tts import audio as audio_utils

    tmp = tmp_path_factory.mktemp("library")
    wave, sr, _ = reference_voice()
    sf.write(tmp / "alice.wav", wave, sr)
    bob = audio_utils.resample(audio_utils.to_mono(wave), sr, int(sr / 1.2))
    sf.write(tmp / "bob.wav", bob, sr)
    for name in ("alice", "bob"):
        subprocess.run(
            [TTS, "voices", "add", f"lib-{name}", str(tmp / f"{name}.wav"), "--ref-text", REF_TEXT],
            env=aws_env,
            check=True,
            capture_output=True,
        )
    return "lib-alice", "lib-bob"


def _run(aws_env: dict[str, str], s3: Any, worker: WorkerProcess, tmp: Path, job_id: str, **fields: Any) -> dict:
    manifest = {"nfe_step": 2, "seed": 5, **fields}
    drop_manifest(aws_env, tmp, job_id, manifest)
    status = wait_for_state(s3, job_id, worker=worker, timeout_s=600)
    return status


def _result(s3: Any, job_id: str) -> dict[str, Any]:
    result = get_json(s3, f"results/{job_id}.json")
    assert result is not None
    return result


def _audio(s3: Any, result: dict[str, Any]) -> tuple[np.ndarray, int]:
    key = result["audio"]["uri"].removeprefix(f"s3://{BUCKET}/")
    return sf.read(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()), dtype="int16")


def _check_marks(text: str, result: dict[str, Any]) -> None:
    """Word timings are monotonic, inside the audio, point at the exact source substrings, and
    cover every word of the text that has a letter or digit."""
    words = result["word_timings"]
    duration = result["audio"]["duration_s"]
    prev = 0.0
    for w in words:
        assert text[w["text_start"] : w["text_end"]] == w["word"]
        assert prev <= w["start"] <= w["end"] <= duration + 1e-3
        prev = w["start"]
    covered = [(w["text_start"], w["text_end"]) for w in words]
    for m in re.finditer(r"\S+", text):
        if any(c.isalnum() for c in m.group()) and not m.group().startswith("[pause"):
            assert any(s < m.end() and e > m.start() for s, e in covered), f"no timing for {m.group()!r}"


def test_digits_only_text_gets_real_word_timings(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, library: tuple[str, str], tmp_path: Path
) -> None:
    text = "1234 5678, 90!"
    status = _run(aws_env, s3, worker, tmp_path, "text-digits", text=text, voice=library[0])
    assert status["state"] == "COMPLETED", status
    result = _result(s3, "text-digits")
    assert not re.search(r"\d", result["normalized_text"]), result["normalized_text"]
    words = result["word_timings"]
    assert [w["word"] for w in words] == ["1234", "5678,", "90!"]
    assert all(w["end"] > w["start"] for w in words), words
    assert all(w["spoken"] and not re.search(r"\d", w["spoken"]) for w in words), words
    _check_marks(text, result)
    assert result["sentences"] and result["sentences"][0]["text_start"] == 0


def test_pause_is_real_silence_and_shifts_the_timings(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, library: tuple[str, str], tmp_path: Path
) -> None:
    text = "It costs $3.50 today. [pause:1.5s] Dr. Smith arrived at 10:30."
    status = _run(aws_env, s3, worker, tmp_path, "text-pause", text=text, voice=library[0], subtitles=["vtt"])
    assert status["state"] == "COMPLETED", status
    result = _result(s3, "text-pause")
    [pause] = result["pauses"]
    assert text[pause["text_start"] : pause["text_end"]] == "[pause:1.5s]"
    assert pause["end"] - pause["start"] == pytest.approx(1.5, abs=1e-3)
    pcm, sr = _audio(s3, result)
    assert not np.any(pcm[round(pause["start"] * sr) : round(pause["end"] * sr)])  # silence, sample-exact
    before = [w for w in result["word_timings"] if w["text_end"] <= pause["text_start"]]
    after = [w for w in result["word_timings"] if w["text_start"] >= pause["text_end"]]
    assert before and after
    assert max(w["end"] for w in before) <= pause["start"] + 1e-3
    assert min(w["start"] for w in after) >= pause["end"] - 1e-3
    money = next(w for w in result["word_timings"] if w["word"] == "$3.50")
    assert "dollars" in money["spoken"] and "fifty" in money["spoken"]
    assert "[pause" not in result["normalized_text"] and "doctor" in result["normalized_text"].lower()
    _check_marks(text, result)
    assert [s["text"] for s in result["sentences"]] == ["It costs $3.50 today.", "Dr. Smith arrived at 10:30."]
    vtt = s3.get_object(Bucket=BUCKET, Key=result["subtitles"]["vtt"].removeprefix(f"s3://{BUCKET}/"))["Body"]
    assert "$3.50" in vtt.read().decode()  # subtitles show what the client wrote


def test_lexicon_inline_beats_pls_file_and_normalization(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, library: tuple[str, str], tmp_path: Path
) -> None:
    pls = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<lexicon version="1.0" xmlns="http://www.w3.org/2005/01/pronunciation-lexicon" alphabet="ipa" '
        'xml:lang="en-US"><lexeme><grapheme>GIF</grapheme><alias>gift</alias></lexeme>'
        "<lexeme><grapheme>SQL</grapheme><alias>sequel</alias></lexeme></lexicon>"
    )
    path = tmp_path / "tech.pls"
    path.write_text(pls)
    aws(aws_env, "s3", "cp", str(path), f"s3://{BUCKET}/lexicons/tech.pls")
    text = "A GIF of SQL on the 2nd floor."
    status = _run(
        aws_env,
        s3,
        worker,
        tmp_path,
        "text-lexicon",
        text=text,
        voice=library[0],
        lexicons=["lexicons/tech.pls"],
        lexicon={"GIF": "jif", "2nd": "second-ish"},
    )
    assert status["state"] == "COMPLETED", status
    result = _result(s3, "text-lexicon")
    spoken = {w["word"]: w.get("spoken") for w in result["word_timings"]}
    assert spoken["GIF"] == "jif"  # the manifest's entry beats the file's
    assert spoken["SQL"] == "sequel"  # the file's entry
    assert spoken["2nd"] == "second-ish"  # the lexicon beats normalization
    _check_marks(text, result)


@pytest.mark.parametrize(
    ("job_id", "fields", "code"),
    [
        ("text-ssml", {"text": 'Hello <break time="1s"/> there.'}, "INVALID_MARKUP"),
        ("text-bad-pause", {"text": "Hello [pause:abc] there."}, "INVALID_MARKUP"),
        ("text-long-pause", {"text": "Hello [pause:60s] there."}, "INVALID_MARKUP"),
        ("text-only-pause", {"text": "[pause:1s]"}, "TEXT_NOT_SPEAKABLE"),
        # issue 25: one 100,000-character "word" (was ~35 s of a quadratic regex, then SYNTHESIS_FAILED)
        ("text-long-word", {"text": "." * 99_999 + "a"}, "TEXT_NOT_SPEAKABLE"),
        ("text-no-pls", {"text": "Hello.", "lexicons": ["lexicons/missing.pls"]}, "LEXICON_NOT_FOUND"),
        ("text-pls-outside", {"text": "Hello.", "lexicons": ["results/x.json"]}, "INVALID_LEXICON"),
        ("text-both", {"text": "Hello.", "segments": [{"text": "Hi."}]}, "INVALID_MANIFEST"),
    ],
)
def test_bad_text_fails_with_a_clear_code(
    aws_env: dict[str, str],
    s3: Any,
    worker: WorkerProcess,
    library: tuple[str, str],
    tmp_path: Path,
    job_id: str,
    fields: dict[str, Any],
    code: str,
) -> None:
    status = _run(aws_env, s3, worker, tmp_path, job_id, voice=library[0], **fields)
    assert status["state"] == "FAILED" and status["error"]["code"] == code, status
    assert status["error"]["message"]
    assert worker.proc.poll() is None


def test_dialogue_with_two_library_voices(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, library: tuple[str, str], tmp_path: Path
) -> None:
    alice, bob = library
    segments = [
        {"voice": alice, "text": "Did you see the 3 boats?", "pause_after_s": 0.5},
        {"voice": bob, "text": "Yes, all of them. [pause:0.4s] They left at 9 am.", "speed": 1.2},
        {"voice": alice, "text": "Good."},
    ]
    status = _run(aws_env, s3, worker, tmp_path, "text-dialogue", segments=segments, subtitles=["srt", "vtt"])
    assert status["state"] == "COMPLETED", status
    result = _result(s3, "text-dialogue")
    segs = result["segments"]
    assert [s["speaker"] for s in segs] == [alice, bob, alice]
    assert segs[0]["voice_key"] != segs[1]["voice_key"] and segs[0]["voice_key"] == segs[2]["voice_key"]
    for a, b in itertools.pairwise(segs):
        assert a["end"] <= b["start"] + 1e-3
    assert segs[1]["start"] - segs[0]["end"] >= 0.5 - 1e-3  # pause_after_s
    assert len(result["pauses"]) == 2
    for w in result["word_timings"]:
        seg = segs[w["segment"]]
        assert w["speaker"] == seg["speaker"]
        assert seg["start"] - 1e-3 <= w["start"] <= w["end"] <= seg["end"] + 1e-3
        assert segments[w["segment"]]["text"][w["text_start"] : w["text_end"]] == w["word"]
    assert {w["segment"] for w in result["word_timings"]} == {0, 1, 2}
    subs = {
        fmt: s3.get_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))["Body"].read().decode()
        for fmt, uri in result["subtitles"].items()
    }
    assert f"<v {bob}>" in subs["vtt"] and f"<v {alice}>" in subs["vtt"]
    assert f"{bob}: " in subs["srt"]
    assert json.dumps(result)  # serialisable as stored


# -- Chinese (issue 20) ------------------------------------------------------------------------

ZH_TEXT = "你好，世界。今天是2026年12月1日，气温是15度，涨了3.5%。我用 iPhone 15 Pro 去银行拍的。"


def test_a_mixed_chinese_english_job_is_spoken_and_timed_word_by_word(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, library: tuple[str, str], tmp_path: Path
) -> None:
    """Numbers, a date and a percentage read in Mandarin, English words kept, a polyphone's reading
    picked with pinyin (银行 yin2 hang2): one timed word per segmented word, each pointing at its
    characters, no digit left in what was spoken, subtitles that break only between words."""
    from pipeline.text import normalize

    status = _run(
        aws_env,
        s3,
        worker,
        tmp_path,
        "text-zh",
        text=ZH_TEXT,
        voice=library[0],
        language="zh",
        lexicon={"银行": "yin2 hang2"},
        subtitles=["srt", "vtt"],
    )
    assert status["state"] == "COMPLETED", status
    result = _result(s3, "text-zh")
    assert result["languages"] == {"zho": len(ZH_TEXT)}
    spoken = result["normalized_text"]
    assert not re.search(r"\d", spoken.replace("{yin2 hang2}", "")), spoken
    assert "二零二六年十二月一日" in spoken and "百分之三点五" in spoken and "iPhone" in spoken
    assert "{yin2 hang2}" in spoken
    # One timing per segmented word (the tokens the front-end made), in order, slicing the source.
    tokens = [t for t in normalize.normalize(ZH_TEXT, "zho", {"银行": "yin2 hang2"}) if t.spoken]
    words = result["word_timings"]
    assert [(w["text_start"], w["text_end"]) for w in words] == [(t.start, t.end) for t in tokens]
    assert len(words) > 15  # not one timing for a whole sentence
    assert all(ZH_TEXT[w["text_start"] : w["text_end"]] == w["word"] for w in words)
    assert all(w["end"] > w["start"] for w in words), [w for w in words if w["end"] <= w["start"]]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    bank = next(w for w in words if w["word"].startswith("银行"))
    assert bank["spoken"].startswith("{yin2 hang2}")
    for fmt in ("srt", "vtt"):
        body = s3.get_object(Bucket=BUCKET, Key=result["subtitles"][fmt].removeprefix(f"s3://{BUCKET}/"))
        cues = _cue_texts(body["Body"].read().decode())
        assert "".join(c.replace(" ", "") for c in cues) == "".join(w["word"].replace(" ", "") for w in words)
        source_words = [w["word"] for w in words]
        for cue in cues:  # each cue is whole words, joined as Chinese is written
            assert _splits_into(cue.replace(" ", ""), [w.replace(" ", "") for w in source_words]), cue


def _cue_texts(doc: str) -> list[str]:
    """The text lines of an SRT or WebVTT document's cues."""
    out = []
    for block in doc.strip().split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln and "-->" not in ln and not ln.isdigit() and ln != "WEBVTT"]
        out.extend(lines)
    return out


def _splits_into(cue: str, words: list[str]) -> bool:
    """``cue`` is a run of consecutive whole ``words``."""
    for i in range(len(words)):
        joined = ""
        for w in words[i:]:
            joined += w
            if joined == cue:
                return True
            if len(joined) >= len(cue):
                break
    return False


def test_a_job_in_a_language_the_model_does_not_speak_fails_before_any_model_call(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, library: tuple[str, str], tmp_path: Path
) -> None:
    status = _run(
        aws_env, s3, worker, tmp_path, "text-jpn", text="こんにちは、元気ですか？", voice=library[0], language="jpn"
    )
    assert status["state"] == "FAILED" and status["error"]["code"] == "UNSUPPORTED_LANGUAGE", status
    assert "eng, zho" in status["error"]["message"]
    assert [h["state"] for h in status["history"]] == ["QUEUED", "PROCESSING", "FAILED"]
    assert get_json(s3, "results/text-jpn.json") is None


def test_auto_detects_the_language_sentence_by_sentence(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, library: tuple[str, str], tmp_path: Path
) -> None:
    text = "The meeting starts at 10:30 tomorrow morning. 会议明天上午10:30开始。"
    status = _run(aws_env, s3, worker, tmp_path, "text-auto", text=text, voice=library[0], language="auto")
    assert status["state"] == "COMPLETED", status
    result = _result(s3, "text-auto")
    assert set(result["languages"]) == {"eng", "zho"}
    assert [s["language"] for s in result["sentences"]] == ["eng", "zho"]
    assert "ten thirty" in result["normalized_text"] and "十点三十分" in result["normalized_text"]
    bad = _run(
        aws_env,
        s3,
        worker,
        tmp_path,
        "text-auto-jpn",
        text="Good morning to you all. こんにちは、お元気ですか？",
        voice=library[0],
        language="auto",
    )
    assert bad["state"] == "FAILED" and bad["error"]["code"] == "UNSUPPORTED_LANGUAGE", bad
