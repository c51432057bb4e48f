"""Console sign-in: server-side sessions that logout really ends, and a throttle on key guesses.

A session is a random 256-bit id the server remembers with its expiry; the cookie carries the id
only. Logging out forgets it, so a copied cookie stops working at once (a signed, stateless
cookie would have stayed valid until it expired). Sessions live in the console process: a restart
signs everyone out, and several console replicas behind one name need sticky sessions (or bearer
keys). At most ``MAX_SESSIONS`` are held; the oldest goes first.

Guesses of the key are throttled per client address: after ``FREE_FAILURES`` wrong keys in
``WINDOW_S`` every further attempt from that address is refused 429 (with ``Retry-After``) until
the window has passed, right or wrong. Wrong keys are also answered one at a time, each after a
pause, so parallel guesses gain nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

SESSION_S = 12 * 3600
MAX_SESSIONS = 10_000
FREE_FAILURES = 5
WINDOW_S = 15 * 60
FAILURE_PAUSE_S = 0.5
MAX_CLIENTS = 10_000


class Sessions:
    def __init__(self, ttl_s: float = SESSION_S, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def create(self) -> str:
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = self.clock() + self.ttl_s
        while len(self._expiry) > MAX_SESSIONS:
            self._expiry.popitem(last=False)
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        expires = self._expiry.get(sid)
        if expires is None:
            return False
        if expires <= self.clock():
            del self._expiry[sid]
            return False
        return True

    def revoke(self, sid: str | None) -> None:
        if sid:
            self._expiry.pop(sid, None)

    def __len__(self) -> int:
        return len(self._expiry)


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic, pause_s: float = FAILURE_PAUSE_S) -> None:
        self.clock = clock
        self.pause_s = pause_s
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._one_at_a_time = asyncio.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again; None if it may now."""
        now = self.clock()
        recent = [t for t in self._failures.get(client, []) if t > now - WINDOW_S]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        if len(recent) < FREE_FAILURES:
            return None
        return max(1.0, recent[0] + WINDOW_S - now)

    async def failed(self, client: str) -> None:
        """Record a wrong key, and answer it only after a pause, one wrong key at a time."""
        self._failures.setdefault(client, []).append(self.clock())
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)
        async with self._one_at_a_time:
            await asyncio.sleep(self.pause_s)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
