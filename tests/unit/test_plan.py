"""The plan step: snapshots matched by account, a refusal ends the cycle before any order, a plan
records itself, the rules and the client ids, alerts the start and launches the first two legs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from core.config import Role
from monitoring.alert_texts import AlertKind
from orchestrator.cycle.commands import Alert, EnterFirstLegs
from orchestrator.cycle.plan import NotStarted, Sized, decide_plan, id_blocks, size
from orchestrator.cycle.state import LegName
from tests.helpers.cycle_states import BP_RULES, L_RULES, state
from venues.base import MarketRules, Side
from venues.margin import InitialMargin

TWO_PERCENT = InitialMargin(Decimal("0.02"))


def snapshot(account: str, rules: MarketRules, position: str | None = "0") -> dict[str, Any]:
    rules = MarketRules(symbol=rules.symbol, tick_size=rules.tick_size, step_size=rules.step_size,
                        min_quantity=rules.min_quantity, initial_margin=TWO_PERCENT)
    return {"account": account, "rules": rules.to_json(), "bid": "2000", "ask": "2001", "equity": "1000",
            "collateral": "1000", "available": "1000000", "position": position}


def snapshots(**positions: str | None) -> list[dict[str, Any]]:
    return [snapshot("l2", L_RULES, positions.get("l2", "0")), snapshot("bp", BP_RULES, positions.get("bp", "0")),
            snapshot("l1", L_RULES, positions.get("l1", "0"))]


def test_snapshots_that_are_not_the_groups_accounts_do_not_start_the_cycle() -> None:
    refused = size(state(), [*snapshots()[:2], snapshot("other", L_RULES)])
    assert isinstance(refused, NotStarted) and "do not match" in refused.why
    assert isinstance(size(state(), snapshots()[:2]), NotStarted)


def test_a_refused_plan_does_not_start_the_cycle() -> None:
    refused = size(state(), snapshots(l1=None))
    assert isinstance(refused, NotStarted) and "unknown" in refused.why
    held = size(state(), snapshots(bp="0.5"))
    assert isinstance(held, NotStarted) and "already holds" in held.why


def test_snapshots_are_matched_by_account_not_by_place() -> None:
    sized = size(state(params={"size": Decimal("1.5")}), snapshots())
    assert isinstance(sized, Sized)
    assert {role: s.account for role, s in sized.snapshots.items()} == {Role.BP: "bp", Role.L1: "l1", Role.L2: "l2"}
    assert sized.plan.bp_size == Decimal("1.50")


def test_each_entry_leg_gets_a_block_of_its_attempts() -> None:
    blocks = id_blocks(state(params={"backpack_entry_max_attempts": 2, "lighter_hedge_max_attempts": 4}))
    assert blocks == {LegName.BP_ENTRY: 2, LegName.L1_HEDGE: 4, LegName.L2_ENTRY: 4}
    assert [leg.role for leg in blocks] == [Role.BP, Role.L1, Role.L2]


def test_a_plan_records_itself_and_launches_the_first_two_legs() -> None:
    before = state(params={"size": Decimal("1.5")})
    sized = size(before, snapshots())
    assert isinstance(sized, Sized)
    decision = decide_plan(before, sized)
    after = decision.state
    assert after.plan == sized.plan and after.client_ids == {}  # the store gives them with its write
    assert after.rules[Role.BP].step_size == BP_RULES.step_size
    assert after.rules[Role.L1] == after.rules[Role.L2] == sized.snapshots[Role.L1].rules
    assert after.stage is before.stage  # each first leg moves the stage as it sends
    assert decision.reading is not None and decision.reading[0] == "start"
    assert decision.reading[1].known and decision.reading[1].net == 0
    started, first = decision.commands
    assert isinstance(started, Alert) and started.kind is AlertKind.CYCLE_STARTED
    assert isinstance(first, EnterFirstLegs)
    assert (first.entry.side, first.entry.quantity, first.hedge.side) == (Side.BUY, Decimal("1.50"), Side.SELL)
    assert first.hedge.client_ids == [] and first.entry.client_ids == []
    assert decision.result["plan"]["bp_size"] == "1.50"
