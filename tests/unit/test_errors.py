"""What a job's status says about an AWS or library failure: the project's words, never the
error's text (AWS's AccessDenied names the role's ARN and the account; issue 25, defect 6)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from pipeline.cloud.aws import describe, is_access_denied, is_transient

ARN_TEXT = "User: arn:aws:sts::123456789012:assumed-role/tts-worker/i-1 is not authorized to perform: s3:GetObject"


def _client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": ARN_TEXT}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("AccessDenied", 403), "GetObject answered AccessDenied (HTTP 403)"),
        (_client_error("SlowDown", 503, "PutObject"), "PutObject answered SlowDown (HTTP 503)"),
        (
            EndpointConnectionError(endpoint_url="http://10.1.2.3:4566"),
            "could not reach S3/SQS (EndpointConnectionError)",
        ),
        (TimeoutError(), "no answer from S3/SQS in time"),
        (RuntimeError(ARN_TEXT), "RuntimeError"),
    ],
)
def test_describe_names_the_call_and_code_never_the_text(error: BaseException, expected: str) -> None:
    text = describe(error)
    assert text == expected
    assert "arn:" not in text and "123456789012" not in text and "10.1.2.3" not in text


def test_access_denied_is_its_own_kind_not_transient() -> None:
    denied = _client_error("AccessDenied", 403)
    assert is_access_denied(denied) and not is_transient(denied)
    assert not is_access_denied(_client_error("NoSuchKey", 404))
    assert not is_access_denied(_client_error("SlowDown", 503))
    assert is_access_denied(_client_error("", 403))  # a HEAD's 403 has no body, hence no code
