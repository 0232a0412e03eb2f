"""rebalance_step and zero_streaks: the monitor's decisions on positions, unknown never zero."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.config import GroupConfig, HedgeParams
from orchestrator.flow import (
    Positions,
    backpack_from_fills,
    backpack_target,
    confirming_zero,
    rebalance_step,
    zero_legs,
    zero_streaks,
)
from venues.base import MarketRules, Side

L_STEP = Decimal("0.0001")


def rules(step: str = "0.001", min_qty: str | None = None) -> MarketRules:
    return MarketRules(symbol="ETH_USDC_PERP", tick_size=Decimal("0.01"), step_size=Decimal(step),
                       min_quantity=Decimal(min_qty or step))


def test_rebalance_moves_backpack_to_minus_the_lighter_sum() -> None:
    step = rebalance_step(Positions(Decimal("1"), Decimal("-1"), Decimal("0.5")), rules())
    assert step is not None
    assert (step.side, step.quantity, step.target) == (Side.SELL, Decimal("0.500"), Decimal("0.5"))
    step = rebalance_step(Positions(Decimal("-2"), Decimal("1"), Decimal("0.5")), rules())
    assert step is not None and (step.side, step.quantity) == (Side.BUY, Decimal("0.500"))


def test_within_one_step_or_below_the_minimum_is_hedged() -> None:
    assert rebalance_step(Positions(Decimal("0.0004"), Decimal("0"), Decimal("0")), rules()) is None
    assert rebalance_step(Positions(Decimal("0.05"), Decimal("0"), Decimal("0")), rules(min_qty="0.1")) is None


def test_unknown_positions_are_never_rebalanced() -> None:
    with pytest.raises(AssertionError):
        rebalance_step(Positions(Decimal(1), None, Decimal(0)), rules())


lots = st.integers(min_value=-10**6, max_value=10**6).map(lambda n: Decimal(n) * L_STEP)


@settings(max_examples=500, deadline=None)
@given(bp=lots, l1=lots, l2=lots, step=st.sampled_from(["0.0001", "0.001", "0.01", "0.1"]))
def test_a_rebalance_order_moves_toward_the_target(bp: Decimal, l1: Decimal, l2: Decimal, step: str) -> None:
    r = rules(step)
    order = rebalance_step(Positions(bp, l1, l2), r)
    target = -(l1 + l2)
    if order is None:
        return
    assert order.target == target
    assert order.quantity % r.step_size == 0 and order.quantity >= r.min_quantity
    assert order.side is (Side.BUY if target > bp else Side.SELL)


def test_half_a_backpack_step_of_drift_is_hedged() -> None:
    # Lighter's grid is finer: L1 at -0.0015 leaves Backpack 0.0005 (half its 0.001 step) from any
    # grid point either way. Buying 0.001 would only move the half step to the other side.
    assert rebalance_step(Positions(Decimal("0.001"), Decimal("-0.0015"), Decimal("0")), rules()) is None
    assert rebalance_step(Positions(Decimal("0.002"), Decimal("-0.0015"), Decimal("0")), rules()) is None
    # One and a half steps: one step reduces the drift to half a step, two would not reduce it.
    order = rebalance_step(Positions(Decimal("0"), Decimal("-0.0015"), Decimal("0")), rules())
    assert order is not None and (order.side, order.quantity) == (Side.BUY, Decimal("0.001"))
    # More than half a step is still traded.
    order = rebalance_step(Positions(Decimal("0"), Decimal("-0.0006"), Decimal("0")), rules())
    assert order is not None and (order.side, order.quantity) == (Side.BUY, Decimal("0.001"))


@settings(max_examples=500, deadline=None)
@given(bp=lots, l1=lots, l2=lots, step=st.sampled_from(["0.0001", "0.001", "0.01", "0.1"]),
       min_steps=st.sampled_from([1, 3, 10]))
@example(bp=Decimal("0"), l1=Decimal("-0.0005"), l2=Decimal("0"), step="0.001", min_steps=1)
def test_a_rebalance_order_strictly_reduces_the_drift(bp: Decimal, l1: Decimal, l2: Decimal, step: str,
                                                      min_steps: int) -> None:
    order = rebalance_step(Positions(bp, l1, l2), rules(step, str(Decimal(step) * min_steps)))
    if order is None:
        return
    after = bp + (order.quantity if order.side is Side.BUY else -order.quantity)
    target = -(l1 + l2)
    # Strictly: an order that leaves |drift| where it was (half a step each way) is the
    # sell-buy-sell oscillation of issue 16 item 9.
    assert abs(target - after) < abs(target - bp)


@settings(max_examples=500, deadline=None)
@given(bp=lots, l1=lots, l2=lots, step=st.sampled_from(["0.001", "0.01", "0.1"]))
@example(bp=Decimal("0"), l1=Decimal("-0.0015"), l2=Decimal("0"), step="0.001")
def test_after_one_rebalance_order_backpack_is_hedged(bp: Decimal, l1: Decimal, l2: Decimal, step: str) -> None:
    r = rules(step)
    order = rebalance_step(Positions(bp, l1, l2), r)
    if order is None:
        return
    after = bp + (order.quantity if order.side is Side.BUY else -order.quantity)
    assert rebalance_step(Positions(after, l1, l2), r) is None  # no second order, so no oscillation


def test_zero_streaks_count_fresh_zeros_and_reset_on_a_nonzero_read() -> None:
    s = zero_streaks(None, Positions(Decimal(1), Decimal(0), Decimal("0.5")), L_STEP)
    assert s == {"L1": 1, "L2": 0}
    s = zero_streaks(s, Positions(Decimal(1), Decimal("0.00001"), Decimal(0)), L_STEP)
    assert s == {"L1": 2, "L2": 1}
    s = zero_streaks(s, Positions(Decimal(1), Decimal("0.0001"), Decimal(0)), L_STEP)
    assert s == {"L1": 0, "L2": 2}


reading = st.one_of(st.none(), st.just(Decimal(0)), lots)


@settings(max_examples=500, deadline=None)
@given(reads=st.lists(st.tuples(reading, reading), max_size=30))
def test_an_unknown_read_neither_counts_nor_resets_a_zero_streak(reads: list[tuple[Decimal | None, Decimal | None]]) -> None:
    streaks: dict[str, int] | None = None
    model = {"L1": 0, "L2": 0}
    for l1, l2 in reads:
        before = dict(streaks or {"L1": 0, "L2": 0})
        streaks = zero_streaks(streaks, Positions(Decimal(0), l1, l2), L_STEP)
        for role, value in (("L1", l1), ("L2", l2)):
            if value is None:
                assert streaks[role] == before[role]
            else:
                model[role] = model[role] + 1 if abs(value) < L_STEP else 0
            assert streaks[role] == model[role]
    # a streak never exceeds the number of fresh reads of that leg
    fresh_l1 = sum(1 for l1, _ in reads if l1 is not None)
    assert (streaks or {"L1": 0})["L1"] <= fresh_l1


def test_positions_are_keyed_by_the_account_each_read_names() -> None:
    grp = GroupConfig(name="g", backpack="bp", lighter1="l1", lighter2="l2", params=HedgeParams())
    readings = [{"account": "l2", "quantity": "0.5"}, {"account": "bp", "quantity": "1"},
                {"account": "l1", "quantity": "-1"}]
    assert Positions.from_readings(readings, grp) == Positions(Decimal(1), Decimal(-1), Decimal("0.5"))
    # A missing or doubled read is unknown, never another account's number.
    assert Positions.from_readings(readings[:2], grp).l1 is None
    doubled = [*readings, {"account": "l1", "quantity": "0"}]
    assert Positions.from_readings(doubled, grp).l1 is None


@settings(max_examples=500, deadline=None)
@given(bp=lots, l1=lots, l2=lots, step=st.sampled_from(["0.0001", "0.001", "0.01", "0.1"]))
@example(bp=Decimal("0.001"), l1=Decimal("-0.0015"), l2=Decimal("0"), step="0.001")
def test_no_order_means_hedged_as_the_backpack_grid_allows(bp: Decimal, l1: Decimal, l2: Decimal, step: str) -> None:
    # With the venue minimum at one step, "no order" means no grid point is strictly nearer the
    # target: |drift| is at most half a step, the same bound an order leaves behind.
    r = rules(step)
    target = -(l1 + l2)
    order = rebalance_step(Positions(bp, l1, l2), r)
    after = bp if order is None else bp + (order.quantity if order.side is Side.BUY else -order.quantity)
    assert abs(target - after) <= r.step_size / 2


def test_a_lighter_leg_reading_zero_is_named_and_held_for_confirmation() -> None:
    positions = Positions(Decimal("-2"), Decimal("1"), Decimal("0.00001"))
    assert zero_legs(positions, L_STEP) == ["L2"]
    assert zero_legs(Positions(Decimal("-2"), Decimal("1"), None), L_STEP) == []  # unknown is not zero
    streaks = zero_streaks(None, positions, L_STEP)
    assert confirming_zero(streaks)
    assert not confirming_zero(zero_streaks(streaks, Positions(Decimal("-2"), Decimal("1"), Decimal("1")), L_STEP))
    # An unknown read in between keeps the confirmation going: it neither counts nor resets.
    assert confirming_zero(zero_streaks(streaks, Positions(None, None, None), L_STEP))


def test_backpack_is_decided_from_the_cycles_fills_and_a_disagreeing_read_is_read_again() -> None:
    read = Positions(Decimal("9.5"), Decimal("-9.5"), Decimal("9.5"))
    # The read still shows the entry a rebalance just sold: read again, trade on neither.
    positions, why = backpack_from_fills(read, Decimal("0"), Decimal("0.01"))
    assert positions is None and why == "Backpack read 9.5 but the cycle's fills put it at 0"
    # Within a step the fills decide; an unknown Backpack read is known from the fills.
    assert backpack_from_fills(read, Decimal("9.495"), Decimal("0.01"))[0] == Positions(
        Decimal("9.495"), Decimal("-9.5"), Decimal("9.5"))
    assert backpack_from_fills(Positions(None, Decimal(1), Decimal(1)), Decimal(-2), Decimal("0.01"))[0] == Positions(
        Decimal(-2), Decimal(1), Decimal(1))
    # No complete ledger (a leg in flight): the reads are all there is.
    assert backpack_from_fills(read, None, Decimal("0.01")) == (read, None)


# ---- own deltas: targets relative to the baselines the plan recorded (issue 16 item 5) ----------------

def test_a_backpack_position_held_before_the_cycle_is_not_sold() -> None:
    """Backpack held 0.5 before; the cycle bought 1, Lighter1 sold 1, Lighter2 bought 1: Backpack's
    target is base_bp - ((l1 - base_l1) + (l2 - base_l2)) = 0.5 - (-1 + 1) = 0.5: sell the cycle's 1, keep the 0.5."""
    baselines = Positions(Decimal("0.5"), Decimal(0), Decimal(0))
    positions = Positions(Decimal("1.5"), Decimal("-1"), Decimal("1"))
    step = rebalance_step(positions, rules(), baselines)
    assert step is not None and (step.side, step.quantity, step.target) == (Side.SELL, Decimal("1.000"), Decimal("0.5"))
    # The absolute rule would sell the held 0.5 as well.
    absolute = rebalance_step(positions, rules())
    assert absolute is not None and absolute.quantity == Decimal("1.500")
    assert rebalance_step(Positions(Decimal("0.5"), Decimal("-1"), Decimal("1")), rules(), baselines) is None


def test_lighter_baselines_move_the_target_by_the_cycles_own_deltas_only() -> None:
    baselines = Positions(Decimal(0), Decimal("2"), Decimal("-3"))
    positions = Positions(Decimal("0"), Decimal("1"), Decimal("-2"))  # own deltas L1 -1, L2 +1
    assert backpack_target(positions, baselines) == Decimal(0)
    assert rebalance_step(positions, rules(), baselines) is None


def test_zero_baselines_are_the_absolute_rule() -> None:
    positions = Positions(Decimal("1"), Decimal("-1"), Decimal("0.5"))
    assert backpack_target(positions, Positions(Decimal(0), Decimal(0), Decimal(0))) == backpack_target(positions)
    assert Positions.baselines_of(None) == Positions(Decimal(0), Decimal(0), Decimal(0))
    plan = {"baselines": {"BP": "0.5", "L1": "0", "L2": "-1.25"}}
    assert Positions.baselines_of(plan) == Positions(Decimal("0.5"), Decimal(0), Decimal("-1.25"))


def test_a_lighter_leg_counts_as_liquidated_when_its_own_delta_returns_to_zero() -> None:
    baselines = Positions(Decimal(0), Decimal("2"), Decimal(0))
    # Lighter1 held 2 before and the cycle sold 1: reading 1 is the open hedge, reading 2 its own zero.
    assert zero_streaks(None, Positions(Decimal(0), Decimal("1"), Decimal("1")), L_STEP, baselines)["L1"] == 0
    assert zero_streaks(None, Positions(Decimal(0), Decimal("2"), Decimal("1")), L_STEP, baselines)["L1"] == 1
    # A flat reading of a leg that held 2 is not the cycle's zero (its own delta is -2).
    assert zero_streaks({"L1": 1, "L2": 0}, Positions(Decimal(0), Decimal(0), Decimal("1")), L_STEP, baselines)["L1"] == 0
    assert zero_streaks({"L1": 1, "L2": 0}, Positions(Decimal(0), None, Decimal("1")), L_STEP, baselines)["L1"] == 1


@settings(max_examples=500, deadline=None)
@given(bp=lots, l1=lots, l2=lots, base_bp=lots, base_l1=lots, base_l2=lots,
       step=st.sampled_from(["0.0001", "0.001", "0.01", "0.1"]))
def test_a_relative_rebalance_never_trades_the_baselines(bp: Decimal, l1: Decimal, l2: Decimal, base_bp: Decimal,
                                                         base_l1: Decimal, base_l2: Decimal, step: str) -> None:
    """After the order the cycle's own net (positions less baselines) is smaller, whatever was held before;
    with no order it is within half a Backpack step (or below the minimum)."""
    r = rules(step)
    baselines = Positions(base_bp, base_l1, base_l2)
    positions = Positions(bp, l1, l2)
    own_net = (bp - base_bp) + (l1 - base_l1) + (l2 - base_l2)
    order = rebalance_step(positions, r, baselines)
    if order is None:
        assert abs(own_net) <= r.step_size / 2 or abs(own_net) < r.min_quantity + r.step_size
        return
    assert order.target == base_bp - ((l1 - base_l1) + (l2 - base_l2))
    signed = order.quantity if order.side is Side.BUY else -order.quantity
    assert abs(own_net + signed) < abs(own_net)
