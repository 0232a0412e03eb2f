"""What an exit attempt concludes from its last read and the cycle's typed state: flat or not, dust,
whether the cycle's own fills agree with the reads, which alerts the end raises, the next cycle of a
``max_cycles`` run, and the ``Finish`` command whose writes (the outcome, the kill switch, the group
lock) the store carries out.

The attempt's results are keyed by the roles' short names ("BP", "L1", "L2"), as its messages and
the record carry them.

A leftover below the venue's minimum order size is dust: no order can close it (the venue refuses
the order), so it is flat for the outcome and reported as such.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from core.config_schema import Direction, Role
from core.cycle_fields import FINAL_REASON_BY_STAGE, NOT_STARTED, ExitReason, Outcome, Stage
from core.policies import EMERGENCY_EXIT, FLAT_READ_TRUSTED_SECS, UNRESOLVED_PAGE_SECS, UNRESOLVED_RETRY_SECS
from monitoring.alert_texts import (
    AlertKind,
    fmt_amount,
    format_cycle_finished,
    format_emergency_exit,
    format_group_stopped,
)
from orchestrator.cycle.commands import (
    Alert,
    Command,
    Decision,
    Finish,
    KeepResults,
    RunLater,
    StartExit,
    Step,
    StepName,
    StopGroup,
)
from orchestrator.cycle.runner import Call, ExitOpening, StepSpec
from orchestrator.cycle.state import DEFAULT_STEP, ROLES, CycleState

log = logging.getLogger(__name__)

#: The roles' short names in the order every report lists them.
ROLE_ORDER = tuple(role.short for role in ROLES)
#: Reasons after which a multi-cycle run continues (the hedge did its job); failures stop it.
CONTINUE_AFTER = {ExitReason.LIGHTER1_ZERO.value, ExitReason.LIGHTER2_ZERO.value, ExitReason.TIMEOUT.value}


def results_by_role(results: list[dict[str, Any]], accounts: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Each exit result under the role of the account it names (``accounts``: account -> role).

    A chord's results are not keyed by anything; zipping them with the roles by position would
    drop or swap a role without a word. A result naming an unknown or repeated account is left out
    (and logged), so that role counts as not confirmed flat.
    """
    by_role: dict[str, dict[str, Any]] = {}
    for result in results:
        account = str(result.get("account", ""))
        role = accounts.get(account)
        if role is None or role in by_role:
            log.error("exit result for an unexpected or repeated account %r left out", account)
            continue
        by_role[role] = result
    return by_role


def exit_dust(by_role: Mapping[str, Mapping[str, Any]], minimums: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Roles whose flatten did not end flat but whose final fresh read is a leftover below the venue's
    minimum order size: nothing can close it (the venue refuses the order), so it is dust, not open."""
    dust: dict[str, Decimal] = {}
    for role, result in by_role.items():
        quantity = (result.get("final_position") or {}).get("quantity")
        if result.get("flat") or quantity in (None, "") or role not in minimums:
            continue
        if abs(Decimal(str(quantity))) < minimums[role]:
            dust[role] = Decimal(str(quantity))
    return dust


def exit_is_flat(by_role: Mapping[str, Mapping[str, Any]], minimums: Mapping[str, Decimal] | None = None) -> bool:
    """Every role reported, and every report says flat (or, given the venues' minimums, dust)."""
    dust = exit_dust(by_role, minimums) if minimums else {}
    return set(by_role) == set(ROLE_ORDER) and all(r.get("flat") or role in dust for role, r in by_role.items())


def completion_kind(reason: str, flat: bool) -> AlertKind:
    """``cycle_completed`` for the normal end (a Lighter leg liquidated, or the timeout, then a flat
    exit); every other end (a failure, a cancel, an exit not confirmed flat) is an ``emergency_exit``."""
    return AlertKind.CYCLE_COMPLETED if flat and reason in CONTINUE_AFTER else AlertKind.EMERGENCY_EXIT


def shown_positions(finals: Mapping[str, Any], dust: Mapping[str, Decimal]) -> dict[str, Any]:
    """The positions as the alerts show them: a dust leftover reads "flat, dust X", every other role
    its final quantity."""
    return {role: f"flat, dust {fmt_amount(dust[role], signed=True)}" if role in dust else finals.get(role)
            for role in ROLE_ORDER if role in finals}


# ---- the report's decisions on the typed state ------------------------------------------------------

def minimums_of(state: CycleState) -> dict[str, Decimal]:
    """Each role's smallest closable size (dust is below it): the larger of its step and minimum."""
    return {role.short: max(state.step_of(role), state.minimum_of(role)) for role in ROLES}


def legs_in_flight(state: CycleState) -> list[str]:
    """The cycle's legs whose order is still in flight: that order can still fill after any read."""
    return [f"{name} in flight" for name, leg in sorted(state.legs.items()) if not leg.state.final]


def backpack_fills_imply(state: CycleState, tolerance: Mapping[str, Decimal]) -> Decimal | None:
    """Backpack's own delta (its position less its baseline) by the cycle's own fills, when that is
    ``tolerance`` or more away from flat; None when the fills agree with a flat read.

    Only Backpack is held to the fills: the cycle's own orders are what normally moves it, so a flat
    read they contradict may be stale and is read again (``FLAT_READ_TRUSTED_SECS``). The venue moves
    a Lighter leg too (a liquidation, part of one, ADL of the survivor), none of which is a leg of
    the cycle, so there the fresh read is the truth and the fills prove nothing."""
    ledger = state.ledger().get(Role.BP)
    own = None if ledger is None else ledger - (state.baselines.bp or Decimal(0))  # flat is its baseline
    return own if own is not None and abs(own) >= tolerance.get(Role.BP.short, DEFAULT_STEP) else None


def equity_change(state: CycleState, by_role: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """Each role's equity after the exit less its equity at planning; None where either is unknown."""
    start = state.plan.start_equity if state.plan is not None else {}
    out: dict[str, str | None] = {}
    for role in ROLE_ORDER:
        before, after = start.get(role), by_role.get(role, {}).get("equity")
        out[role] = None if before is None or after in (None, "") else str(Decimal(str(after)) - before)
    return out


def following_cycle(state: CycleState, reason: ExitReason, flat: bool) -> dict[str, Any] | None:
    """The start arguments of the next cycle of a ``max_cycles`` run, or None: a run goes on after a
    flat exit for a hedge reason, with the run's overrides, and flips the direction after a timeout
    when ``reverse_on_timeout`` asks it to. The run's length is the one this cycle started with."""
    if not flat or reason.value not in CONTINUE_AFTER:
        return None
    index = state.cycle_index + 1
    if index >= state.params.max_cycles:
        return None
    overrides = dict(state.overrides)
    if reason is ExitReason.TIMEOUT and state.params.reverse_on_timeout:
        flipped = Direction.SHORT_BACKPACK if state.params.direction is Direction.LONG_BACKPACK \
            else Direction.LONG_BACKPACK
        overrides["direction"] = flipped.value
    return {"group": state.group.name, "cycle_index": index, **overrides}


def decide_report(state: CycleState, results: Sequence[Mapping[str, Any]], *, reason: ExitReason, attempt: int,
                  now: float) -> Decision:
    """Exit attempt ``attempt`` ended with ``results`` (one per role that answered): end the cycle flat
    when every role reads flat (or dust) and nothing doubts it; otherwise try again (:func:`again`)."""
    keep = KeepResults(attempt, tuple(dict(r) for r in results))
    by_role = results_by_role([dict(r) for r in results], {state.group.account_for(role): role.short for role in ROLES})
    minimums = minimums_of(state)
    flat = exit_is_flat(by_role, minimums)
    in_flight = legs_in_flight(state) if flat else []
    implied = backpack_fills_imply(state, minimums) if flat else None
    doubted_since = None
    if flat and not in_flight:
        if implied is None:
            return ended(state, by_role, reason, now, first=(keep,))
        doubted_since = state.exit.flat_doubted_since if state.exit.flat_doubted_since is not None else now
        if now - doubted_since >= FLAT_READ_TRUSTED_SECS:
            moved = (f"Backpack read flat for {now - doubted_since:.0f} s though the cycle's own fills imply "
                     f"{implied}: a fill the cycle did not send (an operator's flatten, a liquidation) moved it")
            return ended(state, by_role, reason, now, first=(keep,), moved_outside=moved)
    doubts = in_flight + ([f"BP fills imply {implied}"] if implied is not None else [])
    if doubted_since != state.exit.flat_doubted_since:
        state = msgspec.structs.replace(state, exit=msgspec.structs.replace(state.exit, flat_doubted_since=doubted_since))
    why = f"not confirmed flat ({'; '.join(doubts) or 'venue reads'})"
    return again(state, reason=reason, attempt=attempt, why=why, now=now, finals=finals_of(by_role), first=(keep,))


def decide_exit_failed(state: CycleState, *, reason: ExitReason, attempt: int, failed: str, now: float) -> Decision:
    """A step of attempt ``attempt`` failed: the next attempt (:func:`again`)."""
    return again(state, reason=reason, attempt=attempt, why=f"failed in an exit step ({failed})", now=now, finals={})


def again(state: CycleState, *, reason: ExitReason, attempt: int, why: str, now: float,
          finals: Mapping[str, Any], first: tuple[Command, ...] = ()) -> Decision:
    """The next exit attempt. An exit never ends while the cycle's exposure may remain: once its
    quick attempts (``EMERGENCY_EXIT``) are spent it is ``unresolved``, which is a state, not an
    end: the group is stopped and an operator paged at once, and the exit goes on with an attempt
    every ``UNRESOLVED_RETRY_SECS`` and a page every ``UNRESOLVED_PAGE_SECS`` until a read confirms
    flat (reads that heal, a venue that fills again, an operator's flatten)."""
    note = f"exit attempt {attempt} {why}; again"
    step = Step(StepName.EMERGENCY_EXIT, {"reason": reason.value, "attempt": attempt + 1})
    if not EMERGENCY_EXIT.exhausted(attempt):
        delay = EMERGENCY_EXIT.delay(attempt)
        return Decision(state=state, commands=(*first, RunLater(step, delay)), events=(note,), next_within=delay,
                        result={"retrying": True})
    progress = state.exit
    since = progress.unresolved_since if progress.unresolved_since is not None else now
    page = progress.unresolved_since is None or progress.paged_at is None or \
        now - progress.paged_at >= UNRESOLVED_PAGE_SECS
    after = msgspec.structs.replace(state, exit=msgspec.structs.replace(
        progress, unresolved_since=since, paged_at=now if page else progress.paged_at))
    commands: tuple[Command, ...] = first
    if progress.unresolved_since is None:
        commands += (StopGroup(reason.value),
                     Alert(AlertKind.GROUP_STOPPED, format_group_stopped(state.group.name, state.cycle_id, reason.value),
                           {"reason": reason.value}))
    if page:
        commands += (unresolved_page(state, reason, why, now - since, finals),)
    return Decision(state=after, commands=(*commands, RunLater(step, UNRESOLVED_RETRY_SECS)), events=(note,),
                    next_within=UNRESOLVED_RETRY_SECS, result={"retrying": True, "unresolved": True})


def unresolved_page(state: CycleState, reason: ExitReason, why: str, for_secs: float,
                    finals: Mapping[str, Any]) -> Alert:
    """The page of an exit that is not flat and goes on: what it read, for how long, what to do."""
    group = state.group.name
    shown = {role: finals.get(role) for role in ROLE_ORDER if role in finals}
    text = (format_emergency_exit(group, state.cycle_id, reason.value, {}, shown)
            + f" NOT FLAT for {for_secs:.0f} s ({why}): the exit keeps working and pages every "
              f"{UNRESOLVED_PAGE_SECS / 60:.0f} min until a read confirms flat; check the accounts (xtb status, "
              f"xtb flatten --group {group}). The group is stopped until `xtb group resume {group}`.")
    return Alert(AlertKind.EMERGENCY_EXIT, text, {"reason": reason.value, "outcome": Outcome.UNRESOLVED.value,
                                                   "unresolved_secs": round(for_secs)})


def finals_of(by_role: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Each role's final read quantity from an attempt's results."""
    return {role: (r.get("final_position") or {}).get("quantity") for role, r in by_role.items()}


def ended(state: CycleState, by_role: Mapping[str, Mapping[str, Any]], reason: ExitReason, now: float, *,
          first: tuple[Command, ...] = (), moved_outside: str = "") -> Decision:
    """The end of an exit, flat (dust counts as flat): the alerts, the history reads and the next
    cycle of a run. An exit that was unresolved for a while says so; its group stays stopped until
    an operator resumes it. ``moved_outside`` says what moved a position besides the cycle's orders:
    such an end is an ``emergency_exit`` whatever its reason, and no run continues after it."""
    group, cycle_id = state.group.name, state.cycle_id
    minimums = minimums_of(state)
    finals = finals_of(by_role)
    dust = exit_dust(by_role, minimums)
    per_venue = equity_change(state, by_role)
    # An exit that paged NOT FLAT ends with a page saying it is flat now, whatever its reason.
    as_expected = state.exit.unresolved_since is None and not moved_outside
    kind = completion_kind(reason.value, as_expected)
    alerts: list[Alert] = []
    if kind is AlertKind.EMERGENCY_EXIT:
        text = format_emergency_exit(group, cycle_id, reason.value, per_venue, shown_positions(finals, dust))
        if moved_outside:
            text += f" {moved_outside}."
        if state.exit.unresolved_since is not None:
            text += f" Flat after {now - state.exit.unresolved_since:.0f} s unresolved; the group stays stopped."
        alerts.append(Alert(AlertKind.EMERGENCY_EXIT, text, {"reason": reason.value, "outcome": Outcome.FLAT.value}))
    alerts.append(Alert(AlertKind.CYCLE_FINISHED,
                        format_cycle_finished(group, cycle_id, Outcome.FLAT.value, per_venue, now - state.created_at),
                        {"outcome": Outcome.FLAT.value}))
    finish = Finish(outcome=Outcome.FLAT, reason=reason.value, claim=REPORTED,
                    finals={role: None if q in (None, "") else str(q) for role, q in finals.items()}, pnl=per_venue,
                    dust={role: str(q) for role, q in dust.items()}, history=True,
                    since_ms=int(state.created_at * 1000), until_ms=int(now * 1000),
                    completed=kind is AlertKind.CYCLE_COMPLETED,
                    next_cycle=following_cycle(state, reason, True) if as_expected else None)
    done = msgspec.structs.replace(state, stage=Stage.DONE)
    return Decision(state=done, commands=(*first, *alerts, finish), events=(moved_outside,) if moved_outside else (),
                    result={"cycle_id": cycle_id, "outcome": Outcome.FLAT.value, "reason": reason.value,
                            "pnl": per_venue, "positions": finals, "dust": finish.dust,
                            **({"next_cycle": finish.next_cycle} if finish.next_cycle else {})})


def not_started(state: CycleState, why: str) -> Decision:
    """The cycle ends before any order: flat, nothing to read back, the group released."""
    text = f"Cycle {state.cycle_id} ({state.group.name}) not started: {why}."
    done = msgspec.structs.replace(state, stage=Stage.DONE, error=why)
    return Decision(state=done, commands=(Alert(AlertKind.CYCLE_FINISHED, text),
                                          Finish(outcome=Outcome.FLAT, reason=NOT_STARTED)),
                    result={"cycle_id": state.cycle_id, "stage": Stage.DONE.value, "error": why})


def decide_step_failed(state: CycleState, error: str, *, nothing_sent: bool) -> Decision:
    """A step failed: before any order the cycle ends ``not_started`` touching no venue (an exit would
    only flatten positions the cycle never opened); otherwise it unwinds, for the stage's reason."""
    if nothing_sent:
        return not_started(state, error)
    reason = ExitReason.CANCELLED if state.cancel_requested else FINAL_REASON_BY_STAGE.get(
        state.stage, ExitReason.RECOVERED_UNWIND)
    failed = msgspec.structs.replace(state, error=error[:500])
    return Decision(state=failed, commands=(StartExit(reason),), result={"exit": reason.value, "error": error[:500]})


#: The claim an exit's end takes: several attempts (watchdog retries) may report; the first one ends it.
REPORTED = "exit_reported_at"


# ---- the report's steps -------------------------------------------------------------------------------

def _report(state: CycleState, now: float, call: Call) -> Decision:
    return decide_report(state, call.observed, reason=call.reason, attempt=call.attempt, now=now)


def _failed(state: CycleState, now: float, call: Call) -> Decision:
    return decide_exit_failed(state, reason=call.reason, attempt=call.attempt, failed=call.text("failed", "?"),
                              now=now)


#: An attempt's report runs in the step that ended the attempt; an exit step's failure runs as the
#: errback of its chord or chain. Both act only while their attempt is current.
STEPS: dict[StepName, StepSpec] = {
    StepName.EXIT_REPORT: StepSpec(ExitOpening("exit report"), _report),
    StepName.EXIT_FAILED: StepSpec(ExitOpening("exit failure"), _failed),
}
