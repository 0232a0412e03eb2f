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
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from core.config_schema import Role
from core.cycle_fields import Stage
from monitoring.alert_texts import AlertKind, format_cycle_started
from orchestrator.cycle.commands import Alert, Decision, EnterFirstLegs, StepName
from orchestrator.cycle.entry import enter
from orchestrator.cycle.planning import AccountSnapshot, CyclePlan, PlanRefused, plan_cycle
from orchestrator.cycle.report import not_started
from orchestrator.cycle.runner import Call, Opening, StepSpec
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


def decide_plan(state: CycleState, sized: Sized) -> Decision:
    """Record the plan and the rules, alert the start and launch the entry's first two legs. The
    store gives the entry legs their client id blocks (:func:`id_blocks`) and records their intents
    in the same write, before the legs are published."""
    plan, snaps = sized.plan, sized.snapshots
    l_rules = snaps[Role.L1].rules  # both Lighter roles trade one market
    planned = msgspec.structs.replace(state, plan=plan,
                                      rules={Role.BP: snaps[Role.BP].rules, Role.L1: l_rules, Role.L2: l_rules})
    start = Positions.of({role: plan.baselines.get(role.short, Decimal(0)) for role in ROLES})
    started = Alert(AlertKind.CYCLE_STARTED,
                    format_cycle_started(state.group.name, state.cycle_id, plan.direction.value, plan.bp_size))
    return Decision(state=planned, reading=("start", start), commands=(started, enter(planned, plan)),
                    result={"cycle_id": state.cycle_id, "plan": plan.to_json()})


def with_entry_ids(decision: Decision,
                   allocate: Callable[[CycleState, Mapping[LegName, int]], dict[LegName, list[int]]]) -> Decision:
    """``decision`` with the entry legs' client id blocks a store gave them (``allocate``: the blocks
    of :func:`id_blocks`, fresh), in the state and in the first two legs' orders; unchanged when it
    launches no first legs, or their ids are given already."""
    if not any(isinstance(c, EnterFirstLegs) and not c.entry.client_ids for c in decision.commands):
        return decision
    state = decision.state
    given = msgspec.structs.replace(state, client_ids=allocate(state, id_blocks(state)))
    plan = given.plan
    commands = tuple(enter(given, plan) if isinstance(c, EnterFirstLegs) and plan is not None else c
                     for c in decision.commands)
    return msgspec.structs.replace(decision, state=given, commands=commands)


def decide_start(state: CycleState, snapshots: Sequence[Mapping[str, Any]]) -> Decision:
    """The plan step: a cycle cancelled before any order, or one its snapshots refuse, ends not
    started (nothing sent); otherwise the plan and the first two legs."""
    if state.cancel_requested:
        return not_started(state, "cancelled before any order")
    sized = size(state, snapshots)
    if isinstance(sized, NotStarted):
        return not_started(state, sized.why)
    return decide_plan(state, sized)


def _plan(state: CycleState, now: float, call: Call) -> Decision:
    return decide_start(state, call.observed)


#: The plan acts while its cycle is planning, once (its claim): a duplicated delivery must not
#: allocate new ids and launch a second entry. A cancel before it ends the cycle not started.
STEPS: dict[StepName, StepSpec] = {
    StepName.PLAN: StepSpec(Opening((Stage.PLANNING,), label="plan", cancel_exits=False), _plan,
                            claim=lambda _: "plan_claimed_at"),
}
