"""The batcher on the real tiny engine: what shares a model call, what a failure costs, cancellation.

The runner is the engine's own (``F5Engine.batch_runner``), wrapped to record each call's group
and owners; assertions are on those calls, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.runtime.deadlines import Deadline
from pipeline.runtime.faults import FaultHooks, InjectedCrash, InjectedOutOfMemory
from pipeline.tts import batcher as batcher_module
from pipeline.tts.batcher import BULK, INTERACTIVE, Batcher, BatcherUnavailable, ModelCallStuck, Work
from pipeline.tts.engine import F5Engine, Reference
from pipeline.tts.sampler import Item
from pipeline.tts.shares import Shares, Tenant
from tests.helpers import reference_voice


@pytest.fixture(scope="module")
def ref(engine: F5Engine) -> Reference:
    wave, sr, text = reference_voice()
    return engine.prepare_reference(wave, sr, text)


class Recording:
    """The engine's runner, recording (group, [item texts]) per call."""

    def __init__(self, engine: F5Engine, fail_text: str | None = None) -> None:
        self.run = engine.batch_runner()
        self.calls: list[tuple[Hashable, list[str]]] = []
        self.fail_text = fail_text

    def __call__(self, group: Hashable, items: Sequence[Item]) -> list[np.ndarray]:
        self.calls.append((group, [it.text for it in items]))
        if self.fail_text is not None and any(it.text == self.fail_text for it in items):
            raise RuntimeError(f"cannot synthesise {self.fail_text!r}")
        return self.run(group, items)


def _work(ref: Reference, text: str, owner: str, nfe: int = 2, cfg: float = 2.0, seed: int = 1) -> Work:
    item = Item(ref.audio, ref.text, text, 1.0, seed)
    return Work("synthesis", (nfe, cfg), item.frames, owner, item)


async def _run(batcher: Batcher, works: list[Work]) -> list[Any]:
    task = asyncio.create_task(batcher.run())
    try:
        futures = [batcher.submit(w) for w in works]  # all queued before the dispatcher runs
        return await asyncio.gather(*futures, return_exceptions=True)
    finally:
        task.cancel()


async def test_items_of_different_jobs_share_a_call_and_mixed_settings_never_do(
    engine: F5Engine, ref: Reference
) -> None:
    rec = Recording(engine)
    batcher = Batcher({"synthesis": rec}, max_batch=8, max_wait_s=0)
    works = [
        _work(ref, "First job speaks here.", "a", nfe=2),
        _work(ref, "Second job speaks too.", "b", nfe=2),
        _work(ref, "Third job, other steps.", "c", nfe=3),
        _work(ref, "Fourth job, no guidance.", "d", nfe=2, cfg=0.0),
        _work(ref, "Fifth job speaks again.", "e", nfe=2),
    ]
    results = await _run(batcher, works)
    assert all(isinstance(r, np.ndarray) and r.size for r in results)
    groups = {g: texts for g, texts in rec.calls}
    assert len(rec.calls) == 3  # (2, 2.0) x3 in one call; (3, 2.0) and (2, 0.0) alone
    assert sorted(groups[(2, 2.0)]) == sorted(w.payload.text for w in works if w.owner in "abe")
    assert groups[(3, 2.0)] == ["Third job, other steps."] and groups[(2, 0.0)] == ["Fourth job, no guidance."]


async def test_max_batch_and_length_ratio_bound_a_call(engine: F5Engine, ref: Reference) -> None:
    rec = Recording(engine)
    batcher = Batcher({"synthesis": rec}, max_batch=2, max_wait_s=0, max_length_ratio=1.5)
    short = ["One two three four.", "Five six seven eight.", "Nine ten eleven twelve."]
    long_text = "This one is very much longer than all of the short ones put together, by far. " * 2
    await _run(batcher, [_work(ref, t, f"j{i}") for i, t in enumerate([*short, long_text])])
    assert all(len(texts) <= 2 for _, texts in rec.calls)
    assert [long_text] in [texts for _, texts in rec.calls]  # too long to pad the short ones to


async def test_a_failing_item_fails_alone_and_its_batch_mates_complete(engine: F5Engine, ref: Reference) -> None:
    bad = "This chunk makes the model call fail."
    rec = Recording(engine, fail_text=bad)
    batcher = Batcher({"synthesis": rec}, max_batch=8, max_wait_s=0)
    works = [_work(ref, t, f"j{i}") for i, t in enumerate(["Good one.", bad, "Another good one.", "Third good."])]
    results = await _run(batcher, works)
    assert isinstance(results[1], RuntimeError)
    assert all(isinstance(r, np.ndarray) for i, r in enumerate(results) if i != 1)
    assert len(rec.calls[0][1]) == 4 and [bad] in [texts for _, texts in rec.calls]  # split down to it


async def test_injected_out_of_memory_hits_only_its_job(engine: F5Engine, ref: Reference, tmp_path: Path) -> None:
    (tmp_path / "oom").mkdir()
    (tmp_path / "oom" / "victim").touch()
    rec = Recording(engine)
    batcher = Batcher({"synthesis": rec}, max_batch=8, max_wait_s=0, faults=FaultHooks(tmp_path))
    works = [_work(ref, f"Sentence number {i}.", "victim" if i == 2 else f"j{i}") for i in range(4)]
    results = await _run(batcher, works)
    assert isinstance(results[2], InjectedOutOfMemory)
    assert all(isinstance(r, np.ndarray) for i, r in enumerate(results) if i != 2)
    # The items that reached the model are exactly the survivors, each in some call.
    reached = {t for _, texts in rec.calls for t in texts}
    assert reached == {f"Sentence number {i}." for i in (0, 1, 3)}


async def test_cancel_drops_a_jobs_queued_items(engine: F5Engine, ref: Reference) -> None:
    rec = Recording(engine)
    batcher = Batcher({"synthesis": rec}, max_batch=8, max_wait_s=0)
    keep = batcher.submit(_work(ref, "Kept sentence.", "keep"))
    dropped = [batcher.submit(_work(ref, f"Dropped {i}.", "gone")) for i in range(3)]
    assert batcher.cancel("gone") == 3 and batcher.queued() == 1
    task = asyncio.create_task(batcher.run())
    try:
        assert isinstance(await keep, np.ndarray)
    finally:
        task.cancel()
    assert all(f.cancelled() for f in dropped)
    assert [texts for _, texts in rec.calls] == [["Kept sentence."]]


async def test_a_lone_item_is_not_held_back_waiting_for_mates(engine: F5Engine, ref: Reference) -> None:
    """max_wait_s bounds the wait for batch-mates; a lone item then runs in a call of one."""
    rec = Recording(engine)
    batcher = Batcher({"synthesis": rec}, max_batch=8, max_wait_s=0.05)
    [result] = await _run(batcher, [_work(ref, "Alone.", "solo")])
    assert isinstance(result, np.ndarray) and rec.calls == [((2, 2.0), ["Alone."])]


def test_invalid_batcher_settings_are_refused(engine: F5Engine) -> None:
    with pytest.raises(ValueError):
        Batcher({"synthesis": engine.batch_runner()}, max_batch=0, max_wait_s=0)


async def test_the_busy_history_stays_bounded_without_a_metrics_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, defect 9: metrics are off by default, so nothing reads the busy fraction; the
    history of model calls must still forget calls older than its window. 300 calls, one a
    (simulated) second, keep at most one window's worth."""
    from pipeline.tts import batcher as batcher_module

    clock = [1000.0]
    monkeypatch.setattr(batcher_module.time, "monotonic", lambda: clock[0])

    def runner(_group: Hashable, items: Sequence[Any]) -> list[Any]:
        clock[0] += 1.0  # each call "takes" a second
        return list(items)

    batcher = Batcher({"synthesis": runner}, max_batch=1, max_wait_s=0)
    for i in range(300):
        await _run(batcher, [Work("synthesis", "g", 1, f"job-{i}", i)])
    assert len(batcher._busy) <= batcher_module.BUSY_WINDOW_S + 1


async def test_interactive_items_anchor_calls_before_older_bulk_items(engine: F5Engine, ref: Reference) -> None:
    """Issue 19: the next call is anchored on the oldest item of the most urgent priority present,
    so an interactive job's chunk queued behind bulk chunks runs first; within a priority it is
    still first come, first served, and settings still never mix in one call."""
    from dataclasses import replace

    from pipeline.tts.batcher import INTERACTIVE

    rec = Recording(engine)
    batcher = Batcher({"synthesis": rec}, max_batch=1, max_wait_s=0)
    bulk = [_work(ref, f"Bulk chunk number {n}.", f"b{n}") for n in range(3)]
    urgent = [
        replace(_work(ref, "Interactive first.", "i1", nfe=3), priority=INTERACTIVE),
        replace(_work(ref, "Interactive second.", "i2"), priority=INTERACTIVE),
    ]
    results = await _run(batcher, [*bulk, *urgent])  # bulk queued first
    assert all(isinstance(r, np.ndarray) for r in results)
    order = [texts[0] for _, texts in rec.calls]
    assert order == ["Interactive first.", "Interactive second.", *(w.payload.text for w in bulk)]
    assert rec.calls[0][0] == (3, 2.0)  # the interactive item's own settings: it anchored the call


async def test_interactive_mates_join_before_bulk_mates(engine: F5Engine, ref: Reference) -> None:
    """Batch-mates: the more urgent first, then nearest in length; a bulk anchor never forms while
    an interactive item waits."""
    from dataclasses import replace

    from pipeline.tts.batcher import INTERACTIVE

    rec = Recording(engine)
    batcher = Batcher({"synthesis": rec}, max_batch=2, max_wait_s=0, max_length_ratio=100)
    works = [
        _work(ref, "Bulk one.", "b1"),
        _work(ref, "Bulk two.", "b2"),
        replace(_work(ref, "Urgent one, a little longer.", "i1"), priority=INTERACTIVE),
        replace(_work(ref, "Urgent two, much longer than the bulk ones are.", "i2"), priority=INTERACTIVE),
    ]
    await _run(batcher, works)
    assert sorted(rec.calls[0][1]) == sorted(
        ["Urgent one, a little longer.", "Urgent two, much longer than the bulk ones are."]
    )
    assert sorted(rec.calls[1][1]) == ["Bulk one.", "Bulk two."]


# -- deadlines (issue 25, defect 3): no future a job awaits can wait forever --------------------


class Stuck:
    """A runner whose calls block until ``release`` (as a hung CUDA call would: nothing on the
    event loop's side can interrupt it). Records the payloads of the calls it entered."""

    def __init__(self) -> None:
        self.entered: list[list[Any]] = []
        self.in_call = threading.Event()
        self.gate = threading.Event()

    def __call__(self, _group: Hashable, items: Sequence[Any]) -> list[Any]:
        self.entered.append(list(items))
        self.in_call.set()
        self.gate.wait()
        return list(items)


async def test_a_model_call_past_its_deadline_fails_every_future_and_stops_the_batcher() -> None:
    """The only thing that can end the blocked call's wait is its deadline: its future and the one
    queued behind it fail with ModelCallStuck (handed back, not failed, by the job), the dispatcher
    raises (the worker's supervisor hands every job back and exits), later work is refused at once,
    and the batcher reports itself sick (what /healthz asks)."""
    runner = Stuck()
    batcher = Batcher({"synthesis": runner}, max_batch=1, max_wait_s=0, deadline=Deadline(0.2, 0.0))
    try:
        held = batcher.submit(Work("synthesis", "g", 1, "a", "first", seconds=1.0))
        behind = batcher.submit(Work("synthesis", "g", 1, "b", "second", seconds=1.0))
        task = asyncio.create_task(batcher.run())
        results = await asyncio.wait_for(asyncio.gather(held, behind, return_exceptions=True), 60)  # hang guard
        assert all(isinstance(r, ModelCallStuck) for r in results), results
        assert runner.entered == [["first"]]  # the second never reached the stuck thread
        with pytest.raises(ModelCallStuck):
            await asyncio.wait_for(task, 60)
        assert batcher.stuck
        assert "deadline" in (batcher.sick() or "")
        refused = batcher.submit(Work("synthesis", "g", 1, "c", "third"))
        assert refused.done() and isinstance(refused.exception(), ModelCallStuck)
    finally:
        runner.gate.set()
        batcher.executor.shutdown(wait=True)


async def test_a_dispatcher_that_stops_fails_the_futures_it_holds(tmp_path: Path) -> None:
    """A dispatcher that dies (a bug, injected with ``crash/batcher``) or is cancelled mid-call leaves
    no future pending: each fails with BatcherUnavailable, not ModelCallStuck (no thread is lost)."""
    (tmp_path / "crash").mkdir()
    (tmp_path / "crash" / "batcher").touch()
    crashing = Batcher(
        {"synthesis": lambda _g, items: list(items)}, max_batch=1, max_wait_s=0, faults=FaultHooks(tmp_path)
    )
    queued = [crashing.submit(Work("synthesis", "g", 1, f"j{i}", i)) for i in range(2)]
    with pytest.raises(InjectedCrash):
        await asyncio.wait_for(crashing.run(), 60)
    results = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 60)  # hang guard
    assert all(type(r) is BatcherUnavailable for r in results), results
    assert not crashing.stuck and "stopped" in (crashing.sick() or "")

    runner = Stuck()
    cancelled = Batcher({"synthesis": runner}, max_batch=1, max_wait_s=0)
    try:
        in_call = cancelled.submit(Work("synthesis", "g", 1, "a", "held"))
        task = asyncio.create_task(cancelled.run())
        assert await asyncio.to_thread(runner.in_call.wait, 60)  # the call runs (hang guard)
        task.cancel()
        [result] = await asyncio.wait_for(asyncio.gather(in_call, return_exceptions=True), 60)
        assert type(result) is BatcherUnavailable, result
    finally:
        runner.gate.set()
        cancelled.executor.shutdown(wait=True)


async def test_healthz_fails_while_a_watched_part_is_stuck() -> None:
    """/healthz asks every watched part (the worker watches its batcher, aligner and heartbeat):
    a stuck model call turns it 503 with the reason; /readyz is another matter."""
    from pipeline.runtime import metrics
    from tests.helpers import free_port, http_request

    port = free_port()
    server = metrics.serve(port)
    runner = Stuck()
    batcher = Batcher({"synthesis": runner}, max_batch=1, max_wait_s=0, deadline=Deadline(0.2, 0.0))
    metrics.watch("batcher", batcher.sick)
    try:
        metrics.beat()  # this test process has no worker loop beating: the probe asks about the batcher
        code, body, _ = await asyncio.to_thread(http_request, f"http://127.0.0.1:{port}/healthz")
        assert (code, body) == (200, b"ok\n")
        held = batcher.submit(Work("synthesis", "g", 1, "a", "held"))
        task = asyncio.create_task(batcher.run())
        await asyncio.wait_for(asyncio.gather(held, task, return_exceptions=True), 60)  # hang guard
        metrics.beat()
        code, body, _ = await asyncio.to_thread(http_request, f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and b"batcher: a synthesis model call" in body and b"deadline" in body, body
    finally:
        metrics.unwatch("batcher")
        server.shutdown()
        runner.gate.set()
        batcher.executor.shutdown(wait=True)


# -- fair share within a priority (issue 27): the tenant that has had the model least goes first --


def _tenant_work(tenant: Tenant, n: int, priority: int = BULK) -> Work:
    return Work(
        "synthesis",
        "g",
        1,
        f"{tenant.requester or tenant.submitter}-{n}",
        (tenant, n),
        priority=priority,
        tenant=tenant,
    )


def _ticking(monkeypatch: pytest.MonkeyPatch, half_life_s: float = 10.0) -> tuple[Batcher, list[Any]]:
    """A batcher of single-item calls on a clock that moves one second per call; the items it
    ran, in order."""
    clock = [100.0]
    ran: list[Any] = []

    def runner(_group: Hashable, items: Sequence[Any]) -> list[Any]:
        clock[0] += 1.0
        ran.extend(items)
        return list(items)

    batcher = Batcher({"synthesis": runner}, max_batch=1, max_wait_s=0)
    batcher.shares = Shares(half_life_s=half_life_s, clock=lambda: clock[0])
    monkeypatch.setattr(batcher_module.time, "monotonic", lambda: clock[0])
    return batcher, ran


async def test_within_a_priority_the_tenant_that_had_the_model_least_goes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client with four jobs in flight had one item queued per job, each going before another
    client's next item (first come, first served): the light client waited behind all of them at
    every chunk. Now: the light client's item runs next, the heavy one's keep their own order,
    and priority still comes first (the light client's bulk item waits for every interactive one)."""
    batcher, ran = _ticking(monkeypatch)
    heavy, light = Tenant("tts-console", "door-heavy"), Tenant("tts-console", "door-light")
    batcher.shares.charge(heavy, 4.0)  # four calls' worth lately
    works = [
        *(_tenant_work(heavy, n, INTERACTIVE) for n in range(4, 7)),  # queued first
        _tenant_work(light, 0, BULK),
        _tenant_work(light, 1, INTERACTIVE),
    ]
    await _run(batcher, works)
    assert ran == [(light, 1), (heavy, 4), (heavy, 5), (heavy, 6), (light, 0)]


async def test_a_submitter_naming_many_requesters_only_divides_its_own_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """The requester is the manifest's, so anyone may name a fresh one per job: the submitter level
    (from the S3 event) decides first."""
    batcher, ran = _ticking(monkeypatch)
    rotating = [Tenant("AWS:AIDAGREEDY", f"fresh-{n}") for n in range(6)]
    other = Tenant("AWS:AIDAOTHER", "")
    batcher.shares.charge(rotating[0], 1.0)  # the greedy submitter has had one call lately
    await _run(batcher, [*(_tenant_work(t, 1) for t in rotating[1:]), _tenant_work(other, 0), _tenant_work(other, 1)])
    # other runs first, then takes turns with the greedy submitter by their shares, never more than
    # one item behind it.
    assert ran[0] == (other, 0)
    assert ran.index((other, 1)) <= 3, ran


async def test_no_tenant_starves_its_share_decays_while_others_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant that had a lot of the model long ago still gets its turn while a light one keeps
    sending work: its share decays (half-life), the light one's grows as it runs."""
    batcher, items = _ticking(monkeypatch, half_life_s=10.0)
    heavy, light = Tenant("s", "heavy"), Tenant("s", "light")
    batcher.shares.charge(heavy, 100.0)
    task = asyncio.create_task(batcher.run())
    try:
        queued = batcher.submit(_tenant_work(light, 0))
        waiting = batcher.submit(_tenant_work(heavy, 0))
        for n in range(1, 200):  # the light tenant always has another item queued
            following = batcher.submit(_tenant_work(light, n))
            await queued
            queued = following
            if waiting.done():
                break
        assert waiting.done()
        ran = [t.requester for t, _ in items]
        assert 10 < ran.index("heavy") < 60, ran.index("heavy")  # ~30 calls: 100 s halved three times
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_shares_decay_and_forget() -> None:
    clock = [0.0]
    shares = Shares(half_life_s=10.0, clock=lambda: clock[0])
    a, b = Tenant("s", "a"), Tenant("s", "b")
    shares.charge(a, 8.0)
    shares.charge(b, 2.0)
    assert shares.rank(a) == (10.0, 8.0) and shares.rank(b) == (10.0, 2.0)
    clock[0] = 10.0
    assert shares.rank(a) == pytest.approx((5.0, 4.0))
    clock[0] = 1000.0
    for n in range(512):  # enough charges to sweep the table: a and b are long forgotten
        shares.charge(Tenant("t", str(n % 2)), 1e-6)
    assert len(shares) <= 3
    assert shares.rank(a) == (0.0, 0.0)


async def test_each_job_is_metered_its_share_of_the_calls_it_was_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Usage (issue 28): a call's time is split among its items by the audio each makes or reads,
    and counted per job and kind; taking a job's meter starts it again."""
    # The clock starts at the real one: an item's enqueue time is read from the real clock, and a
    # lone item waits for mates until it is past (max_wait_s 0).
    clock = [time.monotonic()]

    def runner(_group: Hashable, items: Sequence[Any]) -> list[Any]:
        clock[0] += 1000.0  # each call "takes" 1000 seconds
        return list(items)

    monkeypatch.setattr(batcher_module.time, "monotonic", lambda: clock[0])
    batcher = Batcher({"synthesis": runner, "emissions": runner}, max_batch=2, max_wait_s=0)
    works = [
        Work("synthesis", "g", 1, "job-a", 0, seconds=2.0),
        Work("synthesis", "g", 1, "job-b", 1, seconds=1.0),
        Work("emissions", "ctc", 1, "job-a", 2, seconds=1.0),
    ]
    await _run(batcher, works)
    a, b = batcher.take_meter("job-a"), batcher.take_meter("job-b")
    assert a.seconds == pytest.approx(2000 / 3 + 1000) and a.items == {"synthesis": 1, "emissions": 1}
    assert b.seconds == pytest.approx(1000 / 3) and b.items == {"synthesis": 1}
    assert batcher.take_meter("job-a").seconds == 0 and batcher.take_meter("nobody").items == {}
