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
* an order the venue does not know is unknown, never "not sent", until ``ORDER_SETTLE_SECS``
  (``core.policies``) after its intent was last written; only then is it recorded as never placed
  (leg ``failed``, intent ``rejected``, so no run ever sends that client id);
* the client ids still unknown are returned: the caller treats the account's position as unknown.
"""

from __future__ import annotations

import json
import logging
import time
from typing import cast

import redis

from core import keys
from core.client_ids import intent_age
from core.cycle_record import CycleRecord
from core.legs import Leg, parse_leg
from core.policies import never_placed
from venues.base import VenueConnector, VenueError
from xtb_tasks.execution.venue_ops import OrderRequest, record_never_placed, record_outcome

log = logging.getLogger(__name__)


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
        try:
            found = connector.find_order(symbol, leg.client_id)
        except VenueError as exc:  # the lookup itself failed (the venue, the rate budget): still unknown
            log.warning("account=%s cycle=%s leg=%s client_id=%s lookup failed: %s", account, cycle_id, name,
                        leg.client_id, exc)
            unknown.append(leg.client_id)
            continue
        if found is not None and found.final:
            record_outcome(client, record, request, leg.client_id, found)
            continue
        age = intent_age(cast(dict[str, str], client.hgetall(keys.intent(account, leg.client_id))), now)
        if found is None and never_placed(age):
            record_never_placed(client, record, request, leg.client_id, leg.requested, age)
            continue
        log.warning("account=%s cycle=%s leg=%s client_id=%s outcome still unknown (%s, intent %.0f s old)",
                    account, cycle_id, name, leg.client_id, "open at the venue" if found else "not found", age)
        unknown.append(leg.client_id)
    return unknown
