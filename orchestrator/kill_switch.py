"""The kill switch: a group whose exit ended ``unresolved`` stays stopped until an operator resumes it.

An unresolved exit means the cycle could not confirm its three accounts flat; starting the next
cycle on top of that (beat does it a second later) would stack a new position on an open one.
``finish_exit`` stops the group (``xtb:group:<group>:stopped``, no TTL) before it
releases the group lock; ``xtb.hedge.start_cycle`` refuses while the stop is there, whoever
triggers it (CLI, beat, Flower); ``xtb group resume G`` clears it only once fresh reads of the
group's three accounts all say flat.

The stop and the decision are here; reading the venues is the caller's (the CLI reads through the
account workers, as ``xtb position`` does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

import redis

from core import keys
from orchestrator.cycle.start import GroupStop

#: Deletes the stop only if it still names the cycle the operator resumed (not a newer stop).
_CLEAR_IF_CYCLE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, stop = pcall(cjson.decode, raw)
if ok and type(stop) == 'table' and stop['cycle_id'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return -1
"""


def stop_group(client: redis.Redis | redis.client.Pipeline, group: str, cycle_id: str, reason: str) -> GroupStop:
    """Stop ``group`` because ``cycle_id`` turned unresolved (no TTL: only an operator clears it)."""
    stop = GroupStop(group, cycle_id, reason, time.time())
    client.set(keys.group_stopped(group), json.dumps(stop.to_json()))
    return stop


def group_stop(client: redis.Redis, group: str) -> GroupStop | None:
    raw = cast(str | None, client.get(keys.group_stopped(group)))
    return None if raw is None else GroupStop.from_json(group, raw)


def clear_stop(client: redis.Redis, stop: GroupStop) -> bool:
    """Clear ``stop`` if it is still the group's stop; False when another cycle stopped it since."""
    return int(cast(int, client.eval(_CLEAR_IF_CYCLE, 1, keys.group_stopped(stop.group), stop.cycle_id))) >= 0


@dataclass(frozen=True)
class AccountReading:
    """One account's fresh position for the resume check; ``quantity`` None when it could not be read."""

    role: str
    account: str
    quantity: Decimal | None
    error: str = ""
    #: The venue's smallest order on the account's market (its step or minimum size, the larger);
    #: a position below it is dust no order can close. None when the rules could not be read.
    smallest_order: Decimal | None = None

    def describe(self) -> str:
        if self.quantity is None:
            return f"{self.role} {self.account} unknown ({self.error or 'no reading'})"
        return f"{self.role} {self.account} {self.quantity.normalize() if self.quantity else 0}"


def resume_blockers(readings: list[AccountReading]) -> list[AccountReading]:
    """The accounts that keep a stopped group stopped: any position that is not zero, or unknown
    (unknown is not zero). Dust below the venue's smallest order is no blocker: no order, the
    bot's or an operator's, can close it, and the next cycle carries it as its baseline. An empty
    list, from at least one reading, means the group may resume."""
    return [r for r in readings if r.quantity is None or (
        r.quantity != 0 and (r.smallest_order is None or abs(r.quantity) >= r.smallest_order))]
