"""An exit's end decided on typed states (orchestrator.cycle.report): flat only when the reads and the
cycle's own fills agree, another attempt otherwise, then unresolved with the kill switch."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from core.cycle_fields import ExitReason, Outcome, Stage
from core.legs import Leg, LegState
from core.policies import EMERGENCY_EXIT, FLAT_READ_TRUSTED_SECS, UNRESOLVED_PAGE_SECS, UNRESOLVED_RETRY_SECS
from monitoring.alert_texts import AlertKind
from orchestrator.cycle import report
from orchestrator.cycle.commands import Alert, Finish, KeepResults, RunLater, StartExit, StepName, StopGroup
from orchestrator.cycle.state import CycleState
from tests.helpers.cycle_states import cycle_state
from venues.base import Side

NOW = 1_000_100.0
#: The last attempt the exit's retry policy allows.
LAST = EMERGENCY_EXIT.attempts or 0


def exiting(*legs: Leg, attempts: int = 1, **params: Any) -> CycleState:
    state = msgspec.structs.replace(cycle_state(stage=Stage.EMERGENCY_EXIT, **params), exit_attempts=attempts,
                                    exit_reason=ExitReason.LIGHTER2_ZERO, created_at=1_000_000.0)
    return msgspec.structs.replace(state, legs={f"leg{n}": leg for n, leg in enumerate(legs)})


def filled(account: str, side: Side, quantity: str, final: bool = True) -> Leg:
    q = Decimal(quantity)
    return Leg(account, "ETH", side, 1, q, q, LegState.FILLED if final else LegState.SUBMITTING)


def results(bp: str | None = "0", l1: str | None = "0", l2: str | None = "0") -> list[dict[str, Any]]:
    return [{"account": account, "flat": q is not None and Decimal(q) == 0, "orders": [],
             "final_position": {"quantity": q}, "equity": "1000"}
            for account, q in (("bp", bp), ("l1", l1), ("l2", l2))]


def test_a_flat_read_the_fills_agree_with_ends_the_cycle_flat_and_completed() -> None:
    state = exiting(filled("bp", Side.BUY, "1"), filled("bp", Side.SELL, "1"), filled("l1", Side.SELL, "1"),
                    filled("l1", Side.BUY, "1"))
    decision = report.decide_report(state, results(), reason=ExitReason.LIGHTER2_ZERO, attempt=0, now=NOW)
    keep, *alerts, finish = decision.commands
    assert isinstance(keep, KeepResults) and keep.attempt == 0
    assert isinstance(finish, Finish)
    assert (finish.outcome, finish.reason, finish.claim) == (Outcome.FLAT, "lighter2_zero", report.REPORTED)
    assert finish.completed and finish.history and finish.since_ms == 1_000_000_000
    assert [a.kind for a in alerts if isinstance(a, Alert)] == [AlertKind.CYCLE_FINISHED]
    assert decision.state.stage is Stage.DONE


def test_a_flat_read_the_fills_contradict_is_read_again_then_unresolved_and_the_exit_goes_on() -> None:
    # The fills say Backpack still holds 1: a stale flat read must not end the cycle flat.
    state = exiting(filled("bp", Side.BUY, "1"))
    again = report.decide_report(state, results(), reason=ExitReason.LIGHTER2_ZERO, attempt=0, now=NOW)
    (_, retry) = again.commands
    assert isinstance(retry, RunLater) and retry.step.name is StepName.EMERGENCY_EXIT
    assert retry.step.kwargs == {"reason": "lighter2_zero", "attempt": 1}
    assert "BP fills imply 1" in again.events[0]
    # The quick attempts spent: unresolved is a state, not an end. The group is stopped and an
    # operator paged at once; the exit goes on, slower.
    last = report.decide_report(state, results(), reason=ExitReason.LIGHTER2_ZERO, attempt=LAST, now=NOW)
    assert not any(isinstance(c, Finish) for c in last.commands) and last.state.stage is Stage.EMERGENCY_EXIT
    assert StopGroup("lighter2_zero") in last.commands
    kinds = [c.kind for c in last.commands if isinstance(c, Alert)]
    assert kinds == [AlertKind.GROUP_STOPPED, AlertKind.EMERGENCY_EXIT]
    retry = last.commands[-1]
    assert isinstance(retry, RunLater) and retry.after_secs == UNRESOLVED_RETRY_SECS
    assert retry.step.kwargs == {"reason": "lighter2_zero", "attempt": LAST + 1}
    assert (last.state.exit.unresolved_since, last.state.exit.paged_at) == (NOW, NOW)
    # Later attempts page again only every UNRESOLVED_PAGE_SECS and never stop the group twice
    # (here Backpack reads open: the fills are right).
    soon = report.decide_report(last.state, results(bp="1"), reason=ExitReason.LIGHTER2_ZERO, attempt=LAST + 1,
                                now=NOW + 10)
    assert not any(isinstance(c, Alert | StopGroup) for c in soon.commands)
    later = report.decide_report(soon.state, results(bp="1"), reason=ExitReason.LIGHTER2_ZERO, attempt=LAST + 20,
                                 now=NOW + UNRESOLVED_PAGE_SECS)
    pages = [c for c in later.commands if isinstance(c, Alert)]
    assert [p.kind for p in pages] == [AlertKind.EMERGENCY_EXIT] and "NOT FLAT for 300 s" in pages[0].text
    # Flat at last: the cycle ends flat, the group stays stopped, no next cycle of a run.
    healed = msgspec.structs.replace(later.state, legs={})
    done = report.decide_report(healed, results(), reason=ExitReason.LIGHTER2_ZERO, attempt=LAST + 21, now=NOW + 400)
    finish = done.commands[-1]
    assert isinstance(finish, Finish) and finish.outcome is Outcome.FLAT and finish.next_cycle is None
    assert "Flat after 400 s unresolved" in next(c.text for c in done.commands if isinstance(c, Alert))


def test_a_flat_read_the_fills_keep_contradicting_is_trusted_and_says_what_moved_backpack() -> None:
    # An operator flattened Backpack (or the venue closed it): no fill of the cycle's shows it, and a
    # read that stays flat is the truth. Until it has held FLAT_READ_TRUSTED_SECS it is read again.
    state = exiting(filled("bp", Side.BUY, "1"))
    first = report.decide_report(state, results(), reason=ExitReason.CANCELLED, attempt=LAST, now=NOW)
    assert first.state.exit.flat_doubted_since == NOW and first.state.stage is Stage.EMERGENCY_EXIT
    held = report.decide_report(first.state, results(), reason=ExitReason.CANCELLED, attempt=LAST + 1,
                                now=NOW + FLAT_READ_TRUSTED_SECS - 1)
    assert held.state.stage is Stage.EMERGENCY_EXIT and held.state.exit.flat_doubted_since == NOW
    # A read that is not flat ends the doubt: the next flat one starts it again.
    opened = report.decide_report(held.state, results(bp="1"), reason=ExitReason.CANCELLED, attempt=LAST + 2,
                                  now=NOW + FLAT_READ_TRUSTED_SECS)
    assert opened.state.exit.flat_doubted_since is None
    again = report.decide_report(opened.state, results(), reason=ExitReason.CANCELLED, attempt=LAST + 3,
                                 now=NOW + FLAT_READ_TRUSTED_SECS + 1)
    assert again.state.stage is Stage.EMERGENCY_EXIT
    trusted = report.decide_report(again.state, results(), reason=ExitReason.CANCELLED, attempt=LAST + 4,
                                   now=NOW + 2 * FLAT_READ_TRUSTED_SECS + 1)
    finish = trusted.commands[-1]
    assert isinstance(finish, Finish) and finish.outcome is Outcome.FLAT and finish.next_cycle is None
    assert trusted.state.stage is Stage.DONE
    assert "fills imply 1" in trusted.events[0] and "did not send" in trusted.events[0]
    page = next(c for c in trusted.commands if isinstance(c, Alert) and c.kind is AlertKind.EMERGENCY_EXIT)
    assert "did not send" in page.text and "group stays stopped" in page.text


def test_a_leg_in_flight_is_a_doubt_and_a_lighter_legs_fills_are_not_checked() -> None:
    # An order whose outcome nobody recorded can still fill after the read: the read is not the end.
    in_flight = exiting(filled("bp", Side.BUY, "1", final=False))
    assert report.legs_in_flight(in_flight) == ["leg0 in flight"]
    again = report.decide_report(in_flight, results(), reason=ExitReason.LIGHTER2_ZERO, attempt=0, now=NOW)
    assert isinstance(again.commands[-1], RunLater) and "leg0 in flight" in again.events[0]
    # The venue moves a Lighter leg too (liquidation, ADL): its read is the truth, whatever the exit's reason.
    lighter = exiting(filled("l2", Side.BUY, "1"), filled("l1", Side.SELL, "1"))
    assert report.legs_in_flight(lighter) == [] and report.backpack_fills_imply(lighter, report.minimums_of(lighter)) is None
    flat = report.decide_report(lighter, results(), reason=ExitReason.TIMEOUT, attempt=0, now=NOW)
    assert isinstance(flat.commands[-1], Finish) and flat.commands[-1].outcome is Outcome.FLAT


def test_dust_below_the_minimum_is_flat_and_an_unknown_read_is_not() -> None:
    state = exiting(l_min="0.005")
    dusty = report.decide_report(state, results(l2="0.003"), reason=ExitReason.TIMEOUT, attempt=LAST, now=NOW)
    finish = dusty.commands[-1]
    assert isinstance(finish, Finish) and finish.outcome is Outcome.FLAT and finish.dust == {"L2": "0.003"}
    unknown = report.decide_report(state, results(l1=None), reason=ExitReason.TIMEOUT, attempt=LAST, now=NOW)
    assert not any(isinstance(c, Finish) for c in unknown.commands) and StopGroup("timeout") in unknown.commands


def test_a_run_goes_on_after_a_flat_hedge_end_and_flips_after_a_timeout() -> None:
    state = msgspec.structs.replace(exiting(max_cycles=3, reverse_on_timeout=True), overrides={"size": "1"})
    assert report.following_cycle(state, ExitReason.LIGHTER1_ZERO, flat=True) == {
        "group": "g", "cycle_index": 1, "size": "1"}
    flipped = report.following_cycle(state, ExitReason.TIMEOUT, flat=True)
    assert flipped is not None and flipped["direction"] == "short_backpack"
    assert report.following_cycle(state, ExitReason.CANCELLED, flat=True) is None
    assert report.following_cycle(state, ExitReason.TIMEOUT, flat=False) is None
    last = msgspec.structs.replace(state, cycle_index=2)
    assert report.following_cycle(last, ExitReason.TIMEOUT, flat=True) is None


def test_a_failed_step_before_any_order_ends_not_started_and_after_one_unwinds_for_its_stage() -> None:
    planning = cycle_state(stage=Stage.PLANNING)
    ended = report.decide_step_failed(planning, "account_snapshot on bp: HTTP 500", nothing_sent=True)
    finish = ended.commands[-1]
    assert isinstance(finish, Finish) and (finish.outcome, finish.reason, finish.claim) == (
        Outcome.FLAT, "not_started", None)
    assert ended.state.error == "account_snapshot on bp: HTTP 500" and not finish.history
    unwound = report.decide_step_failed(cycle_state(stage=Stage.L2_ENTRY), "boom", nothing_sent=False)
    assert unwound.commands == (StartExit(ExitReason.LIGHTER2_ENTRY_FAILED),) and unwound.state.error == "boom"
    cancelled = msgspec.structs.replace(cycle_state(stage=Stage.BP_ENTRY), cancel_requested=True)
    assert report.decide_step_failed(cancelled, "x", nothing_sent=False).commands == (StartExit(ExitReason.CANCELLED),)


def test_an_exit_step_failure_retries_then_goes_on_unresolved() -> None:
    state = exiting()
    retry = report.decide_exit_failed(state, reason=ExitReason.TIMEOUT, attempt=0, failed="t-1", now=NOW)
    assert isinstance(retry.commands[0], RunLater)
    final = report.decide_exit_failed(state, reason=ExitReason.TIMEOUT, attempt=LAST, failed="t-2", now=NOW)
    assert StopGroup("timeout") in final.commands and isinstance(final.commands[-1], RunLater)
    assert final.events[0] == f"exit attempt {LAST} failed in an exit step (t-2); again"
