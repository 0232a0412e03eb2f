"""Cycle planning: sides, sizes and the random wait, from fresh venue snapshots (pure functions).

Sizing follows the original (§1.4): Lighter1 collateral × buffer × leverage at the top of book,
or an explicit size. Unlike the original (bug §8.9) the Backpack margin is checked too, every
venue's own minimum quantity and minimum notional apply, and sizes are Decimal on each venue's
step. An unknown starting position refuses the cycle: unknown is not zero.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from venues.base import MarketRules, Side
from xtb_tasks.core.config import Direction, GroupConfig, HedgeParams, Role
from xtb_tasks.core.errors import XtbError


class PlanRefused(XtbError):
    """The cycle cannot start; nothing was sent. The message says why in one line."""


@dataclass(frozen=True)
class AccountSnapshot:
    """What planning needs from one account: rules, top of book, balance, position."""

    account: str
    rules: MarketRules
    bid: Decimal | None
    ask: Decimal | None
    equity: Decimal | None
    collateral: Decimal | None
    available: Decimal | None
    position: Decimal | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountSnapshot:
        def dec(value: Any) -> Decimal | None:
            return None if value in (None, "") else Decimal(str(value))

        return cls(
            account=data["account"],
            rules=MarketRules.from_json(data["rules"]),
            bid=dec(data.get("bid")), ask=dec(data.get("ask")), equity=dec(data.get("equity")),
            collateral=dec(data.get("collateral")), available=dec(data.get("available")),
            position=dec(data.get("position")),
        )


@dataclass(frozen=True)
class CyclePlan:
    """Sides, sizes and timing of one cycle."""

    direction: Direction
    bp_side: Side
    l1_side: Side
    l2_side: Side
    bp_size: Decimal
    reference_price: Decimal
    wait_secs: float
    baselines: dict[str, Decimal]
    start_equity: dict[str, Decimal | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction.value, "bp_side": self.bp_side.value, "l1_side": self.l1_side.value,
            "l2_side": self.l2_side.value, "bp_size": str(self.bp_size), "reference_price": str(self.reference_price),
            "wait_secs": self.wait_secs, "baselines": {k: str(v) for k, v in self.baselines.items()},
            "start_equity": {k: None if v is None else str(v) for k, v in self.start_equity.items()},
        }


def sides_for(direction: Direction) -> tuple[Side, Side, Side]:
    """(Backpack entry, Lighter1 hedge, Lighter2 entry) sides (original §1.2)."""
    bp = Side.BUY if direction is Direction.LONG_BACKPACK else Side.SELL
    return bp, bp.opposite, bp


def draw_wait(params: HedgeParams, rng: random.Random | None = None) -> float:
    low, high = sorted((max(0.0, params.wait_min_secs), max(0.0, params.wait_max_secs)))
    return 0.0 if high <= 0 else (rng or random).uniform(low, high)


def _base_size(params: HedgeParams, snaps: dict[Role, AccountSnapshot], price: Decimal) -> Decimal:
    if params.size is not None:
        return params.size
    if params.test_mode:
        # The largest minimum across venues, compared in base units (original bug §8.9 compared integers).
        return max(max(s.rules.min_quantity, s.rules.min_notional / price) for s in snaps.values())
    l1 = snaps[Role.L1]
    collateral = l1.collateral if l1.collateral is not None else l1.equity
    if collateral is None:
        raise PlanRefused(f"Lighter1 ({l1.account}) collateral is unknown")
    if collateral <= params.min_collateral:
        raise PlanRefused(f"Lighter1 ({l1.account}) collateral {collateral} is not above min_collateral {params.min_collateral}")
    return collateral * params.collateral_buffer * Decimal(str(params.leverage)) / price


def plan_cycle(group: GroupConfig, params: HedgeParams, snaps: dict[Role, AccountSnapshot],
               rng: random.Random | None = None) -> CyclePlan:
    """Size the cycle or raise :class:`PlanRefused`."""
    bp_side, l1_side, l2_side = sides_for(params.direction)
    for role, snap in snaps.items():
        if snap.position is None:
            raise PlanRefused(f"{role.short} ({snap.account}) position is unknown; refusing to start")
    l1 = snaps[Role.L1]
    # The original prices both Lighter legs from one side of Lighter1's book (ask when long).
    price = l1.ask if bp_side is Side.BUY else l1.bid
    price = price or (l1.bid if bp_side is Side.BUY else l1.ask)
    if not price:
        raise PlanRefused(f"Lighter1 ({l1.account}) order book is empty")
    base = _base_size(params, snaps, price)
    bp = snaps[Role.BP]
    bp_size = bp.rules.quantize_size(base)
    for role, snap in snaps.items():
        size = snap.rules.quantize_size(base)
        if size < snap.rules.min_quantity or size * price < snap.rules.min_notional:
            raise PlanRefused(f"size {base:.8f} is below {role.short} ({snap.account}) minimum "
                              f"{snap.rules.min_quantity} / notional {snap.rules.min_notional}")
    bp_margin = bp.available if bp.available is not None else bp.equity
    needed = bp_size * price / Decimal(str(params.leverage))
    if bp_margin is None or bp_margin < needed:
        raise PlanRefused(f"Backpack ({bp.account}) margin {bp_margin} cannot carry {bp_size} at {params.leverage}x "
                          f"(needs {needed:.2f})")
    return CyclePlan(
        direction=params.direction, bp_side=bp_side, l1_side=l1_side, l2_side=l2_side, bp_size=bp_size,
        reference_price=price, wait_secs=draw_wait(params, rng),
        baselines={r.short: s.position for r, s in snaps.items() if s.position is not None},
        start_equity={r.short: s.equity for r, s in snaps.items()},
    )
