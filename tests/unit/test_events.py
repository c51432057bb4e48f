"""Parsing S3 event notifications from SQS bodies, including the awkward parts S3 really sends."""

from __future__ import annotations

import json

import pytest

from pipeline.events import UnrecognisedMessage, parse_message_body


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
