"""The pre-cycle checks against real workers and the simulators: a cycle starts only on flat
accounts (or, with ``allow_existing_positions``, hedges only its own deltas from the baselines) and
only when every account's available margin carries the planned size by its own venue's rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.faults import STEP, cycle_alerts, venue_flat
from tests.helpers.harness import Deployment, each_test_clean, run_xtb, running_deployment
from tests.helpers.services import RedisServer

pytestmark = pytest.mark.slow

HELD = Decimal("0.5")


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("own"))


@pytest.fixture
def clean(dep: Deployment) -> Iterator[Deployment]:
    yield from each_test_clean(dep, unwind_timeout=90)
    for account in ("backpack", "lighter1", "lighter2"):  # the positions a test held before its cycle
        run_xtb(dep, "flatten", "--account", account)
    assert venue_flat(dep), dep.positions()


def _held(dep: Deployment) -> dict[str, Decimal]:
    # The simulator lists an account only once something touched it.
    positions = dep.positions()
    return {role: positions.get(role, Decimal(0)) for role in ("backpack", "lighter1", "lighter2")}


def _open(dep: Deployment, account: str, side: str, size: Decimal) -> None:
    opened = run_xtb(dep, "order", "--account", account, "--side", side, "--size", str(size))
    assert opened.returncode == 0, opened.stderr[-2000:]


def _not_started_touching_nothing(dep: Deployment, cycle_id: str, orders_before: int,
                                  held: dict[str, Decimal]) -> str:
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "not_started"), (done.get("reason"), done.get("error"))
    assert dep.audit()[orders_before:] == [], "an order was sent although the cycle was refused"
    assert _held(dep) == held
    assert not dep.client.exists("xtb:lock:group:main"), "the group lock was not released"
    assert not cycle_alerts(dep, cycle_id, "emergency_exit")
    texts = [a.get("text", "") for a in cycle_alerts(dep, cycle_id) if "not started" in a.get("text", "")]
    assert texts, cycle_alerts(dep, cycle_id)
    return str(done["error"])


def _cancel(dep: Deployment, cycle_id: str) -> dict[str, Any]:
    dep.client.set(f"xtb:cycle:{cycle_id}:cancel", "1")
    dep.app.send_task("xtb.hedge.emergency_exit", kwargs={"cycle_id": cycle_id, "reason": "cancelled"},
                      queue="orchestrator")
    return dep.wait_done(cycle_id, timeout=90)


def test_a_position_held_before_the_cycle_refuses_it_and_nothing_is_sent(clean: Deployment) -> None:
    """Started on it, the rebalance and the exit would trade Lighter2's 0.05 as the cycle's own."""
    dep = clean
    _open(dep, "lighter2", "buy", Decimal("0.05"))
    held = _held(dep)
    assert held["lighter2"] == Decimal("0.05"), held
    orders_before = len(dep.audit())
    error = _not_started_touching_nothing(dep, dep.start_cycle(), orders_before, held)
    assert error == ("lighter2 (lighter2) already holds a position of 0.0500; flatten it or set "
                     "allow_existing_positions = true"), error


def test_allow_existing_positions_hedges_only_the_cycles_own_delta(clean: Deployment) -> None:
    """Backpack held 0.5 before the cycle; the rebalance drives Backpack to 0.5 plus the
    cycle's own hedge (it sells the 0.3 its entry bought once Lighter2 holds the other side), so the
    0.5 is never sold, and the monitor sees no drift in it."""
    dep = clean
    _open(dep, "backpack", "buy", HELD)
    cycle_id = dep.start_cycle(allow_existing_positions=True, size="0.3")
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    assert record["plan"]["baselines"] == {"BP": "0.5", "L1": "0", "L2": "0"}
    positions = dep.positions()
    own = positions["backpack"] - HELD + positions["lighter1"] + positions["lighter2"]
    assert abs(own) <= STEP, positions
    assert positions["backpack"] >= HELD, f"the held Backpack position was sold: {positions}"
    assert Decimal(record["net_delta"]) == own
    # Five monitor rounds (poll 0.5 s): no rebalance of the held 0.5 (the old -(l1 + l2) target sold it).
    time.sleep(2.5)
    after = dep.record(cycle_id)
    assert after["stage"] == "monitoring", (after.get("reason"), after.get("error"))
    assert after.get("rebalances") == record.get("rebalances"), after.get("events")
    assert dep.positions()["backpack"] == positions["backpack"]
    _cancel(dep, cycle_id)


def test_the_exit_leaves_the_position_held_before_the_cycle(clean: Deployment) -> None:
    dep = clean
    _open(dep, "backpack", "buy", HELD)
    cycle_id = dep.start_cycle(allow_existing_positions=True, size="0.3")
    assert dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)["stage"] == "monitoring"
    done = _cancel(dep, cycle_id)
    assert dep.positions()["backpack"] == HELD, (dep.positions(), done.get("outcome"), done.get("events"))


@contextlib.contextmanager
def _initial_margin_enforced(dep: Deployment) -> Iterator[None]:
    # The simulator's initial-margin refusal rule (off by default), switched on for this test only.
    exchange = dep.sim.exchange
    profile = exchange.profile
    with exchange.lock:
        exchange.profile = dataclasses.replace(profile, margin=dataclasses.replace(profile.margin, enforce_initial=True))
    try:
        yield
    finally:
        with exchange.lock:
            exchange.profile = profile


def test_lighter2_without_the_margin_for_its_leg_refuses_before_any_order(clean: Deployment) -> None:
    """With $50 on Lighter2, unchecked, Backpack and Lighter1 would trade and the venue would refuse
    Lighter2's leg. Planning checks each account's own venue margin, so nothing is sent."""
    dep = clean
    collateral = dep.sim.exchange.account("lighter", "102").collateral
    dep.admin("lighter", "collateral", {"venue": "lighter", "account": "102", "amount": "50"})
    try:
        with _initial_margin_enforced(dep):
            orders_before = len(dep.audit())
            error = _not_started_touching_nothing(dep, dep.start_cycle(size="1"), orders_before, _held(dep))
    finally:
        dep.admin("lighter", "collateral", {"venue": "lighter", "account": "102", "amount": str(collateral)})
    # 1 ETH at ~3000 × 5 % (the market's default initial margin, 20x) ≈ 150, plus the taker fees.
    assert error.startswith("lighter2 (lighter2) available margin 50"), error
    assert "needs 15" in error and "initial margin 5.00%, 20x" in error, error


@contextlib.contextmanager
def _lighter_default_leverage(dep: Deployment) -> Iterator[None]:
    # The module's deployment is shared: the accounts go back to the market's default fraction after.
    try:
        yield
    finally:
        with dep.sim.exchange.lock:
            for index in ("101", "102"):
                dep.sim.exchange.account("lighter", index).initial_fractions.clear()


def test_the_lighter_leverage_is_raised_before_a_50x_cycle_and_it_enters(clean: Deployment) -> None:
    """With $100 on Lighter2 a 1 ETH leg needs ~$150 at the default 5 % (20x) and ~$60 at 2 % (50x).
    At the default leverage planning would refuse (or, unchecked, the venue would refuse Lighter2's
    orders), so the snapshot raises both Lighter accounts to the sizing leverage and the cycle enters."""
    dep = clean
    collateral = dep.sim.exchange.account("lighter", "102").collateral
    dep.admin("lighter", "collateral", {"venue": "lighter", "account": "102", "amount": "100"})
    try:
        with _initial_margin_enforced(dep), _lighter_default_leverage(dep):
            cycle_id = dep.start_cycle(size="1", leverage=50)
            record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
            assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
            with dep.sim.exchange.lock:
                fractions = {i: dep.sim.exchange.account("lighter", i).initial_fractions.get("ETH")
                             for i in ("101", "102")}
            assert fractions == {"101": Decimal("0.02"), "102": Decimal("0.02")}, fractions
            events = " | ".join(str(e) for e in record.get("events") or [])
            assert "lighter2 ETH initial margin fraction set to 200 bp" in events, events
            positions = dep.positions()
            assert {positions["lighter1"], positions["lighter2"]} == {Decimal(1), Decimal(-1)}, positions
            _cancel(dep, cycle_id)
    finally:
        dep.admin("lighter", "collateral", {"venue": "lighter", "account": "102", "amount": str(collateral)})


def test_a_failed_leverage_update_ends_the_cycle_not_started(clean: Deployment) -> None:
    dep = clean
    with _lighter_default_leverage(dep):
        dep.arm_fault("lighter", "http_500", count=1, op="order")
        try:
            orders_before = len(dep.audit())
            error = _not_started_touching_nothing(dep, dep.start_cycle(size="0.3", leverage=50), orders_before,
                                                  _held(dep))
            assert not dep.sim.exchange.faults, "the armed fault never fired"
        finally:
            dep.sim.exchange.clear_faults()
    assert "leveraged_snapshot on lighter" in error and "500" in error, error


def test_lighter_dust_below_the_venue_minimum_blocks_neither_a_resume_nor_a_cycle(clean: Deployment) -> None:
    """A partial liquidation left Lighter2 0.001, below the venue's minimum: no order can close it.
    Refusing it would stop the group for good; it is carried as the cycle's baseline instead."""
    dep = clean
    _open(dep, "lighter2", "buy", Decimal("0.05"))
    dep.admin("lighter", "liquidate", {"venue": "lighter", "account": "102", "base": "ETH", "leave": "0.001"})
    try:
        assert _held(dep)["lighter2"] == Decimal("0.001"), _held(dep)
        dep.client.set("xtb:group:main:stopped",
                       json.dumps({"cycle_id": "main-before", "reason": "cancelled", "stopped_at": time.time()}))
        resumed = run_xtb(dep, "group", "resume", "main")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        cycle_id = dep.start_cycle()
        record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
        assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
        done = _cancel(dep, cycle_id)
        assert (done["outcome"], done["reason"]) == ("flat", "cancelled"), (done.get("error"), done.get("events"))
        held = _held(dep)
        assert held["lighter2"] == Decimal("0.001") and abs(held["backpack"]) < STEP and \
            abs(held["lighter1"]) < STEP, held
    finally:
        dep.client.delete("xtb:group:main:stopped")
        dep.admin("lighter", "liquidate", {"venue": "lighter", "account": "102", "base": "ETH"})
