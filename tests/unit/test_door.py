"""Issue 27's per-client budgets (pipeline/web/door.py) and the bounded readers they rely on, on a
clock the test moves: no stack, no waiting. The same budgets are tried over HTTP in
tests/integration/test_abuse.py."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import soundfile as sf
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.web.console import MAX_SCAN, scan_bound
from pipeline.web.door import Bucket, Door, OverBudget, client_address
from pipeline.web.sessions import FREE_FAILURES, WINDOW_S
from pipeline.web.stream import wav_layout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _door(**settings: object) -> tuple[Door, Clock]:
    clock = Clock()
    door = Door(Settings(**settings), clock=clock)  # type: ignore[arg-type]
    door.throttle.pause_s = 0
    return door, clock


def test_a_token_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    b = Bucket(rate=2.0, capacity=4.0, tokens=4.0, at=0.0)
    assert [b.take(1, 0.0) for _ in range(4)] == [None] * 4
    assert b.take(1, 0.0) == pytest.approx(0.5)  # one token comes in half a second
    assert b.take(1, 0.5) is None
    assert b.take(4, 100.0) is None  # never more than the capacity, however long it waited
    assert b.take(1, 100.0) is not None


def test_requests_over_the_rate_are_refused_with_a_retry_after() -> None:
    door, clock = _door(door_requests_per_s=1.0, door_request_burst=3)
    for _ in range(3):
        door.admit("10.0.0.1")
    with pytest.raises(OverBudget) as e:
        door.admit("10.0.0.1")
    assert e.value.retry_after == "1"
    door.admit("10.0.0.2")  # another client has its own budget
    clock.now += 1.0
    door.admit("10.0.0.1")


def test_wrong_keys_lock_the_address_out_even_for_the_right_key() -> None:
    """Defect 1: a bearer key could be guessed at line rate (every wrong key a 401, no 429)."""
    door, clock = _door()

    async def guesses() -> None:
        for _ in range(FREE_FAILURES):
            door.check_guesses("10.0.0.1")
            await door.wrong_key("10.0.0.1")

    asyncio.run(guesses())
    with pytest.raises(OverBudget) as e:
        door.check_guesses("10.0.0.1")  # checked before the key is compared: right or wrong
    assert e.value.code == "too_many_wrong_keys" and int(e.value.retry_after) > 0
    door.check_guesses("10.0.0.2")  # another address is not locked
    clock.now += WINDOW_S + 1
    door.check_guesses("10.0.0.1")


def test_behind_a_trusted_proxy_the_client_is_the_proxys_client() -> None:
    """Defect 1: behind a proxy the throttle keyed on the proxy, so five wrong passwords locked
    every browser out."""
    a = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert client_address(a, trust_proxy=True) == "198.51.100.7"  # the entry the proxy appended
    assert client_address(a, trust_proxy=False) != "198.51.100.7"  # not believed unless trusted
    plain = make_mocked_request("GET", "/")
    assert client_address(plain, trust_proxy=True) == client_address(plain, trust_proxy=False)


def test_streams_are_bounded_per_client_and_freed_when_they_end() -> None:
    door, _ = _door(door_streams=2)
    with door.stream("a"), door.stream("a"):
        with pytest.raises(OverBudget), door.stream("a"):
            pass
        with door.stream("b"):
            pass
    with door.stream("a"), door.stream("a"):
        pass


def test_a_client_has_at_most_its_budget_of_unfinished_jobs() -> None:
    """Defect 4: a client that hangs up freed its slot while its job went on."""
    door, _ = _door(door_jobs=2)
    first, second = door.job("a", 10, "j1"), door.job("a", 10, "j2")
    with pytest.raises(OverBudget):
        door.job("a", 10, "j3")
    assert door.job("a", 10, "j1") is first  # a retry of the same job (one Idempotency-Key) shares its place
    door.job("b", 10, "j3")
    door.ended(first)
    door.ended(first)  # twice is once
    third = door.job("a", 10, "j4")
    with pytest.raises(OverBudget):
        door.job("a", 10, "j5")
    assert door.open_jobs("a") == 2 and list(door._clients["a"].jobs.values()) == [second, third]


def test_input_characters_are_metered_per_minute() -> None:
    door, clock = _door(door_chars_per_minute=1000, door_jobs=100)
    door.job("a", 600, "j1")
    with pytest.raises(OverBudget) as e:
        door.job("a", 600, "j2")
    assert int(e.value.retry_after) == 12  # 200 characters short, at 1000 a minute
    assert door.open_jobs("a") == 1  # a refused job holds no place
    with pytest.raises(OverBudget):
        door.job("a", 1001, "j3")  # more than the bucket can ever hold
    clock.now += 60
    door.job("a", 1000, "j4")


def test_the_tables_forget_idle_clients_but_not_busy_ones() -> None:
    door, _ = _door()
    from pipeline.web import door as door_module

    busy = door.job("busy", 1, "j1")
    for i in range(door_module.MAX_CLIENTS + 50):
        door.admit(f"c{i}")
    assert len(door._clients) <= door_module.MAX_CLIENTS + 1
    assert "busy" in door._clients
    door.ended(busy)


# -- the finished WAV, read by ranges ------------------------------------------------------------


def _wav(samples: int, rate: int = 24000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(samples, dtype=np.float32), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_the_layout_of_the_workers_wav_is_found() -> None:
    data = _wav(1234)
    start, end = wav_layout(data[:65536], len(data))  # type: ignore[misc]
    assert end - start == 2 * 1234 and end == len(data)


@pytest.mark.parametrize(
    "data",
    [
        _wav(100, rate=16000),  # another rate: decoded, not ranged
        _wav(100, subtype="PCM_24"),
        _wav(100, subtype="FLOAT"),
        b"RIFF\x00\x00\x00\x00WAVEdata\xff\xff\xff\xff",  # samples before any fmt
        b"",
        b"ID3\x03" + b"\x00" * 100,
    ],
)
def test_anything_but_a_plain_24khz_16bit_mono_wav_has_no_layout(data: bytes) -> None:
    assert wav_layout(data, len(data)) is None


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=10**6))
def test_the_wav_layout_is_total_and_stays_inside_the_file(head: bytes, size: int) -> None:
    layout = wav_layout(b"RIFF\x00\x00\x00\x00WAVE" + head, size)
    if layout is not None:
        start, end = layout
        assert 0 <= start <= end <= size and (end - start) % 2 == 0


def test_a_filtered_job_list_reads_a_bounded_number_of_statuses() -> None:
    """Defect 5: a state filter kept reading to the end of the bucket."""
    assert scan_bound(20) == 200 and scan_bound(10**9) == MAX_SCAN


def test_a_client_has_one_interactive_job_at_a_time_and_the_rest_are_bulk() -> None:
    """A burst from one client (the hang-up loop) cannot take the interactive lane every other
    client's first audio needs: its jobs beyond TTS_DOOR_INTERACTIVE_JOBS are bulk."""
    door, _ = _door(door_jobs=3, door_interactive_jobs=1)
    first = door.job("a", 1, "j1")
    second = door.job("a", 1, "j2")
    assert first.interactive and not second.interactive
    assert door.job("b", 1, "k1").interactive  # another client has its own share
    assert not door.job("a", 1, "j3", interactive=False).interactive  # long input stays bulk
    door.ended(first)
    door.ended(second)
    assert door.job("a", 1, "j4").interactive


def test_a_flood_of_refusals_is_one_log_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """A client sending 429-bound requests at line rate must not fill the operator's disk."""
    door, clock = _door()
    with caplog.at_level("INFO", logger="pipeline.web.door"):
        for _ in range(1000):
            door.refused("a", "GET /v1/models: too many")
        clock.now += 61
        door.refused("a", "GET /v1/models: too many")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "999 more refused" in lines[1]


def test_a_shared_ticket_is_freed_only_by_its_last_holder() -> None:
    """Two requests with one Idempotency-Key share a place: the first to fail before the job was
    made must not free it under the other (review of issue 27)."""
    door, _ = _door()
    ticket = door.job("a", 1, "j1")
    assert door.job("a", 1, "j1") is ticket and ticket.holders == 2
    door.settle(ticket, store=None)  # type: ignore[arg-type]
    assert door.open_jobs("a") == 1 and not ticket.ended
    door.settle(ticket, store=None)  # type: ignore[arg-type]
    assert door.open_jobs("a") == 0 and ticket.ended  # never made: freed at once


def test_a_console_page_takes_no_bearer_key() -> None:
    """A page that took a bearer key would be a way round the guess throttle (review of issue 27):
    pages take the session cookie; bearer keys are for the JSON endpoints, where guesses count."""
    from pipeline.web.console import Console

    door, _ = _door(api_key="sk-right")
    page = Console(door.settings, store=None, door=door)  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/", headers={"Authorization": "Bearer sk-right"})
    assert not page.authenticated(request)


def test_requester_names_a_client_without_its_address() -> None:
    """The manifest's ``requester`` (the worker's fair share among the API's clients): one client
    one name, another client another, and the address is not in it, nor is it the same name in
    another console process."""
    door, _ = _door()
    a, b = door.requester("203.0.113.7"), door.requester("203.0.113.8")
    assert a == door.requester("203.0.113.7") != b
    assert a.startswith("door-") and "203.0.113.7" not in a
    other, _ = _door()
    assert other.requester("203.0.113.7") != a
    from pipeline.jobs.contract import Manifest

    assert Manifest(text="x", requester=a).requester == a  # a valid manifest field
