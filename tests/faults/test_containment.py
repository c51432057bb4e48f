"""Issue 25: no stuck part or missing resource takes a worker down, and a job's status says what
happened in the project's words. Black-box on the real stack (worker processes, the fault proxy's
points, S3 documents, the worker's log), one test per defect; each fails on the code before the
fix. The waits are hang guards: every assertion is on an event observed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from pipeline.cloud.aws import Calls
from pipeline.cloud.store import Store
from pipeline.jobs.contract import JobState, JobStatus, Progress, utcnow
from pipeline.jobs.state import Claim, ClaimResult, Ledger
from tests.faults.conftest import put_job, short_manifest
from tests.faults.proxy import DENIED_MESSAGE, ProxyProcess
from tests.helpers import (
    BUCKET,
    TTS,
    Holds,
    WorkerProcess,
    wait_for_state,
    wait_ready,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LONG_TEXT = "This is a sentence of moderate length. " * 12  # three chunks with the test voice
PLS = (
    b'<?xml version="1.0" encoding="UTF-8"?><lexicon version="1.0" '
    b'xmlns="http://www.w3.org/2005/01/pronunciation-lexicon" alphabet="ipa" xml:lang="en-US">'
    b"<lexeme><grapheme>GIF</grapheme><alias>jif</alias></lexeme></lexicon>"
)


# 4 --------------------------------------------------------------------------------------------


def test_c4_a_queue_deleted_while_its_job_runs_leaves_the_worker_running(
    stack: dict[str, str], workers: Any, holds: Holds, s3: Any, sqs: Any
) -> None:
    """The job's queue is deleted while the job is held mid-way: the job still ends COMPLETED (its
    status is the record), the acknowledgement that finds no queue is logged, not raised, and the
    worker keeps running; once ``bootstrap`` re-creates the queue the same worker runs the next job."""
    bucket = stack["TTS_BUCKET"]
    w: WorkerProcess = workers(stack, "a")
    holds.hold("c4-held", after_chunks=1)
    put_job(s3, bucket, "c4-held", short_manifest(text=LONG_TEXT))
    holds.wait_held("c4-held")
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=stack["TTS_QUEUE"])["QueueUrl"])
    holds.release("c4-held")
    assert wait_for_state(s3, "c4-held", bucket=bucket, worker=w)["state"] == "COMPLETED"
    wait_until(lambda: "not acknowledged: its queue is gone" in w.log(), "the acknowledgement to fail", 120, worker=w)
    wait_until(lambda: "is gone" in w.log() and "waiting for it to be created again" in w.log(), "the wait", 120, w)
    assert w.proc.poll() is None, w.log()[-3000:]
    subprocess.run([TTS, "bootstrap"], env=stack, check=True, capture_output=True)
    put_job(s3, bucket, "c4-after", short_manifest())
    assert wait_for_state(s3, "c4-after", bucket=bucket, worker=w)["state"] == "COMPLETED"
    assert w.proc.poll() is None


def test_c4_a_worker_started_before_its_queue_exists_waits_for_it(stack: dict[str, str], workers: Any, s3: Any) -> None:
    """No queue yet (a deploy that starts workers before the stack's queue): the worker waits,
    unready, instead of exiting into a restart loop that reloads its model each time; it consumes
    once the queue is created."""
    env = {**stack, "TTS_QUEUE": f"{stack['TTS_QUEUE']}-later"}
    w: WorkerProcess = workers(env, "early", wait=False)
    wait_until(lambda: "does not exist: waiting for it to be created" in w.log(), "the worker to wait", 240, w)
    assert w.proc.poll() is None
    subprocess.run([TTS, "bootstrap"], env=env, check=True, capture_output=True)
    wait_ready(w)
    put_job(s3, stack["TTS_BUCKET"], "c4-late", short_manifest())
    assert wait_for_state(s3, "c4-late", bucket=stack["TTS_BUCKET"], worker=w)["state"] == "COMPLETED"


# 5 --------------------------------------------------------------------------------------------


async def test_c5_a_hung_status_write_of_the_job_holds_no_renewal_of_its_lease(
    aws_env: dict[str, str], fault_proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt's own status write hangs (S3 performed it, the answer never comes, and nothing
    below the ledger gives up: one try may take an hour). Its retry deadline bounded only when a
    retry may *start*, so the write held the claim's lock, which every renewal of the lease waits
    on, until the hung try's own timeout: the lease lapsed. Now the whole transition is cut at its
    deadline, and the heartbeat's renewal lands over it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    job = "c5-hung-write"
    patient = Calls("worker", timeout_s=3600)  # no client-side bound but the ledger's own
    async with Store.open(BUCKET, calls=patient) as store:
        own = Ledger(store.with_calls(patient.with_deadline(2)), "w-c5", lease_s=60)
        heartbeat = Ledger(store.with_calls(Calls("lease", timeout_s=3600, deadline_s=30)), "w-c5", lease_s=60)
        outcome, claim = await own.claim(job, None)
        assert outcome is ClaimResult.CLAIMED and isinstance(claim, Claim)
        fault_proxy.arm(
            {
                "id": "c5",
                "job": job,
                "op": "S3 PutObject",
                "key": rf"status/{job}\.json",
                "kind": "hang",
                "hang_s": 3600,
            }
        )
        hung = asyncio.create_task(own.renew(claim, Progress(chunks_done=1, chunks_total=3)))
        await asyncio.to_thread(wait_until, lambda: fault_proxy.fired("c5"), "the status write to hang", 60)
        # A hang guard, not a timing: before the fix this renewal never got the lock.
        await asyncio.wait_for(heartbeat.renew(claim, Progress(chunks_done=2, chunks_total=3)), 120)
        with pytest.raises(TimeoutError):
            await hung  # cut at its deadline: a transient error for the attempt to handle
        status = await store.get_model(f"status/{job}.json", JobStatus)
        assert status is not None and status.state is JobState.PROCESSING
        assert status.progress == Progress(chunks_done=2, chunks_total=3)
        assert status.lease_expires_at is not None and status.lease_expires_at > utcnow()


# 6 --------------------------------------------------------------------------------------------


def test_c6_an_input_the_role_may_not_read_fails_in_the_projects_words(
    stack: dict[str, str], via: dict[str, str], fault_proxy: ProxyProcess, workers: Any, s3: Any
) -> None:
    """S3 answers AccessDenied (with AWS's message, which names the role's ARN and the account)
    for the job's PLS lexicon: the job ends FAILED ACCESS_DENIED naming the lexicon's object, and
    nothing of AWS's message reaches the status; the worker's log has it."""
    bucket, job = stack["TTS_BUCKET"], "c6-denied"
    s3.put_object(Bucket=bucket, Key="lexicons/c6.pls", Body=PLS)
    fault_proxy.arm({"id": "c6", "op": "S3 GetObject", "key": r"lexicons/c6\.pls", "kind": "denied"})
    w: WorkerProcess = workers(via, "a")
    put_job(s3, bucket, job, short_manifest(text="A GIF for you.", lexicons=["lexicons/c6.pls"]))
    status = wait_for_state(s3, job, bucket=bucket, worker=w)
    assert fault_proxy.fired("c6"), "the AccessDenied was never answered"
    assert status["state"] == "FAILED" and status["error"]["code"] == "ACCESS_DENIED", status
    assert f"s3://{bucket}/lexicons/c6.pls" in status["error"]["message"], status["error"]
    document = json.dumps(status)
    assert "arn:aws" not in document and "123456789012" not in document, status
    assert DENIED_MESSAGE in w.log()  # the detail is the operator's, in the log


def test_c6_a_transient_errors_note_carries_no_error_text(
    stack: dict[str, str], via: dict[str, str], fault_proxy: ProxyProcess, workers: Any, s3: Any
) -> None:
    """Every try of the manifest's read fails (a brownout past the client's retries): the job goes
    back to QUEUED with a note that says what failed in the project's words (the call and S3's
    error code), not the error's text, and completes on its next delivery."""
    bucket, job = stack["TTS_BUCKET"], "c6-transient"
    fault_proxy.arm({"id": "c6t", "op": "S3 GetObject", "key": rf"inbox/{job}\.json", "kind": "brownout"})
    w: WorkerProcess = workers(via, "a")
    put_job(s3, bucket, job, short_manifest())
    status = wait_for_state(s3, job, bucket=bucket, worker=w)
    assert fault_proxy.fired("c6t"), "the brownout never happened"
    assert status["state"] == "COMPLETED", status
    notes = [h.get("note") or "" for h in status["history"]]
    transient = [n for n in notes if n.startswith("transient error")]
    assert transient, notes
    assert all("GetObject answered ServiceUnavailable" in n for n in transient), transient
    assert not any("injected fault" in n for n in notes), notes  # the proxy's error text
