"""The entry's balance (``orchestrator.entry_balance``): after the Backpack entry and the Lighter1
hedge, top Lighter1 up once or bring Backpack down to it, then publish the rest of the entry with
Lighter2 sized from Lighter1's actual fill (``canvas.entry_rest``)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from core.client_ids import allocate_client_ids, record_intent
from core.config import GroupConfig, HedgeParams, Role
from core.cycle_record import CycleRecord, ExitReason, Stage
from core.fencing import FENCE_FIELDS, Fence
from core.legs import Leg, parse_leg
from core.redis_conn import redis_client
from orchestrator import canvas, entry_balance
from orchestrator.entry_balance import mirror_quantity
from orchestrator.flow import bp_rules_from_record, group_and_params
from venues.base import MarketRules, Side
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.fences import enforce_fence
from xtb_tasks.worker.hedge_tasks import record_of, settings

log = logging.getLogger(__name__)

#: Rounds of the balance: a top-up, then a Backpack reduction, then the rest of the entry.
LAST_ROUND = 2
LEGS = ("bp_entry", "l1_hedge", "l1_topup", "bp_balance")
IN_FIRST_LEGS = Fence((Stage.BP_ENTRY, Stage.L1_HEDGE))


class EntryIncomplete(RuntimeError):
    """The first two legs are not both final when their group completed (never expected)."""


@app.task(name="xtb.hedge.balance_entry", ignore_result=True)
def balance_entry(*, cycle_id: str, balance_round: int = 0) -> dict[str, Any]:
    """One round of the entry's balance; once balanced, the rest of the entry."""
    record = record_of(cycle_id)
    view = record.view("group", "overrides", "plan", "client_ids", "bp_rules", "l_rules",
                       *(f"leg:{name}" for name in LEGS), *FENCE_FIELDS[1:])
    if view.stage in (Stage.EMERGENCY_EXIT, Stage.DONE):
        return {"skipped": True}
    enforce_fence(IN_FIRST_LEGS, view.fields, task="entry balance", cycle_id=cycle_id)
    if view.cancel_requested:
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=ExitReason.CANCELLED.value).apply_async()
        return {"cancelled": True}
    if not record.claim(f"entry_balance:{balance_round}"):
        return {"duplicate": True}
    grp, params = group_and_params(settings(), view)
    legs = {name: parse_leg(view.get(f"leg:{name}")) for name in LEGS}
    bp, l1 = legs["bp_entry"], legs["l1_hedge"]
    if bp is None or l1 is None or not (bp.state.final and l1.state.final):
        raise EntryIncomplete(f"cycle {cycle_id}: bp_entry or l1_hedge not final after their group completed")
    bp_held = bp.filled - _filled(legs["bp_balance"])
    l1_total = l1.filled + _filled(legs["l1_topup"])
    plan = view.get("plan") or {}
    l_rules = MarketRules.from_json(view.get("l_rules") or {})
    decision = (entry_balance.balance_entry(bp_held, l1_total, l_rules, bp_rules_from_record(view),
                                            topped_up=balance_round > 0)
                if balance_round < LAST_ROUND else entry_balance.EntryBalance())
    if decision.topup is not None:
        _send(record, grp, Role.L1, Side(plan["l1_side"]), decision.topup, "l1_topup", params, balance_round,
              f"Lighter1 filled {l1_total} of {mirror_quantity(l_rules, bp_held)}: topping up {decision.topup}")
        return {"topup": str(decision.topup)}
    if decision.bp_reduce is not None:
        _send(record, grp, Role.BP, Side(plan["bp_side"]).opposite, decision.bp_reduce, "bp_balance", params, balance_round,
              f"Lighter1 hedges {l1_total} of Backpack's {bp_held}: reducing Backpack by {decision.bp_reduce}")
        return {"bp_reduce": str(decision.bp_reduce)}
    l2_quantity = mirror_quantity(l_rules, l1_total)
    log.info("cycle=%s entry balanced: Backpack %s, Lighter1 %s; Lighter2 will enter %s", cycle_id, bp_held, l1_total,
             l2_quantity)
    canvas.entry_rest(grp, params, plan, cycle_id, (view.get("client_ids") or {})["l2_entry"],
                      l2_quantity).apply_async()
    return {"balanced": True, "l2_quantity": str(l2_quantity)}


def _filled(leg: Leg | None) -> Decimal:
    return leg.filled if leg is not None else Decimal(0)


def _send(record: CycleRecord, grp: GroupConfig, role: Role, side: Side, quantity: Decimal, leg: str,
          params: HedgeParams, balance_round: int, note: str) -> None:
    # The order's id and intent are recorded before its task is published (intent before action).
    account = grp.account_for(role)
    client = redis_client()
    client_id = allocate_client_ids(client, account, role.venue.value, 1)[0]
    record_intent(client, account, client_id, cycle_id=record.cycle_id, leg=leg)
    record.add_event(note)
    log.warning("cycle=%s account=%s %s", record.cycle_id, account, note)
    canvas.balance_order(grp, role, record.cycle_id, side.value, quantity, client_id, leg, params,
                         balance_round).apply_async()
