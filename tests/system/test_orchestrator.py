"""The hedge cycle end to end: real Redis, real worker processes, the simulators over HTTP.

Every test ends with venue truth checked at the simulator (hedged within one step, or flat) and
the audit log proving that no client id produced two venue orders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers.harness import Deployment, each_test_clean, net_is_hedged, running_deployment
from tests.helpers.services import RedisServer
from tests.helpers.support import wait_until
from xtb_tasks.worker.results import TaskFailed

STEP = Decimal("0.0001")


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("orch"))


@pytest.fixture(autouse=True)
def clean_slate(dep: Deployment) -> Iterator[Deployment]:
    yield from each_test_clean(dep)


def assert_flat(dep: Deployment) -> None:
    positions = dep.positions()
    assert all(abs(q) < STEP for q in positions.values()), positions


def alert_kinds(dep: Deployment, cycle_id: str) -> list[str]:
    """Kinds of the alerts whose JSON ``fields`` name this cycle exactly (not a mention in the text)."""
    return [a.get("kind", "") for a in dep.alerts() if json.loads(a.get("fields") or "{}").get("cycle_id") == cycle_id]


def test_full_cycle_hedges_then_lighter2_liquidation_exits_flat(dep: Deployment) -> None:
    cycle_id = dep.start_cycle()
    record = dep.wait_stage(cycle_id, "monitoring", timeout=60)
    positions = dep.positions()
    assert net_is_hedged(positions), positions
    assert positions["lighter1"] < 0 < positions["lighter2"], positions
    for stage in ("planning", "bp_entry", "l1_hedge", "wait", "l2_entry", "rebalance", "monitoring"):
        assert f"t:{stage}" in record, f"stage {stage} never recorded"
    assert Decimal(record["leg:bp_entry"]["filled"]) > 0

    dep.liquidate_lighter(102)
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")
    assert_flat(dep)
    assert set(done["pnl"]) == {"BP", "L1", "L2"} and all(v is not None for v in done["pnl"].values())
    # The normal end has its own alert, after the venues' fill and funding records are read.
    wait_until(lambda: "cycle_completed" in alert_kinds(dep, cycle_id), timeout=20, what="the completion alert")
    kinds = alert_kinds(dep, cycle_id)
    assert "cycle_started" in kinds and "cycle_hedged" in kinds and "emergency_exit" not in kinds, kinds


def test_a_liquidated_leg_is_confirmed_by_fast_re_reads_and_backpack_is_not_traded_meanwhile(dep: Deployment) -> None:
    # Rebalancing Backpack by the whole size on the first zero read of Lighter2 would have the exit
    # sell it back a second later (two taker fees and the spread on the whole size).
    poll = 4.0
    cycle_id = dep.start_cycle(poll_interval_secs=poll, zero_confirmations=3)
    hedged = dep.wait_stage(cycle_id, "monitoring", timeout=60)
    dep.liquidate_lighter(102)
    liquidated_at = time.time()
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")
    assert done.get("rebalances") == hedged.get("rebalances"), "Backpack was rebalanced to the zero read"
    # The first zero read comes with the next regular check; the two that confirm it follow 0.2 s
    # apart, not two more poll intervals.
    assert done["t:emergency_exit"] - liquidated_at < 2 * poll
    assert_flat(dep)


def test_second_trigger_is_refused_and_cancel_ends_flat(dep: Deployment) -> None:
    cycle_id = dep.start_cycle(wait_min_secs=3.0, wait_max_secs=3.0)
    with pytest.raises(TaskFailed, match="still active"):
        dep.start_cycle()
    dep.wait_stage(cycle_id, "wait", timeout=30)
    dep.client.set(f"xtb:cycle:{cycle_id}:cancel", "1")
    dep.app.send_task("xtb.hedge.emergency_exit", kwargs={"cycle_id": cycle_id, "reason": "cancelled"},
                      queue="orchestrator")
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "cancelled")
    wait_until(lambda: "leg:l2_entry" not in dep.record(cycle_id) or True, timeout=5, what="settle")
    assert_flat(dep)


def test_backpack_entry_failure_ends_flat_with_reason(dep: Deployment) -> None:
    dep.arm_fault("backpack", "http_500", count=200, op="order")
    cycle_id = dep.start_cycle()
    done = dep.wait_done(cycle_id, timeout=90)
    assert (done["outcome"], done["reason"]) == ("flat", "bp_entry_failed"), done.get("error")
    dep.sim.exchange.clear_faults()
    assert_flat(dep)


def test_lighter1_hedge_failure_flattens_the_backpack_entry(dep: Deployment) -> None:
    dep.arm_fault("lighter", "http_500", count=200, op="order")
    cycle_id = dep.start_cycle()
    record = dep.wait_stage(cycle_id, ("emergency_exit", "done"), timeout=90)
    dep.sim.exchange.clear_faults()
    done = dep.wait_done(cycle_id, timeout=60)
    assert done["reason"] == "lighter1_hedge_failed", (record.get("error"), done.get("error"))
    assert done["outcome"] == "flat"
    assert Decimal(done["leg:bp_entry"]["filled"]) > 0
    assert_flat(dep)


def test_lighter2_entry_failure_ends_flat_with_reason(dep: Deployment) -> None:
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "http_500", "count": 200, "op": "order",
                                   "account": "102", "params": {}})
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, ("emergency_exit", "done"), timeout=90)
    dep.sim.exchange.clear_faults()
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_entry_failed"), done.get("error")
    assert Decimal(done["leg:l1_hedge"]["filled"]) > 0
    assert_flat(dep)


def test_sigkill_orchestrator_in_monitoring_then_restart_resumes(dep: Deployment) -> None:
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    dep.kill_worker("orchestrator")
    dep.restart_worker("orchestrator")
    dep.liquidate_lighter(101)
    done = dep.wait_done(cycle_id, timeout=90)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter1_zero")
    assert_flat(dep)


def test_sigkill_lighter1_worker_mid_hedge_ends_flat_without_duplicates(dep: Deployment) -> None:
    # The Lighter1 order is accepted but its answer hangs; the worker dies while waiting for it.
    dep.arm_fault("lighter", "timeout_after_accept", count=1, op="order", seconds=8)
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "l1_hedge", timeout=60)
    wait_until(lambda: len([e for e in dep.audit() if e["venue"] == "lighter"]) > 0, timeout=30,
               what="the lighter1 order to reach the venue")
    dep.kill_worker("lighter1")
    dep.restart_worker("lighter1")
    done = dep.wait_done(cycle_id, timeout=120)
    assert done["outcome"] == "flat", done
    assert_flat(dep)


def test_bad_arguments_are_rejected_before_any_venue_call(dep: Deployment, tmp_path: Path) -> None:
    before = len(dep.audit())
    for kwargs, fragment in (({"group": "nope"}, "unknown group"), ({"size": "-1"}, "size"),
                             ({"wait_min_secs": 9, "wait_max_secs": 1}, "wait_min_secs"),
                             ({"bogus": 1}, "unknown key")):
        with pytest.raises(TaskFailed, match=fragment):
            dep.start_cycle(**kwargs) if "group" not in kwargs else _start_raw(dep, kwargs)
    assert len(dep.audit()) == before


def _start_raw(dep: Deployment, kwargs: dict) -> None:
    from xtb_tasks.worker.results import wait_result

    wait_result(dep.app, dep.app.send_task("xtb.hedge.start_cycle", kwargs=kwargs, queue="orchestrator").id, 30)
