"""Parsing S3 event notifications as they arrive in SQS message bodies.

Handles what S3 actually sends: the ``s3:TestEvent`` written when a notification is configured,
several records per message, URL-encoded keys (``+`` is a space, ``%2B`` is a plus), the same
event wrapped in an SNS envelope (S3 -> SNS -> SQS fan-out), and S3's EventBridge event
(``"source": "aws.s3"``, ``"detail-type": "Object Created"``; S3 -> EventBridge rule -> SQS), whose
key is NOT URL-encoded (AWS's documented example carries ``:`` as is). Each ``ObjectCreated``
carries the uploader (``principal``: ``userIdentity.principalId``, or EventBridge's
``detail.requester``), which the worker shares bulk work fairly among. Anything else is
``Unrecognised``: the consumer must not delete what it does not understand (it goes to the DLQ).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote_plus


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str  # decoded
    event_time: datetime | None
    size: int | None = None
    etag: str | None = None
    sequencer: str | None = None
    principal: str | None = None  # who uploaded it: the submitter bulk work is shared fairly among


@dataclass(frozen=True)
class ParsedMessage:
    """What one SQS message body holds."""

    created: list[ObjectCreated] = field(default_factory=list)
    test_event: bool = False
    ignored: int = 0  # records of other event types (e.g. ObjectRemoved)


class UnrecognisedMessage(ValueError):
    pass


def parse_message_body(body: str) -> ParsedMessage:
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as e:
        raise UnrecognisedMessage(f"message body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UnrecognisedMessage("message body is not a JSON object")

    # S3 -> SNS -> SQS: the S3 event is a string inside the SNS envelope.
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_message_body(doc["Message"])

    if doc.get("source") == "aws.s3" and "detail-type" in doc:
        return _eventbridge(doc)

    if doc.get("Event") == "s3:TestEvent":
        return ParsedMessage(test_event=True)

    records = doc.get("Records")
    if not isinstance(records, list):
        raise UnrecognisedMessage("message is neither an S3 event nor an s3:TestEvent")

    created: list[ObjectCreated] = []
    ignored = 0
    for rec in records:
        if not isinstance(rec, dict) or rec.get("eventSource") != "aws:s3":
            raise UnrecognisedMessage("record is not an S3 event record")
        if not str(rec.get("eventName", "")).startswith("ObjectCreated:"):
            ignored += 1
            continue
        created.append(_object_created(rec))
    return ParsedMessage(created=created, ignored=ignored)


def _object_created(rec: dict) -> ObjectCreated:
    try:
        s3 = rec["s3"]
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError) as e:
        raise UnrecognisedMessage(f"S3 record lacks {e}") from None
    return ObjectCreated(
        bucket=bucket,
        key=key,
        event_time=_parse_time(rec.get("eventTime")),
        size=obj.get("size"),
        etag=obj.get("eTag"),
        sequencer=obj.get("sequencer"),
        principal=_str((rec.get("userIdentity") or {}).get("principalId")),
    )


def _eventbridge(doc: dict) -> ParsedMessage:
    """One S3 event as EventBridge delivers it: one object per event, its key as written."""
    if doc["detail-type"] != "Object Created":
        return ParsedMessage(ignored=1)  # Object Deleted, Restore ...: not a submission
    try:
        detail = doc["detail"]
        bucket = detail["bucket"]["name"]
        obj = detail["object"]
        key = obj["key"]
    except (KeyError, TypeError) as e:
        raise UnrecognisedMessage(f"EventBridge S3 event lacks {e}") from None
    if not isinstance(key, str) or not isinstance(bucket, str):
        raise UnrecognisedMessage("EventBridge S3 event has a non-string bucket or key")
    created = ObjectCreated(
        bucket=bucket,
        key=key,
        event_time=_parse_time(doc.get("time")),
        size=obj.get("size"),
        etag=obj.get("etag"),
        sequencer=obj.get("sequencer"),
        principal=_str(detail.get("requester")),
    )
    return ParsedMessage(created=[created])


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
