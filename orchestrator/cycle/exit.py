"""The exit's steps as decisions: an attempt starts, each step decides from a fresh read of the three
positions what to send (:mod:`orchestrator.cycle.in_step` chooses the orders), the match after a
step's orders takes the Lighter closes' fills back off the net, and the attempt's last read goes to
its report (:mod:`orchestrator.cycle.report`).

Unknown is never zero: a role whose read failed, or whose account has one of the cycle's orders with
an outcome nobody recorded, has no position. With only Backpack unknown the step acts on the Lighter
legs where that keeps the net in step (Backpack taken from the cycle's own fills, never traded);
otherwise it reads again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from core.config_schema import HedgeParams, Role
from core.cycle_fields import ExitReason, Stage
from orchestrator.cycle.commands import (
    Decision,
    NoteStep,
    ReadForExit,
    ReportExit,
    SendExitOrders,
    Step,
    StepName,
)
from orchestrator.cycle.in_step import (
    ROLE_BY_SHORT,
    ExitState,
    ExitStep,
    ExitStepKind,
    SlippageLadder,
    around_unknown,
    catch_up,
    next_step,
    signed_fills,
    state_from_json,
    state_to_json,
)
from orchestrator.cycle.runner import Call, ExitOpening, StepSpec
from orchestrator.cycle.state import ROLES, CycleState, ExitRead, Positions
from venues.base import MarketRules

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


def estimated_state(by_role: Mapping[Role, Mapping[str, Any]], state: CycleState) -> tuple[ExitState, frozenset[Role]] | None:
    """The read with Backpack's position, when it is unknown, taken from the cycle's ledger (its own
    final fills, :meth:`CycleState.ledger`), and the roles so taken; None when anything else is
    unknown, Backpack has an order of the cycle in flight, or its rules are unknown.

    Only Backpack may stand in: its position moves by the cycle's own orders. A Lighter leg's moves
    by the venue's too (a liquidation, ADL), which its ledger does not hold, so an unknown Lighter
    read has no stand-in: sizing an order from its ledger could trade a whole leg the venue already
    closed."""
    unknown = frozenset(role for role in ROLES if role not in by_role or not known(by_role[role]))
    ledger = state.ledger()
    if unknown != {Role.BP} or Role.BP not in ledger or Role.BP not in state.rules:
        return None
    baselines = state.baselines
    positions = {role: ledger[role] if role in unknown else Decimal(str(by_role[role]["position"])) for role in ROLES}
    rules = {role: state.rules[role] if role in unknown else MarketRules.from_json(by_role[role]["rules"])
             for role in ROLES}
    return ExitState(positions, {role: baselines.get(role) or Decimal(0) for role in ROLES}, rules), unknown


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
    wait while a role it needs is leased (``held``: seconds each lease has left), act around a role
    whose position is unknown where that keeps the net in step (:func:`around_unknown`) and read
    again otherwise, or report (nothing left to send, or the attempt's last step). ``grace``: the
    deployment's step grace; a wait reads again within half of it, so a lease released early is
    seen soon. A read due later states its delay as the step's ``next_within``: the watchdog's grace
    (``core.policies.watchdog_grace``) counts from when that read is due, whatever the delay."""
    params = state.params
    field = step_field(attempt, step)
    last = step + 1 >= params.exit_max_steps
    lighter, backpack = ladders(params)
    exit_state = exit_state_of(by_role, state)
    if exit_state is None:
        partial = None if last else estimated_state(by_role, state)
        around = None if partial is None else around_unknown(*partial, step, lighter, backpack, frozenset(held))
        if partial is not None and around is not None:
            return sending(state, partial[0], around, partial[1], reason=reason, attempt=attempt, step=step)
        note = NoteStep(field, {"unknown": unknown_roles(by_role)})
        if last:
            return Decision(state=state, commands=(note, ReportExit(reason, attempt,
                                                                     report_results(state, by_role, None))))
        again = ReadForExit(reason, attempt, step + 1, params.lighter_retry_delay_secs)
        return Decision(state=state, commands=(note, again), next_within=again.after_secs, result={"unknown": True})
    read = ExitRead(step_key(attempt, step), Positions.of(exit_state.positions), exit_state.net, now)
    progressed = msgspec.structs.replace(state, exit=state.exit.observed(read))
    shown = state_to_json(exit_state)["positions"]
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
        return Decision(state=progressed, next_within=countdown, events=(event,), commands=(
            NoteStep(field, {"read": shown, "kind": ExitStepKind.WAIT.value, "held": leased}),
            ReadForExit(reason, attempt, step + 1, countdown)),
            result={"step": step, "kind": ExitStepKind.WAIT.value, "held": leased})
    return sending(progressed, exit_state, decided, frozenset(), reason=reason, attempt=attempt, step=step)


def sending(state: CycleState, exit_state: ExitState, decided: ExitStep, unknown: frozenset[Role], *,
            reason: ExitReason, attempt: int, step: int) -> Decision:
    """Send the step's orders; the match after them takes the Lighter closes' fills back off the net
    on a role other than the ``unknown`` ones (their positions in ``exit_state`` are the ledger's)."""
    lighter, backpack = ladders(state.params)
    kind = decided.kind.value
    shown = state_to_json(exit_state)["positions"]
    match = Step(StepName.EXIT_MATCH, {"reason": reason.value, "attempt": attempt, "step": step, "kind": kind,
                                       "state": state_to_json(exit_state),
                                       "caps": {"BP": backpack.cap(step), "L": lighter.cap(step)},
                                       **({"unknown": sorted(r.short for r in unknown)} if unknown else {})})
    note: dict[str, Any] = {"read": shown, "kind": kind}
    events: tuple[str, ...] = ()
    if unknown:
        names = ", ".join(sorted(r.short for r in unknown))
        note["unknown"] = sorted(r.short for r in unknown)
        events = (f"exit {attempt}.{step}: {names} unreadable; {kind} on the others, {names} taken from the "
                  f"cycle's own fills",)
    return Decision(state=state, next_within=0.0, events=events, commands=(
        NoteStep(step_field(attempt, step), note),
        SendExitOrders(reason, attempt, decided.orders, then_step=match)),
        result={"step": step, "kind": kind})


def decide_exit_match(state: CycleState, results: Sequence[Mapping[str, Any]], *, reason: ExitReason, attempt: int,
                      step: int, kind: str, exit_state: ExitState, caps: Mapping[str, float],
                      unknown: frozenset[Role] = frozenset()) -> Decision:
    """After a step's orders: for Lighter closes, take what they filled back off the net (Backpack
    first, else the other Lighter leg when the two closed unevenly; never a role in ``unknown``,
    whose read failed), then read again; with nothing to take back the next read comes at once
    after a fill, a moment later (at a wider cap) without."""
    fills = signed_fills(results, {state.group.account_for(role): role for role in ROLES})
    filled = {role.short: str(quantity) for role, quantity in fills.items()}
    order = catch_up(exit_state.with_fills(fills), caps["BP"], caps["L"], unknown) \
        if kind == ExitStepKind.LIGHTER_CLOSE.value else None
    if order is None:
        after = 0.0 if any(fills.values()) else state.params.lighter_retry_delay_secs / 2
        return Decision(state=state, commands=(ReadForExit(reason, attempt, step + 1, after),), next_within=after,
                        result={"fills": filled})
    event = f"exit {attempt}.{step}: Lighter filled {filled}; {order.role.short} {order.side.value} {order.quantity}"
    send = SendExitOrders(reason, attempt, (order,), then_read=ReadForExit(reason, attempt, step + 1))
    return Decision(state=state, commands=(send,), events=(event,), next_within=0.0,
                    result={"fills": filled, "match": order.to_json()})


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
                             exit_state=state_from_json(call.kwargs["state"]), caps=call.kwargs["caps"],
                             unknown=frozenset(ROLE_BY_SHORT[r] for r in call.kwargs.get("unknown") or ()))


#: The exit's steps: an attempt starts once (its claim), each step is decided once (its note is its
#: claim) and only while its attempt is current.
STEPS: dict[StepName, StepSpec] = {
    StepName.EMERGENCY_EXIT: StepSpec(ExitOpening("emergency exit", lambda _, call: (
        f"exit_attempt:{call.attempt}", None), starts=True), _start),
    StepName.EXIT_DECIDE: StepSpec(ExitOpening("exit step", _note_claim), _decide),
    StepName.EXIT_MATCH: StepSpec(ExitOpening("exit match", lambda _, call: (
        match_field(call.attempt, call.number("step")), None)), _match),
}
