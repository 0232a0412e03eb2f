"""balance_entry: the Lighter1 hedge is topped up once, then Backpack is brought down to it, so the
net during the random wait is within one Backpack step."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.cycle.entry import EntryBalance, balance_entry
from venues.base import MarketRules

L = MarketRules(symbol="ETH", tick_size=Decimal("0.01"), step_size=Decimal("0.0001"), min_quantity=Decimal("0.005"))
BP = MarketRules(symbol="ETH_USDC_PERP", tick_size=Decimal("0.01"), step_size=Decimal("0.01"),
                 min_quantity=Decimal("0.01"))


def test_a_full_hedge_or_one_within_a_percent_is_done() -> None:
    assert balance_entry(Decimal("9.59"), Decimal("9.59"), L, BP, topped_up=False) == EntryBalance()
    assert balance_entry(Decimal("10"), Decimal("9.95"), L, BP, topped_up=False) == EntryBalance(
        bp_reduce=Decimal("0.05"))  # no top-up for the last half percent: Backpack follows Lighter1


def test_a_partial_hedge_is_topped_up_once_then_backpack_follows_it() -> None:
    assert balance_entry(Decimal("10"), Decimal("3"), L, BP, topped_up=False) == EntryBalance(topup=Decimal("7.0000"))
    # The top-up filled only 2.1 more: no second top-up, Backpack comes down to the 5.1 Lighter1 holds.
    assert balance_entry(Decimal("10"), Decimal("5.1"), L, BP, topped_up=True) == EntryBalance(
        bp_reduce=Decimal("4.90"))


def test_a_remainder_below_the_lighter_minimum_is_taken_off_backpack_instead() -> None:
    assert balance_entry(Decimal("0.4"), Decimal("0.396"), L, BP, topped_up=False) == EntryBalance()
    assert balance_entry(Decimal("0.4"), Decimal("0.3"), L, BP, topped_up=True) == EntryBalance(
        bp_reduce=Decimal("0.10"))


@settings(max_examples=300, deadline=None)
@given(bp=st.integers(1, 100_000).map(lambda n: Decimal(n) * BP.step_size),
       first=st.integers(0, 100), second=st.integers(0, 100))
def test_after_the_rounds_the_group_is_within_one_backpack_step(bp: Decimal, first: int, second: int) -> None:
    # Lighter1 fills first% of its order, its top-up second% of the rest; Backpack's reduction fills.
    l1 = L.quantize_size(bp * first / 100, rounding=ROUND_DOWN)
    held = bp
    for round_ in range(3):
        step = balance_entry(held, l1, L, BP, topped_up=round_ > 0)
        if step.topup is not None:
            assert round_ == 0, "a second top-up"
            l1 += L.quantize_size(step.topup * second / 100, rounding=ROUND_DOWN)
        elif step.bp_reduce is not None:
            assert step.bp_reduce <= held
            held -= step.bp_reduce
        else:
            break
    assert abs(held - l1) <= BP.step_size or held < BP.min_quantity, (held, l1)
