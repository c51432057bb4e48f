"""The production template deployed to LocalStack with CloudFormation, a job through the deployed
stack with SNS notifications, encryption on every write, probes, JSON logs, and presigned URLs
that really expire (LocalStack with signature validation on).

LocalStack ignores bucket encryption defaults, lifecycle rules, public-access blocks and IAM, so
those parts of the template are only linted (tests/unit/test_infra.py), not tested here."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.ops import localstack_host
from tests.helpers import (
    REF_TEXT,
    TTS,
    aws,
    free_port,
    reference_voice_path,
    start_worker,
    stop_worker,
    wait_for_state,
    wait_ready,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAME = "cfn-jobs"


@pytest.fixture(scope="module")
def stack(aws_env: dict[str, str], tiny_bundle: Path) -> dict[str, str]:
    from pipeline.cloud.aws import sync_client

    cfn = sync_client("cloudformation")
    cfn.create_stack(
        StackName="tts-pipeline",
        TemplateBody=(ROOT / "infra" / "cloudformation.yaml").read_text(),
        Parameters=[
            {"ParameterKey": "BucketName", "ParameterValue": NAME},
            {"ParameterKey": "QueueName", "ParameterValue": NAME},
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    cfn.get_waiter("stack_create_complete").wait(StackName="tts-pipeline", WaiterConfig={"Delay": 2, "MaxAttempts": 90})
    stack = cfn.describe_stacks(StackName="tts-pipeline")["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    env = {
        **aws_env,
        "TTS_BUCKET": outputs["BucketName"],
        "TTS_QUEUE": outputs["QueueName"],
        "TTS_NOTIFY_TOPIC_ARN": outputs["NotificationTopicArn"],
    }
    subprocess.run([TTS, "model", "push", str(tiny_bundle)], env=env, check=True, capture_output=True)
    aws(env, "s3", "cp", str(reference_voice_path()), f"s3://{NAME}/voices/alice.wav")
    return {**env, **{f"OUT_{k}": v for k, v in outputs.items()}}


def test_bootstrap_finds_nothing_to_change_on_a_stack_from_the_template(stack: dict[str, str]) -> None:
    """One definition of the resources: the dev bootstrap and the production template agree."""
    out = subprocess.run([TTS, "bootstrap"], env=stack, capture_output=True, text=True, check=True).stdout
    assert "nothing to change" in out, out


@pytest.fixture(scope="module")
def notifications(stack: dict[str, str], sqs: Any) -> str:
    """An SQS queue subscribed to the stack's SNS topic (raw delivery), as a consumer would."""
    from pipeline.cloud.aws import sync_client

    url = sqs.create_queue(QueueName="cfn-notifications")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sync_client("sns").subscribe(
        TopicArn=stack["TTS_NOTIFY_TOPIC_ARN"], Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )
    return url


@pytest.fixture(scope="module")
def json_worker(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    w = start_worker(stack, tmp_path_factory.mktemp("cfn") / "worker.log", log_format="json")
    wait_ready(w)
    yield w
    assert stop_worker(w) == 0


def _notifications(sqs: Any, url: str, n: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, MaxNumberOfMessages=10).get("Messages", []):
            got.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return got


def test_a_job_through_the_deployed_stack_notifies_and_encrypts(
    stack: dict[str, str], json_worker: Any, notifications: str, s3: Any, sqs: Any
) -> None:
    good = {"text": "Deployed.", "voice": "voices/alice.wav", "ref_text": REF_TEXT, "nfe_step": 2}
    s3.put_object(Bucket=NAME, Key="inbox/cfn-good.json", Body=json.dumps(good).encode())
    s3.put_object(Bucket=NAME, Key="inbox/cfn-bad.json", Body=b"{broken")
    assert wait_for_state(s3, "cfn-good", bucket=NAME, worker=json_worker)["state"] == "COMPLETED"
    assert wait_for_state(s3, "cfn-bad", bucket=NAME, worker=json_worker)["state"] == "FAILED"

    by_job = {n["job_id"]: n for n in _notifications(sqs, notifications, 2)}
    assert by_job["cfn-good"]["state"] == "COMPLETED"
    assert by_job["cfn-good"]["result_uri"] == f"s3://{NAME}/results/cfn-good.json"
    assert by_job["cfn-bad"]["state"] == "FAILED" and by_job["cfn-bad"]["error"]["code"] == "INVALID_JSON"

    for key in ("outputs/cfn-good/attempt-1.wav", "results/cfn-good.json", "status/cfn-good.json"):
        assert s3.head_object(Bucket=NAME, Key=key).get("ServerSideEncryption") == "AES256", key


def test_probes_and_json_logs(stack: dict[str, str], json_worker: Any, s3: Any) -> None:
    base = f"http://127.0.0.1:{json_worker.metrics_port}"
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(base + path, timeout=5) as resp:
            assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "/nope", timeout=5)
    lines = [json.loads(line) for line in json_worker.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "job_id", "msg"} <= set(rec) for rec in lines)
    job_lines = [rec for rec in lines if rec["job_id"] == "cfn-good"]
    assert any("result published" in rec["msg"] for rec in job_lines)
    text = json_worker.log()
    assert "Signature=" not in text and "X-Amz-Signature" not in text and "X-Amz-Credential" not in text


def test_presigned_urls_expire_when_signatures_are_checked(tmp_path: Path, aws_env: dict[str, str]) -> None:
    """A LocalStack of its own with S3_SKIP_SIGNATURE_VALIDATION=0: an expired URL is refused,
    a fresh one works. TTS_PRESIGN_EXPIRY_S sets the lifetime the worker and `result` use."""
    import asyncio
    import os

    from pipeline.cloud.store import Store
    from pipeline.ops.bootstrap import bootstrap

    state = tmp_path / "ls-sig"
    os.environ["S3_SKIP_SIGNATURE_VALIDATION"] = "0"
    try:
        inst = localstack_host.start(port=free_port(), state_dir=state)
    finally:
        os.environ.pop("S3_SKIP_SIGNATURE_VALIDATION")
    saved = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = inst.endpoint
    try:
        bootstrap("sig-jobs", "sig-jobs")

        async def urls() -> tuple[str, str]:
            async with Store.open("sig-jobs") as store:
                await store.put_bytes("outputs/x.wav", b"RIFF fake audio")
                await store.put_bytes("outputs/y.wav", b"another object")
                return await store.presign_get("outputs/x.wav", 1), await store.presign_get("outputs/x.wav", 600)

        short, long = asyncio.run(urls())
        time.sleep(2.5)
        with pytest.raises(urllib.error.HTTPError) as expired:
            urllib.request.urlopen(short, timeout=5)
        assert expired.value.code == 403
        with urllib.request.urlopen(long, timeout=5) as resp:
            assert resp.read() == b"RIFF fake audio"
        tampered = long.replace("x.wav", "y.wav")  # y.wav exists: only the signature can refuse it
        with pytest.raises(urllib.error.HTTPError) as forged:
            urllib.request.urlopen(tampered, timeout=5)
        assert forged.value.code == 403
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved
        localstack_host.stop(state)
