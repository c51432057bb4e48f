"""Parsing S3 event notifications as they arrive in SQS message bodies.

Handles what S3 actually sends: the ``s3:TestEvent`` written when a notification is configured,
several records per message, URL-encoded keys (``+`` is a space, ``%2B`` is a plus), the same
event wrapped in an SNS envelope (S3 -> SNS -> SQS fan-out), and S3's EventBridge event
(``"source": "aws.s3"``, ``"detail-type": "Object Created"``; S3 -> EventBridge rule -> SQS), whose
key is NOT URL-encoded (AWS's documented example carries ``:`` as is). Each ``ObjectCreated``
carries the uploader (``principal``: ``userIdentity.principalId``, or EventBridge's
``detail.requester``, as sent); the worker shares bulk work fairly among ``submitter(principal)``,
the principal without its caller-chosen part. Anything else is
``Unrecognised``: the consumer must not delete what it does not understand (it goes to the DLQ).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

if TYPE_CHECKING:
    from pipeline.cloud.store import ObjectInfo


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


# S3 -> SNS -> SQS wraps once; a chain of envelopes deeper than this is not a path S3 delivers by,
# and unwrapping it without a bound would let one message recurse the parser to death.
MAX_ENVELOPES = 2


def parse_message_body(body: str) -> ParsedMessage:
    """The message's S3 events, or ``UnrecognisedMessage``: never another exception, whatever the
    body holds (the body is anyone's who can send to the queue: one crash here is a poison pill)."""
    return _parse(body, MAX_ENVELOPES)


def _parse(body: object, envelopes_left: int) -> ParsedMessage:
    if not isinstance(body, str):
        raise UnrecognisedMessage("message body is not text")
    try:
        doc = json.loads(body)
    except RecursionError:  # "[" * 100000: the decoder recurses once per level
        raise UnrecognisedMessage("message body is JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer literal over Python's digit limit
        raise UnrecognisedMessage(f"message body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UnrecognisedMessage("message body is not a JSON object")

    # S3 -> SNS -> SQS: the S3 event is a string inside the SNS envelope.
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        if envelopes_left <= 0:
            raise UnrecognisedMessage("message is SNS envelopes nested too deeply")
        return _parse(doc["Message"], envelopes_left - 1)

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
        name = rec.get("eventName")
        if not isinstance(name, str):
            raise UnrecognisedMessage("S3 record's eventName is not a string")
        if not name.startswith("ObjectCreated:"):
            ignored += 1
            continue
        created.append(_object_created(rec))
    return ParsedMessage(created=created, ignored=ignored)


def _object_created(rec: dict[str, Any]) -> ObjectCreated:
    s3 = _object(rec.get("s3"), "S3 record's s3")
    bucket = _object(s3.get("bucket"), "S3 record's s3.bucket")
    obj = _object(s3.get("object"), "S3 record's s3.object")
    key = _name(obj.get("key"), "S3 record's s3.object.key")
    identity = rec.get("userIdentity")
    return ObjectCreated(
        bucket=_name(bucket.get("name"), "S3 record's s3.bucket.name"),
        key=_name(unquote_plus(key), "S3 record's s3.object.key"),  # decoding may leave nothing usable
        event_time=_parse_time(rec.get("eventTime")),
        size=_size(obj.get("size"), "S3 record's s3.object.size"),
        etag=_optional_str(obj.get("eTag"), "S3 record's s3.object.eTag"),
        sequencer=_optional_str(obj.get("sequencer"), "S3 record's s3.object.sequencer"),
        principal=_str(identity.get("principalId")) if isinstance(identity, dict) else None,
    )


def _eventbridge(doc: dict[str, Any]) -> ParsedMessage:
    """One S3 event as EventBridge delivers it: one object per event, its key as written."""
    if doc["detail-type"] != "Object Created":
        return ParsedMessage(ignored=1)  # Object Deleted, Restore ...: not a submission
    detail = _object(doc.get("detail"), "EventBridge S3 event's detail")
    bucket = _object(detail.get("bucket"), "EventBridge S3 event's detail.bucket")
    obj = _object(detail.get("object"), "EventBridge S3 event's detail.object")
    created = ObjectCreated(
        bucket=_name(bucket.get("name"), "EventBridge S3 event's detail.bucket.name"),
        key=_name(obj.get("key"), "EventBridge S3 event's detail.object.key"),
        event_time=_parse_time(doc.get("time")),
        size=_size(obj.get("size"), "EventBridge S3 event's detail.object.size"),
        etag=_optional_str(obj.get("etag"), "EventBridge S3 event's detail.object.etag"),
        sequencer=_optional_str(obj.get("sequencer"), "EventBridge S3 event's detail.object.sequencer"),
        principal=_str(detail.get("requester")),
    )
    return ParsedMessage(created=[created])


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnrecognisedMessage(f"{what} is missing or not an object")
    return value


def _name(value: object, what: str) -> str:
    """A bucket name or key: a non-empty string S3 could hold (UTF-8: a lone surrogate from a
    ``\\ud800`` escape would only fail later, in the middle of a job, when the key is sent)."""
    if not isinstance(value, str) or not value:
        raise UnrecognisedMessage(f"{what} is missing or not a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnrecognisedMessage(f"{what} is not valid Unicode") from None
    return value


def _size(value: object, what: str) -> int | None:
    # bool is an int to Python, not a size to S3.
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise UnrecognisedMessage(f"{what} is not a byte count")


def _optional_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UnrecognisedMessage(f"{what} is not a string")


def _str(value: object) -> str | None:
    # Who uploaded it only picks a turn in the fair share: an odd one is no reason to refuse the event.
    return value if isinstance(value, str) and value else None


# -- who submitted it -------------------------------------------------------------------------------

ANONYMOUS = ""


def submitter(principal: str | None) -> str:
    """The submitter bulk work is shared fairly among: ``principal`` without the part its caller
    chooses, so that one identity is one submitter however it names its sessions. Total: any string
    gives a string (``ANONYMOUS`` for nothing usable), and ``submitter(submitter(p)) == submitter(p)``.

    S3 documents ``userIdentity.principalId`` only as "the unique ID of the IAM resource that caused
    the event" (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html);
    in practice it is ``AWS:`` followed by the caller's ``aws:userid``, whose forms the IAM user guide
    lists (policy variables, "Principal key values") and STS's AssumedRoleUser describes as "a unique
    identifier that contains the role ID and the role session name"
    (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumedRoleUser.html):

    - IAM user: ``AWS:AIDAEXAMPLE`` -> itself;
    - assumed role: ``AWS:AROAEXAMPLE:session-name`` -> ``AWS:AROAEXAMPLE`` (the role's unique id;
      the session name is whatever the caller passed to AssumeRole, so rotating it would otherwise
      make one role many submitters);
    - federated user (GetFederationToken): ``AWS:123456789012:caller-chosen-name`` ->
      ``AWS:123456789012`` (the name is the caller's choice too: the account is the submitter);
    - root, or EventBridge's ``detail.requester`` (an account id, or a service such as
      ``s3.amazonaws.com``): no session part, itself;
    - the same ids without ``AWS:`` (as CloudTrail writes them): the part before the first ``:``.
    """
    if not principal:
        return ANONYMOUS
    p = principal.strip()
    prefix = "AWS:" if p.startswith("AWS:") else ""
    ident = p[len(prefix) :].split(":", 1)[0].strip()
    return prefix + ident if ident else ANONYMOUS


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # S3 always says UTC; a naive time would become a status's created_at that cannot be compared
    # with the reconciler's clock (TypeError), so it is read as UTC too.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def s3_event(bucket: str, key: str, obj: ObjectInfo | None = None, *, principal: str) -> str:
    """An SQS body in the shape S3 sends for ObjectCreated, for the messages the pipeline sends
    itself (the reconciler's re-enqueues, the speech API's interactive jobs), so a worker needs no
    second path. ``principal`` names the sender (the fair share's submitter)."""
    at = obj.last_modified if obj else datetime.now(UTC)
    record: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "eventTime": at.isoformat().replace("+00:00", "Z"),
        "userIdentity": {"principalId": principal},
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, **({"size": obj.size} if obj else {})}},
    }
    return json.dumps({"Records": [record]})
