"""plan_cycle and sides_for: sides follow Direction; sizes sit on every venue's step and minimums."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.planning import AccountSnapshot, PlanRefused, plan_cycle, sides_for
from venues.base import MarketRules, Side
from xtb_tasks.core.config import Direction, GroupConfig, HedgeParams, Role

GROUP = GroupConfig(name="g", backpack="bp", lighter1="l1", lighter2="l2")
STEPS = [Decimal("0.0001"), Decimal("0.001"), Decimal("0.01"), Decimal("0.1")]


def snap(account: str, step: Decimal = Decimal("0.001"), *, min_qty: Decimal | None = None,
         min_notional: Decimal = Decimal(0), bid: Decimal | None = Decimal("2000"),
         ask: Decimal | None = Decimal("2001"), collateral: Decimal | None = Decimal("100"),
         available: Decimal | None = Decimal("1000000"), position: Decimal | None = Decimal(0)) -> AccountSnapshot:
    rules = MarketRules(symbol="ETH", tick_size=Decimal("0.01"), step_size=step,
                        min_quantity=step if min_qty is None else min_qty, min_notional=min_notional)
    return AccountSnapshot(account=account, rules=rules, bid=bid, ask=ask, equity=collateral,
                           collateral=collateral, available=available, position=position)


def snaps(**by_role: AccountSnapshot) -> dict[Role, AccountSnapshot]:
    out = {Role.BP: snap("bp"), Role.L1: snap("l1"), Role.L2: snap("l2")}
    out.update({Role[k.upper()]: v for k, v in by_role.items()})
    return out


@pytest.mark.parametrize("direction", list(Direction))
def test_legs_follow_the_direction_bp_and_l2_alike_l1_opposite(direction: Direction) -> None:
    bp, l1, l2 = sides_for(direction)
    assert bp is (Side.BUY if direction is Direction.LONG_BACKPACK else Side.SELL)
    assert l1 is bp.opposite and l2 is bp


def test_collateral_sizing_matches_the_original_formula() -> None:
    params = HedgeParams(leverage=50.0, collateral_buffer=Decimal("0.96"))
    plan = plan_cycle(GROUP, params, snaps(), random.Random(1))
    # 100 × 0.96 × 50 / 2001 (ask when long) = 2.3988..., rounded down to 0.001
    assert plan.bp_size == Decimal("2.398")
    assert plan.reference_price == Decimal("2001")


def test_short_direction_prices_from_the_bid() -> None:
    plan = plan_cycle(GROUP, HedgeParams(direction=Direction.SHORT_BACKPACK), snaps(), random.Random(1))
    assert plan.reference_price == Decimal("2000")
    assert (plan.bp_side, plan.l1_side, plan.l2_side) == (Side.SELL, Side.BUY, Side.SELL)


@pytest.mark.parametrize("role", ["bp", "l1", "l2"])
def test_an_unknown_starting_position_refuses_the_cycle(role: str) -> None:
    with pytest.raises(PlanRefused, match="position is unknown"):
        plan_cycle(GROUP, HedgeParams(), snaps(**{role: snap(role, position=None)}))


def test_unknown_or_too_small_collateral_refuses() -> None:
    with pytest.raises(PlanRefused, match="collateral is unknown"):
        plan_cycle(GROUP, HedgeParams(), snaps(l1=snap("l1", collateral=None)))
    with pytest.raises(PlanRefused, match="not above min_collateral"):
        plan_cycle(GROUP, HedgeParams(min_collateral=Decimal("100")), snaps())


def test_an_empty_book_refuses() -> None:
    with pytest.raises(PlanRefused, match="order book is empty"):
        plan_cycle(GROUP, HedgeParams(), snaps(l1=snap("l1", bid=None, ask=None)))


def test_a_size_below_any_venue_minimum_refuses() -> None:
    with pytest.raises(PlanRefused, match="below L2"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("0.5")), snaps(l2=snap("l2", min_qty=Decimal("1"))))
    with pytest.raises(PlanRefused, match="below BP"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("0.5")), snaps(bp=snap("bp", min_notional=Decimal("5000"))))


def test_backpack_margin_that_cannot_carry_the_size_refuses() -> None:
    with pytest.raises(PlanRefused, match="margin"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1"), leverage=10.0), snaps(bp=snap("bp", available=Decimal("100"))))


def test_test_mode_sizes_at_the_largest_minimum_in_base_units() -> None:
    plan = plan_cycle(GROUP, HedgeParams(test_mode=True),
                      snaps(bp=snap("bp", min_qty=Decimal("0.01")), l2=snap("l2", min_notional=Decimal("40.02"))))
    assert plan.bp_size == Decimal("0.020")  # 40.02 / 2001 = 0.02 > 0.01


@settings(max_examples=300, deadline=None)
@given(
    direction=st.sampled_from(list(Direction)),
    collateral=st.decimals(min_value=Decimal("1"), max_value=Decimal("100000"), places=2),
    buffer=st.decimals(min_value=Decimal("0.1"), max_value=Decimal("1"), places=2),
    leverage=st.integers(min_value=1, max_value=100),
    price=st.decimals(min_value=Decimal("1"), max_value=Decimal("100000"), places=2),
    bp_step=st.sampled_from(STEPS), l_step=st.sampled_from(STEPS),
    bp_margin=st.decimals(min_value=Decimal("0"), max_value=Decimal("10000000"), places=2),
    seed=st.integers(0, 2**32),
)
def test_a_plan_respects_step_minimums_collateral_and_margin(
        direction: Direction, collateral: Decimal, buffer: Decimal, leverage: int, price: Decimal,
        bp_step: Decimal, l_step: Decimal, bp_margin: Decimal, seed: int) -> None:
    params = HedgeParams(direction=direction, collateral_buffer=buffer, leverage=float(leverage))
    book = {"bid": price, "ask": price + Decimal("0.01")}
    s = snaps(bp=snap("bp", bp_step, available=bp_margin, **book), l1=snap("l1", l_step, collateral=collateral, **book),
              l2=snap("l2", l_step, **book))
    try:
        plan = plan_cycle(GROUP, params, s, random.Random(seed))
    except PlanRefused:
        return
    ref = plan.reference_price
    assert ref == (book["ask"] if direction is Direction.LONG_BACKPACK else book["bid"])
    assert plan.bp_size % bp_step == 0
    assert plan.bp_size >= bp_step
    budget = collateral * buffer * leverage / ref
    assert plan.bp_size <= budget < plan.bp_size + bp_step  # rounded down, by less than one step
    assert plan.bp_size * ref / leverage <= bp_margin
    assert (plan.bp_side, plan.l1_side, plan.l2_side) == sides_for(direction)
    assert params.wait_min_secs <= plan.wait_secs <= params.wait_max_secs
    assert plan.baselines == {"BP": Decimal(0), "L1": Decimal(0), "L2": Decimal(0)}
