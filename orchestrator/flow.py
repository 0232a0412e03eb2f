"""Decisions of the hedge cycle, apart from their Celery task wrappers (``xtb_tasks.worker.hedge_tasks``, ``loop_tasks``).

Pure where possible: given positions and parameters, what next. Everything here reads and
writes the cycle record; nothing here talks to a venue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_DOWN, Decimal
from typing import Any, cast

import redis

from core import keys
from core.config import GroupConfig, HedgeParams, Role, Settings
from core.cycle_record import CycleRecord, CycleView
from venues.base import MarketRules, Side


@dataclass(frozen=True)
class Positions:
    """Signed positions of the three roles; None where the read failed (unknown)."""

    bp: Decimal | None
    l1: Decimal | None
    l2: Decimal | None

    @classmethod
    def from_readings(cls, readings: list[dict[str, Any]], grp: GroupConfig) -> Positions:
        """The three roles' positions from reads keyed by the account each names (not by their
        position in the chord's results); a role with no read, or two, is unknown."""
        by_account: dict[str, list[dict[str, Any]]] = {}
        for reading in readings:
            by_account.setdefault(str(reading.get("account")), []).append(reading)

        def value(role: Role) -> Decimal | None:
            found = by_account.get(grp.account_for(role), [])
            q = found[0].get("quantity") if len(found) == 1 else None
            return None if q is None else Decimal(q)

        return cls(value(Role.BP), value(Role.L1), value(Role.L2))

    @property
    def known(self) -> bool:
        return None not in (self.bp, self.l1, self.l2)

    @property
    def net(self) -> Decimal | None:
        return self.bp + self.l1 + self.l2 if self.known else None  # type: ignore[operator]

    @classmethod
    def baselines_of(cls, plan: dict[str, Any] | None) -> Positions:
        """The positions the accounts held before the cycle (``CyclePlan.baselines``); zero where the
        plan recorded none, which is what a plan that refuses non-flat accounts records as well."""
        recorded = (plan or {}).get("baselines") or {}

        def value(role: str) -> Decimal:
            return Decimal(str(recorded.get(role) or 0))

        return cls(value("BP"), value("L1"), value("L2"))

    def own(self, baselines: Positions) -> Positions:
        """The cycle's own deltas: each known position less the baseline it started from."""
        def less(x: Decimal | None, base: Decimal | None) -> Decimal | None:
            return None if x is None else x - (base or Decimal(0))

        return Positions(less(self.bp, baselines.bp), less(self.l1, baselines.l1), less(self.l2, baselines.l2))

    def to_json(self) -> dict[str, Any]:
        def s(x: Decimal | None) -> str | None:
            return None if x is None else str(x)

        return {"BP": s(self.bp), "L1": s(self.l1), "L2": s(self.l2), "net": s(self.net), "read_at": time.time()}


@dataclass(frozen=True)
class RebalanceStep:
    """A Backpack order that moves ``bp`` toward its own-delta target; None when no order strictly
    reduces the drift (within half a Backpack step, or below the venue minimum): as hedged as the
    Backpack grid allows."""

    side: Side
    quantity: Decimal
    target: Decimal


def backpack_target(positions: Positions, baselines: Positions | None = None) -> Decimal:
    """Where Backpack must stand so the cycle's own deltas sum to zero:
    ``base_bp - ((l1 - base_l1) + (l2 - base_l2))``; ``-(l1 + l2)`` from flat accounts. A position
    held before the cycle (``allow_existing_positions``) is neither hedged nor sold."""
    assert positions.known
    base = baselines or Positions(Decimal(0), Decimal(0), Decimal(0))
    own = positions.own(base)
    return (base.bp or Decimal(0)) - (own.l1 + own.l2)  # type: ignore[operator]


def rebalance_step(positions: Positions, bp_rules: MarketRules,
                   baselines: Positions | None = None) -> RebalanceStep | None:
    target = backpack_target(positions, baselines)
    delta = target - positions.bp  # type: ignore[operator]
    # The grid point nearest the target, a tie staying put: Lighter's step can be finer than
    # Backpack's, and rounding half a step up would overshoot by half a step, which rounds up the
    # other way next time: sell, buy, sell until rebalance_failed (issue 16 item 9).
    quantity = bp_rules.quantize_size(abs(delta), rounding=ROUND_HALF_DOWN)
    # Trade only when the order strictly reduces |drift|; below the venue minimum nothing can be
    # traded (original bug §8.6 used 1e-9 and oscillated).
    if quantity < bp_rules.step_size or quantity < bp_rules.min_quantity or abs(abs(delta) - quantity) >= abs(delta):
        return None
    return RebalanceStep(Side.BUY if delta > 0 else Side.SELL, quantity, target)


def backpack_from_fills(positions: Positions, from_fills: Decimal | None,
                        bp_step: Decimal) -> tuple[Positions | None, str | None]:
    """The positions to rebalance on: Backpack as the cycle's recorded fills put it, the read only
    cross-checking it (a read can lag the last fill: the original's bug §8.6 ordered twice).

    Returns (positions, None) to decide on, or (None, why) when the read and the fills disagree by a
    step or more: read again rather than trade on either. Without a complete ledger (a leg still in
    flight) the reads are all there is.
    """
    if from_fills is None:
        return positions, None
    if positions.bp is not None and abs(positions.bp - from_fills) >= bp_step:
        return None, f"Backpack read {positions.bp} but the cycle's fills put it at {from_fills}"
    return replace(positions, bp=from_fills), None


def bp_rules_from_record(record: CycleRecord | CycleView) -> MarketRules:
    return MarketRules.from_json(record.get("bp_rules") or {})


def liquidated_below(l_step: Decimal, l_minimum: Decimal = Decimal(0)) -> Decimal:
    """The |position| under which a Lighter leg counts as liquidated: below one step, or below the
    venue's minimum order size, since a leftover that small can neither be traded nor closed (dust,
    issue 16 item 8); a partial liquidation that leaves it has done what a full one does."""
    return max(l_step, l_minimum)


def zero_streaks(previous: dict[str, int] | None, positions: Positions, l_step: Decimal,
                 baselines: Positions | None = None, l_minimum: Decimal = Decimal(0)) -> dict[str, int]:
    """Consecutive fresh readings per Lighter leg where the cycle's own delta (the position less its
    baseline) is back to zero, or to dust below the venue minimum; an unknown read neither counts nor resets."""
    own = positions.own(baselines) if baselines is not None else positions
    threshold = liquidated_below(l_step, l_minimum)
    streaks = dict(previous or {"L1": 0, "L2": 0})
    for role, value in (("L1", own.l1), ("L2", own.l2)):
        if value is None:
            continue
        streaks[role] = streaks.get(role, 0) + 1 if abs(value) < threshold else 0
    return streaks


def zero_legs(positions: Positions, l_step: Decimal, baselines: Positions | None = None,
              l_minimum: Decimal = Decimal(0)) -> list[str]:
    """The Lighter roles whose known own delta reads zero or dust (a liquidation, until re-reads confirm it)."""
    return [role for role, streak in zero_streaks(None, positions, l_step, baselines, l_minimum).items() if streak]


def confirming_zero(streaks: dict[str, int]) -> bool:
    """A Lighter leg read zero and is not confirmed either way yet: re-read it fast, trade nothing.

    Rebalancing Backpack to a liquidated leg's zero only to sell it back in the exit a moment later
    costs two taker fees and the spread on the whole size (issue 16 item 2).
    """
    return any(streaks.get(role, 0) > 0 for role in ("L1", "L2"))


def l_minimum_from_record(record: CycleRecord | CycleView) -> Decimal:
    # Cycles planned before ``l_rules`` was recorded have only the step: no dust rule for them.
    rules = record.get("l_rules") or {}
    return Decimal(str(rules.get("min_quantity") or 0))


def own_net(positions: Positions, baselines: Mapping[str, Any]) -> Decimal | None:
    """bp + l1 + l2 relative to the recorded baselines; None while any position is unknown."""
    return positions.own(Positions.baselines_of({"baselines": baselines})).net


def group_and_params(settings: Settings, record: CycleRecord | CycleView) -> tuple[GroupConfig, HedgeParams]:
    grp = settings.group(record.get("group"))
    params = HedgeParams.from_mapping(record.get("overrides") or {}, base=grp.params)
    return grp, params


def take_group_lock(client: redis.Redis, group: str, cycle_id: str) -> str | None:
    """Hold the group lease for ``cycle_id``; returns the active cycle holding it instead, if any."""
    key = keys.group_lock(group)
    if client.set(key, cycle_id, nx=True):
        return None
    holder = cast(str | None, client.get(key))
    if holder and client.sismember(keys.CYCLES_ACTIVE, holder):
        return holder
    # A stale lease (its cycle finished or was lost without releasing): take it over atomically.
    if client.set(key, cycle_id, xx=True, get=True) == holder:
        return None
    return cast(str | None, client.get(key))


def release_group_lock(client: redis.Redis, group: str, cycle_id: str) -> None:
    key = keys.group_lock(group)
    if client.get(key) == cycle_id:
        client.delete(key)


def pnl(start: dict[str, Any], end: dict[str, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for role in (r.short for r in Role):
        a, b = start.get(role), end.get(role)
        out[role] = None if a in (None, "") or b in (None, "") else str(Decimal(str(b)) - Decimal(str(a)))
    return out
