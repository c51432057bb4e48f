"""Per-job overhead of the worker against a raw S3/SQS floor, on one LocalStack (issue 19).

The floor is a plain boto3 loop doing the calls one job needs and nothing else: put manifest ->
(S3 event) -> receive -> get manifest -> get voice -> put audio -> put result -> put status ->
delete message, with the audio, result and status bodies of a real pipeline job. The pipeline is
a real ``tts-pipeline worker`` on the tiny bundle (CPU, random weights, nfe 2, one sentence, no
word timings). Measured side by side:

- latency of one job alone (manifest PUT -> a client polling every 20 ms sees COMPLETED);
  goal <= 1.2x the floor;
- drain rate of ``jobs`` jobs at equal concurrency (the worker's TTS_MAX_JOBS_IN_FLIGHT = the
  floor's threads); goal >= 0.9x the floor;
- the worker's CPU per job outside the engine: the process's CPU time minus the model thread's
  (``tts_model_cpu_seconds``; torch on one thread, so that is all of the engine's CPU);
  goal <= 50 ms;
- optionally the 200-job load test (tests/faults/test_faults.py, two workers, word timings on).

Importable: ``run(...) -> dict``; ``main()`` prints the figures as JSON.
``--profile DIR`` also records the worker with py-spy during the drain (collapsed stacks).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.ops import localstack_host  # noqa: E402

BIN = Path(sys.executable).parent
TTS = str(BIN / "tts-pipeline")
REF_TEXT = "Some call me nature, others call me mother nature."
PIPE, FLOOR = "ovh-pipe", "ovh-floor"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED")
WORD_TIMINGS = [False]  # run(word_timings=True): as the 200-job load test's jobs (the default)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manifest(i: int) -> bytes:
    return json.dumps(
        {
            "text": f"Load test job {i}, a short sentence.",
            "voice": "voices/alice.wav",
            "ref_text": REF_TEXT,
            "nfe_step": 2,
            "seed": i,
            "word_timings": WORD_TIMINGS[0],
        }
    ).encode()


class Worker:
    def __init__(self, env: dict[str, str], log: Path, jobs_in_flight: int, torch_threads: int = 1) -> None:
        self.port = _free_port()
        self.log_path = log
        self.proc = subprocess.Popen(
            [TTS, "worker"],
            env={
                **env,
                "TTS_METRICS_PORT": str(self.port),
                "TTS_RECEIVE_WAIT_S": "20",
                "TTS_MAX_JOBS_IN_FLIGHT": str(jobs_in_flight),
                # One torch thread: the model thread's CPU time is then all of the engine's CPU
                # (0: torch's default, whose other threads' CPU counts as "outside the engine").
                **(
                    {"OMP_NUM_THREADS": str(torch_threads), "MKL_NUM_THREADS": str(torch_threads)}
                    if torch_threads
                    else {}
                ),
            },
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while " ready: model " not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def cpu(self) -> tuple[float, float, float]:
        """(the worker process's CPU seconds, the engine's, its child processes' (the aligner)) so far."""
        import psutil

        proc = psutil.Process(self.proc.pid)
        t = proc.cpu_times()
        children = 0.0
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                children += c.user + c.system
        return t.user + t.system, self.metric("tts_model_cpu_seconds_total"), children

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _get_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _wait_completed(s3: Any, bucket: str, job: str, timeout_s: float = 120, poll_s: float = 0.02) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = _get_json(s3, bucket, f"status/{job}.json")
        if st and st["state"] in TERMINAL:
            if st["state"] != "COMPLETED":
                raise RuntimeError(f"{job} ended {st['state']}: {st.get('error')}")
            return time.monotonic()
        time.sleep(poll_s)
    raise TimeoutError(job)


def _queue_empty(sqs: Any, queue: str, timeout_s: float, poll_s: float = 0.2) -> None:
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        if int(a["ApproximateNumberOfMessages"]) == 0 and int(a["ApproximateNumberOfMessagesNotVisible"]) == 0:
            return
        time.sleep(poll_s)
    raise TimeoutError(queue)


def _finished(s3: Any, sqs: Any, bucket: str, jobs: list[str], timeout_s: float) -> float:
    """Wait until every job is COMPLETED; the latest finished_at (epoch seconds). Watches the queue
    (one cheap call per 0.1 s) and reads the statuses only once it is empty: polling every status
    would load LocalStack, the thing both sides share, more the longer a side takes."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, float] = {}
    while len(last) < len(jobs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(jobs) - len(last)} jobs not finished")
        _queue_empty(sqs, bucket, timeout_s, poll_s=0.1)
        for job in jobs:
            if job in last:
                continue
            st = _get_json(s3, bucket, f"status/{job}.json")
            if st and st["state"] in TERMINAL:
                if st["state"] != "COMPLETED":
                    raise RuntimeError(f"{job} ended {st['state']}: {st.get('error')}")
                last[job] = _epoch(st["finished_at"])
            else:
                time.sleep(0.1)
                break
    return max(last.values())


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _put_all(s3: Any, bucket: str, jobs: list[str], first: int) -> float:
    """PUT the manifests (4 at a time); returns the wall clock of the first PUT."""
    t0 = time.time()
    with cf.ThreadPoolExecutor(4) as ex:
        list(
            ex.map(
                lambda ij: s3.put_object(Bucket=bucket, Key=f"inbox/{ij[1]}.json", Body=manifest(first + ij[0])),
                enumerate(jobs),
            )
        )
    return t0


class Floor:
    """The minimal calls of one job, on ``threads`` threads, as fast as they go."""

    def __init__(self, bucket: str, queue: str, bodies: dict[str, bytes], threads: int) -> None:
        from pipeline.cloud.aws import sync_client

        self.bucket, self.bodies = bucket, bodies
        self.s3, self.sqs = sync_client("s3"), sync_client("sqs")
        self.url = self.sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        s3, sqs, b = self.s3, self.sqs, self.bucket
        while not self.stop_flag.is_set():
            msgs = sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages", [])
            for m in msgs:
                for rec in json.loads(m["Body"]).get("Records", []):
                    key = urllib.parse.unquote_plus(rec["s3"]["object"]["key"])
                    job = key.removeprefix("inbox/").removesuffix(".json")
                    json.loads(s3.get_object(Bucket=b, Key=key)["Body"].read())
                    s3.get_object(Bucket=b, Key="voices/alice.wav")["Body"].read()
                    sse = {"ServerSideEncryption": "AES256"}
                    s3.put_object(Bucket=b, Key=f"outputs/{job}/attempt-1.wav", Body=self.bodies["audio"], **sse)
                    s3.put_object(Bucket=b, Key=f"results/{job}.json", Body=self.bodies["result"], **sse)
                    status = json.loads(self.bodies["status"])
                    status.update(job_id=job, state="COMPLETED", finished_at=_iso_now())
                    s3.put_object(Bucket=b, Key=f"status/{job}.json", Body=json.dumps(status).encode(), **sse)
                sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])

    def close(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=5)


def _iso_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def _latency(s3: Any, sqs: Any, bucket: str, prefix: str, singles: int, pipeline: bool = False) -> dict[str, Any]:
    """One job alone, ``singles`` times: manifest PUT -> a client polling every 20 ms sees COMPLETED."""
    lat, engine = [], []
    for i in range(singles):
        _queue_empty(sqs, bucket, 60)
        job = f"{prefix}-single-{i}"
        t0 = time.monotonic()
        s3.put_object(Bucket=bucket, Key=f"inbox/{job}.json", Body=manifest(i))
        lat.append(_wait_completed(s3, bucket, job) - t0)
        if pipeline:
            result = _get_json(s3, bucket, f"results/{job}.json") or {}
            engine.append(result["timings_ms"]["synthesis"] / 1000)
    out = {"latency_s_median": round(statistics.median(lat), 4), "latency_s_all": [round(x, 4) for x in lat]}
    if engine:  # the pipeline's: what is left once its synthesis stage (the model) is taken out
        rest = [a - b for a, b in zip(lat, engine, strict=True)]
        out["latency_minus_synthesis_s_median"] = round(statistics.median(rest), 4)
    return out


def _drain(s3: Any, sqs: Any, bucket: str, prefix: str, jobs: int, cpu: Any = None) -> dict[str, Any]:
    """``jobs`` manifests PUT at once; first PUT -> the last job's finished_at."""
    _queue_empty(sqs, bucket, 60)
    batch = [f"{prefix}-drain-{i:04d}" for i in range(jobs)]
    before = cpu() if cpu else None
    t0 = _put_all(s3, bucket, batch, 1000)
    end = _finished(s3, sqs, bucket, batch, 600)
    _queue_empty(sqs, bucket, 60)
    out: dict[str, Any] = {
        "drain_jobs": jobs,
        "drain_s": round(end - t0, 3),
        "drain_jobs_per_s": round(jobs / (end - t0), 2),
    }
    if cpu:
        after = cpu()
        proc, engine = (after[0] - before[0]) / jobs, (after[1] - before[1]) / jobs
        out.update(
            child_processes_cpu_ms_per_job=round(1000 * (after[2] - before[2]) / jobs, 1),
            cpu_ms_per_job=round(1000 * proc, 1),
            engine_cpu_ms_per_job=round(1000 * engine, 1),
            outside_engine_cpu_ms_per_job=round(1000 * (proc - engine), 1),
        )
    return out


def load_test() -> dict[str, Any]:
    """The 200-job load test (two workers, word timings on), as the fault suite runs it."""
    name = "test_load_200_jobs_two_workers_none_lost_none_duplicated_memory_flat"
    cmd = [str(BIN / "pytest"), f"tests/faults/test_faults.py::{name}", "-x", "-q", "-p", "no:cacheprovider"]
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    figures = json.loads((ROOT / ".cache" / "reliability" / f"{name}.json").read_text())
    return {"seconds": figures["seconds"], "jobs_per_second": figures["jobs_per_second"]}


def run(
    *,
    jobs: int = 60,
    singles: int = 7,
    concurrency: int = 4,
    load: bool = False,
    profile: Path | None = None,
    workdir: Path | None = None,
    torch_threads: int = 1,
    word_timings: bool = False,
) -> dict[str, Any]:
    """Start a LocalStack, push the tiny bundle, measure floor and pipeline; returns the figures."""
    WORD_TIMINGS[0] = word_timings
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="overhead-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    state = work / "localstack"
    inst = localstack_host.start(port=_free_port(), state_dir=state)
    worker: Worker | None = None
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])]),
        "AWS_ENDPOINT_URL": inst.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TTS_BUCKET": PIPE,
        "TTS_QUEUE": PIPE,
        "TTS_MODEL_NAME": "f5tts-tiny",
        "TTS_CACHE_DIR": str(work / "model-cache"),
        "TTS_DEVICE": "cpu",
    }
    os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
    try:
        from importlib.resources import files

        from pipeline.cloud.aws import sync_client
        from pipeline.ops.bootstrap import bootstrap

        s3, sqs = sync_client("s3"), sync_client("sqs")
        voice = Path(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav"))).read_bytes()
        for name in (PIPE, FLOOR):
            bootstrap(name, name)
            s3.put_object(Bucket=name, Key="voices/alice.wav", Body=voice)
        bundle = work / "tiny"
        subprocess.run([TTS, "model", "build-tiny", str(bundle)], env=env, check=True, capture_output=True)
        subprocess.run([TTS, "model", "push", str(bundle)], env=env, check=True, capture_output=True)
        worker = Worker(env, work / "worker.log", concurrency, torch_threads)
        # Warm-up (first-call costs), and the bodies the floor writes: a real job's.
        for i in range(3):
            s3.put_object(Bucket=PIPE, Key=f"inbox/warm-{i}.json", Body=manifest(i))
            _wait_completed(s3, PIPE, f"warm-{i}")
        result = _get_json(s3, PIPE, "results/warm-0.json")
        assert result is not None
        audio_key = result["audio"]["uri"].removeprefix(f"s3://{PIPE}/")
        bodies = {
            "audio": s3.get_object(Bucket=PIPE, Key=audio_key)["Body"].read(),
            "result": s3.get_object(Bucket=PIPE, Key="results/warm-0.json")["Body"].read(),
            "status": s3.get_object(Bucket=PIPE, Key="status/warm-0.json")["Body"].read(),
        }
        floor = Floor(FLOOR, FLOOR, bodies, concurrency)
        try:
            for i in range(3):  # the floor's own warm-up
                s3.put_object(Bucket=FLOOR, Key=f"inbox/warm-{i}.json", Body=manifest(i))
                _wait_completed(s3, FLOOR, f"warm-{i}")
            floor_fig = {**_latency(s3, sqs, FLOOR, "floor", singles), **_drain(s3, sqs, FLOOR, "floor", jobs)}
        finally:
            floor.close()
        spy = None
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [str(BIN / "py-spy"), "record", "--pid", str(worker.proc.pid), "--format", "raw", "--nonblocking",
                 "-r", "200", "-o", str(profile / "worker.collapsed")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)
        ls_log = state / "localstack.log"
        mark = ls_log.stat().st_size
        pipe_fig = _drain(s3, sqs, PIPE, "pipe", jobs, cpu=worker.cpu)
        calls = _count_calls(ls_log, mark, jobs)
        pipe_fig = {**_latency(s3, sqs, PIPE, "pipe", singles, pipeline=True), **pipe_fig}
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
    finally:
        if worker:
            worker.stop()
        localstack_host.stop(state)
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {
        "machine": (
            f"{os.cpu_count()} CPU cores (shared), tiny random bundle on CPU, "
            f"torch threads {torch_threads or 'default'}, nfe 2, one sentence, "
            f"{'with' if word_timings else 'no'} word timings, "
            f"{concurrency} jobs in flight / floor threads"
        ),
        "floor": floor_fig,
        "pipeline": pipe_fig,
        "ratios": {
            "latency_vs_floor": round(pipe_fig["latency_s_median"] / floor_fig["latency_s_median"], 2),
            "latency_minus_synthesis_vs_floor": round(
                pipe_fig["latency_minus_synthesis_s_median"] / floor_fig["latency_s_median"], 2
            ),
            "drain_vs_floor": round(pipe_fig["drain_jobs_per_s"] / floor_fig["drain_jobs_per_s"], 2),
        },
        "goals": {"latency_vs_floor": "<= 1.2", "drain_vs_floor": ">= 0.9", "outside_engine_cpu_ms_per_job": "<= 50"},
        "calls": calls,
    }
    if load:
        figures["load_200"] = load_test()
    return figures


def _count_calls(log: Path, offset: int, jobs: int) -> dict[str, float]:
    """S3/SQS calls per job during the drain, by operation, from LocalStack's request log (the
    harness's own status polls and manifest PUTs included: GetObject and PutObject over-count)."""
    import re

    counts: dict[str, int] = {}
    with log.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            m = re.search(r"AWS (\w+)\.(\w+) =>", line)
            if m:
                counts[f"{m[1]}.{m[2]}"] = counts.get(f"{m[1]}.{m[2]}", 0) + 1
    return {k: round(v / jobs, 2) for k, v in sorted(counts.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=60, help="jobs in the drain run")
    ap.add_argument("--singles", type=int, default=7, help="one-job-alone latency samples")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--load", action="store_true", help="also run the 200-job load test")
    ap.add_argument("--profile", type=Path, help="py-spy the worker during the drain into this folder")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--torch-threads", type=int, default=1, help="the worker's torch threads (0: torch's default)")
    ap.add_argument("--word-timings", action="store_true", help="jobs ask for word timings (the load test's do)")
    ap.add_argument("--workdir", type=Path, help="keep LocalStack's state and logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    figures = run(
        jobs=args.jobs,
        singles=args.singles,
        concurrency=args.concurrency,
        load=args.load,
        profile=args.profile,
        workdir=args.workdir,
        torch_threads=args.torch_threads,
        word_timings=args.word_timings,
    )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
