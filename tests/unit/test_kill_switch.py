"""orchestrator.kill_switch: what keeps a stopped group stopped, and what a refused start says."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.kill_switch import AccountReading, GroupStop, resume_blockers


def reading(role: str, quantity: str | None, error: str = "") -> AccountReading:
    return AccountReading(role, role.lower(), None if quantity is None else Decimal(quantity), error)


def test_flat_accounts_let_the_group_resume() -> None:
    assert resume_blockers([reading("BP", "0"), reading("L1", "0.0000"), reading("L2", "-0")]) == []


def test_an_open_or_unknown_account_keeps_it_stopped() -> None:
    open_l1 = reading("L1", "-9.5951")
    unknown = reading("L2", None, "HTTP 500")
    assert resume_blockers([reading("BP", "0"), open_l1, unknown]) == [open_l1, unknown]
    assert unknown.describe() == "L2 l2 unknown (HTTP 500)"
    assert open_l1.describe() == "L1 l1 -9.5951"
    assert reading("BP", "0.0000").describe() == "BP bp 0"


def test_dust_below_the_smallest_order_does_not_keep_it_stopped() -> None:
    # Lighter1 holds 0.003 with a 0.005 minimum: no order can close it, the next cycle carries it.
    dust = AccountReading("L1", "l1", Decimal("0.003"), smallest_order=Decimal("0.005"))
    held = AccountReading("L2", "l2", Decimal("0.005"), smallest_order=Decimal("0.005"))
    unknown_rules = AccountReading("BP", "bp", Decimal("0.003"))
    assert resume_blockers([dust, held, unknown_rules]) == [held, unknown_rules]


@given(st.lists(st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=4)), max_size=3))
def test_blockers_are_exactly_the_non_zero_and_unknown_reads(quantities: list[Decimal | None]) -> None:
    readings = [AccountReading(f"R{i}", f"a{i}", q) for i, q in enumerate(quantities)]
    assert resume_blockers(readings) == [r for r in readings if r.quantity is None or r.quantity != 0]


def test_a_refused_start_names_the_group_the_cycle_and_the_way_out() -> None:
    stop = GroupStop.from_json("main", json.dumps({"cycle_id": "main-1", "reason": "cancelled", "stopped_at": 5}))
    assert (stop.cycle_id, stop.reason, stop.stopped_at) == ("main-1", "cancelled", 5.0)
    text = stop.refusal()
    for fragment in ("group main", "main-1", "unresolved", "xtb status", "xtb group resume main"):
        assert fragment in text, text


def test_a_hand_set_stop_still_stops() -> None:
    stop = GroupStop.from_json("main", "maintenance")
    assert stop.cycle_id == "maintenance" and "xtb group resume main" in stop.refusal()
