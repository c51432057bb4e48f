"""Parsing S3 event notifications from SQS bodies, including the awkward parts S3 really sends."""

from __future__ import annotations

import json

import pytest

from pipeline.cloud.events import UnrecognisedMessage, parse_message_body


def _record(key: str, event: str = "ObjectCreated:Put", bucket: str = "tts-jobs") -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": event,
        "eventTime": "2026-11-25T01:02:03.456Z",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 12, "eTag": "abc", "sequencer": "01"}},
    }


def test_test_event() -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "tts-jobs"})
    parsed = parse_message_body(body)
    assert parsed.test_event and parsed.created == []


def test_keys_are_url_decoded_plus_is_space_and_percent_2b_is_plus() -> None:
    body = json.dumps({"Records": [_record("inbox/my+job%2B1%C3%A9.json")]})
    [rec] = parse_message_body(body).created
    assert rec.key == "inbox/my job+1é.json"
    assert rec.bucket == "tts-jobs"
    assert rec.event_time is not None and rec.event_time.year == 2026 and rec.event_time.tzinfo is not None
    assert (rec.size, rec.etag) == (12, "abc")


def test_several_records_per_message_and_non_create_events_ignored() -> None:
    body = json.dumps(
        {
            "Records": [
                _record("inbox/a.json"),
                _record("inbox/b.json", "ObjectCreated:CompleteMultipartUpload"),
                _record("inbox/c.json", "ObjectRemoved:Delete"),
            ]
        }
    )
    parsed = parse_message_body(body)
    assert [r.key for r in parsed.created] == ["inbox/a.json", "inbox/b.json"]
    assert parsed.ignored == 1


def test_sns_envelope_is_unwrapped() -> None:
    inner = json.dumps({"Records": [_record("inbox/x.json")]})
    body = json.dumps({"Type": "Notification", "Message": inner, "TopicArn": "arn:aws:sns:..."})
    assert [r.key for r in parse_message_body(body).created] == ["inbox/x.json"]


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        json.dumps({"hello": "world"}),
        json.dumps({"Records": [{"eventSource": "aws:sqs"}]}),
        json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {}}]}),
    ],
)
def test_anything_else_is_unrecognised(body: str) -> None:
    with pytest.raises(UnrecognisedMessage):
        parse_message_body(body)


# AWS's documented "Object Created" event (S3 user guide, "EventBridge event message structure"),
# with a key as EventBridge writes it: not URL-encoded (":" and "+" are themselves).
EVENTBRIDGE = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2021-11-12T00:00:00Z",
    "region": "ca-central-1",
    "resources": ["arn:aws:s3:::amzn-s3-demo-bucket1"],
    "detail": {
        "version": "0",
        "bucket": {"name": "amzn-s3-demo-bucket1"},
        "object": {
            "key": "inbox/a+b:c.json",
            "size": 5,
            "etag": "b1946ac92492d2347c6235b4d2611184",
            "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            "sequencer": "617f08299329d189",
        },
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    },
}


def test_eventbridge_object_created_parses_like_a_direct_notification() -> None:
    [rec] = parse_message_body(json.dumps(EVENTBRIDGE)).created
    assert rec.bucket == "amzn-s3-demo-bucket1"
    assert rec.key == "inbox/a+b:c.json"  # as written: "+" stays a plus
    assert (rec.size, rec.etag, rec.sequencer) == (5, "b1946ac92492d2347c6235b4d2611184", "617f08299329d189")
    assert rec.principal == "123456789012"
    assert rec.event_time is not None and rec.event_time.isoformat() == "2021-11-12T00:00:00+00:00"


def test_eventbridge_other_detail_types_are_ignored_and_broken_ones_unrecognised() -> None:
    deleted = {**EVENTBRIDGE, "detail-type": "Object Deleted"}
    parsed = parse_message_body(json.dumps(deleted))
    assert parsed.created == [] and parsed.ignored == 1
    broken = {**EVENTBRIDGE, "detail": {"bucket": {"name": "b"}}}
    with pytest.raises(UnrecognisedMessage, match="object"):
        parse_message_body(json.dumps(broken))


def test_the_uploader_is_carried_from_direct_and_sns_wrapped_events() -> None:
    record = {**_record("inbox/p.json"), "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"}}
    [direct] = parse_message_body(json.dumps({"Records": [record]})).created
    sns = json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [record]})})
    [wrapped] = parse_message_body(sns).created
    assert direct.principal == wrapped.principal == "AWS:AIDAEXAMPLE"
    assert parse_message_body(json.dumps({"Records": [_record("inbox/q.json")]})).created[0].principal is None
