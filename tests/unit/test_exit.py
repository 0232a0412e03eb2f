"""The exit's steps as decisions (orchestrator.cycle.exit): every branch that starts an attempt,
sends, waits, reads again or reports, called with typed cycle states (no Redis, no Celery)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from core.config import Role
from core.cycle_fields import ExitReason, Stage
from core.legs import LegState
from orchestrator.cycle import exit as exits
from orchestrator.cycle.commands import NoteStep, ReadForExit, ReportExit, SendExitOrders, StepName
from orchestrator.cycle.state import CycleState, ExitProgress, Positions
from tests.helpers.cycle_states import ACCOUNTS, cycle_state, leg, rules
from venues.base import Side

REASON = ExitReason.LIGHTER2_ZERO
RULES_BY_ROLE = {Role.BP: rules("0.0001"), Role.L1: rules("0.0001", "0.005", "ETH"),
                 Role.L2: rules("0.0001", "0.005", "ETH")}


def exiting(attempt: int = 0, **params: Any) -> CycleState:
    state = cycle_state(stage=Stage.EMERGENCY_EXIT, bp_step="0.0001", l_min="0.005", **params)
    return msgspec.structs.replace(state, exit_attempts=attempt + 1, exit_reason=REASON)


def exit_readings(bp: str | None, l1: str | None, l2: str | None) -> list[dict[str, Any]]:
    """``exit_reading`` answers: each account's position (None: unknown), its market's rules, its equity."""
    market = {Role.BP: rules("0.0001").to_json(), Role.L1: rules("0.0001", "0.005", "ETH").to_json(),
              Role.L2: rules("0.0001", "0.005", "ETH").to_json()}
    return [{"account": ACCOUNTS[role], "position": q, "rules": market[role], "equity": "100", "read_at": 1.0}
            for role, q in zip((Role.BP, Role.L1, Role.L2), (bp, l1, l2), strict=True)]


def step(state: CycleState, bp: str | None, l1: str | None, l2: str | None, *, step_number: int = 0,
         held: dict[Role, float] | None = None, grace: float = 30.0) -> Any:
    by_role = exits.readings_by_role(exit_readings(bp, l1, l2), state)
    return exits.decide_exit_step(state, by_role, held or {}, reason=REASON, attempt=state.exit_attempts - 1,
                                  step=step_number, now=50.0, grace=grace)


def test_an_attempt_enters_the_exit_stops_the_entry_and_reads_for_its_first_step() -> None:
    decision = exits.start_exit(cycle_state(stage=Stage.MONITORING), ExitReason.TIMEOUT, 0)
    after = decision.state
    assert (after.stage, after.cancel_requested, after.exit_attempts, after.exit_reason) == \
        (Stage.EMERGENCY_EXIT, True, 1, ExitReason.TIMEOUT)
    assert decision.commands == (ReadForExit(ExitReason.TIMEOUT, 0, 0),) and decision.next_within == 0.0


def test_a_later_attempt_keeps_the_reason_the_exit_entered_with() -> None:
    decision = exits.start_exit(exiting(0), ExitReason.RECOVERED_UNWIND, 1)
    assert (decision.state.exit_attempts, decision.state.exit_reason) == (2, REASON)
    assert decision.commands == (ReadForExit(ExitReason.RECOVERED_UNWIND, 1, 0),)


def test_only_the_current_attempt_of_an_exiting_cycle_acts() -> None:
    assert exiting(1).current_attempt(1)
    assert not exiting(1).current_attempt(0)
    assert not msgspec.structs.replace(exiting(0), stage=Stage.DONE).current_attempt(0)


def test_an_unknown_position_is_read_again_and_never_traded() -> None:
    state = exiting()
    decision = step(state, "1", "-1", None)
    assert decision.state == state
    assert decision.commands == (NoteStep("exit_step:0", {"unknown": ["L2"]}),
                                 ReadForExit(REASON, 0, 1, state.params.lighter_retry_delay_secs))
    # The read is due after the configured delay: the watchdog's grace counts from then.
    assert decision.next_within == state.params.lighter_retry_delay_secs
    missing = exits.decide_exit_step(state, exits.readings_by_role(exit_readings("1", "-1", "0")[:2], state), {},
                                     reason=REASON, attempt=0, step=0, now=1.0, grace=30.0)
    assert missing.commands[0] == NoteStep("exit_step:0", {"unknown": ["L2"]})


def test_a_position_with_an_order_of_the_cycle_still_unsettled_is_unknown() -> None:
    # Backpack reads flat, but an order of the cycle on it has no recorded outcome: it can still fill.
    state = exiting()
    answers = exit_readings("0", "0", "0")
    answers[0]["unsettled"] = [41]
    decision = exits.decide_exit_step(state, exits.readings_by_role(answers, state), {}, reason=REASON, attempt=0,
                                      step=0, now=1.0, grace=30.0)
    assert decision.commands == (NoteStep("exit_step:0", {"unknown": ["BP"]}),
                                 ReadForExit(REASON, 0, 1, state.params.lighter_retry_delay_secs))


def with_legs(state: CycleState, *legs: tuple[str, Side, str]) -> CycleState:
    return msgspec.structs.replace(state, legs={f"leg{n}": leg(account, side, q, q, client_id=n)
                                                for n, (account, side, q) in enumerate(legs)})


def test_an_unreadable_backpack_does_not_stop_the_lighter1_close_that_needs_none_of_it() -> None:
    # Backpack's reads fail; Lighter2 was liquidated. By the cycle's own fills Backpack is back at its
    # baseline (entry bought 1, rebalance sold 1), so closing Lighter1 takes the net to zero.
    state = with_legs(exiting(), ("bp", Side.BUY, "1"), ("bp", Side.SELL, "1"), ("l1", Side.SELL, "1"),
                      ("l2", Side.BUY, "1"))
    decision = step(state, None, "-1", "0")
    note, send = decision.commands
    assert isinstance(send, SendExitOrders) and [(o.role, o.side, o.quantity) for o in send.orders] == \
        [(Role.L1, Side.BUY, Decimal("1.0000"))]
    assert isinstance(note, NoteStep) and note.note["unknown"] == ["BP"]
    assert send.then_step is not None and send.then_step.kwargs["unknown"] == ["BP"]
    assert "BP unreadable" in decision.events[0]


def test_an_unreadable_role_is_never_traded_and_a_close_it_would_have_to_offset_waits() -> None:
    # By its fills Backpack still holds the entry (+1): closing Lighter1 alone would leave the net +1
    # with only Backpack to take it back. Nothing is sent; the next read decides again.
    state = with_legs(exiting(), ("bp", Side.BUY, "1"), ("l1", Side.SELL, "1"))
    decision = step(state, None, "-1", "0")
    assert decision.commands == (NoteStep("exit_step:0", {"unknown": ["BP"]}),
                                 ReadForExit(REASON, 0, 1, state.params.lighter_retry_delay_secs))
    # An order of the cycle on the unreadable role still in flight: its ledger is no stand-in either.
    in_flight = msgspec.structs.replace(state, legs={**state.legs, "bp_x": leg("bp", Side.SELL, "1", "0",
                                                                                LegState.SUBMITTING)})
    assert isinstance(step(in_flight, None, "0", "0").commands[-1], ReadForExit)


def test_the_match_after_a_close_never_takes_the_fill_back_on_an_unreadable_role() -> None:
    state = exiting()
    exit_state = exits.ExitState({Role.BP: Decimal(1), Role.L1: Decimal(-1), Role.L2: Decimal(0)},
                                 {role: Decimal(0) for role in Role}, dict(RULES_BY_ROLE))
    results = [{"account": "l1", "side": "buy", "filled": "1"}]
    caps = {"BP": 0.01, "L": 0.01}
    matched = exits.decide_exit_match(state, results, reason=REASON, attempt=0, step=0, kind="lighter_close",
                                      exit_state=exit_state, caps=caps)
    assert isinstance(matched.commands[0], SendExitOrders) and matched.commands[0].orders[0].role is Role.BP
    around = exits.decide_exit_match(state, results, reason=REASON, attempt=0, step=0, kind="lighter_close",
                                     exit_state=exit_state, caps=caps, unknown=frozenset({Role.BP}))
    assert around.commands == (ReadForExit(REASON, 0, 1, 0.0),)


def test_an_unknown_position_on_the_last_step_reports_not_flat() -> None:
    state = exiting(exit_max_steps=3)
    decision = step(state, "1", None, "0", step_number=2)
    _note, report = decision.commands
    assert isinstance(report, ReportExit) and report.attempt == 0
    assert [r["flat"] for r in report.results] == [False, False, False]
    assert report.results[1]["final_position"]["quantity"] is None


def test_hedged_legs_close_on_lighter_first_and_the_match_follows() -> None:
    decision = step(exiting(), "0", "-9.5", "9.5", step_number=1)
    note, send = decision.commands
    assert isinstance(note, NoteStep) and note.note == {"read": {"BP": "0", "L1": "-9.5", "L2": "9.5"},
                                                        "kind": "lighter_close"}
    assert isinstance(send, SendExitOrders) and send.then_read is None and send.then_step is not None
    assert [(o.role, o.side, o.quantity) for o in send.orders] == [(Role.L1, Side.BUY, Decimal("9.5")),
                                                                 (Role.L2, Side.SELL, Decimal("9.5"))]
    match = send.then_step
    assert match.name is StepName.EXIT_MATCH
    assert {k: match.kwargs[k] for k in ("reason", "attempt", "step", "kind")} == \
        {"reason": REASON.value, "attempt": 0, "step": 1, "kind": "lighter_close"}
    assert exits.state_from_json(match.kwargs["state"]).positions[Role.L2] == Decimal("9.5")
    assert decision.next_within == 0.0 and decision.result == {"step": 1, "kind": "lighter_close"}


def test_a_net_off_step_is_caught_up_first_and_the_read_kept_with_the_worst_net() -> None:
    decision = step(exiting(), "10", "-9.5", "0")
    note, send = decision.commands
    assert isinstance(send, SendExitOrders)
    assert [(o.role, o.side, o.quantity) for o in send.orders] == [(Role.BP, Side.SELL, Decimal("0.5"))]
    assert isinstance(note, NoteStep) and note.note["kind"] == "catch_up"
    progress = decision.state.exit
    assert (progress.worst_net, progress.worst_net_at) == (Decimal("0.5"), 50.0)
    assert progress.last_read is not None and progress.last_read.key == 0
    assert progress.last_read.positions == Positions(Decimal(10), Decimal("-9.5"), Decimal(0))


def test_the_worst_net_only_grows() -> None:
    state = msgspec.structs.replace(exiting(), exit=ExitProgress(worst_net=Decimal(2), worst_net_at=1.0))
    progress = step(state, "10", "-9.5", "0").state.exit
    assert (progress.worst_net, progress.worst_net_at) == (Decimal(2), 1.0)


def test_a_leased_role_makes_the_step_wait_and_read_again_within_half_the_grace() -> None:
    decision = step(exiting(), "0", "-9.5", "9.5", step_number=2, held={Role.L2: 40.0})
    note, again = decision.commands
    assert isinstance(note, NoteStep) and (note.note["kind"], note.note["held"]) == ("wait", ["L2"])
    assert again == ReadForExit(REASON, 0, 3, 15.0) and decision.next_within == 15.0  # the deadline covers the wait
    assert decision.events == ("exit 0.2: waits, the account lease of L2 (l2, 40 s left) is held; nothing sent, "
                               "net 0.0",)
    short = step(exiting(), "0", "-9.5", "9.5", held={Role.L1: 0.1}).commands[1]
    assert short == ReadForExit(REASON, 0, 1, exits.LEASE_RECHECK_SECS)


def test_nothing_left_to_send_reports_each_role_flat() -> None:
    decision = step(exiting(), "0", "0", "0.004", step_number=4)
    note, report = decision.commands
    assert isinstance(note, NoteStep) and note.note["kind"] == "report"
    assert isinstance(report, ReportExit) and report.reason is REASON
    assert [(r["account"], r["flat"]) for r in report.results] == [("bp", True), ("l1", True), ("l2", False)]


def test_the_last_step_reports_even_with_orders_left() -> None:
    decision = step(exiting(exit_max_steps=2), "0", "-9.5", "9.5", step_number=1)
    assert isinstance(decision.commands[-1], ReportExit)
    assert not any(isinstance(c, SendExitOrders) for c in decision.commands)


def test_the_match_takes_what_the_lighter_closes_filled_back_on_backpack() -> None:
    state = exiting()
    exit_state = exits.exit_state_of(exits.readings_by_role(exit_readings("9.5", "-9.5", "0"), state), state)
    assert exit_state is not None
    filled = [{"account": "l1", "side": "buy", "filled": "4"}]
    decision = exits.decide_exit_match(state, filled, reason=REASON, attempt=0, step=3, kind="lighter_close",
                                       exit_state=exit_state, caps={"BP": 0.005, "L": 0.002})
    (send,) = decision.commands
    assert isinstance(send, SendExitOrders) and send.then_read == ReadForExit(REASON, 0, 4)
    assert [(o.role, o.side, o.quantity, o.max_slippage) for o in send.orders] == \
        [(Role.BP, Side.SELL, Decimal(4), 0.005)]
    assert decision.result["fills"] == {"L1": "4"}
    assert decision.events == ("exit 0.3: Lighter filled {'L1': '4'}; BP sell 4.0000",)
    assert decision.next_within == 0.0  # the catch-up goes out at once


def test_after_a_catch_up_or_no_fill_the_match_reads_again() -> None:
    state = exiting()
    exit_state = exits.exit_state_of(exits.readings_by_role(exit_readings("9.5", "-9.5", "0"), state), state)
    assert exit_state is not None
    nothing = exits.decide_exit_match(state, [{"account": "l1", "side": "buy", "filled": "0"}], reason=REASON,
                                      attempt=0, step=3, kind="lighter_close", exit_state=exit_state,
                                      caps={"BP": 0.005, "L": 0.002})
    assert nothing.commands == (ReadForExit(REASON, 0, 4, state.params.lighter_retry_delay_secs / 2),)
    assert nothing.next_within == state.params.lighter_retry_delay_secs / 2
    caught = exits.decide_exit_match(state, [{"account": "bp", "side": "sell", "filled": "0.5"}], reason=REASON,
                                     attempt=0, step=3, kind="catch_up", exit_state=exit_state,
                                     caps={"BP": 0.005, "L": 0.002})
    assert caught.commands == (ReadForExit(REASON, 0, 4, 0.0),)
