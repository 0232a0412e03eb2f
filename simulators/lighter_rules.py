"""The Lighter venue's own rules, as one frozen :class:`LighterRules` passed when the app is built.

``create_lighter_app(exchange, rules)`` (and ``SimulatorServer(lighter_rules=…)``, ``xtb sim``'s
``--lighter-*`` options) take it; a test switches one rule with ``dataclasses.replace``. Every rule
cites its source; wording the sources do not give is marked UNCONFIRMED.

What is on by default and why:

* **Rate limits** (on, Standard tier), as https://apidocs.lighter.xyz/docs/rate-limits gives them. Every simulated account
  shares 127.0.0.1, as both Lighter workers of a host share its IP; the workers read positions, fills
  and the book from their stream and keep REST within a budget shared through Redis, so a whole
  cycle costs 6-8 requests per account. Tests of REST faults read REST only, every 0.2-0.5 s, and
  take :meth:`LighterRules.easy`.
* **Order history limits** (on): ``accountOrders``/``accountInactiveOrders`` list only the last 10K
  active and 1K inactive orders of the last 24 h (a second-hand reading of the venue's accountOrders
  reference; the page text itself could not be checked: UNCONFIRMED). The connector looks an id
  up right after sending it, far inside both bounds.
* **Out-of-order nonces** (on, window 16): accepted up to 16 ahead of the next unused nonce. Source:
  nautilus_trader ``crates/adapters/lighter/src/signing/nonce.rs`` ("The venue accepts up to 16
  out-of-order nonces per (account, api_key)"); a later revision of that file and api-evangelist's
  Lighter conventions say out-of-order nonces are refused without ``SkipNonce``, so UNCONFIRMED. The
  connector sends one tx at a time, so it never leaves a gap; ``nonce_window=0`` is the strict rule.
* **nextNonce lag** (on, 200 ms): Lighter's nonce page says an accepted tx's nonce "will NOT update
  right away on the server side"; the docs give no figure, 200 ms is this simulator's. The connector
  never takes a nextNonce below a nonce the venue accepted from it (``LighterSigner``), so a read
  inside the lag after its own tx costs nothing; after an outcome it cannot know (a timeout) a
  lagging read may hand it a used nonce, which the venue refuses and the one retry re-reads.
* **Reserved API key indexes** (on): Lighter's API-key page: "indexes {0,1,2,3} are reserved for desktop and
  mobile interfaces"; its production checklist: "a dedicated API key index (4–254)".
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# The venue's rate-limit facts live in production code (the budget counts as the venue does); they are
# re-exported here so the simulator and its tests keep importing them from this module.
from venues.lighter.limits import (
    DEFAULT_WEIGHT,
    PREMIUM_SEND_TX,
    PREMIUM_WEIGHT,
    RATE_LIMITED_CODE,
    RATE_LIMITED_MESSAGE,
    RATE_LIMITED_STATUS,
    STANDARD_REQUESTS,
    TX_TYPE_PER_MINUTE,
    WEIGHTS,
    WINDOW_SECS,
    Tier,
    endpoint_weight,
)

__all__ = [
    "DEFAULT_WEIGHT", "PREMIUM_SEND_TX", "PREMIUM_WEIGHT", "RATE_LIMITED_CODE", "RATE_LIMITED_MESSAGE",
    "RATE_LIMITED_STATUS", "RESERVED_API_KEYS", "STANDARD_REQUESTS", "TX_TYPE_PER_MINUTE", "WEIGHTS",
    "WINDOW_SECS", "LighterRules", "RateLimiter", "Tier", "endpoint_weight",
]

#: Indexes {0,1,2,3} are reserved for the venue's desktop and mobile apps.
RESERVED_API_KEYS = 4


@dataclass(frozen=True)
class LighterRules:
    """Every Lighter-only rule of the simulator (see the module docstring for defaults and why).

    Fields (defaults):
      rate_limit = True               HTTP 429 ``{"code":23000,"message":"Too Many Requests!"}`` past the
                                      budget of the request's bucket (the IP, or the L1 address when authenticated)
      default_tier = Tier.STANDARD    tier of every account not in ``tiers``
      tiers = {}                      account index → Tier, per simulated account (its L1 address)
      nonce_window = 16               nonces accepted ahead of the next one (0 = strict)
      nonce_lag_ms = 200              how long nextNonce keeps showing a nonce an accepted tx used
      history = True                  accountOrders/accountInactiveOrders list only the last ``active_history``
                                      active and ``inactive_history`` inactive orders of the last ``history_secs``
      active_history = 10000
      inactive_history = 1000
      history_secs = 86400
      reserve_api_keys = True         refuse txs and key registrations for indexes below RESERVED_API_KEYS
    """

    rate_limit: bool = True
    default_tier: Tier = Tier.STANDARD
    tiers: dict[int, Tier] = field(default_factory=dict)
    nonce_window: int = 16
    nonce_lag_ms: float = 200.0
    history: bool = True
    active_history: int = 10_000
    inactive_history: int = 1_000
    history_secs: float = 86_400.0
    reserve_api_keys: bool = True

    def __post_init__(self) -> None:
        if self.nonce_window < 0 or self.nonce_lag_ms < 0 or self.history_secs <= 0:
            raise ValueError("lighter rules: nonce_window >= 0, nonce_lag_ms >= 0, history_secs > 0")

    def __hash__(self) -> int:  # frozen, but ``tiers`` is a dict: hash its items
        return hash((self.rate_limit, self.default_tier, tuple(sorted(self.tiers.items())), self.nonce_window,
                     self.nonce_lag_ms, self.history, self.active_history, self.inactive_history,
                     self.history_secs, self.reserve_api_keys))

    def tier(self, account: int) -> Tier:
        return self.tiers.get(account, self.default_tier)

    @classmethod
    def easy(cls) -> LighterRules:
        """No rate limit and no nextNonce lag: for REST-only tests (their polls alone would spend a
        Standard budget) and the latency bench (100 cycles back to back, past any tier)."""
        return cls(rate_limit=False, nonce_lag_ms=0.0)


class _Window:
    """(time, weight) hits of one bucket over the last WINDOW_SECS."""

    def __init__(self) -> None:
        self.hits: deque[tuple[float, int, str]] = deque()

    def spent(self, now: float, endpoint: str | None = None) -> tuple[int, int]:
        """(total weight, hits of ``endpoint``) in the window ending at ``now``."""
        while self.hits and self.hits[0][0] <= now - WINDOW_SECS:
            self.hits.popleft()
        total = sum(w for _, w, _ in self.hits)
        return total, sum(1 for _, _, e in self.hits if e == endpoint)


class RateLimiter:
    """The documented budgets per bucket; a refused request does not count (the docs' cooldown is
    one endpoint's weight, ``weight/(total/60)`` s, so a refusal does not extend it; UNCONFIRMED)."""

    def __init__(self, rules: LighterRules, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def allow(self, bucket: str, tier: Tier, endpoint: str) -> bool:
        """Count one ``endpoint`` request against ``bucket`` (``ip:…`` or ``l1:…``) if it fits."""
        now = self.clock()
        window = self._windows.setdefault(bucket, _Window())
        weight = WEIGHTS.get(endpoint, DEFAULT_WEIGHT)
        total, same = window.spent(now, endpoint)
        if tier is Tier.PREMIUM:
            fits = total + weight <= PREMIUM_WEIGHT
            cost = weight
        else:
            # Unweighted, but "whenever premium/weight < 60, the former limit is applied" (trades: 40).
            fits = total + 1 <= STANDARD_REQUESTS and same + 1 <= PREMIUM_WEIGHT // weight
            cost = 1
        if fits:
            window.hits.append((now, cost, endpoint))
        return fits

    def reset(self) -> int:
        """Forget every bucket's hits (a fresh minute); the number of buckets dropped."""
        dropped = len(self._windows)
        self._windows.clear()
        return dropped

    def allow_send(self, l1: str, tier: Tier) -> bool:
        """sendTx/sendTxBatch: Premium's own 4000/min bucket at the L1 address, Standard's 60 (docs)."""
        if tier is Tier.PREMIUM:
            return self._count(f"send:{l1}", PREMIUM_SEND_TX)
        return self.allow(f"l1:{l1}", tier, "sendTx")

    def allow_tx_type(self, l1: str, tx_type: int) -> bool:
        """The per-user tx type limit (Default 40 a minute, every tier)."""
        return self._count(f"type:{l1}:{tx_type}", TX_TYPE_PER_MINUTE)

    def _count(self, bucket: str, limit: int) -> bool:
        now = self.clock()
        window = self._windows.setdefault(bucket, _Window())
        total, _ = window.spent(now)
        if total + 1 > limit:
            return False
        window.hits.append((now, 1, ""))
        return True
