"""The retry policy (pipeline/worker/backoff.py): a transient fault shorter than the budget
(TTS_RETRY_MAX_S) never reaches the last delivery the queue allows, however the deliveries are
spaced by the work each one does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.cloud.consumer import MAX_VISIBILITY_S, Message
from pipeline.worker.backoff import retry_delay


def _msg(receive_count: int, first_received_s: float) -> Message:
    return Message("m", "h", "{}", receive_count, None, first_received_ms=int(first_received_s * 1000))


@given(
    base=st.floats(0, 60),
    budget=st.floats(0, 7200),
    deliveries=st.integers(2, 10),
    work=st.lists(st.floats(0, 600), min_size=10, max_size=10),
)
def test_the_last_delivery_comes_no_sooner_than_the_budget_after_the_first(
    base: float, budget: float, deliveries: int, work: list[float]
) -> None:
    first = 1_000_000.0
    now = first
    for n in range(1, deliveries):  # every delivery but the last fails and is put back
        now += work[n - 1]  # what the delivery did before it failed (a claim, a render)
        delay = retry_delay(_msg(n, first), base_s=base, budget_s=budget, max_deliveries=deliveries, now_s=now)
        assert 0 <= delay <= MAX_VISIBILITY_S
        assert delay >= min(base * 2 ** (n - 1), max(budget, base))  # never shorter than the exponential step
        now += delay
    assert now - first >= budget - 0.002  # milliseconds: SQS's first-receive timestamp


def test_the_default_settings_keep_the_last_delivery_for_the_end_of_the_fifteen_minute_budget() -> None:
    """10 s base, 900 s budget, maxReceiveCount 5, deliveries that fail at once: a blip is retried
    after 10, 20, 40 s as before; the gap before the last delivery stretches to the budget (the
    exponential schedule alone gave up after 150 s)."""
    now = 0.0
    delays = []
    for n in range(1, 5):
        delays.append(retry_delay(_msg(n, 0.0), base_s=10, budget_s=900, max_deliveries=5, now_s=now))
        now += delays[-1]
    assert 10 <= delays[0] <= 12 and 20 <= delays[1] <= 24 and 40 <= delays[2] <= 48
    assert sum(delays) >= 900
