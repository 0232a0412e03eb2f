"""The end-of-cycle report's pure parts: dust, the alert kind, the PnL split, the worst net exposure.

Each invariant that hypothesis checks is stated in its test's name.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.cycle_record import ExitReason
from core.exposure import NetExposure, worst_net_report
from monitoring.alert_texts import AlertKind, format_cycle_completed, format_emergency_exit
from orchestrator.cycle.report import (
    CONTINUE_AFTER,
    completion_kind,
    exit_dust,
    exit_is_flat,
    shown_positions,
)
from orchestrator.cycle.state import Positions
from orchestrator.pnl_split import cycle_client_ids, cycle_split, venue_split
from venues.base import Side
from venues.ledger import AccountHistory, FillRecord, FundingRecord

MIN = {"BP": Decimal("0.0001"), "L1": Decimal("0.005"), "L2": Decimal("0.005")}
STEP = Decimal("0.0001")


def result(account: str, quantity: str | None, flat: bool = False) -> dict[str, Any]:
    return {"account": account, "flat": flat, "final_position": {"quantity": quantity}, "orders": []}


# ---- dust -----------------------------------------------------------------------------------------

def test_dust_is_a_not_flat_report_whose_fresh_read_is_below_the_minimum() -> None:
    by_role = {"BP": result("bp", "0", True), "L1": result("l1", "0", True), "L2": result("l2", "0.003")}
    assert exit_dust(by_role, MIN) == {"L2": Decimal("0.003")}
    assert exit_is_flat(by_role, MIN) and not exit_is_flat(by_role)
    assert shown_positions({"BP": "0", "L1": "0", "L2": "0.003"}, exit_dust(by_role, MIN)) == {
        "BP": "0", "L1": "0", "L2": "flat, dust +0.003"}


@pytest.mark.parametrize("l2", [None, "", "0.005", "-0.2"])
def test_unknown_or_closable_leftovers_are_never_dust(l2: str | None) -> None:
    by_role = {"BP": result("bp", "0", True), "L1": result("l1", "0", True), "L2": result("l2", l2)}
    assert exit_dust(by_role, MIN) == {} and not exit_is_flat(by_role, MIN)


def test_a_missing_role_is_not_flat_even_with_dust_elsewhere() -> None:
    assert not exit_is_flat({"BP": result("bp", "0", True), "L2": result("l2", "0.001")}, MIN)


# ---- the alert kind -------------------------------------------------------------------------------

@pytest.mark.parametrize("reason", [r.value for r in ExitReason])
@pytest.mark.parametrize("flat", [True, False])
def test_only_a_flat_end_after_a_liquidation_or_timeout_is_completed(reason: str, flat: bool) -> None:
    normal = flat and reason in (ExitReason.LIGHTER1_ZERO, ExitReason.LIGHTER2_ZERO, ExitReason.TIMEOUT)
    assert completion_kind(reason, flat) is (AlertKind.CYCLE_COMPLETED if normal else AlertKind.EMERGENCY_EXIT)
    assert normal == (flat and reason in CONTINUE_AFTER)


def test_the_completion_text_names_reason_duration_split_dust_and_worst_net() -> None:
    split = {"BP": {"trading": "1.5", "fees": "-0.3", "funding": "0", "net": "1.2"},
             "L1": {"trading": "-2", "fees": "-0.1", "funding": "0.05", "net": "-2.05"},
             "L2": {"error": "unavailable: GET /api/v1/trades: timeout"}}
    text = format_cycle_completed("main", "c1", "lighter2_zero", 75.0, {"BP": "1.2", "L1": "-2.05", "L2": "3"},
                                  split, {"BP": "0", "L1": "0", "L2": "flat, dust +0.003"},
                                  {"worst_net": "0.0100", "beyond_step_secs": 1.5})
    assert text.startswith("Cycle completed: c1 (main) ended lighter2_zero after 75s; ")
    assert "BP +1.2 (trading +1.5, fees -0.3, funding 0)" in text
    assert "L2 +3 (equity; split unknown: unavailable" in text and "total unknown" in text
    assert "positions BP 0, L1 0, L2 flat, dust +0.003" in text and "Worst net 0.01, 1.5s beyond one step" in text
    assert "flat, dust +0.003" in format_emergency_exit("main", "c1", "cancelled", {}, {"L2": "flat, dust +0.003"})


# ---- the PnL split --------------------------------------------------------------------------------

def fill(cid: int | None, side: Side, qty: str, price: str, fee: str | None = "0", *, system: bool = False,
         notional: str | None = None) -> FillRecord:
    return FillRecord(cid, side, Decimal(qty), Decimal(price), None if fee is None else Decimal(fee), 1000,
                      system=system, notional=None if notional is None else Decimal(notional))


def history(*fills: FillRecord, funding: tuple[str, ...] = ()) -> AccountHistory:
    return AccountHistory("a", "ETH", 0, 10**13, tuple(fills), tuple(FundingRecord(Decimal(f), 1000) for f in funding))


def test_a_round_trip_splits_into_trading_fees_and_funding() -> None:
    h = history(fill(1, Side.BUY, "2", "3000", "3"), fill(2, Side.SELL, "2", "3010", "3.01"),
                fill(99, Side.BUY, "5", "1", "9"), funding=("-0.4", "0.1"))
    split = venue_split(h, {1, 2}, STEP)
    assert split == {"trading": "20", "fees": "-6.01", "funding": "-0.3", "net": "13.69", "fills": 2,
                     "system_fills": 0, "funding_payments": 2}


def test_a_liquidation_fill_closes_the_leg_without_a_client_id() -> None:
    h = history(fill(1, Side.BUY, "1", "3000", "0.84"), fill(None, Side.SELL, "1", "2900", "0", system=True))
    assert venue_split(h, {1}, STEP)["trading"] == "-100"


def test_fills_that_do_not_net_to_zero_leave_trading_unknown_never_zero() -> None:
    split = venue_split(history(fill(1, Side.BUY, "1", "3000", "1")), {1}, STEP)
    assert (split["trading"], split["net"], split["open"], split["fees"]) == (None, None, "1", "-1")


def test_a_fee_in_another_asset_is_unknown() -> None:
    assert venue_split(history(fill(1, Side.BUY, "1", "1", None), fill(2, Side.SELL, "1", "1")), {1, 2},
                       STEP)["fees"] is None


def test_the_stated_notional_wins_over_the_rounded_price() -> None:
    h = history(fill(1, Side.BUY, "3", "3000.00", notional="9000.015"), fill(2, Side.SELL, "3", "3000.00"))
    assert venue_split(h, {1, 2}, STEP)["trading"] == "-0.015"


amounts = st.integers(min_value=1, max_value=10**6).map(lambda n: Decimal(n) / 100)


@settings(max_examples=300, deadline=None)
@given(trips=st.lists(st.tuples(st.integers(1, 10**4), amounts, amounts, amounts, amounts), min_size=1, max_size=6),
       funding=st.lists(st.integers(-10**4, 10**4).map(lambda n: Decimal(n) / 1000), max_size=5))
def test_net_is_the_sum_of_its_parts_and_trading_is_the_cash_of_closed_round_trips(
        trips: list[tuple[int, Decimal, Decimal, Decimal, Decimal]], funding: list[Decimal]) -> None:
    fills, cash, fees = [], Decimal(0), Decimal(0)
    for n, (lots, buy, sell, fee_in, fee_out) in enumerate(trips):
        qty = Decimal(lots) * STEP
        fills += [fill(2 * n + 1, Side.BUY, str(qty), str(buy), str(fee_in)),
                  fill(2 * n + 2, Side.SELL, str(qty), str(sell), str(fee_out))]
        cash += qty * (sell - buy)
        fees += fee_in + fee_out
    split = venue_split(history(*fills, funding=tuple(str(f) for f in funding)), range(1, 2 * len(trips) + 1), STEP)
    q = Decimal("0.000001")
    assert Decimal(split["trading"]) == cash.quantize(q) and Decimal(split["fees"]) == -fees.quantize(q)
    assert Decimal(split["net"]) == (cash - fees + sum(funding, Decimal(0))).quantize(q)


def test_the_cycles_client_ids_come_from_plan_legs_and_every_exit_attempt() -> None:
    data = {"client_ids": {"bp_entry": [1, 2], "l1_hedge": [10], "l2_entry": [20]},
            "leg:bp_rebalance_1": {"account": "bp", "client_id": 3},
            "exit_ids:0": {"BP": [4], "L1": [11], "L2": [21]},
            "exit_results:0": [{"account": "l2", "orders": [{"client_id": 22}]}]}
    ids = cycle_client_ids(data, {"bp": "BP", "l1": "L1", "l2": "L2"})
    assert ids == {"BP": {1, 2, 3, 4}, "L1": {10, 11}, "L2": {20, 21, 22}}


def test_a_role_whose_history_failed_or_is_missing_or_repeated_is_unknown() -> None:
    ok = {**history(fill(1, Side.BUY, "1", "1"), fill(2, Side.SELL, "1", "1")).to_json(), "account": "bp"}
    split = cycle_split({"client_ids": {"bp_entry": [1, 2]}}, {"bp": "BP", "l1": "L1", "l2": "L2"},
                        [ok, {"account": "l1", "error": "unavailable: 500"}], {"BP": STEP, "L1": STEP, "L2": STEP})
    assert split["BP"]["net"] == "0" and split["L1"] == {"error": "unavailable: 500"}
    assert split["L2"] == {"error": "no history read"}
    twice = cycle_split({}, {"bp": "BP"}, [ok, ok], {"BP": STEP})
    assert "error" in twice["BP"]


# ---- worst net exposure ---------------------------------------------------------------------------

def test_the_net_is_the_cycles_own_relative_to_the_baselines() -> None:
    positions = Positions(Decimal("2"), Decimal("-1"), Decimal("1"))
    assert positions.own(Positions(Decimal("2"), Decimal(0), Decimal(0))).net == Decimal(0)
    assert Positions(None, Decimal(0), Decimal(0)).own(Positions.zero()).net is None


def test_time_beyond_one_step_counts_from_the_first_read_beyond_to_the_first_back_within() -> None:
    seen = NetExposure()
    for t, net in ((0.0, "0"), (1.0, "0.5"), (2.0, "-0.7"), (3.0, "0"), (4.0, "0.2"), (6.0, "0.2")):
        seen = seen.observe(Decimal(net), Decimal("0.1"), t)
    assert (seen.worst, seen.worst_at, seen.beyond_secs, seen.beyond_since, seen.reads) == (
        Decimal("0.7"), 2.0, 2.0, 4.0, 6)
    assert seen.beyond_secs_until(7.0) == 5.0
    assert NetExposure.from_json(seen.to_json()) == seen


@settings(max_examples=300, deadline=None)
@given(nets=st.lists(st.integers(-500, 500).map(lambda n: Decimal(n) / 1000), min_size=1, max_size=30))
def test_the_worst_is_the_largest_abs_read_and_beyond_time_never_exceeds_the_span(nets: list[Decimal]) -> None:
    seen = NetExposure()
    for t, net in enumerate(nets):
        seen = seen.observe(net, Decimal("0.1"), float(t))
    assert seen.worst == max(abs(n) for n in nets)
    assert 0 <= seen.beyond_secs_until(float(len(nets) - 1)) <= len(nets) - 1


def test_the_report_takes_the_larger_of_the_reads_and_the_exits_own_worst() -> None:
    data = {"net_exposure": NetExposure(Decimal("0.2"), 5.0, 1.0, None, 3).to_json(), "finished_at": 9.0}
    assert worst_net_report(data)["worst_net"] == "0.2"
    report = worst_net_report({**data, "exit_worst_net": "-0.5", "exit_worst_net_at": 8.0})
    assert (report["worst_net"], report["worst_net_at"], report["worst_net_source"]) == ("0.5", 8.0, "exit")
    assert report["beyond_step_secs"] == 1.0
