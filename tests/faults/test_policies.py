"""The IAM policies in infra/cloudformation.yaml against what the components really do.

LocalStack does not enforce IAM, so a policy that lacks a permission passes every other test and
fails on AWS (a retried job reading its durable chunks back; the presigned URL in every result).
Here the worker, the reconciler and the console run through the tracing proxy, each with access
keys of its own (a role each, as deployed), through the paths that use each permission: jobs that
complete, a job cancelled while it runs, a job killed after its chunks and one killed after its
result (the successor reads both back), a voice transcribed on first use, a message that is not
an S3 event, the console's pages and uploads, a reconciler pass over stuck, dead-lettered,
orphaned and half-finished jobs, and presigned URLs fetched as a client would. Every request is
then mapped to the IAM action and resource it needs and checked against its role's policy:

- every request is allowed (an action the policy grants, on a resource a pattern matches);
- every grant is used by some request (nothing broader than needed), except the few that only
  failure paths use, listed in ``FAILURE_ONLY`` with the reason.
"""

from __future__ import annotations

import fnmatch
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.jobs.contract import JobState, JobStatus, Priority, utcnow
from tests.faults.conftest import FAST
from tests.faults.proxy import ProxyProcess
from tests.helpers import (
    REF_TEXT,
    Holds,
    http_request,
    multipart,
    queue_depth,
    reference_voice_path,
    s3_event,
    start_console,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
NAME = "pol"
ACCOUNT, REGION = "000000000000", "us-east-1"
ROLES = {"worker-key": "WorkerPolicy", "reconciler-key": "ReconcilerPolicy", "console-key": "ConsolePolicy"}
# Grants only a failure path needs (so no healthy run shows them).
FAILURE_ONLY = {
    ("WorkerPolicy", "s3:AbortMultipartUpload", "outputs/*"): "a multipart upload of a long job's audio that failed",
}
LONG_TEXT = "This is a sentence of moderate length. " * 12  # three chunks
PLS = (
    b'<?xml version="1.0" encoding="UTF-8"?><lexicon version="1.0" '
    b'xmlns="http://www.w3.org/2005/01/pronunciation-lexicon" alphabet="ipa" xml:lang="en-US">'
    b"<lexeme><grapheme>GIF</grapheme><alias>jif</alias></lexeme></lexicon>"
)


# -- the template --------------------------------------------------------------------------------


def _template() -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
        if isinstance(node, yaml.ScalarNode):
            return {"!": suffix, "v": node.value}
        if isinstance(node, yaml.SequenceNode):
            return {"!": suffix, "v": loader.construct_sequence(node, deep=True)}
        return {"!": suffix, "v": loader.construct_mapping(node, deep=True)}

    Loader.add_multi_constructor("!", tag)
    return yaml.load((ROOT / "infra/cloudformation.yaml").read_text(), Loader=Loader)


def _arns(bucket: str, queue: str) -> dict[str, str]:
    return {
        "JobBucket.Arn": f"arn:aws:s3:::{bucket}",
        "JobQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
        "InteractiveQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}-interactive",
        "DeadLetterQueue.Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}-dlq",
        "NotificationTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:{queue}-events",
    }


def _resolve(value: Any, arns: dict[str, str]) -> str | None:
    if isinstance(value, str):
        return value
    kind, v = value["!"], value["v"]
    if kind == "Sub":
        out = v
        for name, arn in arns.items():
            out = out.replace("${" + name + "}", arn)
        return out
    if kind in ("GetAtt", "Ref"):
        return arns[v]
    return None  # !If on the KMS key: not deployed here


def grants(policy: str, arns: dict[str, str]) -> list[tuple[str, str, str]]:
    """(statement id, action, resource pattern) for every Allow of one managed policy."""
    doc = _template()["Resources"][policy]["Properties"]["PolicyDocument"]
    out = []
    for st in doc["Statement"]:
        if not isinstance(st, dict) or "Effect" not in st:
            continue  # the !If for the KMS key
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for r in resources:
            arn = _resolve(r, arns)
            if arn is not None:
                out.extend((st.get("Sid", "?"), a, arn) for a in actions)
    return out


# -- requests as IAM sees them -------------------------------------------------------------------

_S3 = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "ListObjectsV2": "s3:ListBucket",
}
_SQS_BATCH = {"ChangeMessageVisibilityBatch": "ChangeMessageVisibility", "DeleteMessageBatch": "DeleteMessage"}


def needs(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """The (IAM action, resource ARN) pairs one traced request needs."""
    service, _, action = entry["op"].partition(" ")
    if service == "S3":
        iam = _S3.get(action)
        assert iam is not None, f"unmapped S3 action {entry}"
        if iam == "s3:ListBucket":
            return [(iam, f"arn:aws:s3:::{entry['bucket']}")]
        return [(iam, f"arn:aws:s3:::{entry['bucket']}/{k}") for k in entry["keys"]]
    if service == "SQS":
        return [(f"sqs:{_SQS_BATCH.get(action, action)}", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{entry['queue']}")]
    if service == "SNS":
        return [(f"sns:{action}", f"arn:aws:sns:{REGION}:{ACCOUNT}:{entry['queue']}")]
    raise AssertionError(f"unmapped request {entry}")


def _allows(grant: tuple[str, str, str], action: str, resource: str) -> bool:
    _, g_action, g_resource = grant
    return fnmatch.fnmatchcase(action, g_action) and fnmatch.fnmatchcase(resource, g_resource)


# -- the workload ------------------------------------------------------------------------------


def _env(stack: dict[str, str], proxy: ProxyProcess, key: str, topic: str) -> dict[str, str]:
    return {
        **stack,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": f"{key}-secret",
        "TTS_NOTIFY_TOPIC_ARN": topic,
    }


def _manifest(**fields: Any) -> dict[str, Any]:
    return {"text": "Short and sweet.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2, **fields}


@pytest.fixture(scope="module")
def traced(
    make_stack: Any, localstack: Any, s3: Any, sqs: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[dict[str, Any]], dict[str, str]]]:
    from pipeline.cloud.aws import sync_client

    tmp = tmp_path_factory.mktemp("policies")
    stack = make_stack(NAME)
    s3.upload_file(str(reference_voice_path()), NAME, "voices/alice.wav")
    topic = sync_client("sns").create_topic(Name=f"{NAME}-events")["TopicArn"]
    proxy = ProxyProcess(localstack.endpoint, tmp)
    holds = Holds(tmp / "faults")
    settings = {**FAST, **holds.settings}
    started: list[Any] = []
    try:
        worker = start_worker(_env(stack, proxy, "worker-key", topic), tmp / "w1.log", **settings)
        started.append(worker)
        wait_ready(worker)
        console, url = start_console(_env(stack, proxy, "console-key", topic), tmp / "console.log")
        _worker_paths(stack, proxy, topic, s3, sqs, holds, tmp, started)
        _console_paths(url, s3)
        for w in started:
            stop_worker(w)
        _console_cancels_an_unclaimed_job(url, s3)
        console.terminate()
        console.wait(timeout=30)
        _reconciler_paths(stack, proxy, topic, s3, sqs)
        yield proxy.trace(), _arns(NAME, NAME)
    finally:
        for w in started:
            stop_worker(w)
        proxy.stop()


def _worker_paths(
    stack: dict[str, str],
    proxy: ProxyProcess,
    topic: str,
    s3: Any,
    sqs: Any,
    holds: Holds,
    tmp: Path,
    started: list[Any],
) -> None:
    env = _env(stack, proxy, "worker-key", topic)

    def put(job: str, manifest: dict[str, Any]) -> None:
        s3.put_object(Bucket=NAME, Key=f"inbox/{job}.json", Body=json.dumps(manifest).encode())

    # Completes, with subtitles; its presigned URL is fetched as a client would.
    put("pol-done", _manifest(subtitles=["srt"]))
    done = wait_for_state(s3, "pol-done", bucket=NAME)
    assert done["state"] == "COMPLETED"
    result = json.loads(s3.get_object(Bucket=NAME, Key="results/pol-done.json")["Body"].read())
    assert http_request(result["audio"]["url"])[0] == 200
    # Interactive: its own inbox and queue; held until the heartbeat kept its message invisible on
    # that queue (ChangeMessageVisibility), then completed and deleted there.
    holds.hold("pol-fast", after_chunks=1)
    fast = _manifest(text=LONG_TEXT, priority="interactive")
    s3.put_object(Bucket=NAME, Key="inbox-interactive/pol-fast.json", Body=json.dumps(fast).encode())
    holds.wait_held("pol-fast")
    wait_until(
        lambda: any(
            e["op"].startswith("SQS ChangeMessageVisibility") and e.get("queue") == f"{NAME}-interactive"
            for e in proxy.trace()
        ),
        "the interactive message's visibility extended",
        120,
    )
    holds.release("pol-fast")
    assert wait_for_state(s3, "pol-fast", bucket=NAME)["state"] == "COMPLETED"
    # A library voice with no transcript yet: transcribed and stored by the worker.
    s3.upload_file(str(reference_voice_path()), NAME, "voices/pol-asr/audio.wav")
    record = {
        "name": "pol-asr",
        "audio_key": "voices/pol-asr/audio.wav",
        "sha256": "0" * 64,
        "bytes": 1,
        "duration_s": 7.0,
        "sample_rate": 24000,
        "channels": 1,
    }
    s3.put_object(Bucket=NAME, Key="voices/pol-asr/voice.json", Body=json.dumps(record).encode())
    put("pol-asr", {"text": "Heard once.", "voice": "pol-asr", "nfe_step": 2})
    assert wait_for_state(s3, "pol-asr", bucket=NAME)["state"] == "COMPLETED"
    # A job that reads a PLS lexicon (lexicons/*): every optional input a job may read is read here.
    s3.put_object(Bucket=NAME, Key="lexicons/pol.pls", Body=PLS)
    put("pol-lexicon", _manifest(text="A GIF for you.", lexicons=["lexicons/pol.pls"]))
    assert wait_for_state(s3, "pol-lexicon", bucket=NAME)["state"] == "COMPLETED"
    # Cancelled while it runs (chunks written, then removed). Held until the heartbeat has extended
    # its message's visibility on the bulk queue: whether a short job lives long enough for a beat
    # must not depend on the machine's speed (the grant would look unused on a fast one).
    holds.hold("pol-cancel", after_chunks=1)
    put("pol-cancel", _manifest(text=LONG_TEXT))
    holds.wait_held("pol-cancel")
    wait_until(
        lambda: any(
            e["op"].startswith("SQS ChangeMessageVisibility") and e.get("queue") == NAME for e in proxy.trace()
        ),
        "the bulk message's visibility extended",
        120,
    )
    s3.put_object(Bucket=NAME, Key="cancel/pol-cancel", Body=b"")
    assert wait_for_state(s3, "pol-cancel", bucket=NAME)["state"] == "CANCELLED"
    # Killed after its second chunk, and (another job) after its result: the next attempts read
    # the chunks and the result back.
    for job, key in (("pol-resume", "outputs/pol-resume/chunks/00001-[0-9a-f]+\\.json"), ("pol-adopt", None)):
        point = {"id": job, "job": job, "op": "S3 PutObject", "kind": "kill"}
        point["key"] = key or f"results/{job}.json"
        proxy.arm(point)
        put(job, _manifest(text=LONG_TEXT))
        victim = wait_until(lambda j=job: proxy.fired(j), f"{job} killed", 300)
        dead = next(w for w in started if w.proc.pid == victim["pid"])
        dead.proc.wait(timeout=60)
        assert dead.proc.returncode == -signal.SIGKILL
        nxt = start_worker(env, tmp / f"w{len(started) + 1}.log", **FAST, **holds.settings)
        started.append(nxt)
        wait_ready(nxt)
        assert wait_for_state(s3, job, bucket=NAME, worker=nxt)["state"] == "COMPLETED"
    resumed = json.loads(s3.get_object(Bucket=NAME, Key="results/pol-resume.json")["Body"].read())
    assert resumed["chunks_reused"] >= 1
    # A message that is not an S3 event: parked in the DLQ.
    url = sqs.get_queue_url(QueueName=NAME)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="not an event")
    wait_until(
        lambda: any(e["op"] == "SQS SendMessage" and e["key_id"] == "worker-key" for e in proxy.trace()),
        "the unrecognised message parked",
        120,
    )


def _console_paths(url: str, s3: Any) -> None:
    mutate = {"X-Console": "1"}
    body, ctype = multipart({"name": "pol-lib", "ref_text": REF_TEXT}, "file", reference_voice_path().read_bytes())
    code, resp, _ = http_request(f"{url}/console/api/voices", "POST", body, {"Content-Type": ctype, **mutate})
    assert code == 201, resp[:300]
    code, resp, _ = http_request(f"{url}/console/api/voices")
    assert code == 200 and "pol-lib" in resp.decode()
    body, ctype = multipart({"text": "From the console.", "voice": "pol-lib", "subtitles": "srt"})
    code, resp, _ = http_request(f"{url}/console/api/jobs", "POST", body, {"Content-Type": ctype, **mutate})
    assert code == 201, resp[:300]
    job = json.loads(resp)["job_id"]
    assert wait_for_state(s3, job, bucket=NAME)["state"] == "COMPLETED"
    code, resp, _ = http_request(f"{url}/console/api/jobs/{job}")
    assert code == 200
    page = json.loads(resp)
    assert http_request(page["audio_url"])[0] == 200  # presigned by the console
    assert http_request(f"{url}/console/api/jobs/{job}/peaks?n=50")[0] == 200
    assert http_request(f"{url}/console/api/jobs/{job}/subtitles/srt")[0] == 200
    assert http_request(f"{url}/console/api/jobs")[0] == 200
    code, resp, _ = http_request(f"{url}/console/api/jobs/pol-done/cancel", "POST", b"", mutate)
    assert code < 500, resp[:300]  # too late to cancel: refused, but the status was read
    # The speech API: an interactive job (inbox-interactive/), its audio streamed from its chunks.
    speech = json.dumps({"model": "tts-1", "input": LONG_TEXT, "voice": "pol-lib", "response_format": "pcm"})
    code, resp, _ = http_request(
        f"{url}/v1/audio/speech", "POST", speech.encode(), {"Content-Type": "application/json"}
    )
    assert code == 200 and len(resp) > 0, resp[:300]
    code, resp, _ = http_request(f"{url}/console/api/voices/pol-lib", "DELETE", None, mutate)
    assert code in (200, 204), resp[:300]
    code, resp, _ = http_request(f"{url}/v1/voices")
    assert code == 200


def _console_cancels_an_unclaimed_job(url: str, s3: Any) -> None:
    """No worker runs now: a job submitted from the page (with an uploaded clip) has a manifest and
    no status (``submit`` writes none, issue 27); cancelling it from the page creates its CANCELLED
    status. That is the one status write the console makes (its status/* grant)."""
    mutate = {"X-Console": "1"}
    fields = {"text": "Never run.", "ref_text": REF_TEXT}
    body, ctype = multipart(fields, "clip", reference_voice_path().read_bytes())
    code, resp, _ = http_request(f"{url}/console/api/jobs", "POST", body, {"Content-Type": ctype, **mutate})
    assert code == 201, resp[:300]
    job = json.loads(resp)["job_id"]
    assert s3.list_objects_v2(Bucket=NAME, Prefix=f"status/{job}.json").get("KeyCount", 0) == 0
    code, resp, _ = http_request(f"{url}/console/api/jobs/{job}/cancel", "POST", b"", mutate)
    assert code == 200, resp[:300]
    status = json.loads(s3.get_object(Bucket=NAME, Key=f"status/{job}.json")["Body"].read())
    assert status["state"] == "CANCELLED", status


def _reconciler_paths(stack: dict[str, str], proxy: ProxyProcess, topic: str, s3: Any, sqs: Any) -> None:
    """No worker runs now: the reconciler meets one job of every kind it handles."""
    import subprocess

    from tests.helpers import TTS

    now = utcnow()

    def status(job: str, state: JobState, **kw: Any) -> JobStatus:
        st = JobStatus.new(job, created_at=now)
        if state is not JobState.QUEUED:
            st = st.moved_to(JobState.PROCESSING, worker="gone", lease_s=1)
            st = st.model_copy(update={"lease_expires_at": now, **kw})
            if state.terminal:
                st = st.moved_to(state)
        s3.put_object(Bucket=NAME, Key=f"status/{job}.json", Body=st.model_dump_json().encode())
        return st

    # A dead-lettered job whose worker died; its own message is in the DLQ.
    dlq = sqs.get_queue_url(QueueName=f"{NAME}-dlq")["QueueUrl"]
    mid = sqs.send_message(QueueUrl=dlq, MessageBody=s3_event(NAME, "inbox/pol-dead.json"))["MessageId"]
    status("pol-dead", JobState.PROCESSING, message_id=mid)
    # A result whose final status write was lost.
    status("pol-half", JobState.PROCESSING)
    s3.copy_object(Bucket=NAME, Key="results/pol-half.json", CopySource=f"{NAME}/results/pol-done.json")
    # A stuck job (re-enqueued), one of each lane, and outputs of a job that ended without a result.
    status("pol-stuck", JobState.PROCESSING)
    s3.put_object(Bucket=NAME, Key="inbox-interactive/pol-stuck-fast.json", Body=json.dumps(_manifest()).encode())
    status("pol-stuck-fast", JobState.PROCESSING, priority=Priority.interactive)  # as its claim recorded it
    status("pol-failed", JobState.FAILED)
    s3.put_object(Bucket=NAME, Key="outputs/pol-failed/attempt-1.wav", Body=b"RIFF")
    # The stuck jobs' messages are lost (issue 26: the reconciler copies a job only when no message
    # can still carry it, e.g. its lane's queue is empty).
    for lane in (NAME, f"{NAME}-interactive"):
        sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=lane)["QueueUrl"])
        wait_until(lambda lane=lane: sum(queue_depth(sqs, lane)) == 0, f"{lane} empty", 60)
    env = _env(stack, proxy, "reconciler-key", topic)
    out = subprocess.run([TTS, "reconcile", "--older-than", "0"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)["counts"]
    assert {"failed_worker_crashed", "completed_from_result", "reenqueued", "outputs_removed"} <= set(counts), counts
    assert counts["reenqueued"] >= 2, counts  # one job per lane


# -- the checks --------------------------------------------------------------------------------


def test_every_request_is_allowed_by_its_roles_policy(traced: Any) -> None:
    trace, arns = traced
    denied = []
    for e in trace:
        role = ROLES.get(e["key_id"] or "")
        if role is None:
            continue  # the test's own calls, and the operator's CLI
        allowed = grants(role, arns)
        for action, resource in needs(e):
            if not any(_allows(g, action, resource) for g in allowed):
                denied.append(f"{role}: {action} on {resource} ({e['agent']} {e['op']})")
    assert not denied, "\n".join(sorted(set(denied)))


def test_every_grant_is_used(traced: Any) -> None:
    trace, arns = traced
    unused = []
    for role in ROLES.values():
        performed = {pair for e in trace if ROLES.get(e["key_id"] or "") == role for pair in needs(e)}
        for grant in grants(role, arns):
            if any(_allows(grant, a, r) for a, r in performed):
                continue
            short = grant[2].removeprefix(f"{arns['JobBucket.Arn']}/")
            if (role, grant[1], short) not in FAILURE_ONLY:
                unused.append(f"{role} {grant[0]}: {grant[1]} on {grant[2]}")
    assert not unused, "granted but never used:\n" + "\n".join(unused)


def test_the_trace_covers_every_component(traced: Any) -> None:
    """The checks above would pass vacuously on an empty trace."""
    trace, _ = traced
    by_role: dict[str, int] = {}
    for e in trace:
        role = ROLES.get(e["key_id"] or "")
        if role:
            by_role[role] = by_role.get(role, 0) + 1
    assert set(by_role) == set(ROLES.values()) and min(by_role.values()) > 10, by_role
