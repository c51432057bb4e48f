"""The bulk waiting room (issue 19): round-robin across submitters, oldest first within one."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pipeline.cloud.consumer import Message
from pipeline.cloud.events import submitter
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


# -- who a submitter is (issue 27, defect 6) ------------------------------------------------------


def _eventbridge(requester: str) -> Message:
    detail = {"bucket": {"name": "b"}, "object": {"key": "inbox/j.json"}, "requester": requester}
    body = {"source": "aws.s3", "detail-type": "Object Created", "detail": detail}
    return Message("e", "r", json.dumps(body), 1, 1)


def test_rotating_session_names_is_still_one_submitter() -> None:
    """An assumed role's principalId carries the session name its caller picked: a client that
    names every session anew must not count as many submitters (and so jump the fair share)."""
    rotated = {submitter_of(_msg(n, f"AWS:AROAEXAMPLEID:session-{n}")) for n in range(50)}
    assert rotated == {"AWS:AROAEXAMPLEID"}
    room = WaitingRoom()
    for n in range(4):
        m = _msg(n, f"AWS:AROAGREEDY:s{n}")
        room.add(m, submitter_of(m))
    late = _msg(10, "AWS:AIDAMODEST")
    room.add(late, submitter_of(late))
    assert [room.next().id for _ in range(3)] == ["m0", "m10", "m1"]  # type: ignore[union-attr]


def test_different_identities_stay_different_submitters() -> None:
    assert submitter_of(_msg(1, "AWS:AROAROLEONE:same")) != submitter_of(_msg(2, "AWS:AROAROLETWO:same"))
    assert submitter_of(_msg(3, "AWS:AIDAEXAMPLE")) == "AWS:AIDAEXAMPLE"  # an IAM user: no session part
    assert submitter_of(_msg(4, "AWS:123456789012:bob")) == "AWS:123456789012"  # federated: the account
    assert submitter_of(_eventbridge("123456789012")) == "123456789012"
    assert submitter_of(_eventbridge("s3.amazonaws.com")) == "s3.amazonaws.com"
    assert submitter("AROAEXAMPLE:session") == "AROAEXAMPLE"  # CloudTrail's form, without AWS:
    assert submitter(None) == submitter("") == submitter("AWS:") == submitter(":x") == ANONYMOUS


@given(st.text())
def test_the_submitter_of_any_principal_is_a_string_and_stable(principal: str) -> None:
    who = submitter(principal)
    assert isinstance(who, str) and submitter(who) == who
    assert ":" not in who.removeprefix("AWS:")  # no session part left


@given(st.from_regex(r"AWS:AROA[A-Z0-9]{8,16}", fullmatch=True), st.lists(st.text(), min_size=1, max_size=8))
def test_any_session_of_a_role_is_the_role(role: str, sessions: list[str]) -> None:
    assert {submitter(f"{role}:{s}") for s in sessions} == {role}
