"""The end-of-cycle report: the completion alert, the realised PnL split into
trading, fees and funding from the venues' own records, dust, and the worst net exposure.

Real Redis, real workers, the simulators with fees on (Backpack Tier 1, Lighter premium) and funding
every second, so every split has something to add up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from simulators.profile import LIGHTER_PREMIUM, SimProfile
from tests.helpers.faults import cycle_alerts, raised_alerts
from tests.helpers.harness import Deployment, run_xtb, running_deployment
from tests.helpers.services import RedisServer
from tests.helpers.support import wait_until

STEP = Decimal("0.0001")
BP_TAKER = Decimal("0.0005")


def fees_and_funding() -> SimProfile:
    base = SimProfile()
    return replace(base, fees=replace(base.fees, enabled=True, lighter=LIGHTER_PREMIUM),
                   funding=replace(base.funding, enabled=True, interval_secs=1.0))


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("report"), profile=fees_and_funding())


@pytest.fixture(autouse=True)
def clean_slate(dep: Deployment) -> Iterator[None]:
    yield
    dep.unwind_leftovers()
    for index in (101, 102):  # a dust test leaves its leftover: gone before the next cycle reads its baselines
        dep.sim.exchange.liquidate("lighter", str(index), "ETH")


def finished_with_split(dep: Deployment, cycle_id: str) -> dict[str, Any]:
    dep.wait_done(cycle_id, timeout=60)
    wait_until(lambda: "pnl_split" in dep.record(cycle_id), timeout=30, what="the cycle's PnL split")
    return dep.record(cycle_id)


def backpack_fee_paid(dep: Deployment) -> Decimal:
    # The venue's truth: Backpack's taker rate on every order the audit log shows filled.
    return sum((Decimal(e["filled"]) * Decimal(e["avg_price"]) * BP_TAKER for e in dep.audit()
                if e["venue"] == "backpack" and e["avg_price"]), Decimal(0))


def test_a_liquidation_ends_with_cycle_completed_and_a_pnl_split_with_fees(dep: Deployment) -> None:
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    wait_until(lambda: any(p.account == "102" for p in list(dep.sim.exchange.funding_log)), timeout=10,
               what="a funding payment on Lighter2")
    dep.liquidate_lighter(102)
    done = finished_with_split(dep, cycle_id)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")

    split = done["pnl_split"]
    assert set(split) == {"BP", "L1", "L2"}, split
    for role, part in split.items():
        assert None not in (part["trading"], part["fees"], part["funding"], part["net"]), (role, part)
        assert Decimal(part["net"]) == Decimal(part["trading"]) + Decimal(part["fees"]) + Decimal(part["funding"])
        assert Decimal(part["fees"]) < 0, (role, part)  # fees on: every venue charged the cycle's fills
        # Realised = what the equity says, once everything is flat (fills and funding are all of it).
        assert abs(Decimal(part["net"]) - Decimal(done["pnl"][role])) < Decimal("0.01"), (role, part, done["pnl"])
    assert abs(-Decimal(split["BP"]["fees"]) - backpack_fee_paid(dep)) < Decimal("0.01")
    assert split["L2"]["system_fills"] == 1  # the liquidation closed L2: its record is counted
    assert Decimal(split["L1"]["funding"]) != 0 and Decimal(split["L2"]["funding"]) != 0

    completed = raised_alerts(dep, cycle_id, "cycle_completed")
    assert len(completed) == 1 and completed[0]["text"].startswith("Cycle completed"), completed
    assert "lighter2_zero" in completed[0]["text"] and "fees -" in completed[0]["text"], completed[0]["text"]
    assert cycle_alerts(dep, cycle_id, "emergency_exit") == []

    assert done["net_exposure"]["reads"] > 0
    status = run_xtb(dep, "cycle", "status", cycle_id)
    assert status.returncode == 0, status.stderr
    for word in ("trading", "fees", "funding", "worst net", "beyond one step"):
        assert word in status.stdout, status.stdout
    as_json = json.loads(run_xtb(dep, "cycle", "status", cycle_id, "--json").stdout)
    assert as_json["pnl_split"] == split and as_json["worst_net"]["worst_net"] is not None


def test_a_cancel_keeps_the_emergency_exit_alert_and_still_records_the_split(dep: Deployment) -> None:
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    run_xtb(dep, "cycle", "cancel", cycle_id)
    done = finished_with_split(dep, cycle_id)
    assert (done["outcome"], done["reason"]) == ("flat", "cancelled")
    assert len(cycle_alerts(dep, cycle_id, "emergency_exit")) == 1
    assert cycle_alerts(dep, cycle_id, "cycle_completed") == []
    assert all(Decimal(part["fees"]) < 0 for part in done["pnl_split"].values()), done["pnl_split"]


def test_a_dust_leftover_counts_as_liquidated_and_is_reported_as_dust_with_the_other_legs(dep: Deployment) -> None:
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    # A partial liquidation leaves 0.003 ETH on Lighter2: below the venue's 0.005 minimum, so no
    # order can close it. It is a liquidation all the same, and the exit must say what it did.
    dep.admin("lighter", "liquidate", {"venue": "lighter", "account": "102", "base": "ETH", "leave": "0.003"})
    done = finished_with_split(dep, cycle_id)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), done.get("events")
    # Lighter2's dust is nobody's to close: the exit closes Lighter1 whole and leaves the net at the
    # dust alone, within a Backpack step (not a second leftover on Lighter1 to match it).
    assert done["dust"] == {"L2": "0.0030"}
    assert done["pnl"]["BP"] is not None and done["pnl"]["L1"] is not None, done["pnl"]
    positions = dep.positions()
    assert abs(positions["backpack"]) < STEP, positions
    assert (positions["lighter1"], positions["lighter2"]) == (Decimal(0), Decimal("0.003")), positions

    text = raised_alerts(dep, cycle_id, "cycle_completed")[0]["text"]
    assert "L2 flat, dust +0.003" in text and "L1 flat, dust" not in text and "PnL unknown" not in text, text
    assert "BP unknown" not in text, text
    # A leg still holding dust has no realised trading PnL yet; its fees and funding are known.
    part = done["pnl_split"]["L2"]
    assert part["trading"] is None and part["open"] == "0.003" and part["fees"] is not None, part
    assert done["pnl_split"]["L1"]["trading"] is not None, done["pnl_split"]["L1"]
    assert done["pnl_split"]["BP"]["net"] is not None
    assert not dep.client.exists("xtb:group:main:stopped")
