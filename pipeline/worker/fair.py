"""The bulk lane's waiting room: fair share among submitters within a bounded look-ahead.

SQS has no priorities and no fairness, and a standard queue hands messages out roughly in the
order they were sent: one client's 10,000 manifests would keep everyone behind them waiting. The
bulk receive loop therefore keeps up to ``TTS_BULK_LOOKAHEAD`` received-but-not-started messages
here (the heartbeat keeps them invisible, like any message in hand) and starts the next job
round-robin across submitters, the oldest message first within one submitter.

A submitter is the S3 event's principal without its caller-chosen session part
(``pipeline.cloud.events.submitter``: an assumed role is one submitter whatever its session names,
issue 27); a message that names none,
or that is not an S3 event at all, is the anonymous submitter's, and is handled in its turn (the
loop then parks what it cannot parse in the DLQ, as always).
"""

from __future__ import annotations

import bisect
from collections import deque

from pipeline.cloud.consumer import Message
from pipeline.cloud.events import ANONYMOUS, UnrecognisedMessage, parse_message_body, submitter

__all__ = ["ANONYMOUS", "WaitingRoom", "submitter_of"]


def submitter_of(msg: Message) -> str:
    """Whose turn the message is: the submitter of its first record (one upload per message)."""
    try:
        parsed = parse_message_body(msg.body)
    except UnrecognisedMessage:
        return ANONYMOUS
    return next((submitter(r.principal) for r in parsed.created if r.principal), ANONYMOUS)


def _age(msg: Message) -> tuple[int, str]:
    return (msg.sent_at_ms or 0, msg.id)


class WaitingRoom:
    """Messages by submitter; ``next()`` takes turns among submitters, oldest message first."""

    def __init__(self) -> None:
        self._by: dict[str, list[Message]] = {}
        self._turns: deque[str] = deque()  # submitters with messages, whose turn is next first

    def __len__(self) -> int:
        return sum(len(q) for q in self._by.values())

    def add(self, msg: Message, submitter: str) -> None:
        if submitter not in self._by:
            self._by[submitter] = []
            self._turns.append(submitter)  # a newcomer waits at most one turn of each other submitter
        bisect.insort(self._by[submitter], msg, key=_age)

    def next(self) -> Message | None:
        if not self._turns:
            return None
        who = self._turns.popleft()
        waiting = self._by[who]
        msg = waiting.pop(0)
        if waiting:
            self._turns.append(who)
        else:
            del self._by[who]
        return msg

    def take_all(self) -> list[Message]:
        """Empty the room (a shutdown hands these back)."""
        out = [m for q in self._by.values() for m in q]
        self._by.clear()
        self._turns.clear()
        return out
