"""decide_balance and enter: the entry's first two legs, its balance rounds and the rest of the entry,
decided from typed CycleState values (the orders' fills as the legs recorded them)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.config import Role
from core.cycle_fields import Stage
from core.legs import LegState
from orchestrator.cycle.commands import EnterFirstLegs, EnterRest, SendOrder, Step, StepName
from orchestrator.cycle.entry import L1_CONFIRMATION, EntryIncomplete, decide_balance, enter
from orchestrator.cycle.state import LegName
from tests.helpers.cycle_states import CLIENT_IDS, leg, plan, planned
from venues.base import Side


def legs(bp: str, l1: str, **more: str) -> dict[str, object]:
    out = {LegName.BP_ENTRY.value: leg("bp", Side.BUY, "1", bp), LegName.L1_HEDGE.value: leg("l1", Side.SELL, "1", l1)}
    if "topup" in more:
        out[LegName.L1_TOPUP.value] = leg("l1", Side.SELL, more["topup"], more["topup"])
    if "bp_balance" in more:
        out[LegName.BP_BALANCE.value] = leg("bp", Side.SELL, more["bp_balance"], more["bp_balance"], reduce_only=True)
    return out


def test_the_hedge_is_armed_on_the_backpack_fill_alongside_the_entry() -> None:
    state = planned(Stage.PLANNING, params={"lighter_max_slippage": 0.01, "backpack_max_slippage": 0.0})
    command = enter(state, plan(bp_size="1.5"))
    assert isinstance(command, EnterFirstLegs)
    hedge, entry = command.hedge, command.entry
    assert (hedge.role, hedge.side, hedge.leg, hedge.quantity) == (Role.L1, Side.SELL, LegName.L1_HEDGE, None)
    assert hedge.quantity_from_leg is LegName.BP_ENTRY and hedge.expected_quantity == Decimal("1.5")
    assert hedge.client_ids == CLIENT_IDS[LegName.L1_HEDGE] and hedge.max_slippage == 0.01
    assert (entry.role, entry.side, entry.quantity, entry.announce_fill) == (Role.BP, Side.BUY, Decimal("1.5"), True)
    assert entry.client_ids == CLIENT_IDS[LegName.BP_ENTRY] and entry.max_slippage is None  # 0: the venue default
    assert Stage.PLANNING in entry.fence and Stage.L1_HEDGE in hedge.fence
    assert command.then == Step(StepName.BALANCE_ENTRY, {"balance_round": 0})


def test_a_leg_not_final_is_an_incomplete_entry() -> None:
    state = planned(legs={**legs("1", "0.3"), LegName.L1_HEDGE.value: leg("l1", Side.SELL, "1", "0.3", LegState.OPEN)})
    with pytest.raises(EntryIncomplete):
        decide_balance(state, balance_round=0)
    with pytest.raises(EntryIncomplete):
        decide_balance(planned(legs={}), balance_round=0)


def test_a_partial_hedge_is_topped_up_once_on_lighter1() -> None:
    decision = decide_balance(planned(legs=legs("1", "0.3")), balance_round=0)
    (send,) = decision.commands
    assert isinstance(send, SendOrder)
    assert (send.role, send.side, send.quantity, send.leg) == (Role.L1, Side.SELL, Decimal("0.7000"), "l1_topup")
    assert not send.reduce_only and send.fence_stages == L1_CONFIRMATION
    assert send.then == Step(StepName.BALANCE_ENTRY, {"balance_round": 1})
    assert decision.result == {"topup": "0.7000"} and "topping up 0.7000" in decision.events[0]
    assert decision.state == planned(legs=legs("1", "0.3"))  # the balance records nothing itself


def test_after_the_topup_backpack_is_brought_down_to_lighter1() -> None:
    decision = decide_balance(planned(legs=legs("1", "0.3", topup="0.2")), balance_round=1)
    (send,) = decision.commands
    assert isinstance(send, SendOrder)
    assert (send.role, send.side, send.quantity, send.leg) == (Role.BP, Side.SELL, Decimal("0.50"), "bp_balance")
    assert send.reduce_only and send.fence_stages == L1_CONFIRMATION
    assert send.then == Step(StepName.BALANCE_ENTRY, {"balance_round": 2})
    assert decision.result == {"bp_reduce": "0.50"}


def test_a_short_cycle_reduces_backpack_by_buying_back() -> None:
    short = plan(bp_size="1")
    short = type(short)(**{**short.__dict__, "bp_side": Side.SELL, "l1_side": Side.BUY, "l2_side": Side.SELL})
    decision = decide_balance(planned(plan=short, legs=legs("1", "0.5")), balance_round=1)
    (send,) = decision.commands
    assert isinstance(send, SendOrder) and (send.side, send.quantity) == (Side.BUY, Decimal("0.50"))


def test_once_balanced_lighter2_enters_lighter1s_fill_after_the_wait() -> None:
    baselines = {"BP": Decimal(0), "L1": Decimal("-0.2"), "L2": Decimal("0.3")}
    state = planned(plan=plan(wait_secs=4.0, baselines=baselines), legs=legs("1", "0.3", topup="0.2", bp_balance="0.5"))
    decision = decide_balance(state, balance_round=2)
    (rest,) = decision.commands
    assert isinstance(rest, EnterRest)
    assert (rest.entry.role, rest.entry.side, rest.entry.quantity) == (Role.L2, Side.BUY, Decimal("0.5000"))
    assert rest.entry.client_ids == CLIENT_IDS[LegName.L2_ENTRY] and rest.entry.after_secs == 4.0
    assert (rest.confirm_hedge.role, rest.confirm_hedge.baseline, rest.confirm_hedge.expected_sign,
            rest.confirm_hedge.next_stage) == (Role.L1, Decimal("-0.2"), -1, Stage.WAIT)
    assert (rest.confirm_entry.role, rest.confirm_entry.baseline, rest.confirm_entry.expected_sign,
            rest.confirm_entry.next_stage) == (Role.L2, Decimal("0.3"), 1, Stage.REBALANCE)
    assert rest.then == Step(StepName.REBALANCE, {"attempt": 0, "step": 0})
    assert decision.result == {"balanced": True, "l2_quantity": "0.5000"}


def test_a_full_hedge_goes_straight_on() -> None:
    decision = decide_balance(planned(legs=legs("1", "1")), balance_round=0)
    assert [type(c) for c in decision.commands] == [EnterRest]


def test_past_the_last_round_the_entry_goes_on_unbalanced() -> None:
    # A third round (a copy, or a reduction that did not fill) sends nothing more: the loop rebalances.
    decision = decide_balance(planned(legs=legs("1", "0.3")), balance_round=2)
    (rest,) = decision.commands
    assert isinstance(rest, EnterRest) and rest.entry.quantity == Decimal("0.3000")
