"""Who has had the model lately: the batcher's order within one priority.

Within a priority the batcher used to run items first come, first served. One client with several
jobs in flight then had one item queued per job, and each of them went before another client's
next item: a client with four jobs got four fifths of the model and the one with one job waited
behind all of them at every chunk. Now the anchor of the next batch is the oldest item of whoever
has had the *least* model time lately, at two levels:

- the **submitter** (who wrote the manifest, from the S3 event: ``pipeline.cloud.events.submitter``,
  which a client cannot choose), then
- the **requester** within that submitter (the manifest's ``requester``: whom the job is for; the
  speech API and the console write their client's id there). A submitter that names many
  requesters only divides its own share: the submitter level comes first.

"Lately" is model-seconds decayed with a half-life (``HALF_LIFE_S``): a client that was busy a
minute ago is not punished now, and one that waits long enough always gets its turn (its share
decays while everyone else's grows), so no tenant starves. Priority still comes first: an
interactive item leads every bulk one, whatever its tenant has had.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

HALF_LIFE_S = 10.0
_FORGET_BELOW_S = 1e-3  # a share this small is no share: its entry goes (the table stays small)
_PRUNE_EVERY = 256  # charges between two sweeps of the table


@dataclass(frozen=True)
class Tenant:
    """Whose work an item is: the submitter, and the requester within it ("" for none)."""

    submitter: str = ""
    requester: str = ""


NOBODY = Tenant()


class Shares:
    """Decayed model-seconds per submitter and per (submitter, requester). Event loop only."""

    def __init__(self, half_life_s: float = HALF_LIFE_S, clock: Callable[[], float] = time.monotonic) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.rate = math.log(2) / half_life_s
        self.clock = clock
        self._had: dict[tuple[str, ...], tuple[float, float]] = {}  # key -> (seconds, as of)
        self._charges = 0

    def rank(self, tenant: Tenant) -> tuple[float, float]:
        """Lower goes first: the submitter's share, then the requester's within it."""
        now = self.clock()
        return self._now(("s", tenant.submitter), now), self._now(("r", tenant.submitter, tenant.requester), now)

    def charge(self, tenant: Tenant, seconds: float) -> None:
        """``tenant``'s items used the model for ``seconds``."""
        if seconds <= 0:
            return
        now = self.clock()
        for key in (("s", tenant.submitter), ("r", tenant.submitter, tenant.requester)):
            self._had[key] = (self._now(key, now) + seconds, now)
        self._charges += 1
        if self._charges % _PRUNE_EVERY == 0:
            self._prune(now)

    def __len__(self) -> int:
        return len(self._had)

    def _now(self, key: tuple[str, ...], now: float) -> float:
        entry = self._had.get(key)
        if entry is None:
            return 0.0
        seconds, then = entry
        return seconds * math.exp(-self.rate * max(0.0, now - then))

    def _prune(self, now: float) -> None:
        for key in [k for k in self._had if self._now(k, now) < _FORGET_BELOW_S]:
            del self._had[key]
