"""next_cycle, expected_positions and fills_disagree: what an exit concludes from the record."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import Direction, GroupConfig, HedgeParams, Settings
from core.cycle_record import ExitReason
from core.legs import Leg, LegState
from orchestrator.cycle.report import (
    CONTINUE_AFTER,
    exit_is_flat,
    expected_positions,
    fills_disagree,
    next_cycle,
    results_by_role,
)
from venues.base import Side

ACCOUNTS = {"bp": "BP", "l1": "L1", "l2": "L2"}
STEPS = {"BP": Decimal("0.001"), "L1": Decimal("0.0001"), "L2": Decimal("0.0001")}


def config(**params: Any) -> Settings:
    group = GroupConfig(name="g", backpack="bp", lighter1="l1", lighter2="l2", params=HedgeParams(**params))
    return Settings(path=None, redis_url=None, accounts={}, groups={"g": group})


def record(index: int = 0, **overrides: Any) -> dict[str, Any]:
    return {"group": "g", "cycle_index": index, "overrides": overrides}


@pytest.mark.parametrize("reason", sorted(CONTINUE_AFTER))
def test_a_flat_exit_after_a_hedge_reason_starts_the_next_cycle(reason: str) -> None:
    nxt = next_cycle(config(max_cycles=3, reverse_on_timeout=False).groups, record(0), reason, True)
    assert nxt == {"group": "g", "cycle_index": 1}


@pytest.mark.parametrize("reason", [r.value for r in ExitReason if r.value not in CONTINUE_AFTER])
def test_a_failure_exit_stops_the_run(reason: str) -> None:
    assert next_cycle(config(max_cycles=3).groups, record(0), reason, True) is None


def test_an_exit_that_is_not_flat_stops_the_run() -> None:
    assert next_cycle(config(max_cycles=3).groups, record(0), ExitReason.TIMEOUT.value, False) is None


def test_an_unknown_group_stops_the_run() -> None:
    assert next_cycle(config(max_cycles=3).groups, {"group": "gone"}, ExitReason.TIMEOUT.value, True) is None


@settings(max_examples=300, deadline=None)
@given(max_cycles=st.integers(1, 20), index=st.integers(0, 25), reason=st.sampled_from([r.value for r in ExitReason]),
       reverse=st.booleans(), direction=st.sampled_from(list(Direction)), via_override=st.booleans())
def test_next_cycle_stops_at_max_cycles_and_flips_only_after_a_timeout(
        max_cycles: int, index: int, reason: str, reverse: bool, direction: Direction, via_override: bool) -> None:
    base = {"max_cycles": max_cycles, "reverse_on_timeout": reverse}
    if via_override:
        settings_, data = config(**base), record(index, direction=direction.value)
    else:
        settings_, data = config(direction=direction, **base), record(index)
    nxt = next_cycle(settings_.groups, data, reason, True)
    if reason not in CONTINUE_AFTER or index + 1 >= max_cycles:
        assert nxt is None
        return
    assert nxt is not None and nxt["cycle_index"] == index + 1 < max_cycles
    now = Direction(nxt.get("direction", direction.value))
    flips = reason == ExitReason.TIMEOUT.value and reverse
    assert (now is not direction) is flips


def leg(account: str, side: str, filled: str, state: str = "filled") -> dict[str, Any]:
    return Leg(account, "ETH", Side(side), 1, Decimal(filled), Decimal(filled), LegState(state)).to_json()


def cycle(baselines: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    return {"plan": {"baselines": baselines or {"BP": "0", "L1": "0", "L2": "0"}}, **fields}


def test_expected_positions_add_the_signed_legs_and_flatten_orders_to_the_baselines() -> None:
    data = cycle({"BP": "0.5", "L1": "0", "L2": "0"},
                 **{"leg:bp_entry": leg("bp", "buy", "1"), "leg:l1_hedge": leg("l1", "sell", "1"),
                    "leg:l2_entry": leg("l2", "buy", "1"), "leg:rebalance:1": leg("bp", "sell", "1"),
                    "exit_attempts": 1,
                    # In any order: each result is its account's, whatever its position in the chord.
                    "exit_results:1": [{"account": "l2", "orders": [{"side": "sell", "filled": "0.4"}]},
                                       {"account": "bp", "orders": [{"side": "sell", "filled": "0.5"}]},
                                       {"account": "l1", "orders": [{"side": "buy", "filled": "1"}]}]})
    assert expected_positions(data, ACCOUNTS) == {"BP": Decimal(0), "L1": Decimal(0), "L2": Decimal("0.6")}


def test_a_leg_in_flight_leaves_its_role_out() -> None:
    for state in ("armed", "submitting", "open", "partially_filled"):
        data = cycle(**{"leg:bp_entry": leg("bp", "buy", "1"), "leg:l1_hedge": leg("l1", "sell", "0", state)})
        assert expected_positions(data, ACCOUNTS) == {"BP": Decimal(1), "L2": Decimal(0)}, state


def test_a_leg_record_that_does_not_parse_leaves_its_role_out() -> None:
    unknown = {**leg("l1", "sell", "1"), "state": "sending"}  # no such state: unknown, never zero
    data = cycle(**{"leg:bp_entry": leg("bp", "buy", "1"), "leg:l1_hedge": unknown})
    assert expected_positions(data, ACCOUNTS) == {"BP": Decimal(1), "L2": Decimal(0)}


def test_an_exit_attempt_that_never_reported_leaves_no_ledger() -> None:
    data = cycle(**{"leg:bp_entry": leg("bp", "buy", "1"), "exit_attempts": 2, "exit_results:1": []})
    assert expected_positions(data, ACCOUNTS) == {}
    assert fills_disagree(data, ACCOUNTS, STEPS, reason="timeout") == []


signed_fill = st.tuples(st.sampled_from(["bp", "l1", "l2"]), st.sampled_from(["buy", "sell"]),
                        st.integers(0, 10**5).map(lambda n: Decimal(n) / 1000))


@settings(max_examples=300, deadline=None)
@given(fills=st.lists(signed_fill, max_size=12), baseline=st.integers(-5, 5))
def test_expected_positions_are_the_baselines_plus_the_signed_fills(
        fills: list[tuple[str, str, Decimal]], baseline: int) -> None:
    data = cycle({r: str(baseline) for r in ("BP", "L1", "L2")},
                 **{f"leg:{i}": leg(a, side, str(q)) for i, (a, side, q) in enumerate(fills)})
    want = {r: Decimal(baseline) for r in ("BP", "L1", "L2")}
    for account, side, q in fills:
        want[ACCOUNTS[account]] += q if side == "buy" else -q
    assert expected_positions(data, ACCOUNTS) == want


@settings(max_examples=300, deadline=None)
@given(fills=st.lists(signed_fill, max_size=12),
       reason=st.sampled_from([r.value for r in ExitReason]))
def test_fills_disagree_is_sign_symmetric_and_respects_each_step(
        fills: list[tuple[str, str, Decimal]], reason: str) -> None:
    def data(flip: bool) -> dict[str, Any]:
        swap = {"buy": "sell", "sell": "buy"}
        return cycle(**{f"leg:{i}": leg(a, swap[s] if flip else s, str(q)) for i, (a, s, q) in enumerate(fills)})

    doubts = fills_disagree(data(False), ACCOUNTS, STEPS, reason=reason)
    mirrored = fills_disagree(data(True), ACCOUNTS, STEPS, reason=reason)
    assert [d.split()[0] for d in doubts] == [d.split()[0] for d in mirrored]
    expected = expected_positions(data(False), ACCOUNTS)
    liquidated = {"lighter1_zero": "L1", "lighter2_zero": "L2"}.get(reason)
    flagged = {d.split()[0] for d in doubts}
    for role, q in expected.items():
        assert (role in flagged) is (role != liquidated and abs(q) >= STEPS[role])


def test_less_than_one_step_left_is_not_a_disagreement() -> None:
    data = cycle(**{"leg:l1": leg("l1", "sell", "0.00005"), "leg:bp": leg("bp", "buy", "0.001")})
    assert fills_disagree(data, ACCOUNTS, STEPS, reason="timeout") == ["BP fills imply 0.001"]
    assert fills_disagree(data, ACCOUNTS, {}, reason="timeout") == ["BP fills imply 0.001"]  # default step 0.0001


def test_the_liquidated_leg_is_allowed_to_be_off() -> None:
    data = cycle(**{"leg:l1": leg("l1", "sell", "1")})
    assert fills_disagree(data, ACCOUNTS, STEPS, reason="lighter1_zero") == []
    assert fills_disagree(data, ACCOUNTS, STEPS, reason="lighter2_zero") == ["L1 fills imply -1"]


def test_exit_results_are_keyed_by_the_account_they_name_not_their_position() -> None:
    results = [{"account": "l1", "flat": True}, {"account": "bp", "flat": True}, {"account": "l2", "flat": False}]
    by_role = results_by_role(results, ACCOUNTS)
    assert {role: r["account"] for role, r in by_role.items()} == {"L1": "l1", "BP": "bp", "L2": "l2"}
    assert not exit_is_flat(by_role)


def test_a_missing_repeated_or_unknown_result_is_never_flat() -> None:
    # zip(strict=False) used to drop the missing role, and two flat reports read as a flat exit.
    two = [{"account": "bp", "flat": True}, {"account": "l1", "flat": True}]
    assert not exit_is_flat(results_by_role(two, ACCOUNTS))
    repeated = [*two, {"account": "l1", "flat": True}]
    assert not exit_is_flat(results_by_role(repeated, ACCOUNTS))
    unknown = [*two, {"account": "other", "flat": True}]
    assert not exit_is_flat(results_by_role(unknown, ACCOUNTS))
    assert exit_is_flat(results_by_role([*two, {"account": "l2", "flat": True}], ACCOUNTS))
