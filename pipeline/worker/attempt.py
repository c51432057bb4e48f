"""One processing attempt of one job in this worker: everything the attempt knows and owns.

An ``Attempt`` is made when a claim succeeds and dropped when its message is acknowledged. It
holds the claim (the status it wrote and its ETag), the SQS delivery that carries the job (the
receipt handle is refreshed if the same message is delivered to this worker again), the signals
that may stop it early, and what it has written so far, which decides what its ending may remove
(``pipeline.jobs.outputs``):

- ``uploaded``: its own files (``outputs/<job>/attempt-<n>.*``) that it began to write;
- ``chunks``: the durable chunks it wrote;
- ``result``: whether it has not yet sent a result (``NONE``), sent one whose outcome it does not
  know (``SENT``: the PUT failed, but it may have landed), or knows the result exists (``KNOWN``,
  its own or an earlier attempt's, with ``named`` the keys that result names).

Nothing here is shared between attempts: two attempts of one job in one worker never coexist.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum

from pipeline.cloud.consumer import Message
from pipeline.cloud.store import Store
from pipeline.config import Settings
from pipeline.jobs.state import Claim
from pipeline.worker.signals import Abort, CancelPoll, Deadline, Progress, ShutdownGrace


class ResultState(Enum):
    NONE = "none"  # no result PUT sent by this attempt, none known to exist
    SENT = "sent"  # a result PUT was sent and failed: it may have landed
    KNOWN = "known"  # the result exists (``named`` holds its keys)


@dataclass
class Attempt:
    claim: Claim
    msg: Message
    abort: Abort
    deadline: Deadline
    shutdown: ShutdownGrace
    cancel: CancelPoll
    progress: Progress
    uploaded: set[str] = field(default_factory=set)
    chunks: set[str] = field(default_factory=set)
    result: ResultState = ResultState.NONE
    named: set[str] | None = None
    ending: bool = False  # its outcome is decided: only the lease and the message are kept alive
    started: float = field(default_factory=time.monotonic)  # when the claim was won
    first_audio: bool = False  # its first chunk is durable (time to first audio observed)

    @classmethod
    def start(
        cls, settings: Settings, claim: Claim, msg: Message, lease_store: Store, stopping: asyncio.Event
    ) -> Attempt:
        abort = Abort()
        return cls(
            claim=claim,
            msg=msg,
            abort=abort,
            deadline=Deadline(abort, settings.job_timeout_s),
            shutdown=ShutdownGrace(abort, stopping, settings.shutdown_grace_s),
            cancel=CancelPoll(abort, lease_store, claim.job_id, settings.cancel_poll_s),
            progress=Progress(claim.job_id, settings.progress_interval_s),
        )

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    @property
    def number(self) -> int:
        return self.claim.status.attempt

    def check(self) -> None:
        """Raise ``JobAborted`` if the attempt must stop (between stages, at chunk boundaries)."""
        self.abort.check()

    def result_known(self, named: set[str]) -> None:
        self.result = ResultState.KNOWN
        self.named = named

    @property
    def wrote(self) -> set[str]:
        return self.uploaded | self.chunks
