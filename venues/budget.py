"""A sliding-window request budget kept in Redis, shared by every process and host of the bot.

A venue counts requests per account (or per IP) over a rolling window, whichever of our workers sent
them; a limiter in one process cannot see the others, so the count lives in Redis. Each bucket is a
ZSET of charges (score: the Redis server's time in µs; member ``"<seq>:<weight>"``), and one Lua
script checks and records a charge against several buckets at once, so a request the venue counts
in two places is either within both budgets or within neither.

The budget enforces ``floor(limit * headroom)`` per window; a :attr:`RequestPriority.READ` may fill
only ``floor(limit * read_share)`` of it, so polling never takes the units an exit order needs.
A request over budget waits (:meth:`RateBudget.acquire`); it fails only past its ``max_wait``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from venues.base import ReasonCode, VenueError

logger = logging.getLogger(__name__)

# Binary fractions: 90 * 0.7 is 62.99999…, so a bare floor(limit * share) can lose a unit.
_FLOOR_EPS = 1e-9
# Longest single sleep in acquire: a wait computed from one reading is re-checked at least this often.
_MAX_SLEEP_SECS = 1.0
# A retry landing a hair before the entry leaves (client and server clocks tick apart) sleeps this much more.
_SLEEP_PAD_SECS = 0.001

# Lua 5.1 turns a number into text with 14 digits, too few for µs since 1970 (16): every time goes
# to Redis through string.format('%d').
# KEYS: per bucket its ZSET then its sequence counter. ARGV: window_us, ttl_ms, then per bucket
# its cap and the weight to charge. Returns {0, 0} when charged in every bucket, else
# {µs until the worst bucket fits, that bucket's 1-based index} and charges nothing.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local n = #KEYS / 2
local worst, worst_index = 0, 0
for i = 1, n do
  local key = KEYS[2 * i - 1]
  local cap = tonumber(ARGV[1 + 2 * i])
  local weight = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - window))
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local used = 0
  for j = 1, #entries, 2 do
    used = used + tonumber(string.match(entries[j], ':(%d+)$'))
  end
  local excess = used + weight - cap
  if excess > 0 then
    -- Oldest first: the bucket fits once enough of its weight has left the window.
    local wait = window
    local freed = 0
    for j = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
      if freed >= excess then
        wait = tonumber(entries[j + 1]) + window - now
        break
      end
    end
    if wait < 1 then wait = 1 end
    if wait > worst then worst, worst_index = wait, i end
  end
end
if worst > 0 then return {worst, worst_index} end
for i = 1, n do
  local key, seq_key = KEYS[2 * i - 1], KEYS[2 * i]
  local seq = redis.call('INCR', seq_key)
  redis.call('ZADD', key, string.format('%d', now), string.format('%d:%s', seq, ARGV[2 + 2 * i]))
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', seq_key, ttl)
end
return {0, 0}
"""

# KEYS: the buckets' ZSETs. ARGV: window_us. Returns the units each holds inside the window.
_USED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cutoff = now - tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local used = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, string.format('(%d', cutoff), '+inf')) do
    used = used + tonumber(string.match(member, ':(%d+)$'))
  end
  out[i] = used
end
return out
"""


class RequestPriority(Enum):
    """How much of a bucket a request may use."""

    #: Orders, cancels and exit orders: may use the whole budget (``floor(limit * headroom)``).
    ORDER = "order"
    #: Reads and monitoring: stop at ``floor(limit * read_share)``, leaving a reserve so polling
    #: never starves an exit order.
    READ = "read"


@dataclass(frozen=True)
class BudgetBucket:
    """One counted budget, as the venue keeps it.

    Fields (no defaults):
      key     the bucket's name, unique per venue and owner (e.g. ``lighter:l1:<address>``); stored
              under the budget's ``key_prefix``
      limit   the venue's limit in units per window (requests, or weight)
    """

    key: str
    limit: int

    def __post_init__(self) -> None:
        if not self.key or self.limit < 1:
            raise ValueError(f"budget bucket: a key and a limit >= 1 (got {self.key!r}, {self.limit})")


class BudgetExhausted(VenueError):
    """A request could not fit its budget within its ``max_wait``; nothing was sent or charged."""

    def __init__(self, bucket_key: str, wait: float, max_wait: float) -> None:
        self.bucket_key = bucket_key
        self.wait = wait
        self.max_wait = max_wait
        super().__init__(ReasonCode.RATE_LIMITED,
                         f"rate budget {bucket_key} needs {wait:.3f}s more, past max_wait {max_wait:.3f}s")


class RateBudget:
    """Sliding-window budgets in Redis (see the module docstring).

    ``client`` is a sync ``redis.Redis``; ``window_secs`` (60.0) the venue's rolling window;
    ``read_share`` (0.8) the share of each limit READ requests may fill; ``headroom`` (0.95) the
    share of each limit the budget grants at all, so a skew between our count and the venue's never
    trips a 429; ``key_prefix`` ("xtb:budget:") goes before every bucket key.
    """

    def __init__(self, client: redis.Redis, window_secs: float = 60.0, read_share: float = 0.8,
                 headroom: float = 0.95, key_prefix: str = "xtb:budget:") -> None:
        if window_secs <= 0 or not 0 < read_share <= 1 or not 0 < headroom <= 1:
            raise ValueError("rate budget: window_secs > 0, 0 < read_share <= 1, 0 < headroom <= 1")
        self.client = client
        self.window_secs = window_secs
        self.read_share = read_share
        self.headroom = headroom
        self.key_prefix = key_prefix
        self._window_us = math.ceil(window_secs * 1_000_000)
        # Idle buckets vanish after two windows; any charge in them has left the window long before.
        self._ttl_ms = math.ceil(2 * window_secs * 1000)
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._used = client.register_script(_USED_LUA)

    def cap(self, bucket: BudgetBucket, priority: RequestPriority) -> int:
        """The units a request of ``priority`` may fill ``bucket`` to in one window."""
        order_cap = math.floor(bucket.limit * self.headroom + _FLOOR_EPS)
        if priority is RequestPriority.ORDER:
            return order_cap
        return min(order_cap, math.floor(bucket.limit * self.read_share + _FLOOR_EPS))

    def try_acquire(self, charges: Sequence[tuple[BudgetBucket, int]], priority: RequestPriority) -> float:
        """Charge every ``(bucket, weight)`` at once if all fit: 0.0; else charge none and return the
        seconds (> 0) until the worst bucket fits. A Redis failure is logged and returns 0.0."""
        return self._try(charges, priority)[0]

    async def acquire(self, charges: Sequence[tuple[BudgetBucket, int]], priority: RequestPriority, *,
                      max_wait: float) -> float:
        """Wait until every charge fits, charge it and return the seconds waited.

        Raises :class:`BudgetExhausted` (nothing charged) as soon as the charge cannot fit within
        ``max_wait`` seconds of the call.
        """
        started = time.monotonic()
        while True:
            # On the loop, not in a thread: one local round trip is shorter than a thread hop on the
            # order path. The client must fail fast (redis_conn.budget_client) so a dead Redis cannot stall the loop.
            wait, bucket_key = self._try(charges, priority)
            waited = time.monotonic() - started
            if wait == 0:
                return waited
            if waited + wait > max_wait:
                raise BudgetExhausted(bucket_key, wait, max_wait)
            await asyncio.sleep(min(wait + _SLEEP_PAD_SECS, _MAX_SLEEP_SECS))

    def used(self, bucket: BudgetBucket) -> int:
        """Units charged to ``bucket`` in the current window."""
        return int(self.snapshot([bucket])[bucket.key]["used"])

    def snapshot(self, buckets: Sequence[BudgetBucket]) -> dict[str, dict[str, int]]:
        """``{key: {"used": units in the window, "limit": the venue's limit}}``, in one round trip.

        Unlike :meth:`try_acquire` a Redis failure raises: a status display should say it cannot read.
        """
        if not buckets:
            return {}
        used = self._used(keys=[self._key(b) for b in buckets], args=[self._window_us])
        return {b.key: {"used": int(n), "limit": b.limit} for b, n in zip(buckets, used, strict=True)}

    def _key(self, bucket: BudgetBucket) -> str:
        return self.key_prefix + bucket.key

    def _try(self, charges: Sequence[tuple[BudgetBucket, int]], priority: RequestPriority) -> tuple[float, str]:
        merged: dict[str, tuple[BudgetBucket, int]] = {}
        for bucket, weight in charges:
            # One request charged twice to one bucket must be checked as its total, not twice apart.
            _, before = merged.get(bucket.key, (bucket, 0))
            merged[bucket.key] = (bucket, before + weight)
        if not merged:
            return 0.0, ""
        ordered = list(merged.values())
        keys: list[str] = []
        args: list[Any] = [self._window_us, self._ttl_ms]
        for bucket, weight in ordered:
            cap = self.cap(bucket, priority)
            if not 1 <= weight <= cap:
                # It would wait forever: a caller's mistake, not a budget state.
                raise ValueError(f"rate budget {bucket.key}: weight {weight} outside 1..{cap} ({priority.name})")
            keys += [self._key(bucket), self._key(bucket) + ":seq"]
            args += [cap, weight]
        try:
            wait_us, index = self._acquire(keys=keys, args=args)
        except redis.RedisError as exc:
            # Fail open: the venue still enforces its own limit (a 429 the connector already
            # handles), while refusing here would stop a trading bot, exits included, because its
            # limiter's store hiccupped.
            logger.warning("rate budget: Redis failed (%s: %s); %s sent unbudgeted",
                           type(exc).__name__, exc, ", ".join(merged))
            return 0.0, ""
        if int(wait_us) == 0:
            return 0.0, ""
        return int(wait_us) / 1_000_000, ordered[int(index) - 1][0].key
