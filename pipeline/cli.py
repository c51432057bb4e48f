"""``tts-pipeline``: the command line. Heavy imports (torch, f5-tts) happen only in the commands
that need a model (``worker``, ``model build-tiny``); ``status``, ``result``, ``submit``, ``wait``
and ``jobs`` are plain S3 calls.

For people and for scripts: on a terminal ``status``, ``wait``, ``submit`` and ``jobs`` print a
summary or a table and waiting shows a progress bar (``pipeline.client.progress``); when stdout is not a
terminal, or with ``--json``, they print the JSON documents exactly as before (and waiting writes
plain progress lines to stderr). Exit codes do not depend on either."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config import get_settings

log = logging.getLogger("tts-pipeline")
T = TypeVar("T")


def _job_id(value: str) -> str:
    """Job ids are checked with the worker's own rule before any S3 call is made with them."""
    from pipeline.jobs import keys

    if not keys.is_valid_job_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a job id (letters, digits, '.', '_', '-'; 1-128)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = get_settings()
    from pipeline.runtime import logs

    logs.setup(settings.log_level, settings.log_format)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except _CliError as e:
        from pipeline.client.terminal import safe_lines

        # Messages quote what the bucket holds (a result's URI, a voice record): escaped.
        print(f"tts-pipeline: {safe_lines(e)}", file=sys.stderr)
        return 1


class _CliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tts-pipeline", description="Event-driven voice cloning: S3 inbox -> SQS -> F5-TTS worker -> S3."
    )
    sub = p.add_subparsers(metavar="COMMAND")

    ls = sub.add_parser("localstack", help="embedded LocalStack (host mode, no Docker)")
    ls_sub = ls.add_subparsers(metavar="ACTION", required=True)
    for name, fn, help_ in (
        ("start", _ls_start, "start and wait until ready (idempotent)"),
        ("stop", _ls_stop, "stop it"),
        ("status", _ls_status, "is it running?"),
    ):
        c = ls_sub.add_parser(name, help=help_)
        c.add_argument("--port", type=int, default=4566)
        c.add_argument("--state-dir", type=Path, default=None, help="default: <repo>/.localstack")
        c.set_defaults(handler=fn)

    c = sub.add_parser("bootstrap", help="create bucket, queue, DLQ and the S3->SQS notification (idempotent)")
    c.set_defaults(handler=_bootstrap)

    model = sub.add_parser("model", help="model bundles")
    m_sub = model.add_subparsers(metavar="ACTION", required=True)
    c = m_sub.add_parser("build-tiny", help="build a tiny random F5-TTS/vocoder/aligner/ASR bundle (offline)")
    c.add_argument("dir", type=Path)
    c.set_defaults(handler=_model_build_tiny)
    c = m_sub.add_parser("push", help="upload a bundle to the S3 model cache (bundle.json last)")
    c.add_argument("dir", type=Path)
    c.add_argument("--no-latest", action="store_true", help="do not move models/<name>/latest")
    c.set_defaults(handler=_model_push)
    c = m_sub.add_parser("seed", help="download real weights from the Hugging Face hub into a bundle and push it")
    c.add_argument("--name", default="F5TTS_v1_Base", help="F5TTS_v1_Base (default), F5TTS_Base, E2TTS_Base")
    c.add_argument("--config", type=Path, default=None, help="architecture yaml (f5-tts configs/*.yaml format)")
    c.add_argument("--checkpoint", default=None, metavar="REPO:PATH", help="override the checkpoint on the hub")
    c.add_argument("--out", type=Path, default=None, help="bundle directory (default: a temp dir, removed)")
    c.add_argument("--no-asr", action="store_true", help="no Whisper model: jobs must then give ref_text")
    c.add_argument(
        "--no-aligner-torch",
        action="store_true",
        help="no transformers weights of the aligner: GPU workers align on CPU",
    )
    c.add_argument("--no-push", action="store_true", help="only build the bundle (needs --out)")
    c.add_argument(
        "--languages",
        default="eng,zho",
        help="what the model speaks, ISO 639-3, comma-separated (bundle.json `languages`; default: the F5-TTS "
        "model cards' eng,zho); jobs in other languages fail UNSUPPORTED_LANGUAGE",
    )
    c.set_defaults(handler=_model_seed)
    c = m_sub.add_parser("verify", help="check a bundle's files against its bundle.json (sizes and sha256)")
    c.add_argument("dir", type=Path, nargs="?", help="a local bundle dir; default: pull NAME/VERSION and check it")
    c.add_argument("--name", default=None)
    c.add_argument("--version", default=None)
    c.set_defaults(handler=_model_verify)
    c = m_sub.add_parser("list", help="bundles in the S3 model cache (name and latest version)")
    c.set_defaults(handler=_model_list)
    c = m_sub.add_parser("pull", help="sync a bundle from S3 into the local cache, as the worker does")
    c.add_argument("name", nargs="?", help="default: TTS_MODEL_NAME")
    c.add_argument("version", nargs="?", help="default: TTS_MODEL_VERSION")
    c.set_defaults(handler=_model_pull)

    voices = sub.add_parser("voices", help="the voice library (voices/<name>/)")
    v_sub = voices.add_subparsers(metavar="ACTION", required=True)
    c = v_sub.add_parser("add", help="add or replace a named voice")
    c.add_argument("name")
    c.add_argument("file", type=Path)
    c.add_argument("--ref-text", default="", help="its transcript; omit to have the first job transcribe it")
    c.set_defaults(handler=_voices_add)
    c = v_sub.add_parser("list", help="list the library")
    c.set_defaults(handler=_voices_list)
    c = v_sub.add_parser("rm", help="remove a named voice")
    c.add_argument("name")
    c.set_defaults(handler=_voices_rm)

    c = sub.add_parser("worker", help="run the GPU/CPU worker")
    c.add_argument("--max-jobs", type=int, default=None, help="exit after N jobs (duplicate deliveries do not count)")
    c.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS", help="exit after an idle period")
    c.set_defaults(handler=_worker)

    c = sub.add_parser(
        "status",
        help="show a job's status: a summary on a terminal, the status JSON when piped or with --json",
    )
    c.add_argument("job_id", type=_job_id)
    c.add_argument("--json", action="store_true", help="print the status JSON even on a terminal")
    c.set_defaults(handler=_status)

    from pipeline.jobs.contract import JobState

    c = sub.add_parser(
        "jobs",
        help="list recent jobs, most recently updated first: a table on a terminal, JSON when piped",
        description="List recent jobs from the status documents (status/<job_id>.json; a manifest not picked "
        "up yet counts as QUEUED), most recently updated first. On a terminal: a table; when stdout is not a "
        "terminal, or with --json: a JSON array of the status documents. With --state, documents are read from "
        "the newest down until LIMIT match, but never more than 10 x LIMIT of them: older matches are then "
        "not listed (a note on stderr says so).",
    )
    c.add_argument(
        "--state",
        type=str.upper,
        choices=[s.value for s in JobState],
        default=None,
        metavar="STATE",
        help=f"only jobs in this state ({', '.join(s.value for s in JobState)}; any case)",
    )
    c.add_argument("--limit", type=_positive_int, default=20, help="at most this many jobs (default 20)")
    c.add_argument("--json", action="store_true", help="print JSON even on a terminal")
    c.set_defaults(handler=_jobs)

    c = sub.add_parser("cancel", help="cancel a job (writes cancel/<job_id>; a QUEUED job is cancelled at once)")
    c.add_argument("job_id", type=_job_id)
    c.set_defaults(handler=_cancel)

    dlq = sub.add_parser("dlq", help="inspect and replay dead letters")
    d_sub = dlq.add_subparsers(metavar="ACTION", required=True)
    c = d_sub.add_parser("list", help="show the messages in the DLQ (they stay there)")
    c.add_argument("--max", type=int, default=100)
    c.set_defaults(handler=_dlq_list)
    c = d_sub.add_parser("redrive", help="move DLQ messages back to the job queue (jobs reset to QUEUED)")
    c.add_argument("--max", type=int, default=1000)
    c.add_argument("--include-unrecognised", action="store_true", help="also replay non-S3-event messages")
    c.set_defaults(handler=_dlq_redrive)

    c = sub.add_parser("reconcile", help="find orphaned and stuck jobs; re-enqueue, expire or fail them")
    c.add_argument(
        "--older-than",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="only act on manifests/statuses unchanged this long (default 3600)",
    )
    c.add_argument(
        "--lookback",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip objects older than this (default: TTS_JOB_TTL_S + 1 day)",
    )
    c.add_argument("--all", action="store_true", help="no look-back window: scan every job")
    c.add_argument("--every", type=float, default=None, metavar="SECONDS", help="run forever, once per period")
    c.set_defaults(handler=_reconcile)

    c = sub.add_parser(
        "wait",
        help="wait until a job ends, with a progress bar on a terminal; print its status (exit 0 only if COMPLETED)",
        description="Wait until a job ends. On a terminal: a progress bar (state, chunks done/total) on stderr, "
        "then a summary; otherwise plain progress lines on stderr and the status JSON on stdout. Exit 0 if "
        "the job COMPLETED, 1 if it ended otherwise, 3 on --timeout.",
    )
    c.add_argument("job_id", type=_job_id)
    c.add_argument("--timeout", type=float, default=600.0)
    c.add_argument("--json", action="store_true", help="print the status JSON even on a terminal")
    c.set_defaults(handler=_wait)

    c = sub.add_parser("result", help="print a job's result JSON (with a fresh presigned URL)")
    c.add_argument("job_id", type=_job_id)
    c.add_argument("--out", type=Path, default=None, help="also download the audio here")
    c.set_defaults(handler=_result)

    c = sub.add_parser("submit", help="submit a job (uploads the voice if it is a local file)")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="text to speak; [pause:1.5s] inserts a pause")
    what.add_argument("--text-file", type=Path, help="read the text from this file ('-': stdin), up to 100,000 chars")
    what.add_argument(
        "--segments-file", type=Path, help="a dialogue: JSON list of {voice, text, speed?, pause_after_s?, ref_text?}"
    )
    c.add_argument("--voice", default=None, help="local audio file, library voice, bucket key, or s3:// URI")
    c.add_argument("--no-normalize", action="store_true", help="speak numbers, dates and symbols as written")
    c.add_argument("--say", action="append", default=None, metavar="WORD=ALIAS", help="lexicon entry (repeatable)")
    c.add_argument("--lexicon", action="append", default=None, metavar="KEY", help="a PLS file in the bucket")
    c.add_argument("--language", default=None, help="ISO 639-3 code of the text (default eng)")
    c.add_argument("--ref-text", default="", help="transcript of the voice; empty = transcribe")
    c.add_argument("--job-id", type=_job_id, default=None)
    c.add_argument("--speed", type=float, default=None)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument(
        "--priority", choices=["interactive", "bulk"], default=None, help="the inbox to drop it in (default bulk)"
    )
    c.add_argument("--nfe-step", type=int, default=None)
    c.add_argument("--format", dest="output_format", default=None, choices=["wav", "flac", "mp3", "ogg"])
    c.add_argument("--subtitles", action="append", choices=["srt", "vtt"], default=None)
    c.add_argument("--no-word-timings", action="store_true")
    c.add_argument("--wait", action="store_true", help="wait for the job to finish (a progress bar on a terminal)")
    c.add_argument("--timeout", type=float, default=600.0, help="seconds to --wait (default 600)")
    c.add_argument("--out", type=Path, default=None, help="download the audio here (implies --wait)")
    c.add_argument(
        "--json",
        action="store_true",
        help="print the status/result JSON even on a terminal (the default when stdout is not one)",
    )
    c.set_defaults(handler=_submit)

    c = sub.add_parser("console", help="serve the OpenAI-compatible speech API (a client of the bucket)")
    c.add_argument("--host", default=None, help="default TTS_CONSOLE_HOST (127.0.0.1)")
    c.add_argument("--port", type=int, default=None, help="default TTS_CONSOLE_PORT (8080)")
    c.set_defaults(handler=_console)

    c = sub.add_parser("schema", help="export the JSON Schemas of manifest, status and result")
    c.add_argument("--out", type=Path, default=None, help="directory; default prints all to stdout")
    c.set_defaults(handler=_schema)
    return p


def _job_text(args: argparse.Namespace) -> tuple[str | None, list[Any] | None]:
    if args.segments_file is not None:
        try:
            segments = json.loads(args.segments_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise _CliError(f"--segments-file: {e}") from None
        if not isinstance(segments, list):
            raise _CliError("--segments-file must hold a JSON list of segments")
        return None, segments
    if args.text_file is not None:
        try:
            text = sys.stdin.read() if str(args.text_file) == "-" else args.text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise _CliError(f"--text-file: {e}") from None
        return text, None
    return args.text, None


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not at least 1")
    return n


def _human(args: argparse.Namespace) -> bool:
    """A person is reading: stdout is a terminal and --json was not given."""
    if getattr(args, "json", False):
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _say(entries: list[str] | None) -> dict[str, str] | None:
    if not entries:
        return None
    out = {}
    for entry in entries:
        word, sep, alias = entry.partition("=")
        if not sep or not word.strip():
            raise _CliError(f"--say {entry!r}: write WORD=ALIAS")
        out[word.strip()] = alias.strip()
    return out


# -- localstack ---------------------------------------------------------------------------------


def _state_dir(args: argparse.Namespace) -> Path:
    from pipeline.ops import localstack_host

    return args.state_dir or localstack_host.DEFAULT_STATE_DIR


def _ls_start(args: argparse.Namespace) -> int:
    from pipeline.ops import localstack_host

    try:
        inst = localstack_host.start(port=args.port, state_dir=_state_dir(args))
    except localstack_host.LocalStackError as e:
        raise _CliError(str(e)) from None
    print(f"LocalStack ready at {inst.endpoint} (pid {inst.pid}); export AWS_ENDPOINT_URL={inst.endpoint}")
    return 0


def _ls_stop(args: argparse.Namespace) -> int:
    from pipeline.ops import localstack_host

    stopped = localstack_host.stop(_state_dir(args))
    print("LocalStack stopped" if stopped else "LocalStack was not running")
    return 0


def _ls_status(args: argparse.Namespace) -> int:
    from pipeline.ops import localstack_host

    inst = localstack_host.running(_state_dir(args))
    print(f"running at {inst.endpoint} (pid {inst.pid})" if inst else "not running")
    return 0 if inst else 1


# -- resources and models -----------------------------------------------------------------------


def _bootstrap(args: argparse.Namespace) -> int:
    from pipeline.ops.bootstrap import bootstrap

    s = get_settings()
    changes = bootstrap(s.bucket, s.queue)
    for change in changes or [f"bucket {s.bucket}, queue {s.queue}: nothing to change"]:
        print(change)
    return 0


def _model_build_tiny(args: argparse.Namespace) -> int:
    from pipeline.models.tiny import build_tiny

    bundle = build_tiny(args.dir)
    print(f"built {bundle.name}/{bundle.version} in {args.dir} ({bundle.total_bytes / 1e6:.1f} MB, random weights)")
    return 0


def _model_push(args: argparse.Namespace) -> int:
    from pipeline.models.cache import BundleCorrupt, ModelCache

    s = get_settings()
    try:
        bundle = ModelCache.for_settings(s).push(args.dir, set_latest=not args.no_latest)
    except (BundleCorrupt, FileNotFoundError) as e:
        raise _CliError(str(e)) from None
    print(f"pushed {bundle.name}/{bundle.version} to s3://{s.bucket}/models/{bundle.name}/{bundle.version}/")
    return 0


def _model_seed(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from pipeline.models.cache import ModelCache
    from pipeline.models.seed import Checkpoint, SeedError, seed
    from pipeline.text.languages import canonical

    if args.no_push and args.out is None:
        raise _CliError("--no-push needs --out")
    ckpt = None
    if args.checkpoint:
        repo, _, path = args.checkpoint.partition(":")
        ckpt = Checkpoint(repo, path)
    out = args.out or Path(tempfile.mkdtemp(prefix="tts-seed-"))
    try:
        bundle = seed(
            args.name,
            out,
            config=args.config,
            checkpoint=ckpt,
            with_asr=not args.no_asr,
            with_aligner_torch=not args.no_aligner_torch,
            languages=tuple(canonical(c) for c in args.languages.split(",") if c.strip()),
        )
        print(f"seeded {bundle.name}/{bundle.version} ({bundle.total_bytes / 1e6:.1f} MB) in {out}")
        if not args.no_push:
            s = get_settings()
            ModelCache.for_settings(s).push(out)
            print(f"pushed to s3://{s.bucket}/models/{bundle.name}/{bundle.version}/ (and latest)")
    except SeedError as e:
        raise _CliError(str(e)) from None
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


def _model_verify(args: argparse.Namespace) -> int:
    from pipeline.models.bundle import Bundle, verify
    from pipeline.models.cache import BundleNotFound, CacheDiskFull, ModelCache

    directory = args.dir
    if directory is None:
        s = get_settings()
        try:
            report = ModelCache.for_settings(s).sync(args.name or s.model_name, args.version or s.model_version)
        except (BundleNotFound, CacheDiskFull) as e:
            raise _CliError(str(e)) from None
        directory = report.path
    bundle = Bundle.load(directory)
    bad = verify(directory, bundle)
    if bad:
        raise _CliError(f"{directory}: {len(bad)} file(s) do not match bundle.json: {', '.join(bad)}")
    print(f"{bundle.name}/{bundle.version}: {len(bundle.files)} files, {bundle.total_bytes} bytes, all sha256 match")
    return 0


def _model_list(args: argparse.Namespace) -> int:
    from pipeline.models.cache import ModelCache

    s = get_settings()
    from pipeline.client.terminal import safe

    for name, latest in ModelCache.for_settings(s).list_remote().items():
        print(f"{safe(name)}\t{safe(latest)}")  # `latest` is an object's content
    return 0


def _model_pull(args: argparse.Namespace) -> int:
    from pipeline.models.cache import BundleNotFound, CacheDiskFull, ModelCache

    s = get_settings()
    try:
        report = ModelCache.for_settings(s).sync(args.name or s.model_name, args.version or s.model_version)
    except (BundleNotFound, CacheDiskFull) as e:
        raise _CliError(str(e)) from None
    print(
        json.dumps(
            {
                "path": str(report.path),
                "name": report.bundle.name,
                "version": report.bundle.version,
                "warm": report.warm,
                "files_fetched": report.files_fetched,
                "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
            },
            indent=2,
        )
    )
    return 0


def _voices_add(args: argparse.Namespace) -> int:
    from pipeline.client.terminal import json_text
    from pipeline.cloud.store import open_store
    from pipeline.tts.voices import VoiceError, VoiceLibrary

    if not args.file.is_file():
        raise _CliError(f"{args.file}: no such file")
    data = args.file.read_bytes()

    async def go() -> str:
        async with open_store(get_settings()) as store:
            record = await VoiceLibrary(store).add(args.name, data, args.file.suffix or ".wav", args.ref_text)
            return json_text(record.model_dump_json(indent=2))

    try:
        print(asyncio.run(go()))
    except VoiceError as e:
        raise _CliError(str(e)) from None
    return 0


def _voices_list(args: argparse.Namespace) -> int:
    from pipeline.client.terminal import json_text
    from pipeline.cloud.store import open_store
    from pipeline.tts.voices import VoiceLibrary

    async def go() -> list[str]:
        async with open_store(get_settings()) as store:
            # Transcripts may have come from anyone who may write voices/.
            return [json_text(r.model_dump_json()) for r in await VoiceLibrary(store).list()]

    for line in asyncio.run(go()):
        print(line)
    return 0


def _voices_rm(args: argparse.Namespace) -> int:
    from pipeline.cloud.store import open_store
    from pipeline.tts.voices import VoiceLibrary

    async def go() -> bool:
        async with open_store(get_settings()) as store:
            return await VoiceLibrary(store).remove(args.name)

    if not asyncio.run(go()):
        raise _CliError(f"no voice named {args.name}")
    print(f"removed {args.name}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from pipeline.runtime import scratch

    scratch.claim()  # first: what a killed worker left in /tmp goes, and this one's files follow it
    from pipeline.models.cache import BundleNotFound, CacheDiskFull
    from pipeline.worker import ConfigError, serve

    s = get_settings()
    try:
        done = asyncio.run(serve(s, max_jobs=args.max_jobs, idle_exit_s=args.idle_exit))
    except (CacheDiskFull, ConfigError) as e:
        raise _CliError(str(e)) from None
    except BundleNotFound as e:
        raise _CliError(
            f"{e}. Push a bundle first (`tts-pipeline model push DIR`) or set TTS_MODEL_NAME/TTS_MODEL_VERSION."
        ) from None
    log.info("worker exiting after %d job(s)", done)
    return 0


# -- jobs ---------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from pipeline.client import jobs as client
    from pipeline.cloud.store import open_store

    if not _human(args):

        async def go() -> str:
            async with open_store(get_settings()) as store:
                return client.dump(await client.get_status(store, args.job_id))

        print(_run_job_call(go))
        return 0

    from rich.console import Console

    from pipeline.client.progress import status_summary
    from pipeline.jobs.contract import JobResult, JobStatus

    async def summary() -> tuple[JobStatus, JobResult | None]:
        async with open_store(get_settings()) as store:
            status = await client.get_status(store, args.job_id)
            return status, await _completed_result(store, status)

    status, result = _run_job_call(summary)
    Console().print(status_summary(status, result))
    return 0


async def _completed_result(store: Any, status: Any) -> Any:
    """The result of a COMPLETED job for a summary, or None (not COMPLETED, or not readable)."""
    from pipeline.client import jobs as client
    from pipeline.jobs.contract import JobState

    if status.state is not JobState.COMPLETED:
        return None
    try:
        return await client.get_result(store, status.job_id)
    except (client.JobNotFound, ValueError):  # ValueError: pydantic's ValidationError
        return None


def _exit_code(state: Any) -> int:
    """``wait`` and ``submit --wait``: 0 if COMPLETED, 1 for another final state, 3 on a timeout."""
    from pipeline.jobs.contract import JobState

    return 0 if state is JobState.COMPLETED else (1 if state.terminal else 3)


def _jobs(args: argparse.Namespace) -> int:
    from pipeline.client import jobs as client
    from pipeline.cloud.store import open_store
    from pipeline.jobs.contract import JobState

    state = JobState(args.state) if args.state else None

    async def go() -> client.JobListing:
        async with open_store(get_settings()) as store:
            return await client.recent_jobs(store, state=state, limit=args.limit)

    listing = asyncio.run(go())
    if _human(args):
        from rich.console import Console

        from pipeline.client.progress import jobs_table

        console = Console()
        if listing.jobs:
            console.print(jobs_table(listing.jobs))
        else:
            console.print(f"no {state.value} jobs" if state else "no jobs", style="dim")
    else:
        print(json.dumps([j.model_dump(mode="json") for j in listing.jobs], indent=2))
    if not listing.complete:
        print(
            f"tts-pipeline: read the {listing.read} most recently updated status documents (10 x --limit); "
            "older matches are not listed",
            file=sys.stderr,
        )
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from pipeline.client import jobs as client
    from pipeline.cloud.store import open_store
    from pipeline.jobs.state import request_cancel

    async def go() -> str:
        async with open_store(get_settings()) as store:
            await client.get_status(store, args.job_id)  # JobNotFound for unknown jobs
            status = await request_cancel(store, args.job_id)
            return client.dump(status) if status else f"cancellation requested for {args.job_id}"

    print(_run_job_call(go))
    return 0


def _dlq_list(args: argparse.Namespace) -> int:
    from pipeline.ops import dlq

    for entry in asyncio.run(dlq.peek(get_settings().queue, args.max)):
        print(json.dumps(entry))
    return 0


def _dlq_redrive(args: argparse.Namespace) -> int:
    from pipeline.ops import dlq

    s = get_settings()
    report = asyncio.run(dlq.redrive(s, args.max, include_unrecognised=args.include_unrecognised))
    print(json.dumps(report, indent=2))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from pipeline.ops.reconcile import reconcile_once
    from pipeline.runtime import metrics

    s = get_settings()
    if args.every is not None and s.metrics_port is not None:
        metrics.serve(s.metrics_port)

    async def go() -> int:
        while True:
            report = await reconcile_once(s, older_than_s=args.older_than, lookback_s=args.lookback, scan_all=args.all)
            print(json.dumps(report.as_dict(), indent=None if args.every else 2), flush=True)
            if args.every is None:
                return 1 if report.counts().get("error") else 0  # a job it could not handle: say so
            await asyncio.sleep(args.every)

    return asyncio.run(go())


def _wait(args: argparse.Namespace) -> int:
    from pipeline.client import jobs as client
    from pipeline.client.progress import wait_view
    from pipeline.cloud.store import open_store
    from pipeline.jobs.contract import JobResult, JobStatus

    human = _human(args)

    async def go() -> tuple[JobStatus, JobResult | None]:
        async with open_store(get_settings()) as store:
            with wait_view(args.job_id, timeout_s=args.timeout) as view:
                status = await client.wait(store, args.job_id, timeout_s=args.timeout, on_status=view.update)
                # The result: for the summary, or for the chunk count when no status showed it.
                result = await _completed_result(store, status) if human or view.wants_chunks_total else None
                view.finish(status, result.chunks if result else None)
            return status, result

    status, result = _run_job_call(go)
    if human:
        from rich.console import Console

        from pipeline.client.progress import status_summary

        Console().print(status_summary(status, result))
    else:
        print(client.dump(status))
    return _exit_code(status.state)


def _result(args: argparse.Namespace) -> int:
    from pipeline.client import jobs as client
    from pipeline.cloud.store import open_store

    s = get_settings()

    async def go() -> str:
        async with open_store(s) as store:
            result = await client.get_result(store, args.job_id, presign_s=s.presign_expiry_s)
            if args.out:
                await client.download(store, args.job_id, result.audio.uri, args.out)
            return client.dump(result)

    print(_run_job_call(go))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipeline.client import jobs as client
    from pipeline.client.progress import wait_view
    from pipeline.client.terminal import safe
    from pipeline.cloud.store import open_store
    from pipeline.jobs.contract import JobState, Manifest

    s = get_settings()
    job_id = args.job_id or client.new_job_id()
    wait = args.wait or args.out is not None
    human = _human(args)

    local_voice = Path(args.voice) if args.voice and Path(args.voice).is_file() else None
    text, segments = _job_text(args)

    async def go() -> int:
        async with open_store(s) as store:
            voice = await client.upload_voice(store, local_voice) if local_voice else args.voice
            fields = {
                "text": text,
                "segments": segments,
                "voice": voice,
                "normalize": False if args.no_normalize else None,
                "lexicon": _say(args.say),
                "lexicons": args.lexicon,
                "language": args.language,
                "ref_text": args.ref_text,
                "speed": args.speed,
                "seed": args.seed,
                "priority": args.priority,
                "nfe_step": args.nfe_step,
                "output_format": args.output_format,
                "subtitles": args.subtitles,
                "word_timings": False if args.no_word_timings else None,
            }
            try:
                manifest = Manifest.model_validate_json(json.dumps({k: v for k, v in fields.items() if v is not None}))
            except ValidationError as e:
                raise _CliError(f"invalid job: {e}") from None
            try:
                status = await client.submit(store, job_id, manifest)
            except ValueError as e:
                raise _CliError(str(e)) from None
            print(f"submitted {job_id} (voice {safe(voice)})", file=sys.stderr)
            if not wait:
                _print_doc(status, None, human)
                return 0
            with wait_view(job_id, timeout_s=args.timeout) as view:
                status = await client.wait(store, job_id, timeout_s=args.timeout, on_status=view.update)
                result = await client.get_result(store, job_id) if status.state is JobState.COMPLETED else None
                view.finish(status, result.chunks if result else None)
            if result is None:
                _print_doc(status, None, human)
                return _exit_code(status.state)
            if args.out:
                await client.download(store, job_id, result.audio.uri, args.out)
                print(f"audio written to {args.out}", file=sys.stderr)
            _print_doc(status, result, human, audio_path=args.out)
            return 0

    return asyncio.run(go())


def _print_doc(status: Any, result: Any, human: bool, *, audio_path: Path | None = None) -> None:
    """``submit``'s last word: the result JSON (or the status JSON when there is no result), or,
    for a person, a summary of both."""
    from pipeline.client import jobs as client

    if not human:
        print(client.dump(result if result is not None else status))
        return
    from rich.console import Console

    from pipeline.client.progress import status_summary

    Console().print(status_summary(status, result, audio_path=audio_path))


def _run_job_call(fn: Callable[[], Coroutine[object, object, T]]) -> T:
    from pipeline.client.jobs import JobNotFound
    from pipeline.jobs.keys import UntrustedKey

    try:
        return asyncio.run(fn())
    except (JobNotFound, UntrustedKey) as e:
        raise _CliError(str(e)) from None


def _console(args: argparse.Namespace) -> int:
    from pipeline.web import app

    s = get_settings()
    host = args.host or s.console_host
    port = args.port or s.console_port
    try:
        app.check_binding(s, host)
    except app.OpenWithoutKey as e:
        raise _CliError(str(e)) from None
    stop = _stop_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(stop(app.serve(s, host, port, ready=lambda url: print(f"console: {url}", flush=True))))
    return 0


def _stop_on_sigterm() -> Callable[[Awaitable[None]], Awaitable[None]]:
    """Runs a server coroutine until SIGTERM or SIGINT, then lets it clean up (exit 0)."""

    async def run(main: Awaitable[None]) -> None:
        import signal

        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run


def _schema(args: argparse.Namespace) -> int:
    from pipeline.jobs.contract import json_schemas

    schemas = json_schemas()
    if args.out is None:
        print(json.dumps(schemas, indent=2))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        (args.out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        print(args.out / f"{name}.schema.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
