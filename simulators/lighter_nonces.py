"""Nonces of the simulated Lighter venue, per ``(AccountIndex, ApiKeyIndex)`` (lighter_rules.py).

* A tx may use any unused nonce up to ``nonce_window`` (16) ahead of the next unused one
  (nautilus_trader ``signing/nonce.rs``: "The venue accepts up to 16 out-of-order nonces per
  (account, api_key)"; UNCONFIRMED, see lighter_rules.py). Only an accepted tx uses one.
* ``nextNonce`` is the lowest unused nonce as it stood ``nonce_lag_ms`` ago: Lighter's nonce page,
  the nonce "will NOT update right away on the server side".
"""

from __future__ import annotations

import time
from collections import deque

from simulators.lighter_rules import LighterRules

Key = tuple[int, int]
#: How many moves of one key's next nonce are remembered for the lag.
LAG_HISTORY = 256


class Nonces:
    def __init__(self, rules: LighterRules) -> None:
        self.rules = rules
        #: The lowest unused nonce per key (what nextNonce shows without a lag).
        self.next: dict[Key, int] = {}
        #: Used nonces above the next one (out-of-order txs).
        self.ahead: dict[Key, set[int]] = {}
        #: (monotonic time, next nonce before) of each move, for the lag.
        self.moves: dict[Key, deque[tuple[float, int]]] = {}

    def current(self, key: Key) -> int:
        return self.next.get(key, 0)

    def shown(self, key: Key) -> int:
        """nextNonce: the lowest unused nonce as it was ``nonce_lag_ms`` ago."""
        current = self.current(key)
        lag = self.rules.nonce_lag_ms
        if lag <= 0:
            return current
        cutoff, shown = time.monotonic() - lag / 1000, current
        for at, before in reversed(self.moves.get(key, ())):
            if at <= cutoff:
                break
            shown = min(shown, before)
        return shown

    def ok(self, key: Key, nonce: int) -> bool:
        """Unused and at most ``nonce_window`` ahead of the next unused nonce."""
        base = self.current(key)
        return base <= nonce <= base + self.rules.nonce_window and nonce not in self.ahead.get(key, ())

    def use(self, key: Key, nonce: int) -> None:
        """Mark ``nonce`` used; the next nonce moves past every contiguous used one."""
        before = self.current(key)
        ahead = self.ahead.setdefault(key, set())
        ahead.add(nonce)
        current = before
        while current in ahead:
            ahead.discard(current)
            current += 1
        self.next[key] = current
        if self.rules.nonce_lag_ms > 0 and current != before:
            self.moves.setdefault(key, deque(maxlen=LAG_HISTORY)).append((time.monotonic(), before))
