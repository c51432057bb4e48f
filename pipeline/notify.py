"""Job notifications on SNS (``TTS_NOTIFY_TOPIC_ARN``): one small JSON message per finished job.

    {"job_id": ..., "state": "COMPLETED", "status_uri": "s3://.../status/<id>.json",
     "result_uri": "s3://.../results/<id>.json", "error": null, "finished_at": ...}

``state`` is also a message attribute, so subscribers can filter (e.g. only FAILED). Publishing is
best effort: the status object in S3 is the record; a failed publish is logged, never fails a job.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pipeline import aws, keys
from pipeline.contract import JobStatus

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, sns: Any | None, topic_arn: str | None, bucket: str) -> None:
        self.sns = sns
        self.topic_arn = topic_arn
        self.bucket = bucket

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, topic_arn: str | None, bucket: str) -> AsyncIterator[Notifier]:
        if not topic_arn:
            yield cls(None, None, bucket)
            return
        async with aws.session().client("sns", config=aws.client_config()) as sns:
            yield cls(sns, topic_arn, bucket)

    async def job_finished(self, status: JobStatus) -> None:
        if self.sns is None:
            return
        message = {
            "job_id": status.job_id,
            "state": status.state.value,
            "status_uri": keys.s3_uri(self.bucket, keys.status_key(status.job_id)),
            "result_uri": keys.s3_uri(self.bucket, status.result_key) if status.result_key else None,
            "error": status.error.model_dump() if status.error else None,
            "attempt": status.attempt,
            "finished_at": status.finished_at.isoformat() if status.finished_at else None,
        }
        try:
            async for attempt in aws.async_retrying():
                with attempt:
                    await self.sns.publish(
                        TopicArn=self.topic_arn,
                        Message=json.dumps(message),
                        MessageAttributes={"state": {"DataType": "String", "StringValue": status.state.value}},
                    )
        except Exception as e:
            log.warning("could not publish the %s notification: %s", status.state, e)
