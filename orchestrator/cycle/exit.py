"""The exit in step: which orders the next step of an emergency exit sends (pure functions).

Selling Backpack in one order while a thin Lighter book lets the surviving Lighter leg close a few
units per try leaves the group naked for as long as the Lighter closes take. So every step starts
from a fresh read of the three positions, taken relative to the cycle's recorded baselines (its own
deltas), and sends one of two things:

* **catch-up**: when the group's net is a whole Backpack step or more off zero, reduce the legs on
  the net's side by the net (Backpack first: it holds the part no Lighter leg hedges any more, the
  exposure a liquidation left; a Lighter leg when Backpack has nothing to give);
* **Lighter close**: otherwise close every open Lighter leg with a reduce-only IOC capped at
  ``cap(step)`` from the top of book; the step after it takes what they filled back off the net
  (:func:`catch_up` on the deltas plus those fills, before any read): on Backpack, or on the other
  Lighter leg when the two legs hedge each other and closed unevenly.

So Backpack is only ever reduced in step with Lighter fills, and a Backpack order never takes the
net beyond one step (it is at most the net, rounded down to Backpack's grid). A Lighter leg that
reads zero (liquidated) is not traded. Nothing to send means the step is the last one.

A role whose account lease is **held** (``held``: a worker may still be acting on the account, one
cut from Redis until its lease expires, say) gets no order: an order there would only queue behind
the lease while the step's other orders fill, and closing one of two Lighter legs that hedge each
other while the other cannot move leaves the group naked by a whole leg. The catch-up uses another
role on the net's side if one can take it; Lighter closes go out only when no open leg is held.
Otherwise the step is a **wait**: nothing is sent, and the next read decides again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any

import msgspec

from core.config_schema import HedgeParams, Role
from core.cycle_fields import ExitReason, Stage
from orchestrator.cycle.commands import (
    Decision,
    ExitOrder,
    NoteStep,
    ReadForExit,
    ReportExit,
    SendExitOrders,
    Step,
    StepName,
)
from orchestrator.cycle.runner import Call, ExitOpening, StepSpec
from orchestrator.cycle.state import LIGHTER_ROLES, ROLES, CycleState, ExitRead, Positions
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

    def at_target(self, role: Role) -> bool:
        """Whether ``role`` is back at its baseline within one of its steps."""
        return abs(self.delta(role)) < self.rules[role].step_size


def off_step(state: ExitState) -> bool:
    """Whether the group's net is a whole Backpack step or more off zero."""
    return abs(state.net) >= state.rules[Role.BP].step_size


def catch_up(state: ExitState, bp_slippage: float, lighter_slippage: float,
             held: frozenset[Role] = frozenset()) -> ExitOrder | None:
    """The order that brings the net back within one Backpack step, or None when it is within (or
    when only roles in ``held`` could take it).

    The leg reduced is one whose own delta lies on the net's side, so reducing it by at most the
    net (rounded down to its grid) moves the net toward zero and never past it.
    """
    net = state.net
    if not off_step(state):
        return None
    for role in ROLES:
        delta = state.delta(role)
        if delta == 0 or (delta > 0) != (net > 0) or role in held:
            continue
        quantity = state.tradable(role, min(abs(net), state.reducible(role)))
        if quantity > 0:
            slippage = bp_slippage if role is Role.BP else lighter_slippage
            return ExitOrder(role, Side.to_reduce(delta), quantity, slippage)
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
    if off_step(state) and catch_up(state, bp_cap, lighter_cap) is not None:
        return ExitStep(ExitStepKind.WAIT, ())
    closes = lighter_closes(state, lighter_cap)
    if any(o.role in held for o in closes):
        return ExitStep(ExitStepKind.WAIT, ())
    if closes:
        return ExitStep(ExitStepKind.LIGHTER_CLOSE, tuple(closes))
    # With every Lighter leg closed the net is Backpack's own delta, which catch-up took above; what
    # is left is within one step, or dust no order can take (the report says so).
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


# ---- the exit's steps as decisions (tasks: ``xtb_tasks.worker.exit_tasks`` / ``exit_step_tasks``) ----

#: Steps of one attempt are numbered below this; the record's step key is attempt × this + step.
STEP_KEY_BASE = 1000
#: The shortest wait before an exit step that found a lease held reads again.
LEASE_RECHECK_SECS = 0.5


def step_key(attempt: int, step: int) -> int:
    return attempt * STEP_KEY_BASE + step


def step_field(attempt: int, step: int) -> str:
    """The record field step ``step`` of attempt ``attempt`` claims (HSETNX) and notes its read in."""
    return f"exit_step:{step_key(attempt, step)}"


def match_field(attempt: int, step: int) -> str:
    """The record field the match after step ``step`` of attempt ``attempt`` claims."""
    return f"exit_match:{step_key(attempt, step)}"


def ladders(params: HedgeParams) -> tuple[SlippageLadder, SlippageLadder]:
    """(Lighter, Backpack) price caps of the exit; Backpack starts at its own entry cap."""
    lighter = SlippageLadder(params.exit_start_slippage, params.exit_slippage_step, params.exit_max_slippage)
    backpack = SlippageLadder(params.backpack_max_slippage, params.exit_slippage_step, params.exit_max_slippage)
    return lighter, backpack


def readings_by_role(readings: Sequence[Mapping[str, Any]], state: CycleState) -> dict[Role, Mapping[str, Any]]:
    """Each ``exit_reading`` answer under the role of the account it names (never by its place in
    the chord's results); an answer naming no account of the group is left out."""
    by_role: dict[Role, Mapping[str, Any]] = {}
    for reading in readings:
        role = state.role_of(str(reading.get("account")))
        if role is not None:
            by_role[role] = reading
    return by_role


def exit_state_of(by_role: Mapping[Role, Mapping[str, Any]], state: CycleState) -> ExitState | None:
    """The read as an :class:`ExitState` (positions, the cycle's baselines, each venue's rules); None
    when a role did not answer or its position is unknown: unknown is never zero. A position with
    one of the cycle's orders still unsettled on it is unknown too: that order can still fill."""
    if set(by_role) != set(ROLES) or any(not known(r) for r in by_role.values()):
        return None
    baselines = state.baselines
    return ExitState({role: Decimal(str(r["position"])) for role, r in by_role.items()},
                     {role: baselines.get(role) or Decimal(0) for role in by_role},
                     {role: MarketRules.from_json(r["rules"]) for role, r in by_role.items()})


def known(reading: Mapping[str, Any]) -> bool:
    """Whether an ``exit_reading`` answer gives the position: read, and no order of the cycle on the
    account with an outcome still unknown (``unsettled``)."""
    return reading.get("position") is not None and not reading.get("unsettled")


def unknown_roles(by_role: Mapping[Role, Mapping[str, Any]]) -> list[str]:
    """The roles that did not answer, else those whose position is unknown (short names)."""
    missing = sorted(role.short for role in ROLES if role not in by_role)
    return missing or [role.short for role, r in by_role.items() if not known(r)]


def report_results(state: CycleState, by_role: Mapping[Role, Mapping[str, Any]],
                   exit_state: ExitState | None) -> tuple[dict[str, Any], ...]:
    """The report's result per role that answered: flat when back at its baseline within a step. The
    exit's orders are legs in the record (the fill ledger reads them there), so ``orders`` is empty."""
    results: list[dict[str, Any]] = []
    for role in ROLES:
        reading = by_role.get(role)
        if reading is None:
            continue
        flat = exit_state is not None and exit_state.at_target(role)
        results.append({"account": state.group.account_for(role), "flat": flat, "orders": [],
                        "final_position": {"quantity": reading.get("position"), "read_at": reading.get("read_at")},
                        "equity": reading.get("equity")})
    return tuple(results)


def start_exit(state: CycleState, reason: ExitReason, attempt: int) -> Decision:
    """Start exit attempt ``attempt``: the cycle enters ``emergency_exit`` (keeping the reason it
    entered with), asks every entry step still queued to send nothing, names this attempt the
    current one, and reads the three positions for its first step."""
    entering = state.stage is not Stage.EMERGENCY_EXIT
    after = msgspec.structs.replace(state, stage=Stage.EMERGENCY_EXIT, cancel_requested=True,
                                    exit_attempts=attempt + 1,
                                    exit_reason=reason if entering else state.exit_reason)
    return Decision(state=after, commands=(ReadForExit(reason, attempt, 0),), next_within=0.0,
                    result={"cycle_id": state.cycle_id, "reason": reason.value, "attempt": attempt})


def decide_exit_step(state: CycleState, by_role: Mapping[Role, Mapping[str, Any]], held: Mapping[Role, float], *,
                     reason: ExitReason, attempt: int, step: int, now: float, grace: float) -> Decision:
    """Step ``step`` of attempt ``attempt`` from a fresh read: send a catch-up or the Lighter closes,
    wait while a role it needs is leased (``held``: seconds each lease has left), read again while a
    position is unknown, or report (nothing left to send, or the attempt's last step). ``grace``:
    the watchdog's step grace; a wait reads again within half of it, so the exit shows progress."""
    params = state.params
    field = step_field(attempt, step)
    last = step + 1 >= params.exit_max_steps
    exit_state = exit_state_of(by_role, state)
    if exit_state is None:
        note = NoteStep(field, {"unknown": unknown_roles(by_role)})
        if last:
            return Decision(state=state, commands=(note, ReportExit(reason, attempt,
                                                                     report_results(state, by_role, None))))
        again = ReadForExit(reason, attempt, step + 1, params.lighter_retry_delay_secs)
        return Decision(state=state, commands=(note, again), result={"unknown": True})
    read = ExitRead(step_key(attempt, step), Positions.of(exit_state.positions), exit_state.net, now)
    progressed = msgspec.structs.replace(state, exit=state.exit.observed(read))
    shown = state_to_json(exit_state)["positions"]
    lighter, backpack = ladders(params)
    decided = next_step(exit_state, step, lighter, backpack, frozenset(held))
    if decided.done or last:
        return Decision(state=progressed, next_within=0.0, commands=(
            NoteStep(field, {"read": shown, "kind": "report"}),
            ReportExit(reason, attempt, report_results(state, by_role, exit_state))))
    if decided.kind is ExitStepKind.WAIT:
        leased = sorted(role.short for role in held)
        roles = ", ".join(f"{role.short} ({state.group.account_for(role)}, {secs:.0f} s left)"
                          for role, secs in sorted(held.items(), key=lambda item: item[0].short))
        event = f"exit {attempt}.{step}: waits, the account lease of {roles} is held; nothing sent, net {exit_state.net}"
        countdown = min(max([*held.values(), LEASE_RECHECK_SECS]), grace / 2)
        return Decision(state=progressed, next_within=0.0, events=(event,), commands=(
            NoteStep(field, {"read": shown, "kind": ExitStepKind.WAIT.value, "held": leased}),
            ReadForExit(reason, attempt, step + 1, countdown)),
            result={"step": step, "kind": ExitStepKind.WAIT.value, "held": leased})
    kind = decided.kind.value
    match = Step(StepName.EXIT_MATCH, {"reason": reason.value, "attempt": attempt, "step": step, "kind": kind,
                                       "state": state_to_json(exit_state),
                                       "caps": {"BP": backpack.cap(step), "L": lighter.cap(step)}})
    return Decision(state=progressed, next_within=0.0, commands=(
        NoteStep(field, {"read": shown, "kind": kind}),
        SendExitOrders(reason, attempt, decided.orders, then_step=match)),
        result={"step": step, "kind": kind})


def decide_exit_match(state: CycleState, results: Sequence[Mapping[str, Any]], *, reason: ExitReason, attempt: int,
                      step: int, kind: str, exit_state: ExitState, caps: Mapping[str, float]) -> Decision:
    """After a step's orders: for Lighter closes, take what they filled back off the net (Backpack
    first, else the other Lighter leg when the two closed unevenly), then read again; with nothing
    to take back the next read comes at once after a fill, a moment later (at a wider cap) without."""
    fills = signed_fills(results, {state.group.account_for(role): role for role in ROLES})
    filled = {role.short: str(quantity) for role, quantity in fills.items()}
    order = catch_up(exit_state.with_fills(fills), caps["BP"], caps["L"]) \
        if kind == ExitStepKind.LIGHTER_CLOSE.value else None
    if order is None:
        after = 0.0 if any(fills.values()) else state.params.lighter_retry_delay_secs / 2
        return Decision(state=state, commands=(ReadForExit(reason, attempt, step + 1, after),),
                        result={"fills": filled})
    event = f"exit {attempt}.{step}: Lighter filled {filled}; {order.role.short} {order.side.value} {order.quantity}"
    send = SendExitOrders(reason, attempt, (order,), then_read=ReadForExit(reason, attempt, step + 1))
    return Decision(state=state, commands=(send,), events=(event,), result={"fills": filled, "match": order.to_json()})


# ---- the exit's steps ---------------------------------------------------------------------------------

def _note_claim(decision: Decision, call: Call) -> tuple[str, Any]:
    # The step's claim keeps its note (the store adds the orders as it numbered them and gave them ids).
    note = next(c for c in decision.commands if isinstance(c, NoteStep))
    return note.field, note.note


def _start(state: CycleState, now: float, call: Call) -> Decision:
    return start_exit(state, call.reason, call.attempt)


def _decide(state: CycleState, now: float, call: Call) -> Decision:
    return decide_exit_step(state, readings_by_role(call.observed, state), call.held, reason=call.reason,
                            attempt=call.attempt, step=call.number("step"), now=now, grace=call.grace)


def _match(state: CycleState, now: float, call: Call) -> Decision:
    return decide_exit_match(state, call.observed, reason=call.reason, attempt=call.attempt,
                             step=call.number("step"), kind=call.text("kind", ""),
                             exit_state=state_from_json(call.kwargs["state"]), caps=call.kwargs["caps"])


#: The exit's steps: an attempt starts once (its claim), each step is decided once (its note is its
#: claim) and only while its attempt is current.
STEPS: dict[StepName, StepSpec] = {
    StepName.EMERGENCY_EXIT: StepSpec(ExitOpening("emergency exit", lambda _, call: (
        f"exit_attempt:{call.attempt}", None), starts=True), _start),
    StepName.EXIT_DECIDE: StepSpec(ExitOpening("exit step", _note_claim), _decide),
    StepName.EXIT_MATCH: StepSpec(ExitOpening("exit match", lambda _, call: (
        match_field(call.attempt, call.number("step")), None)), _match),
}
