"""The S3 key layout: the one place that knows where each object lives in the bucket.

inbox/<job_id>.json            manifest, uploaded by clients (this upload creates the job): bulk
inbox-interactive/<job_id>.json
                               the same for interactive jobs (its own S3 notification and queue;
                               not a sub-prefix of inbox/: S3 refuses overlapping prefixes for one
                               event type). One job-id namespace: status/results are shared.
status/<job_id>.json           status, written by `submit` (QUEUED) and the worker
results/<job_id>.json          result, written once the outputs are durable
outputs/<job_id>/attempt-<n>.<ext>
                               audio (+ .srt / .vtt when asked) of processing attempt n; the
                               result names the attempt that won, so a worker paused past its
                               lease can never overwrite the outputs a successor's result names
outputs/<job_id>/chunks/<index>-<digest>.flac (+ .json)
                               each text chunk as soon as it is synthesised (listen early; a
                               retried job reuses them). Content-addressed: any attempt writes
                               the same bytes under the same key. Removed when the job ends.
voices/...                     reference voices (the only prefix a manifest's ``voice`` may name
                               by default; TTS_VOICE_PREFIXES widens it, never to pipeline data)
models/<name>/<version>/...    model bundles; models/<name>/latest names the newest version
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from pipeline.jobs.contract import ErrorCode, Priority

INBOX = "inbox/"
INBOX_INTERACTIVE = "inbox-interactive/"
# The inbox a manifest is dropped in is its job's effective priority (IAM can restrict a prefix).
INBOXES: dict[Priority, str] = {Priority.bulk: INBOX, Priority.interactive: INBOX_INTERACTIVE}
STATUS = "status/"
RESULTS = "results/"
OUTPUTS = "outputs/"
VOICES = "voices/"
MODELS = "models/"
CANCEL = "cancel/"
MANIFEST_SUFFIX = ".json"

# Matched with fullmatch: "$" would also accept a trailing newline ("job1\n").
JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


class InvalidJobId(ValueError):
    """The manifest key does not name a valid job. ``status_key`` is still where to report it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key!r}: {reason}")
        self.key = key
        self.reason = reason
        # Mirror the inbox path under status/ so the uploader can find the verdict by analogy.
        inbox = inbox_of(key)
        self.status_key = STATUS + key.removeprefix(INBOXES[inbox] if inbox else INBOX)


def is_valid_job_id(job_id: str) -> bool:
    # "." and ".." are legal S3 keys but confusing as file names when outputs are downloaded.
    return bool(JOB_ID_RE.fullmatch(job_id)) and job_id not in {".", ".."}


def inbox_of(key: str) -> Priority | None:
    """The priority of the inbox ``key`` is in; None outside both inboxes."""
    return next((p for p, prefix in INBOXES.items() if key.startswith(prefix)), None)


def job_id_from_inbox_key(key: str) -> str:
    inbox = inbox_of(key)
    if inbox is None or not key.endswith(MANIFEST_SUFFIX):
        raise InvalidJobId(key, f"manifest keys look like {INBOX}<job_id>{MANIFEST_SUFFIX} (or {INBOX_INTERACTIVE})")
    job_id = key[len(INBOXES[inbox]) : -len(MANIFEST_SUFFIX)]
    if not is_valid_job_id(job_id):
        raise InvalidJobId(key, "job id must match [A-Za-z0-9._-]{1,128} (taken from the manifest key)")
    return job_id


def manifest_key(job_id: str, priority: Priority | str | None = Priority.bulk) -> str:
    return f"{INBOXES[Priority(priority or Priority.bulk)]}{job_id}{MANIFEST_SUFFIX}"


def manifest_keys(job_id: str) -> list[str]:
    """Where a manifest of ``job_id`` may be, bulk inbox first (readers that know only the id)."""
    return [manifest_key(job_id, p) for p in (Priority.bulk, Priority.interactive)]


def job_id_from_any_inbox(key: str) -> str | None:
    """The job id of a manifest key in either inbox; None if not one (listings)."""
    inbox = inbox_of(key)
    return job_id_from_key(key, INBOXES[inbox], MANIFEST_SUFFIX) if inbox else None


def status_key(job_id: str) -> str:
    return f"{STATUS}{job_id}.json"


def result_key(job_id: str) -> str:
    return f"{RESULTS}{job_id}.json"


def attempt_outputs_prefix(job_id: str, attempt: int) -> str:
    """The outputs of one processing attempt (``attempt`` from the job's status)."""
    return f"{OUTPUTS}{job_id}/attempt-{attempt}."


def output_key(job_id: str, attempt: int, ext: str) -> str:
    return f"{attempt_outputs_prefix(job_id, attempt)}{ext}"


CHUNKS_DIR = "chunks"


def chunks_prefix(job_id: str) -> str:
    """A job's durable chunks (``pipeline.jobs.chunks``), shared by all its attempts."""
    return f"{OUTPUTS}{job_id}/{CHUNKS_DIR}/"


def chunk_key(job_id: str, index: int, digest: str, ext: str) -> str:
    """Zero-padded index first, so a listing is in playing order."""
    return f"{chunks_prefix(job_id)}{index:05d}-{digest}.{ext}"


def parse_chunk_key(key: str) -> tuple[int, str, str] | None:
    """``.../chunks/<index>-<digest>.<ext>`` -> (index, digest, ext); None if not one."""
    m = re.match(r"^(\d{5,})-([0-9a-f]{8,64})\.([a-z0-9]+)$", key.rsplit("/", 1)[-1])
    return (int(m.group(1)), m.group(2), m.group(3)) if m else None


def is_chunk_key(key: str) -> bool:
    return parse_chunk_key(key) is not None and f"/{CHUNKS_DIR}/" in key


def parse_output_key(key: str) -> tuple[str, str] | None:
    """``outputs/<job_id>/attempt-<n>.<ext>`` -> (job id, ``attempt-<n>``), and a chunk key ->
    (job id, ``chunks``); None for other keys."""
    job_id, sep, name = key.removeprefix(OUTPUTS).partition("/")
    if not key.startswith(OUTPUTS) or not sep or not is_valid_job_id(job_id):
        return None
    if name.startswith(CHUNKS_DIR + "/"):
        return job_id, CHUNKS_DIR
    return job_id, name.split(".", 1)[0]


def job_id_from_key(key: str, prefix: str, suffix: str = ".json") -> str | None:
    """The job id in ``<prefix><job_id><suffix>`` (inbox, status, results); None if not one."""
    if not key.startswith(prefix) or not key.endswith(suffix):
        return None
    job_id = key[len(prefix) : len(key) - len(suffix)]
    return job_id if is_valid_job_id(job_id) else None


LEXICONS = "lexicons/"
DEFAULT_LEXICON_PREFIXES = (LEXICONS,)


def lexicon_key(ref: str, bucket: str, allowed: tuple[str, ...] = DEFAULT_LEXICON_PREFIXES) -> str:
    """A manifest's ``lexicons`` entry (key or s3:// URI): the same rules as voices, other prefixes."""
    return _allowed_key(ref, bucket, allowed, "lexicon", "TTS_LEXICON_PREFIXES")


def cancel_key(job_id: str) -> str:
    return f"{CANCEL}{job_id}"


def model_prefix(name: str, version: str) -> str:
    return f"{MODELS}{name}/{version}/"


def model_latest_key(name: str) -> str:
    return f"{MODELS}{name}/latest"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def key_from_uri(bucket: str, uri: str) -> str:
    """The key of an ``s3://<bucket>/<key>`` URI this pipeline wrote (results name outputs so)."""
    return uri.removeprefix(s3_uri(bucket, ""))


class UntrustedKey(ValueError):
    """A key read from a stored document points where that document may not point."""


def job_output_key(bucket: str, job_id: str, uri: str) -> str:
    """The key a result of ``job_id`` names, checked as a manifest's key would be: an
    ``s3://<bucket>/outputs/<job_id>/...`` URI of this job's own files, normalised. A result is a
    stored document: whoever could write it must not make a reader fetch, presign or serve another
    job's audio or any other key of the bucket through it."""
    prefix = s3_uri(bucket, f"{OUTPUTS}{job_id}/")
    if not uri.startswith(prefix):
        raise UntrustedKey(f"{uri!r} is not an output of job {job_id}")
    key = key_from_uri(bucket, uri)
    parsed = parse_output_key(key)
    clean = key == posixpath.normpath(key) and not any(ord(c) < 32 or ord(c) == 127 for c in key)
    if not clean or parsed is None or parsed[0] != job_id:
        raise UntrustedKey(f"{uri!r} is not an output of job {job_id}")
    return key


@dataclass  # not frozen: raising sets __traceback__ on the instance
class VoiceRefError(ValueError):
    code: str  # ErrorCode value
    message: str

    def __str__(self) -> str:
        return self.message


# Prefixes a voice may never come from, whatever TTS_VOICE_PREFIXES says: job documents, model
# files, and other jobs' outputs (whoever can write a manifest must not clone a produced voice).
PIPELINE_PREFIXES = (INBOX, INBOX_INTERACTIVE, STATUS, RESULTS, OUTPUTS, MODELS, CANCEL)
DEFAULT_VOICE_PREFIXES = (VOICES,)


def voice_key(voice: str, bucket: str, allowed: tuple[str, ...] = DEFAULT_VOICE_PREFIXES) -> str:
    """Resolve a manifest's ``voice`` to a key in ``bucket``.

    Accepts ``voices/alice.wav`` or ``s3://<bucket>/voices/alice.wav``. Refuses other buckets
    (the worker's IAM role is scoped to its own bucket, and reading elsewhere on a client's say-so
    would be a confused-deputy hole), keys that escape or abuse the layout (``..``, ``//``,
    leading ``/``, control characters), keys outside the ``allowed`` prefixes (``voices/`` by
    default) and, always, the pipeline's own prefixes.
    """
    return _allowed_key(voice, bucket, allowed, "voice", "TTS_VOICE_PREFIXES")


def _allowed_key(ref: str, bucket: str, allowed: tuple[str, ...], what: str, setting: str) -> str:
    outside = ErrorCode.VOICE_OUTSIDE_BUCKET if what == "voice" else ErrorCode.INVALID_LEXICON
    invalid = ErrorCode.INVALID_VOICE_KEY if what == "voice" else ErrorCode.INVALID_LEXICON
    if ref.startswith("s3://"):
        rest = ref[len("s3://") :]
        other, _, key = rest.partition("/")
        if other != bucket:
            raise VoiceRefError(
                outside, f"{what} {ref!r} is in bucket {other!r}; {what}s must be in the job bucket {bucket!r}"
            )
    elif "://" in ref:
        raise VoiceRefError(invalid, f"{what} {ref!r}: only s3:// URIs or keys")
    else:
        key = ref
    if not key or key.startswith("/") or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise VoiceRefError(invalid, f"{what} key {key!r} is empty or malformed")
    if key != posixpath.normpath(key) or key.split("/")[0] in {"..", "."}:
        raise VoiceRefError(invalid, f"{what} key {key!r} is not a normalised path")
    if key.startswith(PIPELINE_PREFIXES):
        raise VoiceRefError(invalid, f"{what} key {key!r} points at pipeline data")
    if not key.startswith(allowed):
        raise VoiceRefError(
            invalid, f"{what} key {key!r} is outside the {what} prefixes {', '.join(allowed)} ({setting})"
        )
    return key
