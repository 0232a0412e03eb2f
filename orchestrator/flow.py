"""Decisions of the hedge cycle, separate from the Celery task wrappers in ``xtb_tasks.worker.hedge_tasks``.

Pure where possible: given positions and parameters, what next. Everything here reads and
writes the cycle record; nothing here talks to a venue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_DOWN, Decimal
from typing import Any, cast

import redis

from venues.base import MarketRules, Side
from xtb_tasks.core import keys
from xtb_tasks.core.config import GroupConfig, HedgeParams, Role, Settings
from xtb_tasks.core.cycle_record import CycleRecord, CycleView


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

    def to_json(self) -> dict[str, Any]:
        def s(x: Decimal | None) -> str | None:
            return None if x is None else str(x)

        return {"BP": s(self.bp), "L1": s(self.l1), "L2": s(self.l2), "net": s(self.net), "read_at": time.time()}


@dataclass(frozen=True)
class RebalanceStep:
    """A Backpack order that moves ``bp`` toward ``-(l1 + l2)``; None when no order strictly
    reduces the drift (within half a Backpack step, or below the venue minimum): as hedged as the
    Backpack grid allows."""

    side: Side
    quantity: Decimal
    target: Decimal


def rebalance_step(positions: Positions, bp_rules: MarketRules) -> RebalanceStep | None:
    assert positions.known
    target = -(positions.l1 + positions.l2)  # type: ignore[operator]
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


def bp_rules_from_record(record: CycleRecord | CycleView) -> MarketRules:
    return MarketRules.from_json(record.get("bp_rules") or {})


def liquidated_below(l_step: Decimal, l_minimum: Decimal = Decimal(0)) -> Decimal:
    """The |position| under which a Lighter leg counts as liquidated: below one step, or below the
    venue's minimum order size, since a leftover that small can neither be traded nor closed (dust,
    issue 16 item 8); a partial liquidation that leaves it has done what a full one does."""
    return max(l_step, l_minimum)


def zero_streaks(previous: dict[str, int] | None, positions: Positions, l_step: Decimal,
                 l_minimum: Decimal = Decimal(0)) -> dict[str, int]:
    """Consecutive fresh zero (or dust) readings per Lighter leg; an unknown read neither counts nor resets."""
    threshold = liquidated_below(l_step, l_minimum)
    streaks = dict(previous or {"L1": 0, "L2": 0})
    for role, value in (("L1", positions.l1), ("L2", positions.l2)):
        if value is None:
            continue
        streaks[role] = streaks.get(role, 0) + 1 if abs(value) < threshold else 0
    return streaks


def l_minimum_from_record(record: CycleRecord | CycleView) -> Decimal:
    # Cycles planned before ``l_rules`` was recorded have only the step: no dust rule for them.
    rules = record.get("l_rules") or {}
    return Decimal(str(rules.get("min_quantity") or 0))


def own_net(positions: Positions, baselines: Mapping[str, Any]) -> Decimal | None:
    """bp + l1 + l2 relative to the recorded baselines; None while any position is unknown."""
    if not positions.known:
        return None
    values = {"BP": positions.bp, "L1": positions.l1, "L2": positions.l2}
    return sum((v - Decimal(str(baselines.get(role) or 0)) for role, v in values.items()),  # type: ignore[operator]
               Decimal(0))


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
