"""Typed :class:`~orchestrator.cycle.state.CycleState` values for the decision tests (no Redis, no Celery)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from core.config import Direction, GroupConfig, HedgeParams, Role
from core.cycle_fields import Stage
from core.legs import Leg, LegState
from orchestrator.cycle.planning import CyclePlan
from orchestrator.cycle.state import CycleState, LegName, LoopState, Positions
from venues.base import MarketRules, Side

GROUP = GroupConfig(name="g", backpack="bp", lighter1="l1", lighter2="l2")
BP_RULES = MarketRules(symbol="ETH_USDC_PERP", tick_size=Decimal("0.01"), step_size=Decimal("0.01"),
                       min_quantity=Decimal("0.01"))
L_RULES = MarketRules(symbol="ETH", tick_size=Decimal("0.01"), step_size=Decimal("0.0001"),
                      min_quantity=Decimal("0.005"))
#: The accounts' readings as the venue tasks answer them.
ACCOUNTS = {Role.BP: "bp", Role.L1: "l1", Role.L2: "l2"}
RULES = {Role.BP: BP_RULES, Role.L1: L_RULES, Role.L2: L_RULES}
CLIENT_IDS = {LegName.BP_ENTRY: [11, 12, 13], LegName.L1_HEDGE: [21, 22, 23], LegName.L2_ENTRY: [31, 32, 33]}


def plan(*, bp_size: str = "1", wait_secs: float = 2.5, baselines: dict[str, Decimal] | None = None,
         direction: Direction = Direction.LONG_BACKPACK) -> CyclePlan:
    bp = Side.BUY if direction is Direction.LONG_BACKPACK else Side.SELL
    return CyclePlan(direction=direction, bp_side=bp, l1_side=bp.opposite, l2_side=bp, bp_size=Decimal(bp_size),
                     reference_price=Decimal("2000"), wait_secs=wait_secs,
                     baselines=baselines if baselines is not None else {"BP": Decimal(0), "L1": Decimal(0),
                                                                         "L2": Decimal(0)},
                     start_equity={"BP": Decimal(1000), "L1": Decimal(1000), "L2": Decimal(1000)})


def state(stage: Stage = Stage.PLANNING, *, params: dict[str, Any] | None = None, **fields: Any) -> CycleState:
    """A cycle of :data:`GROUP` in ``stage``; ``fields`` replace CycleState's defaults."""
    hedge = HedgeParams(**(params or {}))
    return CycleState(cycle_id="g-1", group=msgspec.structs.replace(GROUP, params=hedge) if params else GROUP,
                      params=hedge, stage=stage, **fields)


def planned(stage: Stage = Stage.L1_HEDGE, *, params: dict[str, Any] | None = None, **fields: Any) -> CycleState:
    """A cycle past planning: plan, rules and client ids recorded."""
    defaults: dict[str, Any] = {"plan": plan(), "rules": dict(RULES), "client_ids": dict(CLIENT_IDS)}
    return state(stage, params=params, **{**defaults, **fields})


def leg(account: str, side: Side, requested: str, filled: str, leg_state: LegState = LegState.FILLED,
        client_id: int = 1, reduce_only: bool = False) -> Leg:
    return Leg(account=account, symbol="ETH", side=side, client_id=client_id, requested=Decimal(requested),
               filled=Decimal(filled), state=leg_state, reduce_only=reduce_only,
               filled_at=1.0 if leg_state.final else None)


def rules(step: str = "0.001", min_qty: str | None = None, symbol: str = "ETH_USDC_PERP") -> MarketRules:
    return MarketRules(symbol=symbol, tick_size=Decimal("0.01"), step_size=Decimal(step),
                       min_quantity=Decimal(min_qty or step))


def cycle_state(*, stage: Stage = Stage.MONITORING, baselines: Positions | None = None, bp_step: str = "0.001",
                l_step: str = "0.0001", l_min: str | None = None, loop: LoopState | None = None,
                **params: Any) -> CycleState:
    """A cycle of group ``g`` in ``stage`` with the given baselines, rules and parameter overrides."""
    hedge = HedgeParams.from_mapping(params) if params else HedgeParams()
    base = baselines or Positions.zero()
    recorded = {role.short: base.get(role) or Decimal(0) for role in (Role.BP, Role.L1, Role.L2)}
    l_rules = rules(l_step, l_min, "ETH")
    return CycleState(cycle_id="c-1", group=msgspec.structs.replace(GROUP, params=hedge), params=hedge, stage=stage,
                      plan=plan(wait_secs=0.0, baselines=recorded),
                      rules={Role.BP: rules(bp_step), Role.L1: l_rules, Role.L2: l_rules}, loop=loop or LoopState())


def readings(bp: str | None, l1: str | None, l2: str | None) -> list[dict[str, Any]]:
    """Position reads as the venue tasks answer them (an unknown read carries no quantity)."""
    return [{"account": ACCOUNTS[role], "quantity": q} for role, q in zip((Role.BP, Role.L1, Role.L2), (bp, l1, l2),
                                                                        strict=True)]
