"""The exit in step: which orders the next step of an emergency exit sends (pure functions of a read).

Selling Backpack in one order while a thin Lighter book lets the surviving Lighter leg close a few
units per try leaves the group naked for as long as the Lighter closes take. So every step starts
from a fresh read of the three positions, taken relative to the cycle's recorded baselines (its own
deltas), and sends one of two things:

* **catch-up**: when the group's net is a whole Backpack step or more off zero, one Backpack order
  takes it back (:func:`catch_up`): reduce-only while it only gives back Backpack's own delta, an
  offset that opens on Backpack otherwise (the exposure a liquidation left, or two Lighter legs that
  closed unevenly);
* **Lighter close**: otherwise close every open Lighter leg with a reduce-only IOC capped at
  ``cap(step)`` from the top of book; the step after it takes what they filled back off the net on
  Backpack (:func:`catch_up` on the deltas plus those fills, before any read).

So the Lighter legs only ever close, Backpack follows their fills, and a Backpack order never takes
the net beyond one step (it is at most the net, rounded down to Backpack's grid): the net stays in
step however thin one Lighter book is. A Lighter leg that reads zero (liquidated) is not traded.
Nothing to send means the step is the last one.

A role whose account lease is **held** (``held``: a worker may still be acting on the account, one
cut from Redis until its lease expires, say) gets no order: an order there would only queue behind
the lease while the step's other orders fill, and closing one of two Lighter legs that hedge each
other while the other cannot move leaves the group naked by a whole leg. With Backpack held, the
catch-up reduces a Lighter leg on the net's side if one can take it; Lighter closes go out only
when no open leg is held.
Otherwise the step is a **wait**: nothing is sent, and the next read decides again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any

from core.config_schema import Role
from orchestrator.cycle.commands import ExitOrder
from orchestrator.cycle.state import LIGHTER_ROLES, ROLES
from venues.base import MarketRules, Side

#: The roles by the short names the exit's messages and record fields carry ("BP", "L1", "L2").
ROLE_BY_SHORT = {role.short: role for role in ROLES}


@dataclass(frozen=True)
class SlippageLadder:
    """Price caps (fractions from the top of book) that widen by ``step`` per exit step up to ``maximum``."""

    start: float
    step: float
    maximum: float

    def cap(self, step_number: int) -> float:
        return min(self.start + self.step * max(step_number, 0), max(self.maximum, self.start))


@dataclass(frozen=True)
class ExitState:
    """The three roles' positions (venue truth) and the cycle's baselines, with each venue's rules."""

    positions: Mapping[Role, Decimal]
    baselines: Mapping[Role, Decimal]
    rules: Mapping[Role, MarketRules]

    def delta(self, role: Role) -> Decimal:
        return self.positions[role] - self.baselines.get(role, Decimal(0))

    @property
    def net(self) -> Decimal:
        return sum((self.delta(role) for role in ROLES), Decimal(0))

    def with_fills(self, fills: Mapping[Role, Decimal]) -> ExitState:
        """The state after signed ``fills`` per role (what a step's orders reported, before a read)."""
        moved = {role: q + fills.get(role, Decimal(0)) for role, q in self.positions.items()}
        return ExitState(moved, self.baselines, self.rules)

    def reducible(self, role: Role) -> Decimal:
        """How much of ``role``'s own delta a reduce-only order can take back (0 when none can):
        the delta toward the baseline, never more than the position itself (no flip through zero)."""
        position, delta = self.positions[role], self.delta(role)
        if position == 0 or delta == 0 or (position > 0) != (delta > 0):
            return Decimal(0)
        return min(abs(position), abs(delta))

    def tradable(self, role: Role, quantity: Decimal) -> Decimal:
        """``quantity`` on ``role``'s grid (rounded down); 0 below its step or venue minimum."""
        rules = self.rules[role]
        size = rules.quantize_size(quantity)
        return size if size >= rules.step_size and size >= rules.min_quantity else Decimal(0)

    @property
    def net_beyond_dust(self) -> Decimal:
        """The net less every Lighter delta that is dust (:meth:`dust`): what orders can take back."""
        return self.net - sum((self.delta(role) for role in LIGHTER_ROLES if self.dust(role)), Decimal(0))

    def dust(self, role: Role) -> bool:
        """Whether ``role``'s own delta is a leftover below its venue's smallest order (not zero)."""
        delta = abs(self.delta(role))
        return 0 < delta < max(self.rules[role].step_size, self.rules[role].min_quantity)

    def at_target(self, role: Role) -> bool:
        """Whether ``role`` is back at its baseline within one of its steps."""
        return abs(self.delta(role)) < self.rules[role].step_size


def off_step(state: ExitState) -> bool:
    """Whether the group's net, less the Lighter dust no order can close, is a whole Backpack step or
    more off zero."""
    return abs(state.net_beyond_dust) >= state.rules[Role.BP].step_size


def catch_up(state: ExitState, bp_slippage: float, lighter_slippage: float,
             held: frozenset[Role] = frozenset()) -> ExitOrder | None:
    """The order that brings the net back within one Backpack step, or None when it is within (or
    when only roles in ``held`` could take it).

    Backpack takes it, by at most the net rounded down to its grid, so the net moves toward zero and
    never past it: reduce-only while that only takes back Backpack's own delta, an offset (opening
    on Backpack) otherwise. The Lighter books are the thin ones; Backpack's is deep, so one order
    puts the group back in step however unevenly the Lighter legs closed, and later steps take the
    offset back in step with the Lighter closes. Only while Backpack is held does a Lighter leg
    whose own delta lies on the net's side take it, reduce-only.
    """
    if not off_step(state):
        return None
    # A Lighter delta below its venue's minimum order is dust no order can close: Backpack does not
    # take it over (the report names it), it takes back the rest of the net.
    net = state.net_beyond_dust
    side = Side.SELL if net > 0 else Side.BUY
    if Role.BP not in held:
        quantity = state.tradable(Role.BP, abs(net))
        if quantity > 0:
            delta = state.delta(Role.BP)
            reduces = delta != 0 and Side.to_reduce(delta) is side and quantity <= state.reducible(Role.BP)
            return ExitOrder(Role.BP, side, quantity, bp_slippage, reduce_only=reduces)
    for role in LIGHTER_ROLES:
        delta = state.delta(role)
        if delta == 0 or (delta > 0) != (net > 0) or role in held or state.dust(role):
            continue
        quantity = state.tradable(role, min(abs(net), state.reducible(role)))
        if quantity > 0:
            return ExitOrder(role, Side.to_reduce(delta), quantity, lighter_slippage)
    return None


def lighter_closes(state: ExitState, slippage: float) -> list[ExitOrder]:
    """A capped reduce-only close of every Lighter leg still open (a liquidated one reads zero: skipped)."""
    orders: list[ExitOrder] = []
    for role in LIGHTER_ROLES:
        quantity = state.tradable(role, state.reducible(role))
        if quantity > 0:
            orders.append(ExitOrder(role, Side.to_reduce(state.delta(role)), quantity, slippage))
    return orders


class ExitStepKind(str, Enum):
    """What one step of the exit does (the value is what the step's record and messages carry)."""

    #: One order that brings the net back within a Backpack step.
    CATCH_UP = "catch_up"
    #: A capped reduce-only close of every open Lighter leg; what they fill is matched before the next read.
    LIGHTER_CLOSE = "lighter_close"
    #: Nothing is sent: a role the step needs is leased; the next read decides again.
    WAIT = "wait"
    #: Nothing is left to send: the exit reports.
    DONE = "done"


@dataclass(frozen=True)
class ExitStep:
    """What one step sends (see :class:`ExitStepKind`)."""

    kind: ExitStepKind
    orders: tuple[ExitOrder, ...]

    @property
    def done(self) -> bool:
        return self.kind is ExitStepKind.DONE


def next_step(state: ExitState, step_number: int, lighter: SlippageLadder, backpack: SlippageLadder,
              held: frozenset[Role] = frozenset()) -> ExitStep:
    """The next step of the exit from a fresh read (see the module docstring); ``held``: the roles
    whose account lease someone holds."""
    lighter_cap, bp_cap = lighter.cap(step_number), backpack.cap(step_number)
    order = catch_up(state, bp_cap, lighter_cap, held)
    if order is not None:
        return ExitStep(ExitStepKind.CATCH_UP, (order,))
    if catch_up(state, bp_cap, lighter_cap) is not None:
        return ExitStep(ExitStepKind.WAIT, ())
    closes = lighter_closes(state, lighter_cap)
    if any(o.role in held for o in closes):
        return ExitStep(ExitStepKind.WAIT, ())
    if closes:
        return ExitStep(ExitStepKind.LIGHTER_CLOSE, tuple(closes))
    # With every Lighter leg closed or dust, the net beyond the dust is Backpack's own delta, which
    # catch-up took above; what is left is within one step, or dust no order can take (the report
    # says so).
    return ExitStep(ExitStepKind.DONE, ())


def signed_fills(results: Sequence[Mapping[str, Any]], roles_by_account: Mapping[str, Role]) -> dict[Role, Decimal]:
    """Signed fill per role from a step's order results (``submit_market_order`` answers)."""
    fills: dict[Role, Decimal] = {}
    for result in results:
        role = roles_by_account.get(str(result.get("account", "")))
        if role is None:
            continue
        sign = 1 if result.get("side") == Side.BUY.value else -1
        fills[role] = fills.get(role, Decimal(0)) + sign * Decimal(str(result.get("filled") or "0"))
    return fills


def state_to_json(state: ExitState) -> dict[str, Any]:
    """The state as a message carries it, roles by their short names."""
    return {"positions": {r.short: str(q) for r, q in state.positions.items()},
            "baselines": {r.short: str(q) for r, q in state.baselines.items()},
            "rules": {r.short: rules.to_json() for r, rules in state.rules.items()}}


def state_from_json(data: Mapping[str, Any]) -> ExitState:
    return ExitState({ROLE_BY_SHORT[r]: Decimal(q) for r, q in data["positions"].items()},
                     {ROLE_BY_SHORT[r]: Decimal(q) for r, q in data["baselines"].items()},
                     {ROLE_BY_SHORT[r]: MarketRules.from_json(v) for r, v in data["rules"].items()})


def around_unknown(exit_state: ExitState, unknown: frozenset[Role], step: int, lighter: SlippageLadder,
                   backpack: SlippageLadder, held: frozenset[Role]) -> ExitStep | None:
    """The step to take on the roles that answered while ``unknown`` did not (their positions in
    ``exit_state`` are the ledger's), or None when there is none. No order goes to an unknown role;
    a catch-up moves the net toward zero on a role that answered; Lighter closes go out only when,
    filled whole, they leave the net within a step (nothing an unknown role would have to take back).
    An exit whose reads fail on one venue so keeps closing on the others without leaving the group
    naked by what it closes."""
    decided = next_step(exit_state, step, lighter, backpack, held | unknown)
    if decided.kind is ExitStepKind.CATCH_UP:
        return decided
    if decided.kind is ExitStepKind.LIGHTER_CLOSE:
        whole = {o.role: o.side.sign * o.quantity for o in decided.orders}
        return None if off_step(exit_state.with_fills(whole)) else decided
    return None
