"""A cycle's orders whose outcome nobody recorded, settled from the venue's own record.

A venue task can die between sending an order and recording its answer: its worker loses the
broker and Celery terminates it, a host goes down, a time limit fires. The leg then stays in flight
(``armed`` or ``submitting``) in the cycle record, and the venue may still fill the order: a request
the venue holds past our timeout can fill after it. Until the outcome is known the account's
position can move by that order at any moment, so an exit that read the account and found it flat
would be trusting a read the order can still change.

Invariants kept here (the exit's reads call :func:`settle_unknown_orders` on the account's own
queue, so no task of the account runs beside it):

* an order the venue knows is recorded with the venue's outcome (intent and leg), as the task that
  sent it would have recorded it;
* an order the venue does not know is unknown, never "not sent", until ``ORDER_SETTLE_SECS`` after
  its intent was last written; only then is it recorded as never placed (leg ``failed``, intent
  ``rejected``, so no run ever sends that client id);
* the client ids still unknown are returned: the caller treats the account's position as unknown.
"""

from __future__ import annotations

import json
import logging
import time
from typing import cast

import redis

from core import keys
from core.client_ids import IntentStatus, mark_intent
from core.cycle_record import CycleRecord
from core.legs import Leg, LegState, parse_leg
from venues.base import VenueConnector
from xtb_tasks.execution.venue_ops import OrderRequest, record_outcome

log = logging.getLogger(__name__)

#: An order the venue has no record of this long after its intent was last written is taken as never
#: placed: twice the venues' request timeout (10 s), and past Backpack's default signature window
#: (5 s), after which the venue refuses the request. Short enough that an exit still in its first
#: attempt (``exit_max_steps`` reads at least ``lighter_retry_delay_secs`` apart) gets past it.
ORDER_SETTLE_SECS = 20.0


def unsettled_legs(client: redis.Redis, cycle_id: str, account: str) -> dict[str, Leg]:
    """The cycle's legs on ``account`` whose order is in flight (by leg name)."""
    raw = cast(dict[str, str], client.hgetall(keys.cycle(cycle_id)))
    legs: dict[str, Leg] = {}
    for name, value in raw.items():
        if not name.startswith("leg:"):
            continue
        leg = parse_leg(json.loads(value))
        if leg is not None and leg.account == account and not leg.state.final:
            legs[name.removeprefix("leg:")] = leg
    return legs


def settle_unknown_orders(client: redis.Redis, connector: VenueConnector, account: str, symbol: str,
                          cycle_id: str, *, now: float | None = None) -> list[int]:
    """Look up every in-flight order of the cycle on ``account``; record what the venue answers and
    return the client ids whose outcome is still unknown (see the module docstring)."""
    now = time.time() if now is None else now
    record = CycleRecord(client, cycle_id)
    unknown: list[int] = []
    for name, leg in unsettled_legs(client, cycle_id, account).items():
        request = OrderRequest(account, symbol, leg.side, (leg.client_id,), leg.requested,
                               reduce_only=leg.reduce_only, cycle_id=cycle_id, leg=name)
        found = connector.find_order(symbol, leg.client_id)
        if found is not None and found.final:
            record_outcome(client, record, request, leg.client_id, found)
            continue
        written = client.hget(keys.intent(account, leg.client_id), "updated_at")
        age = now - float(cast(str, written)) if written else ORDER_SETTLE_SECS
        if found is None and age >= ORDER_SETTLE_SECS:
            never = Leg.in_flight(account, symbol, leg.side, leg.client_id, leg.requested, LegState.FAILED,
                                  reason=f"not at the venue {age:.0f} s after its intent: never placed")
            mark_intent(client, account, leg.client_id, IntentStatus.REJECTED, reason=never.reason or "")
            record.record_leg(name, never)
            log.warning("account=%s cycle=%s leg=%s client_id=%s %s", account, cycle_id, name, leg.client_id,
                        never.reason)
            continue
        log.warning("account=%s cycle=%s leg=%s client_id=%s outcome still unknown (%s, intent %.0f s old)",
                    account, cycle_id, name, leg.client_id, "open at the venue" if found else "not found", age)
        unknown.append(leg.client_id)
    return unknown
