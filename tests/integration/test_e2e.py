"""End to end on real parts: LocalStack (S3 + SQS + notifications), the real AWS CLI, a real
worker process running f5-tts and ctc-forced-aligner on the tiny bundle."""

from __future__ import annotations

import io
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from pipeline.tts.engine import HOP_LENGTH, F5Engine, duration_frames
from tests.helpers import (
    BUCKET,
    REF_TEXT,
    TTS,
    Holds,
    WorkerProcess,
    aws,
    drop_manifest,
    get_json,
    reference_voice,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

TEXT = "Hello world, this is a test of the pipeline."


@pytest.fixture(scope="module")
def voice(aws_env: dict[str, str]) -> str:
    """The reference voice, uploaded the way users do it: `aws s3 cp`."""
    aws(aws_env, "s3", "cp", str(reference_voice_path()), f"s3://{BUCKET}/voices/alice.wav")
    return "voices/alice.wav"


def read_object(s3: Any, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_bootstrap_is_idempotent_and_matches_the_localstack_hook(aws_env: dict[str, str], sqs: Any) -> None:
    """The LocalStack ready-hook created the resources; the CLI's bootstrap finds nothing to change."""
    out = subprocess.run([TTS, "bootstrap"], env=aws_env, check=True, capture_output=True, text=True).stdout
    assert "nothing to change" in out
    url = sqs.get_queue_url(QueueName="tts-jobs")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"].endswith(":tts-jobs-dlq")


def test_full_job_dropped_with_the_aws_cli(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str, engine: F5Engine, tmp_path: Path
) -> None:
    job_id = "e2e-full-0001"
    speed = 1.25
    drop_manifest(
        aws_env,
        tmp_path,
        job_id,
        {
            "text": TEXT,
            "voice": voice,
            "ref_text": REF_TEXT,
            "speed": speed,
            "nfe_step": 8,
            "seed": 42,
            "subtitles": ["srt", "vtt"],
        },
    )
    status = wait_for_state(s3, job_id, worker=worker)
    assert status["state"] == "COMPLETED", status
    assert [h["state"] for h in status["history"]] == ["QUEUED", "PROCESSING", "COMPLETED"]
    assert status["attempt"] == 1 and status["result_key"] == f"results/{job_id}.json"

    result = get_json(s3, f"results/{job_id}.json")
    assert result is not None
    assert result["ref_text_source"] == "manifest" and result["seed"] == 42 and result["chunks"] == 1
    assert result["model"]["name"] == "f5tts-tiny" and result["model"]["random_weights"] is True
    assert "RANDOM_WEIGHTS" in [w["code"] for w in result["warnings"]]
    assert set(result["timings_ms"]) == {
        "queue_wait",
        "download",
        "synthesis",
        "alignment",
        "encode",
        "upload",
        "total",
    }
    assert all(v >= 0 for v in result["timings_ms"].values())
    # The result is written after the upload it reports: the upload (HTTP round trips to S3) was
    # measured, and the total covers every stage.
    stages = ("download", "synthesis", "alignment", "encode", "upload")
    assert result["timings_ms"]["upload"] > 0, result["timings_ms"]
    assert result["timings_ms"]["total"] >= sum(result["timings_ms"][s] for s in stages)

    # The audio object decodes as 24 kHz mono whose length follows F5-TTS's duration rule.
    audio_meta = result["audio"]
    assert audio_meta["uri"] == f"s3://{BUCKET}/outputs/{job_id}/attempt-1.wav"
    wave, sr = sf.read(io.BytesIO(read_object(s3, f"outputs/{job_id}/attempt-1.wav")), dtype="float32")
    assert sr == 24000 == audio_meta["sample_rate"] and wave.ndim == 1
    wav_ref, wav_sr, _ = reference_voice()
    ref = engine.prepare_reference(wav_ref, wav_sr, REF_TEXT)  # same code, same input as the worker
    assert result["ref_text"] == ref.text
    expected = duration_frames(len(ref.audio), ref.text, TEXT, speed) * HOP_LENGTH
    assert len(wave) == expected
    assert audio_meta["duration_s"] == pytest.approx(expected / 24000, abs=1e-3)

    # Word timings: one per word, monotonic, inside the audio.
    words = result["word_timings"]
    assert [w["word"] for w in words] == TEXT.split()
    assert all(0 <= w["start"] <= w["end"] <= audio_meta["duration_s"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))

    # Subtitles, when asked.
    assert result["subtitles"] == {
        "srt": f"s3://{BUCKET}/outputs/{job_id}/attempt-1.srt",
        "vtt": f"s3://{BUCKET}/outputs/{job_id}/attempt-1.vtt",
    }
    srt = read_object(s3, f"outputs/{job_id}/attempt-1.srt").decode()
    vtt = read_object(s3, f"outputs/{job_id}/attempt-1.vtt").decode()
    assert srt.startswith("1\n") and "-->" in srt
    assert vtt.startswith("WEBVTT\n\n")
    assert " ".join(re.findall(r"^[^\d\n].*$", srt, flags=re.M)) == TEXT

    # The presigned URL really serves the audio.
    with urllib.request.urlopen(audio_meta["url"], timeout=10) as resp:
        assert resp.read() == read_object(s3, f"outputs/{job_id}/attempt-1.wav")


def test_second_job_reuses_the_loaded_model(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str, tmp_path: Path
) -> None:
    """Two jobs in one worker process: the model loads once (worker metric), same worker id."""
    first = f"reuse-a-{time.time_ns()}"
    second = f"reuse-b-{time.time_ns()}"
    for job_id in (first, second):
        out = subprocess.run(
            [
                TTS,
                "submit",
                "--job-id",
                job_id,
                "--text",
                "Once loaded, twice used.",
                "--voice",
                voice,
                "--ref-text",
                REF_TEXT,
                "--nfe-step",
                "4",
                "--wait",
                "--timeout",
                "120",
                "--out",
                str(tmp_path / f"{job_id}.wav"),
            ],
            env=aws_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["job_id"] == job_id
        assert sf.info(str(tmp_path / f"{job_id}.wav")).samplerate == 24000
    workers = {get_json(s3, f"status/{j}.json")["worker"] for j in (first, second)}
    assert len(workers) == 1
    m = worker.metrics()
    assert m["tts_model_loads_total"] == 1.0
    assert m['tts_jobs_total{code="",state="COMPLETED"}'] >= 2
    # What a fleet is sized by (issue 28): audio made, real-time factor, time to first audio.
    audio_s = sum(get_json(s3, f"results/{j}.json")["audio"]["duration_s"] for j in (first, second))  # type: ignore[index]
    assert m['tts_audio_seconds_total{priority="bulk"}'] >= audio_s > 0
    assert m["tts_real_time_factor_count"] >= 2 and m["tts_real_time_factor_sum"] > 0
    assert m['tts_first_audio_seconds_count{priority="bulk"}'] >= 2


def test_malformed_manifest_fails_clearly_and_the_next_good_job_completes(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str, tmp_path: Path
) -> None:
    drop_manifest(aws_env, tmp_path, "bad-json-0001", b'{"text": "unterminated')
    drop_manifest(
        aws_env,
        tmp_path,
        "good-after-bad",
        {"text": "Still here.", "voice": voice, "ref_text": REF_TEXT, "nfe_step": 4},
    )
    bad = wait_for_state(s3, "bad-json-0001", worker=worker)
    assert bad["state"] == "FAILED"
    assert bad["error"]["code"] == "INVALID_JSON" and "not valid JSON" in bad["error"]["message"]
    assert wait_for_state(s3, "good-after-bad", worker=worker)["state"] == "COMPLETED"
    assert worker.proc.poll() is None


@pytest.mark.parametrize(
    ("job_id", "manifest", "code"),
    [
        ("bad-unknown-field", {"text": "hi", "voice": "voices/alice.wav", "volume": 11}, "INVALID_MANIFEST"),
        ("bad-wrong-type", {"text": "hi", "voice": "voices/alice.wav", "speed": "fast"}, "INVALID_MANIFEST"),
        ("bad-no-voice-file", {"text": "hi", "voice": "voices/nobody.wav"}, "VOICE_NOT_FOUND"),
        ("bad-other-bucket", {"text": "hi", "voice": "s3://someone-else/voices/a.wav"}, "VOICE_OUTSIDE_BUCKET"),
        ("bad-traversal", {"text": "hi", "voice": "voices/../status/x.json"}, "INVALID_VOICE_KEY"),
        ("bad-not-audio", {"text": "hi", "voice": "voices/notaudio.wav"}, "VOICE_UNREADABLE"),
        # Real audio in the bucket, but not a voice: another job's output, or outside voices/.
        ("bad-output-as-voice", {"text": "hi", "voice": "outputs/someone/attempt-1.wav"}, "INVALID_VOICE_KEY"),
        ("bad-outside-voices", {"text": "hi", "voice": "s3://tts-jobs/elsewhere/alice.wav"}, "INVALID_VOICE_KEY"),
        ("bad-punctuation", {"text": "?!... --", "voice": "voices/alice.wav"}, "TEXT_NOT_SPEAKABLE"),
        ("bad-control-chars", {"text": "hi\x07there", "voice": "voices/alice.wav"}, "INVALID_MANIFEST"),
        ("bad-too-long", {"text": "word " * 20001, "voice": "voices/alice.wav"}, "TEXT_TOO_LONG"),
        ("bad-no-voice", {"text": "hi"}, "VOICE_REQUIRED"),
    ],
)
def test_bad_input_ends_failed_with_a_specific_code(
    aws_env: dict[str, str],
    s3: Any,
    worker: WorkerProcess,
    voice: str,
    tmp_path: Path,
    job_id: str,
    manifest: dict[str, Any],
    code: str,
) -> None:
    s3.put_object(Bucket=BUCKET, Key="voices/notaudio.wav", Body=b"this is not audio" * 10)
    for key in ("outputs/someone/attempt-1.wav", "elsewhere/alice.wav"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=reference_voice_path().read_bytes())
    drop_manifest(aws_env, tmp_path, job_id, manifest)
    status = wait_for_state(s3, job_id, worker=worker)
    assert status["state"] == "FAILED"
    assert status["error"]["code"] == code, status["error"]
    assert status["error"]["message"]
    assert get_json(s3, f"results/{job_id}.json") is None


def test_invalid_job_id_gets_a_status_where_the_uploader_looks(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str, tmp_path: Path
) -> None:
    drop_manifest(aws_env, tmp_path, "has space+plus", {"text": "hi", "voice": voice})
    status = wait_for_state(s3, "has space+plus", worker=worker)
    assert status["state"] == "FAILED" and status["error"]["code"] == "INVALID_JOB_ID"


def test_empty_ref_text_is_transcribed_with_the_bundle_asr(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str, tmp_path: Path
) -> None:
    drop_manifest(aws_env, tmp_path, "asr-0001", {"text": TEXT, "voice": voice, "nfe_step": 4})
    assert wait_for_state(s3, "asr-0001", worker=worker)["state"] == "COMPLETED"
    result = get_json(s3, "results/asr-0001.json")
    assert result["ref_text_source"] == "asr" and result["ref_text"].strip()


def test_text_too_fast_to_align_completes_with_a_warning_and_the_worker_survives(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str, tmp_path: Path
) -> None:
    """A reference transcript far longer than its clip makes F5-TTS budget very few frames per
    byte, so the audio has fewer 20 ms CTC frames than the text has letters. Unguarded, the
    aligner's C++ code would abort the worker process (see tests/unit/test_align.py)."""
    drop_manifest(
        aws_env,
        tmp_path,
        "too-fast-0001",
        {"text": TEXT, "voice": voice, "ref_text": REF_TEXT * 8, "speed": 3.0, "nfe_step": 2, "subtitles": ["srt"]},
    )
    assert wait_for_state(s3, "too-fast-0001", worker=worker)["state"] == "COMPLETED"
    result = get_json(s3, "results/too-fast-0001.json")
    assert "ALIGNMENT_SKIPPED" in [w["code"] for w in result["warnings"]]
    assert result["word_timings"] == [] and result["subtitles"] == {}
    assert worker.proc.poll() is None


@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg"])
def test_output_formats(
    aws_env: dict[str, str], s3: Any, worker: WorkerProcess, voice: str, tmp_path: Path, fmt: str
) -> None:
    job_id = f"fmt-{fmt}"
    drop_manifest(
        aws_env,
        tmp_path,
        job_id,
        {
            "text": "Formats.",
            "voice": voice,
            "ref_text": REF_TEXT,
            "nfe_step": 2,
            "output_format": fmt,
            "word_timings": False,
        },
    )
    assert wait_for_state(s3, job_id, worker=worker)["state"] == "COMPLETED"
    result = get_json(s3, f"results/{job_id}.json")
    assert result["word_timings"] is None and result["audio"]["format"] == fmt
    info = sf.info(io.BytesIO(read_object(s3, f"outputs/{job_id}/attempt-1.{fmt}")))
    assert info.samplerate == 24000


def test_unrecognised_message_is_parked_in_the_dlq_not_dropped(
    aws_env: dict[str, str], sqs: Any, worker: WorkerProcess
) -> None:
    url = sqs.get_queue_url(QueueName="tts-jobs")["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName="tts-jobs-dlq")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="definitely not an S3 event")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"], WaitTimeSeconds=1)
        for m in resp.get("Messages", []):
            if m["Body"] == "definitely not an S3 event":
                assert "not an S3 event" in m["MessageAttributes"]["tts-reason"]["StringValue"]
                return
    pytest.fail(f"message never reached the DLQ:\n{worker.log()[-3000:]}")


def test_status_and_result_never_load_the_model(aws_env: dict[str, str], s3: Any, worker: WorkerProcess) -> None:
    """`status` and `result` are S3 reads: torch and f5-tts are not even imported."""
    code = (
        "import sys; from pipeline.cli import main\n"
        "rc = main(['status', 'e2e-full-0001']) or main(['result', 'e2e-full-0001'])\n"
        "heavy = [m for m in ('torch', 'f5_tts', 'ctc_forced_aligner', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, 'RC', rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=aws_env, capture_output=True, text=True, timeout=60)
    assert "HEAVY [] RC 0" in out.stdout, out.stdout + out.stderr
    assert '"state": "COMPLETED"' in out.stdout and '"word_timings"' in out.stdout


def test_status_of_an_unknown_job_is_an_error(aws_env: dict[str, str]) -> None:
    out = subprocess.run([TTS, "status", "never-submitted"], env=aws_env, capture_output=True, text=True)
    assert out.returncode == 1 and "no job never-submitted" in out.stderr


def test_a_second_worker_starts_warm_and_idles_out(
    aws_env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    """Same host cache: no model files fetched again; --idle-exit ends it cleanly."""
    w2 = start_worker(aws_env, tmp_path / "w2.log", "--idle-exit", "3")
    wait_ready(w2)
    assert w2.proc.wait(timeout=90) == 0, w2.log()
    assert "(warm cache, 0 files fetched)" in w2.log()
    assert "idle for 3s: exiting" in w2.log()


def test_corrupted_cache_file_is_detected_and_refetched(aws_env: dict[str, str], pushed_bundle: Path) -> None:
    def pull() -> dict[str, Any]:
        out = subprocess.run([TTS, "model", "pull"], env=aws_env, check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    first = pull()
    victim = Path(first["path"]) / "f5" / "vocab.txt"
    victim.write_text(victim.read_text() + "tampered\n")
    second = pull()
    assert second["files_fetched"] == ["f5/vocab.txt"] and not second["warm"]
    assert victim.read_bytes() == (pushed_bundle / "f5" / "vocab.txt").read_bytes()
    assert pull()["warm"]


def test_sigterm_in_the_receive_loop_stops_the_worker_cleanly(
    aws_env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    w = start_worker(aws_env, tmp_path / "w3.log")
    wait_ready(w)
    wait_until(lambda: w.metrics().get("tts_sqs_receives_total", 0) >= 1, "a long poll started", worker=w)
    assert stop_worker(w) == 0, w.log()
    assert "exiting after 0 job(s)" in w.log()


def test_sigterm_during_start_up_exits_cleanly(
    aws_env: dict[str, str], pushed_bundle: Path, holds: Holds, tmp_path: Path
) -> None:
    """Start-up held (fault hook) after the signal handlers are in place and before the model
    loads: SIGTERM then ends the worker with exit 0, without loading the model or consuming."""
    holds.hold("_startup")
    w = start_worker(aws_env, tmp_path / "w4.log", **holds.settings)
    holds.wait_held("_startup", w)
    assert stop_worker(w) == 0, w.log()
    assert "stop requested during start-up" in w.log()
    assert "engine loaded" not in w.log() and " ready: model " not in w.log()
