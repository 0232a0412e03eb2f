"""The exit in step (orchestrator.cycle.in_step): catch-up, capped Lighter closes, widening caps.

The invariants: a Backpack exit order never takes |net| above one Backpack step (it is at most the
net, on Backpack's grid); every order only takes back its own role's delta (reduce-only, never past
the baseline); a whole unwind with partial Lighter fills reads |net| within one step at every read
and ends with every Lighter leg closed.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.config import Role
from orchestrator.cycle.in_step import (
    ExitState,
    SlippageLadder,
    catch_up,
    lighter_closes,
    next_step,
    signed_fills,
    state_from_json,
    state_to_json,
)
from venues.base import MarketRules, Side

BP, L1, L2 = Role.BP, Role.L1, Role.L2
L_MIN = Decimal("0.005")
LIGHTER = SlippageLadder(0.001, 0.001, 0.01)
BACKPACK = SlippageLadder(0.005, 0.001, 0.01)


def rules(step: str, min_qty: str, symbol: str = "ETH") -> MarketRules:
    return MarketRules(symbol=symbol, tick_size=Decimal("0.01"), step_size=Decimal(step), min_quantity=Decimal(min_qty))


def state(bp: str, l1: str, l2: str, *, bp_step: str = "0.0001", baselines: dict[Role, str] | None = None) -> ExitState:
    return ExitState({BP: Decimal(bp), L1: Decimal(l1), L2: Decimal(l2)},
                     {k: Decimal(v) for k, v in (baselines or {}).items()},
                     {BP: rules(bp_step, bp_step, "ETH_USDC_PERP"), L1: rules("0.0001", str(L_MIN)),
                      L2: rules("0.0001", str(L_MIN))})


def apply(st_: ExitState, role: Role, side: Side, quantity: Decimal) -> ExitState:
    return st_.with_fills({role: side.sign * quantity})


def test_hedged_legs_close_lighter_first_with_the_starting_cap() -> None:
    step = next_step(state("50", "-50", "0"), 0, LIGHTER, BACKPACK)
    assert step.kind == "lighter_close"
    assert [(o.role, o.side, o.quantity, o.max_slippage) for o in step.orders] == [(L1, Side.BUY, Decimal(50), 0.001)]


def test_backpack_follows_what_the_lighter_close_filled() -> None:
    after = state("50", "-50", "0").with_fills({L1: Decimal("6")})
    order = catch_up(after, 0.005, 0.001)
    assert order is not None and (order.role, order.side, order.quantity) == (BP, Side.SELL, Decimal(6))


def test_a_liquidated_leg_is_not_traded_and_backpack_offsets_what_it_no_longer_hedges_first() -> None:
    # L1 -50, L2 +50 hedged by each other, Backpack +20 (a part rebalanced); L2 liquidated to zero:
    # one Backpack order puts the group back in step (an offset: it opens), the Lighter closes follow.
    step = next_step(state("20", "-50", "0"), 0, LIGHTER, BACKPACK)
    assert [(o.role, o.side, o.quantity, o.reduce_only) for o in step.orders] == [(BP, Side.BUY, Decimal(30), False)]
    step = next_step(state("50", "-30", "0"), 0, LIGHTER, BACKPACK)
    assert [(o.role, o.side, o.quantity) for o in step.orders] == [(BP, Side.SELL, Decimal(20))]
    assert lighter_closes(state("0", "-30", "0"), 0.001)[0].role == L1  # L2 reads zero: never traded


def test_backpack_alone_when_no_lighter_leg_is_open() -> None:
    step = next_step(state("10", "0", "0"), 0, LIGHTER, BACKPACK)
    assert [(o.role, o.side, o.quantity, o.max_slippage) for o in step.orders] == [(BP, Side.SELL, Decimal(10), 0.005)]
    assert next_step(state("0.00005", "0", "0"), 0, LIGHTER, BACKPACK).done


def test_unwinds_to_the_baselines_not_to_zero() -> None:
    held = {BP: "2", L1: "-1", L2: "0"}
    step = next_step(state("12", "-11", "0", baselines=held), 0, LIGHTER, BACKPACK)
    assert [(o.role, o.quantity) for o in step.orders] == [(L1, Decimal(10))]
    assert next_step(state("2", "-1", "0", baselines=held), 0, LIGHTER, BACKPACK).done
    # A reduce-only order stops at zero: a leg whose baseline lies beyond zero is closed, not flipped.
    assert [o.quantity for o in lighter_closes(state("0", "1", "0", baselines={L1: "-1"}), 0.001)] == [1]
    assert lighter_closes(state("0", "-2", "0", baselines={L1: "-1", BP: "-1"}), 0.001)[0].quantity == 1
    assert lighter_closes(state("0", "1", "0", baselines={L1: "2"}), 0.001) == []  # below baseline: no reduce


def test_caps_widen_per_step_up_to_the_maximum() -> None:
    assert [LIGHTER.cap(n) for n in (0, 1, 4)] == [0.001, 0.002, 0.005]
    assert LIGHTER.cap(50) == 0.01 and SlippageLadder(0.02, 0.001, 0.01).cap(3) == 0.02
    assert next_step(state("5", "-5", "0"), 3, LIGHTER, BACKPACK).orders[0].max_slippage == LIGHTER.cap(3)


def test_uneven_lighter_closes_are_offset_on_backpack_not_on_the_thin_lighter_leg() -> None:
    # L1 closed 30, L2 only 10: the 20 between them goes to Backpack's deep book at once, not to
    # another try on the Lighter book that just under-filled.
    after = state("0", "-50", "50").with_fills({L1: Decimal(30), L2: Decimal(-10)})
    order = catch_up(after, 0.005, 0.002)
    assert order is not None and (order.role, order.side, order.quantity, order.max_slippage, order.reduce_only) == \
        (BP, Side.SELL, Decimal(20), 0.005, False)
    # Backpack leased: the other Lighter leg takes it, reduce-only.
    order = catch_up(after, 0.005, 0.002, frozenset({BP}))
    assert order is not None and (order.role, order.side, order.quantity) == (L2, Side.SELL, Decimal(20))


def test_lighter_dust_is_not_taken_over_by_backpack() -> None:
    # L2 holds 0.003, below Lighter's 0.005 minimum: no order can close it, and an offset would only
    # move it to Backpack. The exit is done; the report names the dust.
    assert next_step(state("0", "0", "0.003"), 0, LIGHTER, BACKPACK).done
    order = catch_up(state("2", "0", "0.003"), 0.005, 0.002)
    assert order is not None and (order.role, order.side, order.quantity, order.reduce_only) == \
        (BP, Side.SELL, Decimal(2), True)


def test_signed_fills_and_state_round_trip() -> None:
    results = [{"account": "lighter1", "side": "buy", "filled": "6"}, {"account": "backpack", "side": "sell",
                                                                      "filled": "2.5"}, {"account": "x", "filled": "9"}]
    assert signed_fills(results, {"lighter1": L1, "backpack": BP}) == {L1: Decimal(6), BP: Decimal("-2.5")}
    st_ = state("1", "-1", "0", baselines={BP: "0.5"})
    assert state_from_json(state_to_json(st_)) == st_


amounts = st.decimals(min_value=Decimal("-60"), max_value=Decimal("60"), places=4)
bp_steps = st.sampled_from(["0.0001", "0.01"])


@settings(max_examples=400, deadline=None)
@given(bp=amounts, l1=amounts, l2=amounts, bp_step=bp_steps, step_number=st.integers(0, 30))
@example(bp=Decimal("50"), l1=Decimal("-44"), l2=Decimal("0"), bp_step="0.0001", step_number=0)
def test_the_next_backpack_exit_order_never_takes_net_above_one_step(bp: Decimal, l1: Decimal, l2: Decimal,
                                                                    bp_step: str, step_number: int) -> None:
    st_ = state(str(Decimal(bp).quantize(Decimal(bp_step))), str(l1), str(l2), bp_step=bp_step)
    for order in next_step(st_, step_number, LIGHTER, BACKPACK).orders:
        after = apply(st_, order.role, order.side, order.quantity)
        if order.reduce_only:
            # Only its own delta, toward the baseline, never through zero.
            assert abs(after.delta(order.role)) < abs(st_.delta(order.role))
            assert order.quantity <= st_.reducible(order.role)
        else:
            assert order.role == BP  # only Backpack offsets
        if order.role == BP:
            # Toward zero: within a step of it but for Lighter dust (which it leaves where it is).
            dust = sum((st_.delta(r) for r in (L1, L2) if st_.dust(r)), Decimal(0))
            assert abs(after.net_beyond_dust) < abs(st_.net_beyond_dust)
            assert abs(after.net - dust) < Decimal(bp_step)


@settings(max_examples=300, deadline=None)
@given(size=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("60"), places=2),
       liquidated=st.sampled_from([None, L1, L2]), rebalanced=st.booleans(), bp_step=bp_steps,
       fractions=st.lists(st.decimals(min_value=Decimal("0.05"), max_value=Decimal(1), places=2), min_size=1))
def test_an_unwind_with_partial_lighter_fills_stays_within_one_step_and_closes(
        size: Decimal, liquidated: Role | None, rebalanced: bool, bp_step: str, fractions: list[Decimal]) -> None:
    # Hedged as in monitoring: L1 short, L2 long, Backpack flat; a liquidation zeroes one Lighter leg
    # and (today's monitor) Backpack may have been rebalanced to hedge the survivor.
    positions = {BP: Decimal(0), L1: -size, L2: size}
    if liquidated:
        positions[liquidated] = Decimal(0)
        if rebalanced:
            positions[BP] = -(positions[L1] + positions[L2])
    st_ = state(str(positions[BP]), str(positions[L1]), str(positions[L2]), bp_step=bp_step)
    bound = max(abs(st_.net), Decimal(bp_step), L_MIN)
    for n in range(400):
        step = next_step(st_, n, LIGHTER, BACKPACK)
        if step.done:
            break
        if step.kind == "catch_up":
            st_ = apply(st_, step.orders[0].role, step.orders[0].side, step.orders[0].quantity)
        else:
            # An IOC on a thin book fills part (at least one step), the catch-up that follows fills.
            fraction = fractions[n % len(fractions)]
            for order in step.orders:
                filled = max((order.quantity * fraction).quantize(Decimal("0.0001")), Decimal("0.0001"))
                st_ = apply(st_, order.role, order.side, min(filled, order.quantity))
            match = catch_up(st_, BACKPACK.cap(n), LIGHTER.cap(n))
            if match is not None:
                st_ = apply(st_, match.role, match.side, match.quantity)
        assert abs(st_.net) <= bound, (n, st_.positions)
    assert next_step(st_, 0, LIGHTER, BACKPACK).done
    assert all(abs(st_.delta(role)) < L_MIN for role in (L1, L2)), st_.positions
    assert abs(st_.net) < max(Decimal(bp_step), L_MIN)


# ---- a role whose account lease is held gets no order --------------------------------------------

def test_lighter_legs_that_hedge_each_other_are_not_closed_while_one_of_them_is_leased() -> None:
    # Backpack already caught up; L1 and L2 hedge each other. Closing L1 alone while L2 cannot move
    # would leave the group naked by L2's whole position.
    hedged = state("0", "-9.5", "9.5")
    for held in (L1, L2):
        step = next_step(hedged, 1, LIGHTER, BACKPACK, frozenset({held}))
        assert (step.kind, step.orders, step.done) == ("wait", (), False)
    assert next_step(hedged, 1, LIGHTER, BACKPACK, frozenset({BP})).kind == "lighter_close"


def test_the_catch_up_takes_another_role_on_the_nets_side_when_the_first_is_leased() -> None:
    # Net +5: Backpack (long 5) and L2 (long 10) are on its side; Backpack comes first unless leased.
    off = state("5", "-10", "10")
    assert [(o.role, o.side, o.quantity) for o in next_step(off, 0, LIGHTER, BACKPACK).orders] == \
        [(BP, Side.SELL, Decimal(5))]
    step = next_step(off, 0, LIGHTER, BACKPACK, frozenset({BP}))
    assert [(o.role, o.side, o.quantity) for o in step.orders] == [(L2, Side.SELL, Decimal(5))]


def test_a_catch_up_only_a_leased_role_can_take_waits() -> None:
    # Net +9.5 on L2 alone: Backpack offsets it; with Backpack leased too, nothing else may.
    step = next_step(state("0", "0", "9.5"), 2, LIGHTER, BACKPACK, frozenset({L2}))
    assert [(o.role, o.side, o.quantity) for o in step.orders] == [(BP, Side.SELL, Decimal("9.5"))]
    step = next_step(state("0", "0", "9.5"), 2, LIGHTER, BACKPACK, frozenset({L2, BP}))
    assert (step.kind, step.orders) == ("wait", ())
    assert next_step(state("0", "0", "0"), 2, LIGHTER, BACKPACK, frozenset({L2})).done
