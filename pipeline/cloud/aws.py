"""AWS clients and the one retry policy for S3 and SQS calls.

Endpoint, region and credentials come from the SDK's standard environment variables
(``AWS_ENDPOINT_URL``...); nothing here knows about LocalStack. Retries are ours (tenacity) rather
than botocore's, so there is a single, visible policy: bounded exponential backoff with jitter,
only for errors that can succeed on a second try.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from tenacity import (
    AsyncRetrying,
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"

_TRANSIENT_CODES = {
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "AWS.SimpleQueueService.ServiceUnavailable",
    # S3: a conditional write racing another write of the same key, e.g. our own earlier try still
    # being completed server-side. AWS asks for a retry; the retry then sees what landed.
    "ConditionalRequestConflict",
}

MAX_ATTEMPTS = 6
MIN_TRANSFER_BYTES_PER_S = 1024 * 1024  # the slowest S3 transfer a call is allowed before it is retried


# Network failures: no answer, a reset connection, or a body cut short after the headers (aiohttp
# raises ClientPayloadError while a streamed body is read; botocore's own classes for the same).
_NETWORK_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    ConnectTimeoutError,
    IncompleteReadError,
    ResponseStreamingError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
)


# The bucket or queue itself is gone: deleted, or a LocalStack restarted without its state. Not
# transient for one call, but a worker waits for it to come back rather than exit (worker/loop.py).
_MISSING_RESOURCE_CODES = {"NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


def is_missing_resource(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _MISSING_RESOURCE_CODES


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _NETWORK_ERRORS):
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return err.get("Code") in _TRANSIENT_CODES or status >= 500
    return isinstance(exc, ConnectionError | TimeoutError)


_ACCESS_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "Forbidden", "AllAccessDisabled"}


def is_access_denied(exc: BaseException) -> bool:
    """AWS refused the call (the role's policy, a bucket policy, a KMS key): not transient, and the
    job did nothing wrong; the operator has a permission to grant."""
    if not isinstance(exc, ClientError):
        return False
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return err.get("Code") in _ACCESS_DENIED_CODES or (status == 403 and err.get("Code") in (None, "", "403"))


def describe(exc: BaseException) -> str:
    """An S3/SQS failure in the project's words, for a job's status or an API answer: the call, the
    error code AWS gave (``SlowDown``, ``AccessDenied``) and the HTTP status, or the kind of network
    failure. Never the error's message text: AWS's messages name the role's ARN and the account id,
    and library messages name hosts and internals. The full error goes to the log with the job id."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = err.get("Code") or "an error"
        return f"{exc.operation_name} answered {code}" + (f" (HTTP {status})" if status else "")
    if isinstance(exc, TimeoutError):
        return "no answer from S3/SQS in time"
    if isinstance(exc, (*_NETWORK_ERRORS, ConnectionError)):
        return f"could not reach S3/SQS ({type(exc).__name__})"
    return type(exc).__name__


def _policy(deadline_s: float | None = None) -> dict[str, Any]:
    stop = stop_after_attempt(MAX_ATTEMPTS)
    if deadline_s is not None:  # give up rather than start a try that would end past the deadline
        stop = stop | stop_before_delay(deadline_s)
    return {
        "retry": retry_if_exception(is_transient),
        "stop": stop,
        "wait": wait_exponential_jitter(initial=0.2, max=5.0),
        "before_sleep": before_sleep_log(log, logging.WARNING),
        "reraise": True,
    }


def async_retrying(deadline_s: float | None = None) -> AsyncRetrying:
    """The shared policy; ``deadline_s`` also bounds the attempts' total time (retries included)."""
    return AsyncRetrying(**_policy(deadline_s))


def retrying() -> Retrying:
    return Retrying(**_policy())


@dataclass(frozen=True)
class Calls:
    """How one client's calls are made: who makes them (``agent``, sent in the User-Agent, so S3
    access logs, CloudTrail and the test proxy can tell a lease renewal from an upload) and how long
    one attempt of one call may take (``timeout_s``, enforced whatever the socket does: a hung
    connection, a full connection pool). ``deadline_s`` bounds a call's attempts together."""

    agent: str = "worker"
    timeout_s: float = 10.0
    deadline_s: float | None = None

    def with_deadline(self, deadline_s: float) -> Calls:
        return Calls(self.agent, self.timeout_s, deadline_s)

    def for_bytes(self, size: int) -> float:
        """The bound on one attempt of a call moving ``size`` bytes: ``timeout_s``, plus the time
        the body takes at a slow 1 MiB/s (an 8 MiB part is not a HEAD)."""
        return self.timeout_s + size / MIN_TRANSFER_BYTES_PER_S

    def retrying(self) -> AsyncRetrying:
        return async_retrying(self.deadline_s)

    def config(self, max_pool: int = 16, *, long_poll_s: float = 0.0) -> AioConfig:
        """``long_poll_s``: the longest an answer may be held back by design (SQS long polls)."""
        return client_config(max_pool, agent=self.agent, timeout_s=self.timeout_s, long_poll_s=long_poll_s)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def client_config(
    max_pool: int = 16, *, agent: str = "worker", timeout_s: float = 10.0, long_poll_s: float = 0.0
) -> AioConfig:
    # SDK-level retries off: tenacity above is the single retry layer. The socket timeouts back up
    # the per-attempt bound that Store and Queue enforce on top of them (``Calls.timeout_s``).
    return AioConfig(
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max_pool,
        connect_timeout=min(5.0, timeout_s),
        read_timeout=timeout_s + long_poll_s,
        user_agent_extra=f"tts-pipeline/{agent}",
    )


def session() -> aioboto3.Session:
    return aioboto3.Session(region_name=region())


def sync_client(service: str, **kwargs: Any) -> Any:
    """A plain boto3 client (model cache transfers, bootstrap): same endpoint/region rules."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=kwargs.pop("max_pool", 32),
        user_agent_extra=f"tts-pipeline/{kwargs.pop('agent', 'tool')}",
    )
    return boto3.client(service, region_name=region(), config=config, **kwargs)
