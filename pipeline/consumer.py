"""The SQS side: long-poll receive, delete, visibility changes, and a heartbeat.

The heartbeat follows dramatiq_sqs' approach: while a message is being worked on, a background
task pushes its visibility timeout forward at a fraction of the timeout, so a long GPU job is never
handed to a second worker while the first is healthy, and a dead worker's message reappears within
one timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from pipeline import aws

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at_ms: int | None


class Queue:
    def __init__(self, sqs: Any, url: str, dlq_url: str | None = None) -> None:
        self.sqs = sqs
        self.url = url
        self.dlq_url = dlq_url

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, name: str) -> AsyncIterator[Queue]:
        async with aws.session().client("sqs", config=aws.client_config()) as sqs:
            async for attempt in aws.async_retrying():
                with attempt:
                    url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
                    attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
                    dlq_url = await _dlq_url(sqs, attrs.get("Attributes", {}).get("RedrivePolicy"))
            yield cls(sqs, url, dlq_url)

    async def _call(self, op: str, **kwargs: Any) -> Any:
        async for attempt in aws.async_retrying():
            with attempt:
                return await getattr(self.sqs, op)(QueueUrl=self.url, **kwargs)
        raise AssertionError("unreachable")

    async def receive(self, *, max_messages: int = 1, wait_s: int = 20, visibility_s: int = 300) -> list[Message]:
        resp = await self._call(
            "receive_message",
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        out = []
        for m in resp.get("Messages", []):
            attrs = m.get("Attributes", {})
            out.append(
                Message(
                    id=m["MessageId"],
                    receipt_handle=m["ReceiptHandle"],
                    body=m.get("Body", ""),
                    receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
                    sent_at_ms=int(attrs["SentTimestamp"]) if "SentTimestamp" in attrs else None,
                )
            )
        return out

    async def delete(self, msg: Message) -> None:
        await self._call("delete_message", ReceiptHandle=msg.receipt_handle)

    async def set_visibility(self, msg: Message, seconds: int) -> None:
        await self._call("change_message_visibility", ReceiptHandle=msg.receipt_handle, VisibilityTimeout=seconds)

    async def dead_letter(self, msg: Message, reason: str) -> bool:
        """Move a message we cannot interpret to the DLQ now, with the reason attached, rather than
        letting it bounce maxReceiveCount times. Without a DLQ it stays on the queue (never dropped)."""
        if not self.dlq_url:
            return False
        async for attempt in aws.async_retrying():
            with attempt:
                await self.sqs.send_message(
                    QueueUrl=self.dlq_url,
                    MessageBody=msg.body,
                    MessageAttributes={
                        "tts-reason": {"DataType": "String", "StringValue": reason[:1000]},
                        "tts-source-message-id": {"DataType": "String", "StringValue": msg.id},
                    },
                )
        await self.delete(msg)
        return True

    @contextlib.asynccontextmanager
    async def heartbeat(self, msg: Message, *, timeout_s: int, interval_s: float) -> AsyncIterator[None]:
        """Keep ``msg`` invisible to other consumers while the body of the ``async with`` runs."""
        task = asyncio.create_task(self._beat(msg, timeout_s, interval_s), name=f"heartbeat-{msg.id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self, msg: Message, timeout_s: int, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.set_visibility(msg, timeout_s)
                log.debug("heartbeat: extended %s by %ss", msg.id, timeout_s)
            except ClientError as e:
                # The receipt is gone (message deleted or re-delivered elsewhere): nothing to extend.
                log.warning("heartbeat for %s failed: %s", msg.id, e)
                return


async def _dlq_url(sqs: Any, redrive_policy: str | None) -> str | None:
    if not redrive_policy:
        return None
    arn = json.loads(redrive_policy).get("deadLetterTargetArn", "")
    # arn:aws:sqs:<region>:<account>:<name>
    parts = arn.split(":")
    if len(parts) != 6:
        return None
    resp = await sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])
    return resp["QueueUrl"]
