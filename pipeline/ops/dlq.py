"""Operator tools for the dead-letter queue: look at what is there, and replay it.

What lands in the DLQ: jobs whose transient failures outlived the redrive policy (status FAILED,
``RETRIES_EXHAUSTED``), jobs whose worker died on every delivery (status PROCESSING with a lapsed
lease), and messages that are not S3 events at all (attribute ``tts-reason``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from pipeline.cloud.consumer import IDENTITY, Message, Queue
from pipeline.cloud.events import UnrecognisedMessage, parse_message_body
from pipeline.cloud.store import PreconditionFailed, Store, Unreadable, open_store
from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import JobState, JobStatus

_HOLD_S = 60  # messages stay invisible this long while we look at them


def read(msg: Message) -> tuple[list[str] | None, str | None]:
    """The job ids the message's S3 events name, or (None, why it is not an S3 event): an
    unreadable dead letter is one entry to report, never a reason to stop looking at the rest."""
    try:
        parsed = parse_message_body(msg.body)
    except UnrecognisedMessage as e:
        return None, str(e)
    out = []
    for rec in parsed.created:
        with contextlib.suppress(keys.InvalidJobId):
            out.append(keys.job_id_from_inbox_key(rec.key))
    return out, None


def jobs_of(msg: Message) -> list[str] | None:
    return read(msg)[0]


async def drain(dlq: Queue, limit: int, hold_s: int = _HOLD_S) -> list[Message]:
    """Up to ``limit`` messages, each invisible for ``hold_s`` while the caller looks at them."""
    seen: list[Message] = []
    while len(seen) < limit:
        batch = await dlq.receive(max_messages=min(10, limit - len(seen)), wait_s=1, visibility_s=hold_s)
        if not batch:
            break
        seen.extend(batch)
    return seen


async def peek(queue_name: str, limit: int) -> list[dict[str, Any]]:
    async with Queue.open_dlq(queue_name) as (_, dlq):
        msgs = await drain(dlq, limit)
        for m in msgs:  # put them back
            await dlq.set_visibility(m, 0)
    return [_entry(m) for m in msgs]


def _entry(m: Message) -> dict[str, Any]:
    jobs, unreadable = read(m)
    return {
        "message_id": m.id,
        "receive_count": m.receive_count,
        "sent_at_ms": m.sent_at_ms,
        "jobs": jobs,
        "reason": (m.attributes or {}).get("tts-reason"),
        "unreadable": unreadable,  # why it is not an S3 event (whoever parked it, or no one: maxReceiveCount)
        "body": m.body if jobs is None else None,
    }


async def redrive(settings: Settings, limit: int, *, include_unrecognised: bool = False) -> dict[str, Any]:
    report: dict[str, Any] = {"moved": 0, "skipped": 0, "jobs_requeued": []}
    async with Queue.open_dlq(settings.queue) as (main, dlq), open_store(settings) as store:
        for m in await drain(dlq, limit):
            jobs = jobs_of(m)
            if jobs is None and not include_unrecognised:
                report["skipped"] += 1
                await dlq.set_visibility(m, 0)
                continue
            for job_id in jobs or []:
                if await _requeue(store, job_id):
                    report["jobs_requeued"].append(job_id)
            await main.send(m.body, {IDENTITY: m.identity})  # still the job's own message
            await dlq.delete(m)
            report["moved"] += 1
    return report


async def _requeue(store: Store, job_id: str) -> bool:
    """A FAILED job would be acknowledged as done on redelivery: put it back to QUEUED."""
    try:
        status, etag = await store.get_model_etag(keys.status_key(job_id), JobStatus)
    except Unreadable:
        return False  # nothing to put back: the worker that receives the message claims over it
    if status is None or status.state is not JobState.FAILED or etag is None:
        return False
    try:
        await store.put_json(
            keys.status_key(job_id), status.moved_to(JobState.QUEUED, note="redriven from the DLQ"), if_match=etag
        )
    except PreconditionFailed:
        return False
    return True
