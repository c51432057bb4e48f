"""Parsing S3 event notifications as they arrive in SQS message bodies.

Handles what S3 actually sends: the ``s3:TestEvent`` written when a notification is configured,
several records per message, URL-encoded keys (``+`` is a space, ``%2B`` is a plus), and the same
event wrapped in an SNS envelope (S3 -> SNS -> SQS fan-out). Anything else is ``Unrecognised``:
the consumer must not delete what it does not understand (it goes to the DLQ instead).
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
    )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
