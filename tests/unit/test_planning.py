"""plan_cycle and sides_for: sides follow Direction; sizes sit on every venue's step and minimums; a cycle
starts only on flat accounts (or with allow_existing_positions) that can carry it by their own venue's margin."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import Direction, GroupConfig, HedgeParams, Role
from orchestrator.cycle.planning import AccountSnapshot, PlanRefused, margin_needed, plan_cycle, sides_for
from venues.base import MarketRules, Side
from venues.margin import InitialMargin

GROUP = GroupConfig(name="g", backpack="bp", lighter1="l1", lighter2="l2")
STEPS = [Decimal("0.0001"), Decimal("0.001"), Decimal("0.01"), Decimal("0.1")]
TWO_PERCENT = InitialMargin(Decimal("0.02"))
#: The captured Lighter ETH market: default 500 bp (20x), the account may go down to 200 bp (50x).
LIGHTER_ETH = InitialMargin(Decimal("0.05"), lowest=Decimal("0.02"))
#: The captured Backpack ETH_USDC_PERP imfFunction.
BACKPACK_ETH = InitialMargin(Decimal("0.02"), Decimal("0.0000935"))
NO_FEES = {"backpack_taker_fee": Decimal(0), "lighter_taker_fee": Decimal(0)}


def snap(account: str, step: Decimal = Decimal("0.001"), *, min_qty: Decimal | None = None,
         min_notional: Decimal = Decimal(0), bid: Decimal | None = Decimal("2000"),
         ask: Decimal | None = Decimal("2001"), collateral: Decimal | None = Decimal("100"),
         available: Decimal | None = Decimal("1000000"), position: Decimal | None = Decimal(0),
         imf: InitialMargin | None = TWO_PERCENT) -> AccountSnapshot:
    rules = MarketRules(symbol="ETH", tick_size=Decimal("0.01"), step_size=step,
                        min_quantity=step if min_qty is None else min_qty, min_notional=min_notional,
                        initial_margin=imf)
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
    # 1 ETH at 2001 by Backpack's imfFunction (2 %) = 40.02, plus 2 × 0.05 % taker = 2.001.
    with pytest.raises(PlanRefused, match=r"backpack \(bp\) available margin 40 cannot carry 1.000 at 2001: "
                                          r"needs 42.02 \(initial margin 2.00%, 50x"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1")), snaps(bp=snap("bp", available=Decimal("40"), imf=BACKPACK_ETH)))


def test_lighter2_margin_is_checked_by_its_own_venue_rule() -> None:
    """Unchecked, Lighter2's leg would be refused by the venue after the others traded.
    1 ETH at 5 % (the market's default, 20x) = 100.05, plus 2 × 0.028 % taker."""
    with pytest.raises(PlanRefused, match=r"lighter2 \(l2\) available margin 50 cannot carry 1.000 at 2001: "
                                          r"needs 101.17 .*5.00%, 20x.* allows 2.00% with a higher leverage setting"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1")), snaps(l2=snap("l2", available=Decimal("50"), imf=LIGHTER_ETH)))


def test_a_lighter_account_checks_at_its_own_leverage_setting_where_the_venue_reports_it() -> None:
    raised = dataclasses.replace(snap("l2", available=Decimal("50"), imf=LIGHTER_ETH),
                                 account_margin_fraction=Decimal("0.02"))
    # 1 ETH at 2 % = 40.02 + fees 1.12: carried at 50x where the market's default 5 % was not.
    plan_cycle(GROUP, HedgeParams(size=Decimal("1")), snaps(l2=raised))
    lowered = dataclasses.replace(snap("l1", available=Decimal("150"), imf=LIGHTER_ETH),
                                  account_margin_fraction=Decimal("0.1"))
    with pytest.raises(PlanRefused, match=r"lighter1 \(l1\) .*needs 201.1[0-9] \(initial margin 10.00%, 10x"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1")), snaps(l1=lowered))
    data = {"account": "l1", "rules": MarketRules("ETH", Decimal("0.01"), Decimal("0.0001"), Decimal("0.005"),
                                                  initial_margin=LIGHTER_ETH).to_json(),
            "initial_margin_fraction": "0.1"}
    assert AccountSnapshot.from_json(data).margin_rule() == InitialMargin(Decimal("0.1"), lowest=Decimal("0.02"))
    assert AccountSnapshot.from_json({**data, "initial_margin_fraction": None}).margin_rule() == LIGHTER_ETH


def test_the_fee_allowance_refuses_an_account_that_only_carries_the_margin() -> None:
    exact = Decimal("1") * Decimal("2001") * Decimal("0.05")
    accounts = snaps(l1=snap("l1", available=exact, imf=LIGHTER_ETH))
    plan_cycle(GROUP, HedgeParams(size=Decimal("1"), **NO_FEES), accounts)
    with pytest.raises(PlanRefused, match=r"lighter1 \(l1\).*plus entry and exit fees"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1")), accounts)


def test_an_unpublished_margin_rule_or_unknown_margin_refuses() -> None:
    with pytest.raises(PlanRefused, match="published no initial-margin rule"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1")), snaps(l2=snap("l2", imf=None)))
    with pytest.raises(PlanRefused, match=r"lighter1 \(l1\) available margin is unknown"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1")), snaps(l1=snap("l1", available=None, collateral=None)))
    # Equity stands in for an unreported available margin only while the account is flat.
    plan_cycle(GROUP, HedgeParams(size=Decimal("1")), snaps(l1=snap("l1", available=None)))
    held = snap("l1", available=None, position=Decimal("1"))
    with pytest.raises(PlanRefused, match=r"lighter1 \(l1\) available margin is unknown"):
        plan_cycle(GROUP, HedgeParams(size=Decimal("1"), allow_existing_positions=True), snaps(l1=held))


def test_backpack_imf_function_grows_with_the_square_root_of_the_size() -> None:
    small = margin_needed(Role.BP, snap("bp", imf=BACKPACK_ETH), Decimal("1"), Decimal("2000"), HedgeParams(**NO_FEES))
    # 0.0000935 × √100000 = 0.0296 > 0.02
    large = margin_needed(Role.BP, snap("bp", imf=BACKPACK_ETH), Decimal("100000"), Decimal("2000"),
                          HedgeParams(**NO_FEES))
    assert small == Decimal("40.00")
    assert large is not None and large / (Decimal("100000") * 2000) > Decimal("0.0295")


@pytest.mark.parametrize("role", ["bp", "l1", "l2"])
def test_an_account_holding_a_position_refuses_the_cycle(role: str) -> None:
    """Started, the cycle would rebalance or flatten a position it never opened."""
    name = Role[role.upper()].value
    with pytest.raises(PlanRefused, match=rf"^{name} \({role}\) already holds a position of -0.005; flatten it or "
                                          r"set allow_existing_positions = true$"):
        plan_cycle(GROUP, HedgeParams(), snaps(**{role: snap(role, position=Decimal("-0.005"))}))


def test_dust_below_the_venue_minimum_is_carried_as_the_baseline_not_refused() -> None:
    # Lighter2 holds 0.003 with a 0.005 minimum: no order can close it, so refusing would stop the
    # group for good. At the minimum it is a position like any other.
    dusty = snaps(l2=snap("l2", Decimal("0.0001"), min_qty=Decimal("0.005"), position=Decimal("0.003")))
    assert plan_cycle(GROUP, HedgeParams(), dusty).baselines["L2"] == Decimal("0.003")
    held = snaps(l2=snap("l2", Decimal("0.0001"), min_qty=Decimal("0.005"), position=Decimal("0.005")))
    with pytest.raises(PlanRefused, match=r"already holds a position of 0\.005"):
        plan_cycle(GROUP, HedgeParams(), held)


def test_less_than_one_step_is_flat_and_allow_existing_positions_records_the_baselines() -> None:
    plan = plan_cycle(GROUP, HedgeParams(), snaps(bp=snap("bp", position=Decimal("0.0009"))))
    assert plan.baselines["BP"] == Decimal("0.0009")
    held = snaps(bp=snap("bp", position=Decimal("0.5")), l2=snap("l2", position=Decimal("-1.25")))
    plan = plan_cycle(GROUP, HedgeParams(allow_existing_positions=True), held)
    assert plan.baselines == {"BP": Decimal("0.5"), "L1": Decimal(0), "L2": Decimal("-1.25")}
    with pytest.raises(PlanRefused, match="position is unknown"):
        plan_cycle(GROUP, HedgeParams(allow_existing_positions=True), snaps(l1=snap("l1", position=None)))


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
    s = snaps(bp=snap("bp", bp_step, available=bp_margin, imf=BACKPACK_ETH, **book),
              l1=snap("l1", l_step, collateral=collateral, **book), l2=snap("l2", l_step, **book))
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
    assert plan.bp_size * ref * BACKPACK_ETH.fraction(plan.bp_size) <= bp_margin
    assert (plan.bp_side, plan.l1_side, plan.l2_side) == sides_for(direction)
    assert params.wait_min_secs <= plan.wait_secs <= params.wait_max_secs
    assert plan.baselines == {"BP": Decimal(0), "L1": Decimal(0), "L2": Decimal(0)}


fractions = st.decimals(min_value=Decimal("0.005"), max_value=Decimal("1"), places=4)
fee_rates = st.decimals(min_value=Decimal(0), max_value=Decimal("0.01"), places=5)
margins = st.decimals(min_value=Decimal(0), max_value=Decimal("1000000"), places=2)


@settings(max_examples=300, deadline=None)
@given(size=st.decimals(min_value=Decimal("0.001"), max_value=Decimal("1000"), places=3),
       price=st.decimals(min_value=Decimal("1"), max_value=Decimal("100000"), places=2),
       imfs=st.tuples(fractions, fractions, fractions), factor=st.sampled_from([Decimal(0), Decimal("0.0001")]),
       available=st.tuples(margins, margins, margins), fees=st.tuples(fee_rates, fee_rates),
       direction=st.sampled_from(list(Direction)))
def test_a_plan_never_exceeds_any_accounts_available_margin(
        size: Decimal, price: Decimal, imfs: tuple[Decimal, ...], factor: Decimal, available: tuple[Decimal, ...],
        fees: tuple[Decimal, Decimal], direction: Direction) -> None:
    params = HedgeParams(size=size, direction=direction, backpack_taker_fee=fees[0], lighter_taker_fee=fees[1])
    book = {"bid": price, "ask": price + Decimal("0.01")}
    accounts = {role: snap(role.short.lower(), available=avail, imf=InitialMargin(imf, factor), **book)
                for role, imf, avail in zip((Role.BP, Role.L1, Role.L2), imfs, available, strict=True)}
    try:
        plan = plan_cycle(GROUP, params, accounts)
    except PlanRefused as refused:
        assert "available margin" in str(refused) or "below" in str(refused)
        return
    sides = dict(zip((Role.BP, Role.L1, Role.L2), (plan.bp_side, plan.l1_side, plan.l2_side), strict=True))
    for role, account in accounts.items():
        quantity = account.rules.quantize_size(size)
        taken = account.price_for(sides[role])
        assert taken is not None and account.available is not None and account.rules.initial_margin is not None
        fee = params.backpack_taker_fee if role is Role.BP else params.lighter_taker_fee
        entry_and_exit = quantity * taken * (account.rules.initial_margin.fraction(quantity) + 2 * fee)
        assert entry_and_exit <= account.available, role
