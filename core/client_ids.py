"""Client order ids allocated atomically in Redis, and the intent recorded behind each one.

``xtb:coi:<account>`` is incremented by a Lua script that seeds a missing counter from the
clock (so a new or wiped Redis never repeats ids used before, as the original seeded its
in-memory sequence) and wraps within the venue's range. The intent behind an id is written to
``xtb:intent:<account>:<id>`` before the submit task is published; the task moves it through
``planned → sending → done | rejected`` so a re-run knows whether the venue may have it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from enum import Enum
from typing import Any

import redis

from core import keys

BACKPACK_MAX_CLIENT_ID = 2**32 - 1
LIGHTER_MAX_CLIENT_ID = 2**48 - 1
INTENT_TTL_SECS = 30 * 86400

_ALLOCATE = """
local max = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], tonumber(ARGV[3]) % max)
end
local top = redis.call('INCRBY', KEYS[1], n)
if top > max then
  top = n
  redis.call('SET', KEYS[1], top)
end
return top
"""


class IntentStatus(str, Enum):
    """Where a client order id is in its life."""

    #: Allocated and recorded; no task has contacted the venue with it yet, or the venue refused it
    #: before executing it (a rate limit, a nonce out of order): it may be sent as it is.
    PLANNED = "planned"
    #: A task is about to send it or sent it without a recorded answer: look it up before resending.
    SENDING = "sending"
    #: An armed hedge recorded it before its entry filled and may send it with no further write;
    #: any other run treats it as SENDING (look it up first).
    ARMED = "armed"
    #: The venue answered; the outcome is recorded.
    DONE = "done"
    #: The venue refused it; it will never be sent again.
    REJECTED = "rejected"


def max_client_id(venue: str) -> int:
    return BACKPACK_MAX_CLIENT_ID if venue == "backpack" else LIGHTER_MAX_CLIENT_ID


def allocate_client_ids(client: redis.Redis, account: str, venue: str, count: int = 1) -> list[int]:
    """``count`` consecutive fresh ids for ``account`` (1 round trip)."""
    return allocate_id_blocks(client, [(account, venue, count)])[0]


def allocate_id_blocks(client: redis.Redis, wanted: Sequence[tuple[str, str, int]]) -> list[list[int]]:
    """Fresh ids for several ``(account, venue, count)`` at once, in 1 round trip."""
    pipe = client.pipeline(transaction=False)
    now_ms = int(time.time() * 1000)
    for account, venue, count in wanted:
        pipe.eval(_ALLOCATE, 1, keys.client_order_counter(account), max_client_id(venue), count, now_ms)
    return [list(range(int(top) - count + 1, int(top) + 1))
            for top, (_, _, count) in zip(pipe.execute(), wanted, strict=True)]


def record_intent(client: redis.Redis | Any, account: str, client_id: int, **fields: Any) -> None:
    """Write (or extend) the intent behind ``client_id``; ``client`` may be a pipeline."""
    values: dict[Any, Any] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    values.setdefault("status", IntentStatus.PLANNED.value)
    values["updated_at"] = str(time.time())
    key = keys.intent(account, client_id)
    client.hset(key, mapping=values)
    client.expire(key, INTENT_TTL_SECS)


def mark_intent(client: redis.Redis, account: str, client_id: int, status: IntentStatus, **fields: Any) -> None:
    record_intent(client, account, client_id, status=status.value, **fields)


def intent_age(intent: dict[str, str], now: float | None = None) -> float:
    """Seconds since ``intent`` (an intent hash as read) was last written; infinite when it carries no
    time (an intent that old, or never written, has no send that could still be in flight)."""
    written = intent.get("updated_at")
    return (time.time() if now is None else now) - float(written) if written else float("inf")


def intent_status(client: redis.Redis, account: str, client_id: int) -> IntentStatus | None:
    raw = client.hget(keys.intent(account, client_id), "status")
    return IntentStatus(raw) if raw else None
