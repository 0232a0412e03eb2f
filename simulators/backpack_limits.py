"""Backpack's REST rate limit (profile.BackpackProfile.rate_limit, off by default).

Backpack's support FAQ: 2000 requests a minute per subaccount across the
standard REST endpoints; beyond it HTTP 429 with code ``TOO_MANY_REQUESTS`` (the message is
UNCONFIRMED: the simulator's fault wording is reused). No rate-limit headers and no ``Retry-After``
were seen, so none are sent. Signed requests count per API key (one key, one subaccount here);
public ones per client address. The window is a sliding 60 s one: the FAQ gives a per-minute budget,
not how it is measured (UNCONFIRMED).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_SECS = 60.0


class RateLimiter:
    """At most ``per_minute`` requests per key in any 60 s window."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Count one request for ``key``; False when it is over the limit (a refused request counts
        too, so hammering through a 429 does not free the budget)."""
        now = self.clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - WINDOW_SECS:
            hits.popleft()
        hits.append(now)
        return len(hits) <= self.per_minute
