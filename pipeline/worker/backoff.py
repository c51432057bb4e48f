"""The retry policy for transient faults, in one place: how long a job's message stays hidden
after a delivery that a transient fault (S3 or SNS unreachable past the client's own retries)
kept from doing its work.

The promise (docs/contract.md): **a transient fault shorter than ``TTS_RETRY_MAX_S`` never fails
a job.** SQS counts deliveries, not time: the redrive policy moves a message to the DLQ after
``maxReceiveCount`` receives whatever their spacing, so exponential delays alone (10, 20, 40, 80 s
for five deliveries) gave up after 150 s of a 15-minute budget. So the delays grow from
``TTS_RETRY_BASE_S`` x 2^(delivery-1) as before (a short blip costs seconds), and the gap before
the *last* delivery is at least ``TTS_RETRY_MAX_S``. The delivery before it failed inside the
outage; an outage shorter than the budget has therefore ended when the last delivery comes,
however many deliveries went on other things (a deferral, a lost claim, a crash) and however long
the job ran before the outage began. Jitter only lengthens a delay (up to 20 %): workers released
by one outage come back spread out, never sooner than the policy says.
"""

from __future__ import annotations

import random

from pipeline.cloud.consumer import MAX_VISIBILITY_S, Message

JITTER = 1.2  # the most a delay is lengthened


def longest_delay(*, base_s: float, budget_s: float, max_deliveries: int) -> float:
    """The longest a job's message can stay hidden between two deliveries under this policy: a
    QUEUED job that has not moved for less than this (plus a lease) may just be waiting for it."""
    step = base_s * 2 ** max(max_deliveries - 2, 0)
    return min(max(step, budget_s) * JITTER, MAX_VISIBILITY_S)


def retry_delay(msg: Message, *, base_s: float, budget_s: float, max_deliveries: int) -> float:
    """Seconds to keep ``msg`` hidden before its next delivery."""
    step = base_s * 2 ** max(msg.receive_count - 1, 0)
    last_gap = max_deliveries - msg.receive_count <= 1  # the next delivery is the last one
    delay = max(step, budget_s) if last_gap else min(step, max(budget_s, base_s))
    return min(delay * random.uniform(1.0, JITTER), MAX_VISIBILITY_S)
