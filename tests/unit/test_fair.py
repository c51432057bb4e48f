"""The bulk waiting room (issue 19): round-robin across submitters, oldest first within one."""

from __future__ import annotations

import json

from pipeline.cloud.consumer import Message
from pipeline.worker.fair import ANONYMOUS, WaitingRoom, submitter_of


def _msg(n: int, principal: str | None = None, sent_ms: int | None = None) -> Message:
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": f"inbox/j{n}.json"}},
        **({"userIdentity": {"principalId": principal}} if principal else {}),
    }
    return Message(f"m{n}", f"r{n}", json.dumps({"Records": [record]}), 1, sent_ms if sent_ms is not None else n)


def test_a_late_submitter_is_served_in_turn_not_after_the_backlog() -> None:
    room = WaitingRoom()
    for n in range(6):
        room.add(_msg(n, "A"), "A")
    room.add(_msg(10, "B"), "B")
    room.add(_msg(11, "B"), "B")
    order = [room.next() for _ in range(8)]
    assert [m.id if m else None for m in order] == ["m0", "m10", "m1", "m11", "m2", "m3", "m4", "m5"]
    assert room.next() is None and len(room) == 0


def test_within_a_submitter_the_oldest_message_goes_first() -> None:
    room = WaitingRoom()
    for n, sent in ((1, 30), (2, 10), (3, 20)):
        room.add(_msg(n, sent_ms=sent), "A")
    assert [room.next().id for _ in range(3)] == ["m2", "m3", "m1"]  # type: ignore[union-attr]


def test_submitters_come_from_the_event_and_take_all_empties_the_room() -> None:
    assert submitter_of(_msg(1, "AWS:alice")) == "AWS:alice"
    assert submitter_of(_msg(2)) == ANONYMOUS
    assert submitter_of(Message("x", "r", "not json", 1, None)) == ANONYMOUS
    room = WaitingRoom()
    room.add(_msg(1, "A"), "A")
    room.add(_msg(2, "B"), "B")
    assert sorted(m.id for m in room.take_all()) == ["m1", "m2"]
    assert len(room) == 0 and room.next() is None
