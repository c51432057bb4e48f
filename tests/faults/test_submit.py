"""Submitting through faults: the manifest is created once (``If-None-Match``; a submit writes no
status since issue 27), its writer recognises its own write when the answer was lost, and an
``Idempotency-Key`` retry that races the first request through the speech API waits on that
request's job without writing anything of it again. Black-box: the fault proxy's points and
trace, and S3 object versions."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.client import jobs as client
from pipeline.cloud.store import Store
from pipeline.jobs import keys
from pipeline.jobs.contract import JobState, Manifest, Priority, utcnow
from tests.faults.conftest import versions
from tests.faults.proxy import ProxyProcess
from tests.helpers import BUCKET, add_library_voice, http_request, start_console, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _puts(proxy: ProxyProcess, key: str) -> list[dict[str, Any]]:
    return [e for e in proxy.trace() if e["op"] == "S3 PutObject" and e["keys"] == [key]]


async def test_a_submit_whose_manifest_write_lost_its_answer_is_not_refused(
    aws_env: dict[str, str], fault_proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest PUT lands and its answer is lost; the retry meets its own manifest (412). That
    is the submitter's own first write, not a job that exists: the submit succeeds. A manifest or a
    status anyone else wrote is still refused (tests/integration/test_submit.py)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    job = f"d7-lost-{utcnow().timestamp():.0f}"
    manifest = keys.manifest_key(job, Priority.bulk)
    fault_proxy.arm({"id": "d7-lost", "job": job, "op": "S3 PutObject", "key": rf"inbox/{job}\.json", "kind": "lost"})
    async with Store.open(BUCKET) as store:
        status = await client.submit(store, job, Manifest(text="Mine.", voice="voices/alice.wav"))
        assert fault_proxy.fired("d7-lost"), "the answer was never lost"
        assert [(e["status"], e.get("fault")) for e in _puts(fault_proxy, manifest)] == [(200, "lost"), (412, None)]
        assert status.state is JobState.QUEUED and status.attempt == 0
        assert _puts(fault_proxy, keys.status_key(job)) == []  # a submit writes no status
        with pytest.raises(client.JobExists):  # and the id is taken from now on
            await client.submit(store, job, Manifest(text="Again.", voice="voices/alice.wav"))


def test_an_idempotency_key_retry_racing_the_first_request_waits_on_its_job(
    stack: dict[str, str], via: dict[str, str], fault_proxy: ProxyProcess, s3: Any, tmp_path: Path
) -> None:
    """Two speech requests with one ``Idempotency-Key`` (a client retrying while its first request
    is still submitting). The first request's manifest PUT lands and its answer is held back; the
    second request arrives meanwhile and submits the same job id. Before issue 17's fix it wrote
    the status again (putting the job back to QUEUED, attempt 0) and a second manifest (a second
    S3 event). Now the manifest is created once (issue 27: a submit writes no status): the second
    request is told the job exists and waits on it, the first one's retry recognises its own
    write, and exactly one manifest and no status are ever written. Both answers name the one
    job."""
    bucket = stack["TTS_BUCKET"]
    add_library_voice(stack, "d7-voice")
    proc, url = start_console(via, tmp_path / "console.log", api_wait_s="1", call_timeout_s="4")
    try:
        idem = "d7-race"
        job = f"api-{hashlib.sha256(idem.encode()).hexdigest()[:32]}"
        manifest = keys.manifest_key(job, Priority.interactive)
        # By key alone: the proxy's trace names jobs from inbox/ keys, not inbox-interactive/ ones.
        held = {"id": "d7-held", "op": "S3 PutObject", "key": rf"inbox-interactive/{job}\.json"}
        fault_proxy.arm({**held, "kind": "hang", "hang_s": 3600})  # past the console's call timeout: it retries
        body = json.dumps({"model": "tts-1", "input": "Only once.", "voice": "d7-voice", "response_format": "wav"})
        headers = {"Content-Type": "application/json", "Idempotency-Key": idem}
        answers: list[tuple[int, bytes, Any]] = []
        first = threading.Thread(
            target=lambda: answers.append(http_request(f"{url}/v1/audio/speech", "POST", body.encode(), headers))
        )
        first.start()
        wait_until(lambda: fault_proxy.fired("d7-held"), "the first request's manifest write to be held", 60)
        second = http_request(f"{url}/v1/audio/speech", "POST", body.encode(), headers)
        first.join(timeout=120)
        assert not first.is_alive() and len(answers) == 1
        for code, payload, got in (answers[0], second):
            assert code == 504, payload  # nobody runs the job: it is waited on, not refused or failed
            assert got["X-Job-Id"] == job and json.loads(payload)["error"]["code"] == "job_timeout"

        puts = _puts(fault_proxy, manifest)
        assert puts[0]["status"] == 200 and puts[0].get("fault") == "hang"
        assert [e["status"] for e in puts[1:]] == [412] * (len(puts) - 1), puts  # none written over it
        assert len(versions(s3, bucket, manifest)) == 1
        assert versions(s3, bucket, keys.manifest_key(job, Priority.bulk)) == []
        assert versions(s3, bucket, keys.status_key(job)) == []  # nobody runs the job: no status
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_speech_request_while_the_store_is_unreachable_gets_an_openai_shaped_503(
    stack: dict[str, str], via: dict[str, str], fault_proxy: ProxyProcess, tmp_path: Path
) -> None:
    """Every S3 request for the voice library fails (a brownout past the console's retries) while
    a speech request looks its voice up. The answer is OpenAI's error shape, 503 with
    Retry-After, which the client's own retries handle (before: aiohttp's bare 500 page)."""
    add_library_voice(stack, "unreachable-voice")
    proc, url = start_console(via, tmp_path / "console.log", call_timeout_s="2")
    try:
        fault_proxy.add_rules([{"match": r"/voices/", "kind": "dropped", "times": -1}])
        body = json.dumps({"model": "tts-1", "input": "Hello.", "voice": "unreachable-voice"}).encode()
        code, payload, headers = http_request(
            f"{url}/v1/audio/speech", "POST", body, {"Content-Type": "application/json"}
        )
        assert code == 503, payload
        assert json.loads(payload)["error"]["code"] == "service_unavailable"
        assert headers["Retry-After"] == "5"
    finally:
        fault_proxy.remove_rules()
        proc.terminate()
        proc.wait(timeout=30)
