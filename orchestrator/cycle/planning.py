"""Cycle planning: sides, sizes and the random wait, from fresh venue snapshots (pure functions).

Sizing: Lighter1 collateral × buffer × leverage at the top of book, or an explicit size. Every
account's available margin is checked against its own venue's initial-margin rule for the planned
size plus the taker fees of the entry and the exit, every venue's own minimum quantity and minimum
notional apply, and sizes are Decimal on each venue's step. An unknown starting position refuses
the cycle (unknown is not zero), and so does a held one unless ``allow_existing_positions``: a
cycle trades only what it opens.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from core.config_schema import Direction, GroupConfig, HedgeParams, Role
from core.errors import XtbError
from venues.base import MarketRules, Side
from venues.margin import InitialMargin


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
    #: The account's own initial-margin fraction on the market (Lighter's leverage setting); None: the default.
    account_margin_fraction: Decimal | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountSnapshot:
        def dec(value: Any) -> Decimal | None:
            return None if value in (None, "") else Decimal(str(value))

        return cls(
            account=data["account"],
            rules=MarketRules.from_json(data["rules"]),
            bid=dec(data.get("bid")), ask=dec(data.get("ask")), equity=dec(data.get("equity")),
            collateral=dec(data.get("collateral")), available=dec(data.get("available")),
            position=dec(data.get("position")), account_margin_fraction=dec(data.get("initial_margin_fraction")),
        )

    def price_for(self, side: Side) -> Decimal | None:
        """The top-of-book price an order on ``side`` takes first; None when that side is empty."""
        return self.ask if side is Side.BUY else self.bid

    def margin_rule(self) -> InitialMargin | None:
        """The market's initial-margin rule at the account's own fraction where the venue reported one
        (a Lighter account whose leverage was raised trades at that, not at the market default)."""
        rule = self.rules.initial_margin
        if rule is None or self.account_margin_fraction is None:
            return rule
        return dataclasses.replace(rule, base=self.account_margin_fraction)


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
    """(Backpack entry, Lighter1 hedge, Lighter2 entry) sides: Lighter1 hedges Backpack, Lighter2 follows Backpack."""
    bp = Side.BUY if direction is Direction.LONG_BACKPACK else Side.SELL
    return bp, bp.opposite, bp


def draw_wait(params: HedgeParams, rng: random.Random | None = None) -> float:
    low, high = sorted((max(0.0, params.wait_min_secs), max(0.0, params.wait_max_secs)))
    return 0.0 if high <= 0 else (rng or random).uniform(low, high)


def _base_size(params: HedgeParams, snaps: dict[Role, AccountSnapshot], price: Decimal) -> Decimal:
    if params.size is not None:
        return params.size
    if params.test_mode:
        # The largest minimum across venues, each notional minimum converted to base units at the price.
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
    check_starting_positions(params, snaps)
    l1 = snaps[Role.L1]
    # Both Lighter legs are priced from one side of Lighter1's book (the ask when long Backpack).
    price = l1.ask if bp_side is Side.BUY else l1.bid
    price = price or (l1.bid if bp_side is Side.BUY else l1.ask)
    if not price:
        raise PlanRefused(f"Lighter1 ({l1.account}) order book is empty")
    base = _base_size(params, snaps, price)
    bp = snaps[Role.BP]
    bp_size = bp.rules.quantize_size(base)
    sides = {Role.BP: bp_side, Role.L1: l1_side, Role.L2: l2_side}
    for role, snap in snaps.items():
        size = snap.rules.quantize_size(base)
        if size < snap.rules.min_quantity or size * price < snap.rules.min_notional:
            raise PlanRefused(f"size {base:.8f} is below {role.short} ({snap.account}) minimum "
                              f"{snap.rules.min_quantity} / notional {snap.rules.min_notional}")
        check_margin(role, snap, size, snap.price_for(sides[role]) or price, params)
    return CyclePlan(
        direction=params.direction, bp_side=bp_side, l1_side=l1_side, l2_side=l2_side, bp_size=bp_size,
        reference_price=price, wait_secs=draw_wait(params, rng),
        baselines={r.short: s.position for r, s in snaps.items() if s.position is not None},
        start_equity={r.short: s.equity for r, s in snaps.items()},
    )


def check_starting_positions(params: HedgeParams, snaps: dict[Role, AccountSnapshot]) -> None:
    """Refuse an unknown position always, and a held one unless ``allow_existing_positions``: the exit
    and the rebalance would otherwise trade it as the cycle's. A leftover below the venue's smallest
    order (its step or minimum size, whichever is larger) is dust no order can close, neither the
    bot's nor an operator's flatten: it is not refused but carried as the cycle's baseline, like
    every starting position, so the cycle trades only its own deltas around it."""
    for role, snap in snaps.items():
        if snap.position is None:
            raise PlanRefused(f"{role.short} ({snap.account}) position is unknown; refusing to start")
    for role, snap in snaps.items():
        smallest_order = max(snap.rules.step_size, snap.rules.min_quantity)
        if not params.allow_existing_positions and abs(snap.position or Decimal(0)) >= smallest_order:
            raise PlanRefused(f"{role.value} ({snap.account}) already holds a position of {snap.position}; "
                              f"flatten it or set allow_existing_positions = true")


def taker_fee(role: Role, params: HedgeParams) -> Decimal:
    return params.backpack_taker_fee if role is Role.BP else params.lighter_taker_fee


def margin_needed(role: Role, snap: AccountSnapshot, size: Decimal, price: Decimal,
                  params: HedgeParams) -> Decimal | None:
    """Initial margin of ``size`` at ``price`` by the account's own venue rule, plus the taker fee
    of the entry and of the exit; None when the venue published no rule (unknown, not zero).

    The requirement is the planned size's alone, against what the venue says is available (which
    already holds the margin of any position the account has): conservative when an existing
    position is on the other side."""
    rule = snap.margin_rule()
    if rule is None:
        return None
    return rule.requirement(size, price) + 2 * abs(size) * price * taker_fee(role, params)


def check_margin(role: Role, snap: AccountSnapshot, size: Decimal, price: Decimal, params: HedgeParams) -> None:
    rule = snap.margin_rule()
    needed = margin_needed(role, snap, size, price, params)
    # Equity stands in for an unreported available margin only on a flat account: a held
    # position's margin is part of the equity but not available.
    flat = snap.position is not None and abs(snap.position) < snap.rules.step_size
    available = snap.available if snap.available is not None or not flat else snap.equity
    name = f"{role.value} ({snap.account})"
    if needed is None or rule is None:
        raise PlanRefused(f"{name}: the venue published no initial-margin rule for {snap.rules.symbol}; "
                          f"refusing to start")
    if available is None:
        raise PlanRefused(f"{name} available margin is unknown; refusing to start")
    if available < needed:
        fraction = rule.fraction(size)
        # The snapshot already raised a Lighter account's leverage as far as the sizing leverage asks
        # (leveraged_snapshot); a lower fraction the venue offers needs a higher `leverage`.
        raisable = (f"; the venue allows {rule.lowest:.2%} with a higher leverage setting"
                    if rule.lowest is not None and rule.lowest < fraction else "")
        raise PlanRefused(f"{name} available margin {available} cannot carry {size} at {price}: needs "
                          f"{needed:.2f} (initial margin {fraction:.2%}, {1 / fraction:.0f}x, plus entry "
                          f"and exit fees){raisable}; add collateral or lower the size")
