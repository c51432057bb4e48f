"""Job notifications on SNS (``TTS_NOTIFY_TOPIC_ARN``): one small JSON message per final state.

    {"notification_id": ..., "job_id": ..., "state": "COMPLETED", "status_uri": "s3://.../status/<id>.json",
     "result_uri": "s3://.../results/<id>.json", "error": null, "attempt": 1, "finished_at": ...}

``state`` is also a message attribute, so subscribers can filter (e.g. only FAILED).

Every final state is notified, whoever wrote it (a worker, the reconciler, a client cancelling a
queued job). The rule lives here, in ``ensure_notified``: a final status whose ``notified_at`` is
null has a notification owed; whoever meets it (the writer right after writing it, a worker that
receives the job's message again, the reconciler on its pass) publishes it and then records
``notified_at`` with a conditional write. A publish whose answer was lost, or a process that dies
between publishing and recording, means the same notification is published again: it carries the
same ``notification_id`` (derived from the job, the state and its ``finished_at``). On a FIFO topic
(ARN ending in ``.fifo``) that id is the deduplication id, so SNS delivers it once when the repeat
comes within its 5-minute window (a worker's retry or redelivery does; a reconciler's pass hours
later may not). Elsewhere a subscriber drops repeats by ``notification_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pipeline.cloud import aws
from pipeline.cloud.store import PreconditionFailed, Store
from pipeline.jobs import keys
from pipeline.jobs.contract import JobStatus, utcnow

log = logging.getLogger(__name__)


def notification_id(status: JobStatus) -> str:
    """The same for every publication of one final state of one job, and only for it."""
    finished = status.finished_at.isoformat() if status.finished_at else ""
    return hashlib.sha256(f"{status.job_id}\n{status.state.value}\n{finished}".encode()).hexdigest()[:40]


class Notifier:
    def __init__(self, sns: Any | None, topic_arn: str | None, bucket: str, calls: aws.Calls | None = None) -> None:
        self.sns = sns
        self.topic_arn = topic_arn
        self.bucket = bucket
        self.calls = calls or aws.Calls()

    @property
    def enabled(self) -> bool:
        return self.sns is not None and bool(self.topic_arn)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, topic_arn: str | None, bucket: str, calls: aws.Calls | None = None) -> AsyncIterator[Notifier]:
        if not topic_arn:
            yield cls(None, None, bucket)
            return
        calls = calls or aws.Calls()
        async with aws.session().client("sns", config=calls.config()) as sns:
            yield cls(sns, topic_arn, bucket, calls)

    def message(self, status: JobStatus) -> dict[str, Any]:
        return {
            "notification_id": notification_id(status),
            "job_id": status.job_id,
            "state": status.state.value,
            "status_uri": keys.s3_uri(self.bucket, keys.status_key(status.job_id)),
            "result_uri": keys.s3_uri(self.bucket, status.result_key) if status.result_key else None,
            "error": status.error.model_dump() if status.error else None,
            "attempt": status.attempt,
            "finished_at": status.finished_at.isoformat() if status.finished_at else None,
        }

    async def publish(self, status: JobStatus) -> None:
        """Publish the notification of ``status`` (raises when SNS fails past our retries)."""
        assert self.sns is not None
        message = self.message(status)
        extra: dict[str, str] = {}
        if (self.topic_arn or "").endswith(".fifo"):
            extra = {"MessageGroupId": status.job_id, "MessageDeduplicationId": message["notification_id"]}
        async for attempt in self.calls.retrying():
            with attempt:
                async with asyncio.timeout(self.calls.timeout_s):
                    await self.sns.publish(
                        TopicArn=self.topic_arn,
                        Message=json.dumps(message),
                        MessageAttributes={"state": {"DataType": "String", "StringValue": status.state.value}},
                        **extra,
                    )


Record = Callable[[JobStatus], Awaitable[JobStatus]]


async def ensure_notified(notifier: Notifier, status: JobStatus, record: Record) -> JobStatus:
    """Publish what ``status`` is owed, then ``record`` it (a conditional write of ``notified_at``).

    Returns the status as recorded. Raises when publishing or recording fails past the retries: the
    caller keeps the means to come back (the SQS message, the reconciler's next pass).
    """
    if not notifier.enabled or not status.state.terminal or status.notified_at is not None:
        return status
    await notifier.publish(status)
    marked = await record(status.model_copy(update={"notified_at": utcnow()}))
    log.info("notified %s", status.state)
    return marked


def record_in(store: Store, key: str, etag: str | None) -> Record:
    """Record at ``key`` by a write conditional on ``etag``: a status changed meanwhile (a redrive,
    another notifier first) is left as it is."""

    async def record(marked: JobStatus) -> JobStatus:
        if etag is None:
            return marked.model_copy(update={"notified_at": None})
        try:
            await store.put_json(key, marked, if_match=etag)
        except PreconditionFailed:
            log.info("status changed while its notification was published: not recording it")
            return marked.model_copy(update={"notified_at": None})
        return marked

    return record
