"""What an exit concludes from the cycle's own legs (orchestrator.cycle.report on typed states): the
fills ledger, where it contradicts a flat read, and the results keyed by the account they name."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from core.legs import Leg, LegState
from orchestrator.cycle.report import backpack_fills_imply, exit_is_flat, results_by_role
from orchestrator.cycle.state import CycleState, Positions
from tests.helpers.cycle_states import cycle_state
from venues.base import Side

ACCOUNTS = {"bp": "BP", "l1": "L1", "l2": "L2"}
STEPS = {"BP": Decimal("0.001"), "L1": Decimal("0.0001"), "L2": Decimal("0.0001")}


def leg(account: str, side: str, filled: str, state: str = "filled") -> Leg:
    q = Decimal(filled)
    return Leg(account, "ETH", Side(side), 1, q, q, LegState(state))


def cycle(*legs: Leg, baseline: str = "0") -> CycleState:
    base = Decimal(baseline)
    state = cycle_state(baselines=Positions(base, base, base))
    return msgspec.structs.replace(state, legs={f"leg{n}": one for n, one in enumerate(legs)})


def own_fills(state: CycleState) -> dict[str, Decimal]:
    """The cycle's ledger under the roles' short names."""
    return {role.short: quantity for role, quantity in state.ledger().items()}


def test_the_ledger_adds_the_signed_legs_exit_orders_included_to_the_baselines() -> None:
    state = cycle(leg("bp", "buy", "1"), leg("l1", "sell", "1"), leg("l2", "buy", "1"), leg("bp", "sell", "1"),
                  leg("l2", "sell", "0.4"), leg("l1", "buy", "1"))
    assert own_fills(state) == {"BP": Decimal(0), "L1": Decimal(0), "L2": Decimal("0.6")}


def test_a_leg_in_flight_leaves_its_role_out() -> None:
    for in_flight in ("armed", "submitting", "open", "partially_filled"):
        state = cycle(leg("bp", "buy", "1"), leg("l1", "sell", "0", in_flight))
        assert own_fills(state) == {"BP": Decimal(1), "L2": Decimal(0)}, in_flight


signed_fill = st.tuples(st.sampled_from(["bp", "l1", "l2"]), st.sampled_from(["buy", "sell"]),
                        st.integers(0, 10**5).map(lambda n: Decimal(n) / 1000))


@settings(max_examples=300, deadline=None)
@given(fills=st.lists(signed_fill, max_size=12), baseline=st.integers(-5, 5))
def test_the_ledger_is_the_baselines_plus_the_signed_fills(fills: list[tuple[str, str, Decimal]],
                                                           baseline: int) -> None:
    state = cycle(*(leg(a, side, str(q)) for a, side, q in fills), baseline=str(baseline))
    want = {r: Decimal(baseline) for r in ("BP", "L1", "L2")}
    for account, side, q in fills:
        want[ACCOUNTS[account]] += q if side == "buy" else -q
    assert own_fills(state) == want


@settings(max_examples=300, deadline=None)
@given(fills=st.lists(signed_fill, max_size=12))
def test_only_backpack_is_held_to_its_fills_and_sign_symmetrically(fills: list[tuple[str, str, Decimal]]) -> None:
    swap = {"buy": "sell", "sell": "buy"}
    state = cycle(*(leg(a, s, str(q)) for a, s, q in fills))
    mirrored = cycle(*(leg(a, swap[s], str(q)) for a, s, q in fills))
    bp = own_fills(state)["BP"]
    implied, mirrored_implied = backpack_fills_imply(state, STEPS), backpack_fills_imply(mirrored, STEPS)
    assert (implied is not None) is (abs(bp) >= STEPS["BP"]), (implied, bp)
    assert implied == (None if implied is None else bp)
    assert mirrored_implied == (None if implied is None else -bp)


def test_less_than_one_step_left_is_not_a_disagreement() -> None:
    state = cycle(leg("l1", "sell", "0.00005"), leg("bp", "buy", "0.001"))
    assert backpack_fills_imply(state, STEPS) == Decimal("0.001")
    assert backpack_fills_imply(state, {}) == Decimal("0.001")  # the default step


def test_a_lighter_leg_the_venue_moved_is_never_a_doubt() -> None:
    # Liquidated, partly liquidated or deleveraged: no leg of the cycle says so; the read does.
    assert backpack_fills_imply(cycle(leg("l1", "sell", "1"), leg("l2", "buy", "0.5")), STEPS) is None


def test_exit_results_are_keyed_by_the_account_they_name_not_their_position() -> None:
    results = [{"account": "l1", "flat": True}, {"account": "bp", "flat": True}, {"account": "l2", "flat": False}]
    by_role = results_by_role(results, ACCOUNTS)
    assert {role: r["account"] for role, r in by_role.items()} == {"L1": "l1", "BP": "bp", "L2": "l2"}
    assert not exit_is_flat(by_role)


def test_a_missing_repeated_or_unknown_result_is_never_flat() -> None:
    two = [{"account": "bp", "flat": True}, {"account": "l1", "flat": True}]
    assert not exit_is_flat(results_by_role(two, ACCOUNTS))
    repeated = [*two, {"account": "l1", "flat": True}]
    assert not exit_is_flat(results_by_role(repeated, ACCOUNTS))
    unknown = [*two, {"account": "other", "flat": True}]
    assert not exit_is_flat(results_by_role(unknown, ACCOUNTS))
    assert exit_is_flat(results_by_role([*two, {"account": "l2", "flat": True}], ACCOUNTS))


def test_backpack_at_its_baseline_is_no_doubt() -> None:
    # Backpack held 0.5 before the cycle, bought 1 and sold 1 in it: flat as far as the cycle goes.
    state = cycle(leg("bp", "buy", "1"), leg("bp", "sell", "1"), baseline="0.5")
    assert backpack_fills_imply(state, STEPS) is None
    assert backpack_fills_imply(cycle(leg("bp", "buy", "1"), baseline="0.5"), STEPS) == Decimal("1.0")
