"""The SQS side: long-poll receive, delete, visibility changes, the DLQ.

Visibility is the queue's half of a job's lease: while a job runs, the worker's heartbeat
(``pipeline.worker.lease``) pushes the message's visibility forward, as dramatiq_sqs' heartbeat
does, so a long GPU job is never handed to a second worker while the first is healthy, and a dead
worker's message reappears within one timeout. Every attempt of every call is bounded by the
queue's ``Calls.timeout_s`` (a long poll by its wait on top of that).
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

from pipeline.cloud import aws

log = logging.getLogger(__name__)

MAX_VISIBILITY_S = 43200  # SQS limit (12 h)
MAX_WAIT_S = 20  # SQS limit on a long poll
_STALE_RECEIPT = {
    "ReceiptHandleIsInvalid",
    "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
    "InvalidParameterValue",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
}
_BATCH = 10  # SQS limit on entries per batch request
# A message attribute: the id of the message a copy stands for (``Message.identity``).
IDENTITY = "tts-identity"


@dataclass(frozen=True)
class Message:
    id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at_ms: int | None
    attributes: dict[str, str] | None = None
    # The queue it came from: its acknowledgements (delete, visibility, extensions) go there,
    # whichever Queue object makes them (one worker receives from two queues on one client).
    queue_url: str | None = None

    @property
    def identity(self) -> str:
        """Which message this is, kept across copies: a message put back as a copy (``requeue``,
        a deferral, a redrive) is the same delivery of the same job, not a duplicate. A job's
        claim records the identity (``status.message_id``), and everything that tells the job's own
        message from a duplicate (a second S3 event, a re-enqueue) compares identities."""
        return (self.attributes or {}).get(IDENTITY) or self.id


class Queue:
    def __init__(
        self,
        sqs: Any,
        url: str | None,
        dlq_url: str | None = None,
        max_receive_count: int | None = None,
        name: str = "",
        calls: aws.Calls | None = None,
    ) -> None:
        self.sqs = sqs
        self.calls = calls or aws.Calls()
        self.url = url
        self.dlq_url = dlq_url
        self.max_receive_count = max_receive_count  # from the redrive policy: deliveries before the DLQ
        self.name = name
        self.retention_s: int | None = None  # MessageRetentionPeriod: a message older than this vanishes

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, name: str, *, resolve: bool = True, calls: aws.Calls | None = None) -> AsyncIterator[Queue]:
        """An SQS client for queue ``name``; ``resolve=False`` leaves the lookup (``resolve()``,
        the first network call) to the caller."""
        calls = calls or aws.Calls()
        async with aws.session().client("sqs", config=calls.config(long_poll_s=MAX_WAIT_S)) as sqs:
            queue = cls(sqs, None, name=name, calls=calls)
            if resolve:
                await queue.resolve()
            yield queue

    async def resolve(self) -> None:
        """Find the queue URL, its DLQ, the redrive policy's maxReceiveCount and the retention."""
        async for attempt in self.calls.retrying():
            with attempt:
                async with asyncio.timeout(self.calls.timeout_s):
                    url = (await self.sqs.get_queue_url(QueueName=self.name))["QueueUrl"]
                    attrs = await self.sqs.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["RedrivePolicy", "MessageRetentionPeriod"]
                    )
                    attributes = attrs.get("Attributes", {})
                    policy = json.loads(attributes.get("RedrivePolicy") or "{}")
                    dlq_url = await _queue_url_from_arn(self.sqs, policy.get("deadLetterTargetArn"))
        self.url, self.dlq_url = url, dlq_url
        retention = attributes.get("MessageRetentionPeriod")
        self.retention_s = int(retention) if retention else None
        self.max_receive_count = int(policy["maxReceiveCount"]) if dlq_url and "maxReceiveCount" in policy else None

    async def locate(self) -> None:
        """Find the queue URL only: all a sender needs (and all its role may look up)."""
        async for attempt in self.calls.retrying():
            with attempt:
                async with asyncio.timeout(self.calls.timeout_s):
                    self.url = (await self.sqs.get_queue_url(QueueName=self.name))["QueueUrl"]

    @classmethod
    @contextlib.asynccontextmanager
    async def open_dlq(cls, name: str) -> AsyncIterator[tuple[Queue, Queue]]:
        """(main queue, its DLQ as a Queue) for operator tools."""
        async with cls.open(name) as main:
            if not main.dlq_url:
                raise LookupError(f"queue {name} has no redrive policy / DLQ")
            yield main, main.sibling(main.dlq_url, f"{name}-dlq")

    def follow(self, other: Queue) -> None:
        """Address the queue ``other`` resolved (a second client for the same queue, e.g. the
        heartbeat's, with calls of its own)."""
        self.url, self.dlq_url, self.name = other.url, other.dlq_url, other.name
        self.max_receive_count, self.retention_s = other.max_receive_count, other.retention_s

    async def other(self, name: str) -> Queue | None:
        """Queue ``name`` on this client, resolved; None if it does not exist (the interactive
        lane's queue in a deployment made before it existed)."""
        queue = Queue(self.sqs, None, name=name, calls=self.calls)
        try:
            await queue.resolve()
        except Exception as e:
            if not aws.is_missing_resource(e):
                raise
            return None
        return queue

    def sibling(self, url: str | None, name: str) -> Queue:
        """Another queue (the DLQ) on the same client, with the same call policy."""
        return Queue(self.sqs, url, name=name, calls=self.calls)

    async def _call(self, op: str, *, extra_s: float = 0.0, url: str | None = None, **kwargs: Any) -> Any:
        async for attempt in self.calls.retrying():
            with attempt:
                async with asyncio.timeout(self.calls.timeout_s + extra_s):
                    return await getattr(self.sqs, op)(QueueUrl=url or self.url, **kwargs)
        raise AssertionError("unreachable")

    async def receive(self, *, max_messages: int = 1, wait_s: int = 20, visibility_s: int = 300) -> list[Message]:
        resp = await self._call(
            "receive_message",
            extra_s=wait_s,  # a long poll answers after up to wait_s by design
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
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
                    attributes={k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()},
                    queue_url=self.url,
                )
            )
        return out

    async def delete(self, msg: Message) -> None:
        await self._on_receipt("delete_message", msg)

    async def set_visibility(self, msg: Message, seconds: float) -> None:
        seconds = int(min(max(seconds, 0), MAX_VISIBILITY_S))
        await self._on_receipt("change_message_visibility", msg, VisibilityTimeout=seconds)

    async def _on_receipt(self, op: str, msg: Message, **kwargs: Any) -> None:
        """A call on one delivery. A receipt handle SQS no longer honours means the message was
        deleted or delivered again meanwhile (a worker paused past its visibility): it is no longer
        this delivery's to act on, which is not an error."""
        try:
            await self._call(op, url=msg.queue_url, ReceiptHandle=msg.receipt_handle, **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code not in _STALE_RECEIPT:
                raise
            log.info("%s of message %s skipped: %s (it was acted on meanwhile)", op, msg.id, code)

    async def extend_visibility(self, msgs: list[Message], seconds: float) -> dict[str, str]:
        """``ChangeMessageVisibilityBatch`` for all ``msgs`` (10 per request); returns the ids that
        SQS refused, with its reason (e.g. a message deleted meanwhile)."""
        seconds = int(min(max(seconds, 0), MAX_VISIBILITY_S))
        failed: dict[str, str] = {}
        by_queue: dict[str | None, list[Message]] = {}
        for m in msgs:  # a batch request names one queue
            by_queue.setdefault(m.queue_url, []).append(m)

        async def one_queue(url: str | None, of_queue: list[Message]) -> None:
            for i in range(0, len(of_queue), _BATCH):
                batch = of_queue[i : i + _BATCH]
                entries = [
                    {"Id": str(n), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
                    for n, m in enumerate(batch)
                ]
                resp = await self._call("change_message_visibility_batch", url=url, Entries=entries)
                for f in resp.get("Failed", []):
                    failed[batch[int(f["Id"])].id] = f"{f.get('Code', '?')}: {f.get('Message', '')}"

        # Each queue on its own: one lane's queue failing or hanging (deleted, throttled) must not
        # leave the other lane's messages unextended until their leases lapse.
        outcomes = await asyncio.gather(*(one_queue(u, q) for u, q in by_queue.items()), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors and len(errors) == len(outcomes):
            raise errors[0]
        for (_, of_queue), outcome in zip(by_queue.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.update({m.id: f"{type(outcome).__name__}: {outcome}" for m in of_queue})
        return failed

    async def requeue(self, msgs: list[Message], delay_s: float = 0) -> int:
        """Put messages back as new ones (a copy sent to the message's own queue, then the
        original deleted, 10 per request): SQS counts a receive for a message made visible again,
        and a message that only waited, or was only looked at (a deferral), must not creep towards
        the DLQ. A copy keeps the original's attributes and identity (``Message.identity``).
        ``delay_s``: the copies stay hidden that long (at most SQS's 900 s; e.g. a stopping
        worker's own long poll, cancelled on our side, may still be open on SQS's and would take
        them). Returns how many were put back; a message whose copy was not sent is left as it is
        (it returns when its visibility lapses)."""
        done = 0
        delay = {"DelaySeconds": min(max(int(delay_s), 0), 900)} if delay_s else {}
        by_queue: dict[str | None, list[Message]] = {}
        for m in msgs:
            by_queue.setdefault(m.queue_url, []).append(m)
        for url, of_queue in by_queue.items():
            for i in range(0, len(of_queue), _BATCH):
                batch = of_queue[i : i + _BATCH]
                entries = [
                    {"Id": str(n), "MessageBody": m.body, **delay, **_attrs(_kept(m))} for n, m in enumerate(batch)
                ]
                resp = await self._call("send_message_batch", url=url, Entries=entries)
                sent = [batch[int(ok["Id"])] for ok in resp.get("Successful", [])]
                if sent:
                    gone = [{"Id": str(n), "ReceiptHandle": m.receipt_handle} for n, m in enumerate(sent)]
                    # A failed delete leaves a duplicate of the same identity: harmless (the claim decides).
                    await self._call("delete_message_batch", url=url, Entries=gone)
                done += len(sent)
        return done

    async def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        attrs = {k: {"DataType": "String", "StringValue": v[:1000]} for k, v in (attributes or {}).items()}
        await self._call("send_message", MessageBody=body, **({"MessageAttributes": attrs} if attrs else {}))

    async def depth(self) -> int:
        """Messages the queue holds in any state: waiting, in flight (received, possibly in a
        worker's look-ahead) and delayed. SQS's figures are approximate (eventually consistent)."""
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        resp = await self._call("get_queue_attributes", AttributeNames=names)
        attrs = resp.get("Attributes", {})
        return sum(int(attrs.get(n, 0)) for n in names)

    def is_last_delivery(self, msg: Message, fallback_max: int) -> bool:
        """True when SQS will not deliver this message again (the redrive policy moves it to the DLQ)."""
        return msg.receive_count >= (self.max_receive_count or fallback_max)

    async def dead_letter(self, msg: Message, reason: str) -> bool:
        """Move a message we cannot interpret to the DLQ now, with the reason attached, rather than
        letting it bounce maxReceiveCount times. Without a DLQ it stays on the queue (never dropped)."""
        if not self.dlq_url:
            return False
        await self.sibling(self.dlq_url, f"{self.name}-dlq").send(
            msg.body, {"tts-reason": reason, "tts-source-message-id": msg.id}
        )
        await self.delete(msg)
        return True


def _kept(m: Message) -> dict[str, str]:
    """A copy's attributes: the original's, and its identity."""
    return {**(m.attributes or {}), IDENTITY: m.identity}


def _attrs(attributes: dict[str, str] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    return {"MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}}


async def _queue_url_from_arn(sqs: Any, arn: str | None) -> str | None:
    parts = (arn or "").split(":")  # arn:aws:sqs:<region>:<account>:<name>
    if len(parts) != 6:
        return None
    resp = await sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])
    return resp["QueueUrl"]
