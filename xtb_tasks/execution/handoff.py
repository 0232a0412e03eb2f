"""The armed hedge: the hedge leg's task starts alongside the entry and sends once the entry fills.

The time between the Backpack fill and the Lighter1 order is unhedged exposure. As a plain chain
step, the hedge would pay a whole Celery hop for it (result store, publish, BRPOP, hand-over to
the pool child, lease, reads) plus a venue read for the price. Armed, the hedge task is already
running on its own worker, holding its account lease, with the market rules and the book read,
and blocks on a Redis list. The entry task pushes its final outcome (the fill, or a failure)
to that list in the same round trip as its leg record, so the hand-off is one Redis wake-up,
the intent write, the signature and the send.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from core import keys
from core.cycle_record import CycleRecord
from core.errors import XtbError
from core.legs import Leg, parse_leg

log = logging.getLogger(__name__)

#: The outcome list outlives any wait for it; a late hedge (redelivered task) still finds it.
OUTCOME_TTL_SECS = 3600
#: Between slices of the blocking wait the hedge looks for a cancel or a missed announcement.
WAIT_SLICE_SECS = 1.0


class EntryNotFilled(XtbError, RuntimeError):
    """The entry leg failed, was cancelled or did not finish before the hedge's deadline."""


def announce_outcome(pipe: Any, cycle_id: str, leg_name: str, leg: Leg) -> None:
    """Queue the leg's final outcome for its armed hedge on ``pipe`` (a pipeline or a client)."""
    _push(pipe, cycle_id, leg_name, leg.to_json())


def _push(pipe: Any, cycle_id: str, leg_name: str, outcome: dict[str, Any]) -> None:
    key = keys.leg_outcome(cycle_id, leg_name)
    pipe.rpush(key, json.dumps(outcome))
    pipe.expire(key, OUTCOME_TTL_SECS)


def announce_failure(client: redis.Redis, cycle_id: str, leg: str, reason: str) -> None:
    """The entry will not fill: release its armed hedge now instead of at its deadline."""
    pipe = client.pipeline(transaction=False)
    # Not a leg: the hedge reads "failed" (no account) as the entry's refusal to fill.
    _push(pipe, cycle_id, leg, {"filled": "0", "state": "failed", "reason": reason[:300]})
    pipe.execute()
    log.info("cycle=%s leg=%s announced failure to its hedge: %s", cycle_id, leg, reason[:200])


def await_outcome(client: redis.Redis, cycle_id: str, leg: str, deadline: float) -> Leg | None:
    """Block until ``leg``'s outcome is announced: its settled leg, or None when the entry
    announced that it will not fill."""
    key = keys.leg_outcome(cycle_id, leg)
    record = CycleRecord(client, cycle_id)
    while True:
        popped = client.blpop([key], timeout=WAIT_SLICE_SECS)
        if popped:
            return parse_leg(json.loads(popped[1]))
        if record.cancel_requested():
            raise EntryNotFilled(f"cycle {cycle_id} was cancelled while waiting for {leg}")
        recorded = record.leg(leg)
        if recorded is not None and recorded.settled:
            return recorded
        if time.time() >= deadline:
            raise EntryNotFilled(f"{leg} of cycle {cycle_id} not final by the hedge's deadline")
