"""Create the pipeline's AWS resources, idempotently: bucket, job queue + DLQ, S3 -> SQS notification,
and the interactive lane: ``<queue>-interactive`` notified for ``inbox-interactive/``.

Both queues dead-letter into the one DLQ (``<queue>-dlq``) with the same maxReceiveCount: a job
is a job whichever lane it came by, so operators, ``dlq list/redrive`` and the reconciler look in
one place, and a worker's queue-level rules (last delivery, parking what it cannot parse) hold
for both lanes alike.

One source of truth for the resources, used three ways:

- ``tts-pipeline bootstrap`` (against AWS or any endpoint in ``AWS_ENDPOINT_URL``);
- as LocalStack's ready-hook (``localstack/init/ready.d/10_tts_bootstrap.py`` links here), which
  LocalStack ``exec``s inside its own process: hence only stdlib + boto3, no dataclasses, and the
  ``__name__`` check at the bottom;
- ``python pipeline/ops/bootstrap.py`` anywhere boto3 is installed.

``infra/cloudformation.yaml`` declares the same resources for production (plus encryption,
lifecycle, TLS-only policy, SNS topic and the worker's IAM policy); a test deploys it to LocalStack
and checks that this bootstrap then finds nothing to change.

Returns/prints the list of changes made; an empty list means everything was already in place.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import boto3
from botocore.exceptions import ClientError

NOTIFICATION_ID = "tts-inbox"
INBOX_PREFIX = "inbox/"
INTERACTIVE_NOTIFICATION_ID = "tts-inbox-interactive"
# Not under inbox/: S3 refuses two configurations of one event type with overlapping prefixes.
INTERACTIVE_PREFIX = "inbox-interactive/"
INTERACTIVE_SUFFIX = "-interactive"
MANIFEST_SUFFIX = ".json"
VISIBILITY_TIMEOUT_S = 45  # = the workers' default TTS_VISIBILITY_TIMEOUT_S (they pass theirs on receive)
MAX_RECEIVE_COUNT = 5
# SQS keeps messages 4 days unless told otherwise, less than the 7-day job TTL: a job waiting
# longer would vanish while its status said QUEUED. Both queues keep messages for SQS's maximum.
RETENTION_S = 14 * 24 * 3600
DLQ_RETENTION_S = RETENTION_S


def bootstrap(bucket: str, queue: str, *, s3: Any = None, sqs: Any = None, region: str | None = None) -> list[str]:
    """Ensure all resources exist with the expected settings. Returns a list of change descriptions."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    s3 = s3 or boto3.client("s3", region_name=region)
    sqs = sqs or boto3.client("sqs", region_name=region)
    changes: list[str] = []
    _ensure_bucket(s3, bucket, region, changes)
    dlq_url = _ensure_queue(
        sqs, f"{queue}-dlq", {"MessageRetentionPeriod": str(DLQ_RETENTION_S), "SqsManagedSseEnabled": "true"}, changes
    )
    dlq_arn = _queue_arn(sqs, dlq_url)
    lanes = {
        NOTIFICATION_ID: (INBOX_PREFIX, _ensure_lane(sqs, queue, dlq_arn, bucket, changes)),
        INTERACTIVE_NOTIFICATION_ID: (
            INTERACTIVE_PREFIX,
            _ensure_lane(sqs, queue + INTERACTIVE_SUFFIX, dlq_arn, bucket, changes),
        ),
    }
    _ensure_notifications(s3, bucket, lanes, changes)
    return changes


def _ensure_lane(sqs: Any, name: str, dlq_arn: str, bucket: str, changes: list[str]) -> str:
    """One job queue (bulk or interactive) with the shared DLQ; returns its ARN."""
    attributes = {
        "VisibilityTimeout": str(VISIBILITY_TIMEOUT_S),
        "MessageRetentionPeriod": str(RETENTION_S),
        "ReceiveMessageWaitTimeSeconds": "20",
        "SqsManagedSseEnabled": "true",
    }
    url = _ensure_queue(sqs, name, attributes, changes)
    arn = _queue_arn(sqs, url)
    _ensure_queue_attributes(
        sqs,
        url,
        {
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}),
            "Policy": json.dumps(_queue_policy(arn, bucket)),
        },
        changes,
    )
    return arn


def _ensure_bucket(s3: Any, bucket: str, region: str, changes: list[str]) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    changes.append(f"created bucket {bucket}")


def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str], changes: list[str]) -> str:
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as e:
        if "NonExistentQueue" not in e.response.get("Error", {}).get("Code", ""):
            raise
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        changes.append(f"created queue {name}")
        return url
    _ensure_queue_attributes(sqs, url, attributes, changes)
    return url


def _ensure_queue_attributes(sqs: Any, url: str, wanted: dict[str, str], changes: list[str]) -> None:
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {})
    diff = {k: v for k, v in wanted.items() if not _same(current.get(k), v)}
    if diff:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=diff)
        changes.append(f"set {', '.join(sorted(diff))} on {url.rsplit('/', 1)[-1]}")


def _same(current: str | None, wanted: str) -> bool:
    if current == wanted:
        return True
    try:  # JSON attributes may come back re-serialised
        return current is not None and json.loads(current) == json.loads(wanted)
    except ValueError:
        return False


def _queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _queue_policy(queue_arn: str, bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowS3Notifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                # The account: a bucket name is global, and may one day be another account's.
                "Condition": {
                    "ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
                    "StringEquals": {"aws:SourceAccount": queue_arn.split(":")[4]},
                },
            }
        ],
    }


def _ensure_notifications(s3: Any, bucket: str, lanes: dict[str, tuple[str, str]], changes: list[str]) -> None:
    """``lanes``: notification id -> (inbox prefix, queue ARN). One PUT for whatever is missing:
    the configuration is one document, and S3 checks it whole (overlapping prefixes refused)."""
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    configs = current.get("QueueConfigurations", [])
    wanted = {nid: _notification(nid, prefix, arn) for nid, (prefix, arn) in lanes.items()}
    # Equivalent is enough, whatever its Id: CloudFormation cannot set one (S3 assigns it).
    missing = {nid: c for nid, c in wanted.items() if not any(_normalise(q) == _normalise(c) for q in configs)}
    if not missing:
        return
    ours = {_normalise(c) for c in wanted.values()}
    others = [q for q in configs if q.get("Id") not in missing and _normalise(q) not in ours]
    config = {k: v for k, v in current.items() if k != "QueueConfigurations"}
    config["QueueConfigurations"] = [*others, *(wanted[nid] for nid in lanes if nid not in missing), *missing.values()]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    for nid in missing:
        prefix, arn = lanes[nid]
        changes.append(f"configured s3://{bucket}/{prefix}*{MANIFEST_SUFFIX} -> {arn}")


def _notification(nid: str, prefix: str, queue_arn: str) -> dict[str, Any]:
    return {
        "Id": nid,
        "QueueArn": queue_arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {
            "Key": {
                "FilterRules": [
                    {"Name": "Prefix", "Value": prefix},
                    {"Name": "Suffix", "Value": MANIFEST_SUFFIX},
                ]
            }
        },
    }


def _normalise(cfg: dict[str, Any]) -> tuple[Any, ...]:
    rules = cfg.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return (
        cfg.get("QueueArn"),
        tuple(sorted(cfg.get("Events", []))),
        tuple(sorted((r["Name"].lower(), r["Value"]) for r in rules)),
    )


def main() -> None:
    # As a LocalStack hook: talk to the LocalStack we run inside (its port comes from the environment
    # `tts-pipeline localstack start` sets, or the default gateway port in the official image).
    endpoint = os.environ.get("TTS_BOOTSTRAP_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    endpoint = endpoint or "http://localhost:4566"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    s3 = boto3.client("s3", region_name=region, endpoint_url=endpoint)
    sqs = boto3.client("sqs", region_name=region, endpoint_url=endpoint)
    bucket = os.environ.get("TTS_BUCKET", "tts-jobs")
    queue = os.environ.get("TTS_QUEUE", "tts-jobs")
    for change in bootstrap(bucket, queue, s3=s3, sqs=sqs, region=region) or ["nothing to change"]:
        print(f"tts-bootstrap: {change}", file=sys.stderr)


# LocalStack exec()s hooks with empty globals, where __name__ resolves to "builtins".
if __name__ in {"__main__", "builtins"}:
    main()
