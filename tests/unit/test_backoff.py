"""The retry policy (pipeline/worker/backoff.py): a transient fault shorter than the budget
(TTS_RETRY_MAX_S) has ended when the last delivery the queue allows comes, however the
deliveries before it were spaced and whenever the fault began."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.cloud.consumer import MAX_VISIBILITY_S, Message
from pipeline.worker.backoff import retry_delay


def _msg(receive_count: int) -> Message:
    return Message("m", "h", "{}", receive_count, None)


@given(
    base=st.floats(0, 60),
    budget=st.floats(0, 7200),
    deliveries=st.integers(2, 10),
    work=st.lists(st.floats(0, 600), min_size=10, max_size=10),
    outage=st.tuples(st.floats(0, 20000), st.floats(0, 1)),
)
def test_an_outage_shorter_than_the_budget_is_over_by_the_last_delivery(
    base: float, budget: float, deliveries: int, work: list[float], outage: tuple[float, float]
) -> None:
    now, failed_at = 0.0, 0.0
    for n in range(1, deliveries):  # every delivery but the last fails and is put back
        now += work[n - 1]  # what the delivery did before it failed (a claim, a render)
        failed_at = now
        delay = retry_delay(_msg(n), base_s=base, budget_s=budget, max_deliveries=deliveries)
        assert 0 <= delay <= MAX_VISIBILITY_S
        assert delay >= min(base * 2 ** (n - 1), max(budget, base))  # never shorter than the exponential step
        now += delay
    # Any outage shorter than the budget that covered the last failure has ended by now.
    length = outage[1] * budget
    start = failed_at - outage[0] % (length + 1e-9) if length else failed_at
    assert start + length <= now or budget > MAX_VISIBILITY_S


def test_the_defaults_retry_a_blip_in_seconds_and_keep_the_last_delivery_for_after_the_budget() -> None:
    """10 s base, 900 s budget, maxReceiveCount 5, deliveries that fail at once: a blip is retried
    after 10, 20, 40 s as before; the last delivery waits the budget (the exponential schedule
    alone gave up after 150 s)."""
    delays = [retry_delay(_msg(n), base_s=10, budget_s=900, max_deliveries=5) for n in range(1, 5)]
    assert 10 <= delays[0] <= 12 and 20 <= delays[1] <= 24 and 40 <= delays[2] <= 48
    assert 900 <= delays[3] <= 1080
