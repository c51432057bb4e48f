"""The text front-end's child process (issue 25): same analysis as in-process, errors with their
codes, a runaway killed (CPU limit, wall limit) and replaced, no child outliving its worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.jobs.contract import ErrorCode, Manifest, Segment
from pipeline.text import sandbox, script
from pipeline.text.sandbox import Limits, SpokenOverLimit, TextSandbox, TextSandboxUnavailable, TextTooComplex
from pipeline.worker.failures import JobFailed
from pipeline.worker.inputs import Inputs

ROOT = Path(__file__).resolve().parents[2]
OPTIONS: dict[str, Any] = {"max_pause_s": 10.0, "max_total_pause_s": 600.0, "max_spoken": 300_000}
# A few graphemes, each a word-suffix of the next: every word of "a a a ..." ends several matches.
NESTED = {" ".join(["a"] * k): "x" for k in range(1, 101)}


def alive(pid: int) -> bool:
    """Running or stopped, not gone or a zombie (a container's init may be slow to reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int) -> None:
    for _ in range(200):  # a kill is delivered at once; the pool reaps it from its own thread
        if not alive(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still there")


@pytest.fixture
async def box() -> Any:
    b = TextSandbox(20.0)
    yield b
    b.close()


MANIFESTS = [
    Manifest(text="Dr. Smith paid $3.50 on Dec 25, 2026 [pause:1s] at 10:30 am. GIF, New  York!", voice="v"),
    Manifest(text="我用iPhone 15拍了3张照片，花了¥3.50。中国银行AI", voice="v", language="zho"),
    Manifest(
        text="Hello there, this is English. 你好，世界。 Then English again, long enough.", voice="v", language="auto"
    ),
    Manifest(segments=[Segment(text="First turn."), Segment(text="Second, 2nd turn.", speed=1.5)], voice="v"),
]


@pytest.mark.timeout(120)
async def test_an_analysis_in_the_child_is_the_one_made_in_process(box: TextSandbox) -> None:
    lexicon = {"GIF": "jif", "New York": "the big apple", "银行": "yin2 hang2", "AI": "A I"}
    for manifest in MANIFESTS:
        got = await box.analyse(manifest, lexicon, **OPTIONS)
        assert got == script.analyse(manifest, lexicon, max_pause_s=10.0, max_total_pause_s=600.0)
    assert box.pid is not None and box.pid != os.getpid()


@pytest.mark.timeout(120)
async def test_text_errors_come_back_with_their_codes(box: TextSandbox) -> None:
    cases = {
        "a [pause:20s] b": ErrorCode.INVALID_MARKUP,
        "<speak>hi</speak>": ErrorCode.INVALID_MARKUP,
        "[pause:1s] ... ": ErrorCode.TEXT_NOT_SPEAKABLE,
        "x " + "9" * 3000: ErrorCode.TEXT_NOT_SPEAKABLE,
    }
    for text, code in cases.items():
        with pytest.raises(script.ScriptError) as err:
            await box.analyse(Manifest(text=text, voice="v"), {}, **OPTIONS)
        assert err.value.code is code
    pid = box.pid
    assert (await box.analyse(Manifest(text="Still fine.", voice="v"), {}, **OPTIONS)).normalized_text
    assert box.pid == pid  # an error in the text is not a reason to replace the child


@pytest.mark.timeout(120)
async def test_the_spoken_budget_stops_the_child_while_it_expands(box: TextSandbox) -> None:
    with pytest.raises(SpokenOverLimit) as err:
        await box.analyse(Manifest(text="a " * 50_000, voice="v"), {"a": "b" * 200}, **OPTIONS)
    assert 300_000 < err.value.spoken < 400_000  # 10 M if the whole text had been expanded


@pytest.mark.timeout(120)
async def test_a_runaway_over_its_cpu_share_is_killed_and_replaced(box: TextSandbox) -> None:
    """Tens of seconds of CPU (2 M characters, every word ending 100 matches) against a share of
    0.01 s: SIGXCPU at the child's next whole second. The wall limit is far away."""
    await box.start()
    first = box.pid
    assert first is not None
    big = Manifest(text="a " * 1_000_000, voice="v")
    with pytest.raises(TextTooComplex) as err:
        await box.analyse(big, NESTED, **OPTIONS | {"max_spoken": 10**9}, limits=Limits(cpu_s=0.01, wall_s=600))
    assert "2,000,000 characters with a lexicon of 100 entries" in err.value.message
    wait_gone(first)
    again = await box.analyse(Manifest(text="Next job.", voice="v"), {}, **OPTIONS)
    assert again.normalized_text == "Next job." and box.pid not in (None, first)


@pytest.mark.timeout(120)
async def test_a_stopped_child_is_killed_at_its_wall_deadline_and_the_worker_takes_the_blame(box: TextSandbox) -> None:
    """A stopped child used none of its CPU share: the text is not to blame (the job is handed back,
    never failed TEXT_TOO_COMPLEX); the child is killed and the next job gets a fresh one."""
    await box.start()
    pid = box.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(TextSandboxUnavailable, match="did not answer"):
        await box.analyse(Manifest(text="Hello.", voice="v"), {}, **OPTIONS, limits=Limits(cpu_s=100, wall_s=1))
    wait_gone(pid)
    assert (await box.analyse(Manifest(text="Hello.", voice="v"), {}, **OPTIONS)).normalized_text == "Hello."


@pytest.mark.timeout(120)
async def test_a_child_killed_while_idle_is_replaced_for_the_next_job(box: TextSandbox) -> None:
    """The OOM killer or an operator ends the idle child: the next job gets a new one instead of
    meeting the broken pool (before: every later job on the worker failed INTERNAL_ERROR)."""
    await box.start()
    pid = box.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    for text in ("First after.", "Second after."):
        assert (await box.analyse(Manifest(text=text, voice="v"), {}, **OPTIONS)).normalized_text == text
    assert box.pid not in (None, pid)


@pytest.mark.timeout(120)
async def test_a_child_killed_from_outside_mid_analysis_is_the_workers_fault(box: TextSandbox) -> None:
    """Killed by something other than its CPU limit while it works: the job is handed back
    (TextSandboxUnavailable names the signal), not failed as if its text were too complex."""
    await box.start()
    pid = box.pid
    assert pid is not None
    big = Manifest(text="a " * 1_000_000, voice="v")
    task = asyncio.create_task(
        box.analyse(big, NESTED, **OPTIONS | {"max_spoken": 10**9}, limits=Limits(cpu_s=600, wall_s=600))
    )
    await asyncio.sleep(0)  # submitted; the child is busy with it (tens of seconds of CPU)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TextSandboxUnavailable, match="SIGKILL"):
        await task
    wait_gone(pid)


@pytest.mark.timeout(120)
async def test_a_cancelled_job_takes_its_analysis_down_with_it(box: TextSandbox) -> None:
    await box.start()
    pid = box.pid
    assert pid is not None
    big = Manifest(text="a " * 1_000_000, voice="v")
    task = asyncio.create_task(box.analyse(big, NESTED, **OPTIONS | {"max_spoken": 10**9}))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    wait_gone(pid)


CHILD_OF_A_DYING_WORKER = """
import asyncio, os, sys
from pipeline.text.sandbox import TextSandbox

async def main():
    box = TextSandbox(20.0)
    await box.start()
    print(box.pid, flush=True)
    await asyncio.sleep(600)

if __name__ == "__main__":  # spawn imports the main module again in the child
    asyncio.run(main())
"""


@pytest.mark.timeout(120)
def test_the_child_dies_with_its_worker(tmp_path: Path) -> None:
    """A worker killed with SIGKILL cannot stop its children: the kernel does (PR_SET_PDEATHSIG)."""
    script_path = tmp_path / "worker.py"
    script_path.write_text(CHILD_OF_A_DYING_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, str(script_path)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        assert alive(child)
        worker.kill()
        worker.wait()
        wait_gone(child)
    finally:
        worker.kill()


# -- through the worker's inputs: the job's FAILED code --------------------------------------------


class _Store:
    """Just enough of ``Store`` for ``Inputs.read`` up to the voice download."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = json.dumps(manifest).encode()

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        if key.startswith("inbox/"):
            return self.manifest
        from pipeline.cloud.store import NotFound

        raise NotFound(key)


async def _read(manifest: dict[str, Any], **settings: Any) -> JobFailed:
    inputs = Inputs(Settings(**settings), _Store(manifest))  # type: ignore[arg-type]
    try:
        with pytest.raises(JobFailed) as err:
            await inputs.read("job-1")
    finally:
        inputs.close()
    return err.value


@pytest.mark.timeout(120)
async def test_a_job_whose_text_outruns_its_limits_fails_text_too_complex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "MIN_CPU_S", 0.01)
    failed = await _read(
        {"text": "a " * 1_000_000, "voice": "v", "lexicon": NESTED},
        max_text_chars=2_000_000,
        max_spoken_chars=10**9,
        text_cpu_s=0.001,
    )
    assert failed.code == ErrorCode.TEXT_TOO_COMPLEX
    assert "2,000,000 characters with a lexicon of 100 entries" in failed.message and "TTS_TEXT_CPU_S" in failed.message


@pytest.mark.timeout(120)
async def test_the_issues_manifests_end_with_codes_about_their_text() -> None:
    """The lexicon of near misses is analysed in a moment and the job goes on (to its voice, here
    missing); the long word cannot be spoken; the alias bomb is over the spoken budget."""
    near_misses = {("a " * 98 + f"b{i:03d}"): "x" for i in range(1000)}
    failed = await _read({"text": "a " * 50_000, "voice": "voices/nobody.wav", "lexicon": near_misses})
    assert failed.code == ErrorCode.VOICE_NOT_FOUND
    failed = await _read({"text": "." * 99_999 + "a", "voice": "v"})
    assert failed.code == ErrorCode.TEXT_NOT_SPEAKABLE
    failed = await _read({"text": "a " * 2000, "voice": "v", "lexicon": {"a": "b" * 200}})
    assert failed.code == ErrorCode.JOB_TOO_COSTLY and "TTS_MAX_SPOKEN_CHARS" in failed.message
