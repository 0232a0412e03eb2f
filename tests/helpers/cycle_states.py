"""Typed cycle states for the decision tests: a group, its rules and a plan, overridable per test."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from core.config import Direction, GroupConfig, HedgeParams, Role
from core.cycle_fields import Stage
from orchestrator.cycle.state import CycleState, LoopState, Positions
from orchestrator.planning import CyclePlan
from venues.base import MarketRules, Side

GROUP = GroupConfig(name="g", backpack="bp", lighter1="l1", lighter2="l2", params=HedgeParams())
#: The accounts' readings as the venue tasks answer them.
ACCOUNTS = {Role.BP: "bp", Role.L1: "l1", Role.L2: "l2"}


def rules(step: str = "0.001", min_qty: str | None = None, symbol: str = "ETH_USDC_PERP") -> MarketRules:
    return MarketRules(symbol=symbol, tick_size=Decimal("0.01"), step_size=Decimal(step),
                       min_quantity=Decimal(min_qty or step))


def plan(baselines: Positions | None = None, size: str = "1") -> CyclePlan:
    base = baselines or Positions.zero()
    return CyclePlan(direction=Direction.LONG_BACKPACK, bp_side=Side.BUY, l1_side=Side.SELL, l2_side=Side.BUY,
                     bp_size=Decimal(size), reference_price=Decimal("2000"), wait_secs=0.0,
                     baselines={role.short: base.get(role) or Decimal(0) for role in (Role.BP, Role.L1, Role.L2)},
                     start_equity={})


def cycle_state(*, stage: Stage = Stage.MONITORING, baselines: Positions | None = None, bp_step: str = "0.001",
                l_step: str = "0.0001", l_min: str | None = None, loop: LoopState | None = None,
                **params: Any) -> CycleState:
    """A cycle of group ``g`` in ``stage`` with the given baselines, rules and parameter overrides."""
    hedge = HedgeParams.from_mapping(params) if params else HedgeParams()
    return CycleState(cycle_id="c-1", group=msgspec.structs.replace(GROUP, params=hedge), params=hedge, stage=stage,
                      plan=plan(baselines), rules={Role.BP: rules(bp_step), Role.L1: rules(l_step, l_min, "ETH"),
                                                   Role.L2: rules(l_step, l_min, "ETH")},
                      loop=loop or LoopState())


def readings(bp: str | None, l1: str | None, l2: str | None) -> list[dict[str, Any]]:
    """Position reads as the venue tasks answer them (an unknown read carries no quantity)."""
    return [{"account": ACCOUNTS[role], "quantity": q} for role, q in zip((Role.BP, Role.L1, Role.L2), (bp, l1, l2),
                                                                        strict=True)]
