"""Per-client budgets at the front door: what one client can make the operator pay is bounded.

A client is its address: ``request.remote``, or behind a trusted proxy
(``TTS_CONSOLE_TRUST_PROXY``) the address the proxy appended to ``X-Forwarded-For`` (the last
entry: the ones before it are the client's own say). Each client has, all in memory and checked
before any S3 call:

- **requests**: a token bucket of ``TTS_DOOR_REQUESTS_PER_S`` (burst ``TTS_DOOR_REQUEST_BURST``)
  over every ``/v1`` and ``/console/api`` request;
- **streams**: at most ``TTS_DOOR_STREAMS`` answers carrying audio at once (speech requests, the
  console's live players);
- **jobs**: at most ``TTS_DOOR_JOBS`` jobs the API made for it that have not ended, of which at
  most ``TTS_DOOR_INTERACTIVE_JOBS`` in the interactive lane (the rest are bulk jobs, fair-shared
  behind everyone's interactive ones). A client that hangs up does not free its place: the job
  goes on, and its place is given back when the job ends (the API looks, with backoff), so
  ``curl -m 1`` in a loop keeps ``TTS_DOOR_JOBS`` jobs unfinished, not one more per second;
- **characters**: ``TTS_DOOR_CHARS_PER_MINUTE`` input characters a minute (a bucket as large);
- **wrong keys** (``pipeline.web.sessions.LoginThrottle``): five wrong keys in 15 minutes, bearer
  or login form, lock the address out (429, the key unchecked) for the rest of the window.

Over a budget: ``OverBudget`` (429 with ``Retry-After``). The tables hold at most ``MAX_CLIENTS``
clients (the least recently seen go first), so a flood of addresses costs bounded memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from aiohttp import web

from pipeline.cloud.store import Store
from pipeline.config import Settings
from pipeline.web.sessions import MAX_CLIENTS, LoginThrottle

log = logging.getLogger(__name__)
REFUSAL_LOG_S = 60.0  # a client's refusals are logged once a minute at most
WATCH_MAX_S = 24 * 3600.0  # a job a hung-up client left is watched this long at most
WATCH_MAX_DELAY_S = 5.0  # a job's end frees its place at most this late (one status GET per look)
BODIES_AT_ONCE = 4  # request bodies one client may have in flight (read before anything is held)


class OverBudget(Exception):
    """A client over one of its budgets: answer 429 with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: float, code: str = "rate_limit_exceeded") -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.code = code

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass
class Bucket:
    """A token bucket: ``rate`` tokens a second up to ``capacity``."""

    rate: float
    capacity: float
    tokens: float
    at: float

    def take(self, n: float, now: float) -> float | None:
        """Take ``n`` tokens: None if taken, else the seconds until ``n`` are there (nothing taken)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return None
        return (n - self.tokens) / self.rate


@dataclass
class Ticket:
    """One job the API makes for a client: counted against its budget from before the job exists
    until the job is seen to end. Requests for one job (retries with one ``Idempotency-Key``)
    share its ticket."""

    client: str
    job_id: str
    interactive: bool = False  # the job goes to the interactive lane (else bulk)
    made: bool = False  # the job may exist: its manifest write was started
    holders: int = 1  # requests holding the ticket (retries with one Idempotency-Key)
    watched: bool = False  # someone is looking for the job's end
    ended: bool = False


@dataclass
class _Client:
    requests: Bucket
    chars: Bucket
    streams: int = 0
    bodies: int = 0
    jobs: dict[str, Ticket] = field(default_factory=dict)  # its open tickets, by job id


def client_address(request: web.Request, trust_proxy: bool) -> str:
    """Who sent the request: the proxy's last ``X-Forwarded-For`` entry when it is trusted."""
    if trust_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
        if forwarded:
            return forwarded[:64]
    return request.remote or "?"


class Door:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.throttle = LoginThrottle(clock=clock)
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._watches: set[asyncio.Task[None]] = set()
        self._refusals: OrderedDict[str, tuple[float, int]] = OrderedDict()  # client -> (logged at, hidden)
        self._salt = os.urandom(16)

    def client(self, request: web.Request) -> str:
        return client_address(request, self.settings.console_trust_proxy)

    def requester(self, client: str) -> str:
        """The manifest's ``requester`` for ``client``'s jobs: the worker shares the model fairly
        among the API's clients by it (``pipeline.tts.shares``). Keyed with a salt of this process,
        so the address itself is not written to the bucket."""
        return "door-" + hmac.new(self._salt, client.encode(), hashlib.sha256).hexdigest()[:20]

    def _get(self, client: str) -> _Client:
        c = self._clients.get(client)
        now = self.clock()
        if c is None:
            s = self.settings
            burst, chars = float(s.door_request_burst), float(s.door_chars_per_minute)
            c = _Client(Bucket(s.door_requests_per_s, burst, burst, now), Bucket(chars / 60, chars, chars, now))
            self._clients[client] = c
            self._forget_idle()
        self._clients.move_to_end(client)
        return c

    def _forget_idle(self) -> None:
        """Drop the least recently seen clients beyond ``MAX_CLIENTS`` (never one holding a stream or
        a job: its budget is still in use)."""
        excess = len(self._clients) - MAX_CLIENTS
        for name in list(self._clients)[: max(0, excess)]:
            c = self._clients[name]
            if not c.streams and not c.jobs and not c.bodies:
                del self._clients[name]

    def refused(self, client: str, what: str) -> None:
        """Log a refusal: the first of a client's in each ``REFUSAL_LOG_S``, with how many were not
        logged since (a flood of 429s must not become a flood of log lines on the operator's disk)."""
        now = self.clock()
        last, hidden = self._refusals.get(client, (-REFUSAL_LOG_S, 0))
        if now - last < REFUSAL_LOG_S:
            self._refusals[client] = (last, hidden + 1)
            return
        self._refusals[client] = (now, 0)
        self._refusals.move_to_end(client)
        while len(self._refusals) > MAX_CLIENTS:
            self._refusals.popitem(last=False)
        more = f" ({hidden} more refused since the last line)" if hidden else ""
        log.info("client %s: 429: %s%s", client, what, more)

    # -- requests

    def admit(self, client: str) -> None:
        wait = self._get(client).requests.take(1, self.clock())
        if wait is not None:
            rate = self.settings.door_requests_per_s
            raise OverBudget(f"more than {rate:g} requests a second from {client}; slow down", wait)

    # -- wrong keys

    def check_guesses(self, client: str) -> None:
        """Refuse a locked-out address before its key is looked at (a right key too: otherwise a
        locked-out guesser would still learn which guess is right)."""
        wait = self.throttle.retry_after(client)
        if wait is not None:
            raise OverBudget("too many wrong keys from this address; try again later", wait, "too_many_wrong_keys")

    async def wrong_key(self, client: str) -> None:
        await self.throttle.failed(client)

    def right_key(self, client: str) -> None:
        self.throttle.succeeded(client)

    # -- streams

    def stream(self, client: str) -> AbstractContextManager[None]:
        """One answer carrying audio, for as long as it lasts."""
        limit = self.settings.door_streams
        return self._held(client, "streams", limit, f"{limit} audio answers at once from {client} already")

    def body(self, client: str) -> AbstractContextManager[None]:
        """One request body being read (bodies come before any slot: this bounds how many a client
        can trickle in at once, and so the memory they may hold)."""
        return self._held(client, "bodies", BODIES_AT_ONCE, f"{BODIES_AT_ONCE} request bodies from {client} arriving")

    @contextmanager
    def _held(self, client: str, counter: str, limit: int, what: str) -> Iterator[None]:
        """One of ``limit`` things a client may hold at once (a ``_Client`` counter), while held."""
        c = self._get(client)
        if getattr(c, counter) >= limit:
            raise OverBudget(f"{what}; retry when one ends", 1.0)
        setattr(c, counter, getattr(c, counter) + 1)
        try:
            yield
        finally:
            setattr(c, counter, getattr(c, counter) - 1)

    # -- jobs

    def job(self, client: str, chars: int, job_id: str, interactive: bool = True) -> Ticket:
        """A place for job ``job_id`` of ``chars`` input characters, or OverBudget; the place it
        already has when the client asks for the same job again. The ticket says whether the job
        may be interactive: only while the client has fewer than ``TTS_DOOR_INTERACTIVE_JOBS``
        interactive jobs unfinished (a burst of requests from one client is bulk work)."""
        c = self._get(client)
        if job_id in c.jobs:
            c.jobs[job_id].holders += 1
            return c.jobs[job_id]
        s = self.settings
        if len(c.jobs) >= s.door_jobs:
            raise OverBudget(
                f"{s.door_jobs} jobs from {client} have not ended yet; retry when one has "
                "(a client that hangs up keeps its job's place until the job ends)",
                5.0,
            )
        if chars > c.chars.capacity:
            raise OverBudget(f"input over this client's {s.door_chars_per_minute} characters a minute", 60.0)
        wait = c.chars.take(chars, self.clock())
        if wait is not None:
            raise OverBudget(f"more than {s.door_chars_per_minute} input characters a minute from {client}", wait)
        fast = sum(t.interactive for t in c.jobs.values()) < s.door_interactive_jobs
        ticket = c.jobs[job_id] = Ticket(client, job_id, interactive=interactive and fast)
        log.info("client %s: %d unfinished job(s) (a place taken for %s)", client, len(c.jobs), job_id)
        return ticket

    def ended(self, ticket: Ticket) -> None:
        """The ticket's job ended (or was never made): its place is free again."""
        ticket.ended = True
        c = self._clients.get(ticket.client)
        if c is not None and c.jobs.get(ticket.job_id) is ticket:
            del c.jobs[ticket.job_id]
            log.info("client %s: %d unfinished job(s) (%s's place freed)", ticket.client, len(c.jobs), ticket.job_id)

    def settle(self, ticket: Ticket, store: Store) -> None:
        """A request holding ``ticket`` is done. When it was the last: the place is given back
        now if the job ended or was never made, else once the job ends (the client hung up, or
        waited past TTS_API_WAIT_S: the job goes on), which ``_watch`` looks for."""
        ticket.holders -= 1
        if ticket.holders > 0 or ticket.ended or ticket.watched:
            return
        if not ticket.made:
            self.ended(ticket)
            return
        ticket.watched = True
        task = asyncio.create_task(self._watch(ticket, store))
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _watch(self, ticket: Ticket, store: Store) -> None:
        """Look at the job, less and less often (at most every ``WATCH_MAX_DELAY_S``), until it
        ends or is not there; then free its place. A job that never ends (a lost one the
        reconciler has not met yet) frees it after ``WATCH_MAX_S``."""
        from pipeline.client import jobs as client

        delay, deadline = 1.0, time.monotonic() + WATCH_MAX_S
        try:
            while time.monotonic() < deadline and not ticket.ended:
                await asyncio.sleep(delay)
                delay = min(WATCH_MAX_DELAY_S, delay * 2)
                try:
                    if (await client.get_status(store, ticket.job_id)).state.terminal:
                        return
                except client.JobNotFound:  # never made after all (the write failed)
                    return
                except Exception as e:  # the store unreachable: look again later
                    log.info("job %s: its status is unreachable (%s); looking again later", ticket.job_id, e)
        finally:
            self.ended(ticket)

    def open_jobs(self, client: str) -> int:
        c = self._clients.get(client)
        return len(c.jobs) if c else 0
