"""Stale tasks refuse to act: an earlier cycle's exit order delivered again while
a later cycle is open, and a monitor tick left behind by a SIGKILLed orchestrator.

The deployment runs with a 6 s broker visibility timeout (``[redis] visibility_timeout_secs``),
so a message held by a dead worker really comes back here, as it does after an hour in production.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from core.config import Role, load_settings
from tests.helpers.harness import Deployment, each_test_clean, net_is_hedged, run_xtb, running_deployment
from tests.helpers.services import RedisServer
from tests.helpers.support import wait_until
from xtb_tasks.worker import canvas

VISIBILITY_SECS = 6


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("fencing"),
                                  redis_options={"visibility_timeout_secs": VISIBILITY_SECS})


@pytest.fixture(autouse=True)
def clean_slate(dep: Deployment) -> Iterator[Deployment]:
    yield from each_test_clean(dep)


def refusals(dep: Deployment, cycle_id: str, task: str) -> list[str]:
    return [e["text"] for e in dep.record(cycle_id).get("events") or [] if f"refused a stale {task}" in e["text"]]


def test_an_earlier_cycles_exit_order_delivered_again_leaves_the_next_cycle_alone(dep: Deployment) -> None:
    first = dep.start_cycle()
    dep.wait_stage(first, "monitoring", timeout=60)
    dep.liquidate_lighter(102)
    done = dep.wait_done(first, timeout=60)
    assert done["outcome"] == "flat", done
    attempt = int(done["exit_attempts"]) - 1
    # The first exit's Lighter1 close as it was sent: it carries a spare client id, never used.
    sent = next(order for key, claim in done.items() if key.startswith("exit_step:") and isinstance(claim, dict)
                for order in claim.get("orders") or [] if order["role"] == "L1")

    second = dep.start_cycle()
    dep.wait_stage(second, "monitoring", timeout=60)
    held = dep.positions()
    assert held["lighter1"] < 0 and net_is_hedged(held), held
    # Delivered again (a redelivery after a worker crash is the same message): it refuses. A copy
    # with its fence stripped is not the cycle's and fails before it reads anything.
    grp = load_settings(dep.config).group("main")
    order = canvas.exit_order(grp, Role.L1, first, sent["side"], Decimal(sent["quantity"]), sent["client_ids"],
                              sent["leg"], sent.get("max_slippage"), 0.1, attempt)
    dep.app.send_task(order.task, kwargs=dict(order.kwargs), queue=grp.lighter1)
    unfenced = dep.app.send_task(order.task, kwargs={k: v for k, v in order.kwargs.items() if k != "fence"},
                                 queue=grp.lighter1)

    wait_until(lambda: len(refusals(dep, first, f"{sent['leg']} submit")) == 1, timeout=30,
               what="the redelivered copy to refuse")
    with pytest.raises(Exception, match="carries no fence"):
        unfenced.get(timeout=30)
    # A read of that exit delivered again refuses too, before it spends a venue request.
    read = next(t for t in canvas.exit_read(grp, first, done["reason"], attempt, 0).tasks
                if t.kwargs["account"] == grp.lighter1)
    dep.app.send_task(read.task, kwargs=dict(read.kwargs), queue=grp.lighter1)
    wait_until(lambda: len(refusals(dep, first, f"exit read on {grp.lighter1}")) == 1, timeout=30,
               what="the exit read of an ended cycle to refuse")
    assert dep.positions() == held
    assert dep.record(second)["stage"] == "monitoring"
    dep.liquidate_lighter(101)
    done = dep.wait_done(second, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter1_zero")


def test_a_monitor_tick_held_by_a_killed_orchestrator_comes_back_and_refuses(dep: Deployment) -> None:
    poll = 3.0
    cycle_id = dep.start_cycle(poll_interval_secs=poll)
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    # Right after a decision the next tick is a countdown held, unacknowledged, by the orchestrator.
    read_at = dep.record(cycle_id)["positions"]["read_at"]
    wait_until(lambda: dep.record(cycle_id)["positions"]["read_at"] != read_at, timeout=2 * poll + 10,
               what="a monitor decision")
    time.sleep(0.3)
    dep.kill_worker("orchestrator")
    dep.restart_worker("orchestrator")
    # The operator resumes monitoring at once, before the held tick's visibility timeout expires.
    resumed = run_xtb(dep, "recover", "--force")
    assert "resume_monitoring" in resumed.stdout, (resumed.stdout, resumed.stderr)

    wait_until(lambda: refusals(dep, cycle_id, "monitor"), timeout=VISIBILITY_SECS + 30,
               what="the redelivered tick to refuse")
    # One loop: the token moves once per interval, not twice.
    first = int(dep.record(cycle_id)["step_seq"])
    time.sleep(3 * poll)
    assert int(dep.record(cycle_id)["step_seq"]) - first <= 4
    dep.liquidate_lighter(102)
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")
    events = json.dumps(done.get("events"))
    assert "resume_monitoring" in events and "refused a stale monitor" in events
    assert all(abs(q) < Decimal("0.0001") for q in dep.positions().values())
