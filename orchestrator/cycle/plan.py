"""Planning: size the cycle from the three accounts' fresh snapshots (``orchestrator.cycle.planning``), then
record the plan, the market rules and the entry's client ids, and launch the entry.

Invariants:
- A snapshot is matched to its role by the account it names, never by its place among the results;
  three snapshots of exactly the group's three accounts, or the cycle does not start.
- Nothing is sent unless the plan, the rules and every client id's intent are recorded first (the
  store writes them in the step's one write, on a replica, before the entry is published).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from core.config_schema import Role
from monitoring.alert_texts import AlertKind, format_cycle_started
from orchestrator.cycle.commands import Alert, Decision
from orchestrator.cycle.entry import enter
from orchestrator.cycle.planning import AccountSnapshot, CyclePlan, PlanRefused, plan_cycle
from orchestrator.cycle.state import ROLES, CycleState, LegName, Positions


class NotStarted(msgspec.Struct, frozen=True):
    """The cycle ends before any order: ``why`` in one line."""

    why: str


class Sized(msgspec.Struct, frozen=True):
    """A plan and the snapshots it was sized from, by role."""

    plan: CyclePlan
    snapshots: dict[Role, AccountSnapshot]


def snapshots_by_role(state: CycleState, snapshots: Sequence[Mapping[str, Any]]) -> dict[Role, AccountSnapshot] | NotStarted:
    """Each role's snapshot, keyed by the account it names."""
    by_account = {str(s.get("account")): s for s in snapshots}
    wanted = {role: state.group.account_for(role) for role in ROLES}
    if len(snapshots) != len(wanted) or set(by_account) != set(wanted.values()):
        return NotStarted(f"snapshots of {sorted(by_account)} do not match the group's accounts "
                          f"{sorted(wanted.values())}")
    return {role: AccountSnapshot.from_json(dict(by_account[account])) for role, account in wanted.items()}


def size(state: CycleState, snapshots: Sequence[Mapping[str, Any]], rng: random.Random | None = None) -> Sized | NotStarted:
    """The cycle's plan from the snapshots, or why it does not start."""
    snaps = snapshots_by_role(state, snapshots)
    if isinstance(snaps, NotStarted):
        return snaps
    try:
        return Sized(plan_cycle(state.group, state.params, snaps, rng), snaps)
    except PlanRefused as exc:
        return NotStarted(str(exc))


def id_blocks(state: CycleState) -> dict[LegName, int]:
    """The entry legs that retry on a block of client ids, each with its block's size (its attempts);
    a leg's ids are its role's account's (``LegName.role``)."""
    params = state.params
    return {LegName.BP_ENTRY: params.backpack_entry_max_attempts, LegName.L1_HEDGE: params.lighter_hedge_max_attempts,
            LegName.L2_ENTRY: params.lighter_hedge_max_attempts}


def decide_plan(state: CycleState, sized: Sized, client_ids: Mapping[LegName, list[int]]) -> Decision:
    """Record the plan, the rules and the client ids (``client_ids``: the blocks of :func:`id_blocks`),
    alert the start and launch the entry's first two legs."""
    plan, snaps = sized.plan, sized.snapshots
    l_rules = snaps[Role.L1].rules  # both Lighter roles trade one market
    planned = msgspec.structs.replace(state, plan=plan, client_ids=dict(client_ids),
                                      rules={Role.BP: snaps[Role.BP].rules, Role.L1: l_rules, Role.L2: l_rules})
    start = Positions.of({role: plan.baselines.get(role.short, Decimal(0)) for role in ROLES})
    started = Alert(AlertKind.CYCLE_STARTED,
                    format_cycle_started(state.group.name, state.cycle_id, plan.direction.value, plan.bp_size))
    return Decision(state=planned, reading=("start", start), commands=(started, enter(planned, plan)),
                    result={"cycle_id": state.cycle_id, "plan": plan.to_json()})
