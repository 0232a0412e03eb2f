"""The cycle's Redis hash layout: :class:`~orchestrator.cycle.state.CycleState` from a record's decoded
fields, and the fields a step's decision changed. Only the store (``orchestrator.store``) uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import msgspec

from core.config import GroupConfig, HedgeParams, Role
from core.cycle_fields import Outcome
from core.cycle_record import ExitReason, Stage, positions_fields
from core.exposure import NetExposure
from core.legs import parse_leg
from orchestrator.cycle.commands import (
    Finish,
)
from orchestrator.cycle.planning import CyclePlan
from orchestrator.cycle.state import (
    ROLES,
    CycleState,
    Event,
    ExitProgress,
    LegName,
    LoopState,
    Positions,
)
from venues.base import MarketRules


def positions_json(positions: Positions, baselines: Positions, now: float) -> dict[str, Any]:
    """A reading as the record keeps it: each role's position, the own net (None while unknown), when."""
    def text(x: Decimal | None) -> str | None:
        return None if x is None else str(x)

    return {"BP": text(positions.bp), "L1": text(positions.l1), "L2": text(positions.l2),
            "net": text(positions.own(baselines).net), "read_at": now}


def _positions_of(data: Mapping[str, Any] | None) -> Positions | None:
    if not data:
        return None
    return Positions.of({role: None if data.get(role.short) in (None, "") else Decimal(str(data[role.short]))
                         for role in ROLES})


def state_from_fields(cycle_id: str, fields: Mapping[str, Any], cancel: bool) -> CycleState:
    """The typed state of a record's decoded fields."""
    bp_rules, l_rules = fields.get("bp_rules"), fields.get("l_rules")
    rules: dict[Role, MarketRules] = {}
    if bp_rules:
        rules[Role.BP] = MarketRules.from_json(bp_rules)
    if l_rules:
        rules[Role.L1] = rules[Role.L2] = MarketRules.from_json(l_rules)
    legs = {name[4:]: leg for name, value in fields.items()
            if name.startswith("leg:") and (leg := parse_leg(value)) is not None}
    streaks = fields.get("zero_streaks") or {}
    loop = LoopState(
        step_seq=int(fields.get("step_seq") or 0), rebalances=int(fields.get("rebalances") or 0),
        monitoring_started_at=fields.get("monitoring_started_at"),
        zero_streaks={role: int(streaks.get(role.short) or 0) for role in (Role.L1, Role.L2)},
        unknown_reads=int(fields.get("unknown_reads") or 0),
        exposure=NetExposure.from_json(fields.get("net_exposure")),
        last_read=_positions_of(fields.get("positions")))
    plan = fields.get("plan")
    reason = fields.get("reason")
    return CycleState(
        cycle_id=cycle_id, group=msgspec.convert(fields["config"], GroupConfig),
        params=msgspec.convert(fields["params"], HedgeParams), stage=Stage(fields["stage"]),
        cancel_requested=cancel, created_at=float(fields.get("created_at") or 0.0),
        plan=None if not plan else msgspec.convert(plan, CyclePlan), rules=rules, legs=legs, loop=loop,
        exit_attempts=int(fields.get("exit_attempts") or 0), exit_reason=_exit_reason(reason),
        events=tuple(Event(float(e.get("t") or 0), str(e.get("text") or "")) for e in fields.get("events") or ()),
        client_ids=client_ids_of(fields.get("client_ids")), exit=exit_progress(fields),
        overrides=dict(fields.get("overrides") or {}), cycle_index=int(fields.get("cycle_index") or 0),
        error=fields.get("error") or None)


# ---- the entry: the plan, the market rules and the entry legs' client id blocks ----
def client_ids_of(data: Mapping[str, Any] | None) -> dict[LegName, list[int]]:
    """The entry legs' id blocks as recorded; a name that is no entry leg is not the cycle's."""
    names = {leg.value for leg in LegName}
    return {LegName(name): [int(i) for i in ids] for name, ids in (data or {}).items() if name in names}


def entry_fields(before: CycleState, after: CycleState) -> dict[str, Any]:
    """The record fields of the plan, the rules and the client ids that changed."""
    out: dict[str, Any] = {}
    if after.plan is not None and after.plan != before.plan:
        out["plan"] = after.plan.to_json()
    if after.rules != before.rules:
        if Role.BP in after.rules:
            out["bp_rules"] = after.rules[Role.BP].to_json()
        if Role.L1 in after.rules:
            out["l_rules"] = after.rules[Role.L1].to_json()
            out["l_step"] = str(after.rules[Role.L1].step_size)
    if after.client_ids != before.client_ids:
        out["client_ids"] = {leg.value: ids for leg, ids in after.client_ids.items()}
    return out


def new_client_ids(before: CycleState, after: CycleState) -> list[tuple[str, int, LegName]]:
    """(account, client id, leg) of every id the step gave the entry legs: each needs its intent."""
    out: list[tuple[str, int, LegName]] = []
    for leg, ids in after.client_ids.items():
        known = set(before.client_ids.get(leg, ()))
        out.extend((after.group.account_for(leg.role), i, leg) for i in ids if i not in known)
    return out


def loop_fields(before: LoopState, after: LoopState, baselines: Positions, now: float) -> dict[str, Any]:
    """The record fields of the loop state that changed."""
    out: dict[str, Any] = {}
    if after.step_seq != before.step_seq:
        out["step_seq"] = after.step_seq
    if after.rebalances != before.rebalances:
        out["rebalances"] = after.rebalances
    if after.monitoring_started_at != before.monitoring_started_at and after.monitoring_started_at is not None:
        out["monitoring_started_at"] = after.monitoring_started_at
    if after.zero_streaks != before.zero_streaks:
        out["zero_streaks"] = {role.short: n for role, n in after.zero_streaks.items()}
    if after.unknown_reads != before.unknown_reads:
        out["unknown_reads"] = after.unknown_reads
    if after.exposure != before.exposure:
        out["net_exposure"] = after.exposure.to_json()
    return out


# ---- the emergency exit's fields ----

#: Client ids per exit order: a rejected send moves on to the spare.
IDS_PER_ORDER = 2


def _exit_reason(value: Any) -> ExitReason | None:
    # The record's ``reason`` also holds ``not_started``, which is no exit's reason.
    return ExitReason(value) if value in {r.value for r in ExitReason} else None


def exit_progress(fields: Mapping[str, Any]) -> ExitProgress:
    """The exit's progress from the record's ``exit_*`` fields."""
    worst = fields.get("exit_worst_net")
    at = fields.get("exit_worst_net_at")
    since, paged = fields.get("exit_unresolved_since"), fields.get("exit_paged_at")
    doubted = fields.get("exit_flat_doubted_since")
    return ExitProgress(worst_net=None if worst in (None, "") else Decimal(str(worst)),
                        worst_net_at=None if at in (None, "") else float(at),
                        orders=int(fields.get("exit_orders") or 0),
                        unresolved_since=None if since in (None, "") else float(since),
                        paged_at=None if paged in (None, "") else float(paged),
                        flat_doubted_since=float(doubted) if doubted else None)


def exit_fields(before: CycleState, after: CycleState) -> dict[str, Any]:
    """The record fields of the exit's state that changed: the attempt, the reason it entered with,
    its latest read (kept under ``exit_<key>`` and as the latest) and the worst net so far."""
    out: dict[str, Any] = {}
    if after.exit_attempts != before.exit_attempts:
        out["exit_attempts"] = after.exit_attempts
    entered = after.stage is Stage.EMERGENCY_EXIT and before.stage is not Stage.EMERGENCY_EXIT
    if after.exit_reason is not None and (entered or after.exit_reason != before.exit_reason):
        out["reason"] = after.exit_reason.value
    progress = after.exit
    if progress.worst_net is not None and progress.worst_net != before.exit.worst_net:
        out.update(exit_worst_net=str(progress.worst_net), exit_worst_net_at=progress.worst_net_at)
    if progress.unresolved_since != before.exit.unresolved_since:
        out["exit_unresolved_since"] = progress.unresolved_since
    if progress.paged_at != before.exit.paged_at:
        out["exit_paged_at"] = progress.paged_at
    if progress.flat_doubted_since != before.exit.flat_doubted_since:
        out["exit_flat_doubted_since"] = progress.flat_doubted_since or 0  # 0: no doubt (any more)
    read = progress.last_read
    if read is not None and read != before.exit.last_read:
        shown = {role.short: str(read.positions.get(role)) for role in ROLES}
        out.update(positions_fields(f"exit_{read.key}", {**shown, "net": str(read.net), "read_at": read.at}))
    return out


def finish_fields(finish: Finish, now: float) -> dict[str, Any]:
    """The record fields of a cycle's end."""
    out: dict[str, Any] = {"outcome": finish.outcome.value, "reason": finish.reason, "finished_at": now}
    if finish.claim is not None:  # an exit's end: what it read and what it made
        out.update(positions_fields("exit", dict(finish.finals)))
        out.update(pnl=dict(finish.pnl), dust=dict(finish.dust),
                   net_delta="0" if finish.outcome is Outcome.FLAT else "")
    return out
