"""The armed hedge's side of the hand-off: prepare everything before the entry fills, then wait.

``xtb_tasks.execution.handoff`` is the wire between the two legs (announce, await); this module is what the
hedge's submit task does with it (``xtb.venue.submit_market_order`` with ``armed=True``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from decimal import Decimal
from typing import Any

from core.client_ids import IntentStatus, record_intent
from core.cycle_record import CycleRecord, grace_deadline
from core.durability import durable_execute
from core.legs import Leg, LegState
from orchestrator.cycle.entry import mirror_quantity
from venues.base import VenueConnector, VenueError
from xtb_tasks.execution.handoff import EntryNotFilled, await_outcome
from xtb_tasks.execution.venue_ops import (
    LegFailed,
    OrderRequest,
    Prefetch,
    first_unused_client_id,
    leg_in_flight,
)

log = logging.getLogger(__name__)


def arm_hedge(client: Any, connector: VenueConnector, request: OrderRequest, fetched: Prefetch,
              expected: str | None) -> Prefetch:
    """Everything the hedge can do before the fill: rules, book, the signed order and its intent.

    The client id recorded as ARMED (sent with no further write when the fill matches
    ``expected``) comes back as ``armed_id``; without an expected size only the market is primed.
    """
    client_id = first_unused_client_id(request, fetched)
    if expected is None or client_id is None:
        connector.prime_market_order(request.symbol)
        return fetched
    try:
        quantity = mirror_quantity(connector.market_rules(request.symbol), Decimal(expected))
    except VenueError as exc:
        log.warning("account=%s cycle=%s leg=%s not primed: %s", request.account, request.cycle_id, request.leg, exc)
        return fetched
    connector.prime_market_order(request.symbol, client_id=client_id, side=request.side, quantity=quantity,
                                 reduce_only=request.reduce_only, max_slippage=request.max_slippage)
    intent: dict[str, Any] = {"status": IntentStatus.ARMED.value, "symbol": request.symbol, "side": request.side.value,
              "quantity": str(quantity), "reduce_only": request.reduce_only, "cycle_id": request.cycle_id or "",
              "leg": request.leg or ""}
    # The leg is on record as in flight from now on, so an exit's fill ledger never counts it as
    # flat while the presigned order may be on its way.
    _record_armed(client, request, intent, leg_in_flight(request, client_id, quantity, LegState.ARMED))
    return replace(fetched, intents={**fetched.intents, client_id: intent}, armed_id=client_id)


def _record_armed(client: Any, request: OrderRequest, intent: dict[str, Any], leg: Leg) -> None:
    pipe = client.pipeline(transaction=False)
    record_intent(pipe, request.account, leg.client_id, **intent)
    if request.cycle_id and request.leg:
        CycleRecord(pipe, request.cycle_id).record_leg(request.leg, leg)
    # The presigned order leaves with no write before it, so this is its intent's last chance to
    # reach a replica.
    durable_execute(pipe, client, f"armed intent of {request.leg} client id {leg.client_id}", required=True)


def await_entry(client: Any, request: OrderRequest, fetched: Prefetch) -> Leg:
    """The entry's leg once it filled; raises (and records the armed id as never sent) when it
    failed, was cancelled or did not finish in time."""
    cycle_id, entry_leg = request.cycle_id, request.quantity_from_leg
    if not cycle_id or not entry_leg:
        raise ValueError(f"{request.leg}: an armed hedge needs its cycle id and the leg it hedges")
    try:
        entry = await_outcome(client, cycle_id, entry_leg, deadline=grace_deadline())
        if entry is None or entry.filled <= 0:
            raise LegFailed(f"{request.quantity_from_leg} filled nothing; {request.leg} has nothing to hedge")
    except (EntryNotFilled, LegFailed) as exc:
        armed_id = fetched.armed_id
        if armed_id is not None:  # never sent: no later run should look it up, the ledger may count it
            quantity = Decimal(fetched.intents[armed_id]["quantity"])
            _record_armed(client, request, {"status": IntentStatus.REJECTED.value, "reason": str(exc)},
                          leg_in_flight(request, armed_id, quantity, LegState.FAILED, reason=str(exc)[:200]))
        raise
    return entry
