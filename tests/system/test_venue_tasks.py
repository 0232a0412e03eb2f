"""Per-account venue tasks through real queues and workers, against the simulators."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from core.client_ids import IntentStatus, allocate_client_ids, intent_status, record_intent
from core.legs import Leg
from core.policies import ORDER_SETTLE_SECS
from tests.helpers.harness import Deployment, make_deployment, teardown
from tests.helpers.services import ROOT, RedisServer, start_worker, worker_env
from tests.helpers.support import wait_until
from venues.base import Side
from xtb_tasks.worker.results import TaskFailed, wait_result


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    redis_server.client().flushall()
    deployment = make_deployment(tmp_path_factory.mktemp("venue"), redis_server.url, start_worker)
    deployment.start_workers(("backpack", "lighter1", "lighter2"))
    yield deployment
    teardown(deployment)


SYMBOL = {"backpack": "ETH_USDC_PERP", "lighter1": "ETH", "lighter2": "ETH"}
VENUE = {"backpack": "backpack", "lighter1": "lighter", "lighter2": "lighter"}


def submit(dep: Deployment, account: str, client_ids: list[int], side: str = "buy", quantity: str = "0.01",
           **extra: object) -> dict:
    task = dep.app.send_task("xtb.venue.submit_market_order", queue=account, kwargs={
        "account": account, "symbol": SYMBOL[account], "side": side, "client_ids": client_ids,
        "quantity": quantity, **extra})
    return wait_result(dep.app, task.id, 60)


def orders_for(dep: Deployment, client_id: int) -> list[dict]:
    return [e for e in dep.audit() if e["client_id"] == client_id]


@pytest.mark.parametrize("account", ["backpack", "lighter1", "lighter2"])
def test_market_orders_fill_through_the_account_queue(dep: Deployment, account: str) -> None:
    client_id = allocate_client_ids(dep.client, account, VENUE[account])[0]
    record_intent(dep.client, account, client_id, leg="test")
    result = submit(dep, account, [client_id])
    assert result["state"] == "filled" and Decimal(result["filled"]) == Decimal("0.01"), result
    assert len(orders_for(dep, client_id)) == 1
    assert intent_status(dep.client, account, client_id) is IntentStatus.DONE
    position = wait_result(dep.app, dep.app.send_task("xtb.venue.get_position", queue=account, kwargs={
        "account": account, "symbol": SYMBOL[account]}).id, 30)
    assert position["quantity"] is not None and Decimal(position["quantity"]) != 0


def test_the_same_submit_delivered_twice_yields_one_venue_order(dep: Deployment) -> None:
    client_id = allocate_client_ids(dep.client, "lighter1", "lighter")[0]
    record_intent(dep.client, "lighter1", client_id, leg="test")
    first = submit(dep, "lighter1", [client_id], side="sell")
    again = submit(dep, "lighter1", [client_id], side="sell")  # a duplicate publish / broker redelivery
    assert first["client_id"] == again["client_id"] == client_id
    assert len(orders_for(dep, client_id)) == 1


def test_a_crash_after_sending_is_resolved_by_lookup_not_resend(dep: Deployment) -> None:
    # The intent says "sending": a previous run may have reached the venue. Place the order at the
    # venue first (as the crashed run did), then deliver the task: it must find it, not send again.
    client_id = allocate_client_ids(dep.client, "backpack", "backpack")[0]
    submit(dep, "backpack", [client_id])
    record_intent(dep.client, "backpack", client_id, status=IntentStatus.SENDING.value, quantity="0.01")
    rerun = submit(dep, "backpack", [client_id])
    assert rerun["state"] == "filled"
    assert len(orders_for(dep, client_id)) == 1


def exit_reading(dep: Deployment, account: str, cycle_id: str) -> dict:
    return wait_result(dep.app, dep.app.send_task("xtb.venue.exit_reading", queue=account, kwargs={
        "account": account, "symbol": SYMBOL[account], "cycle_id": cycle_id}).id, 60)


def leg_in_flight(dep: Deployment, cycle_id: str, name: str, account: str, client_id: int) -> None:
    # What a venue task leaves when it dies between its intent and the venue's answer.
    leg = Leg.in_flight(account, SYMBOL[account], Side.BUY, client_id, Decimal("0.01"))
    dep.client.hset(f"xtb:cycle:{cycle_id}", f"leg:{name}", json.dumps(leg.to_json()))


def recorded_leg(dep: Deployment, cycle_id: str, name: str) -> dict:
    return json.loads(str(dep.client.hget(f"xtb:cycle:{cycle_id}", f"leg:{name}")))


def test_an_exit_read_settles_the_orders_a_dead_task_left_in_flight(dep: Deployment) -> None:
    # Three orders whose task died mid-send: one the venue filled, one never placed whose intent is
    # older than the settle bound, one never placed but recent (it may still arrive: unknown).
    cycle_id = "settle-test"
    filled, old, fresh = allocate_client_ids(dep.client, "backpack", "backpack", 3)
    submit(dep, "backpack", [filled])
    record_intent(dep.client, "backpack", filled, status=IntentStatus.SENDING.value, quantity="0.01")
    record_intent(dep.client, "backpack", old, status=IntentStatus.SENDING.value, quantity="0.01")
    dep.client.hset(f"xtb:intent:backpack:{old}", "updated_at", str(time.time() - ORDER_SETTLE_SECS - 1))
    record_intent(dep.client, "backpack", fresh, status=IntentStatus.SENDING.value, quantity="0.01")
    for name, client_id in (("bp_entry", filled), ("exit_bp_1", old), ("exit_bp_2", fresh)):
        leg_in_flight(dep, cycle_id, name, "backpack", client_id)

    reading = exit_reading(dep, "backpack", cycle_id)

    assert reading["unsettled"] == [fresh] and reading["position"] is not None
    assert recorded_leg(dep, cycle_id, "bp_entry")["state"] == "filled"
    assert Decimal(recorded_leg(dep, cycle_id, "bp_entry")["filled"]) == Decimal("0.01")
    assert recorded_leg(dep, cycle_id, "exit_bp_1")["state"] == "failed"
    assert intent_status(dep.client, "backpack", old) is IntentStatus.REJECTED
    assert recorded_leg(dep, cycle_id, "exit_bp_2")["state"] == "submitting"
    assert orders_for(dep, old) == [] and orders_for(dep, fresh) == [] and len(orders_for(dep, filled)) == 1


def test_a_task_for_another_account_is_refused_by_the_worker(dep: Deployment) -> None:
    client_id = allocate_client_ids(dep.client, "lighter2", "lighter")[0]
    task = dep.app.send_task("xtb.venue.submit_market_order", queue="lighter1", kwargs={
        "account": "lighter2", "symbol": "ETH", "side": "buy", "client_ids": [client_id], "quantity": "0.01"})
    with pytest.raises(TaskFailed, match="refusing"):
        wait_result(dep.app, task.id, 30)
    assert orders_for(dep, client_id) == []


def test_unknown_position_is_not_zero(dep: Deployment) -> None:
    # The stream down (dropped on each reconnect for a few seconds) and the REST read failing.
    wait_result(dep.app, dep.app.send_task("xtb.venue.get_position", queue="lighter2", kwargs={
        "account": "lighter2", "symbol": "ETH"}).id, 30)
    wait_until(lambda: dep.client.hget("xtb:acct:lighter2", "stream_state") == "live", timeout=10,
               what="lighter2's stream")
    dep.arm_fault("lighter", "drop_ws", count=5, op="ws")
    wait_until(lambda: dep.client.hget("xtb:acct:lighter2", "stream_state") in ("down", "connecting"),
               timeout=10, what="lighter2's stream to drop")
    dep.arm_fault("lighter", "http_500", count=1, op="position")
    reading = wait_result(dep.app, dep.app.send_task("xtb.venue.get_position", queue="lighter2", kwargs={
        "account": "lighter2", "symbol": "ETH"}).id, 30)
    assert reading["quantity"] is None and reading["error"]


@pytest.mark.parametrize("account", ["backpack", "lighter1", "lighter2"])
def test_xtb_order_direct_works_for_every_account(dep: Deployment, account: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "xtb_tasks.cli", "--config", str(dep.config), "order",
                           "--account", account, "--side", "sell", "--size", "0.01", "--direct"],
                          cwd=ROOT, env=worker_env(dep.config, dep.redis_url), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["state"] == "filled" and result["account"] == account
    assert len(orders_for(dep, result["client_id"])) == 1


def test_bad_order_arguments_fail_with_one_line(dep: Deployment) -> None:
    before = len(dep.audit())
    for args in (["--size", "-1"], ["--size", "abc"], ["--size", "١"], ["--size", "1e999"], ["--account", "nope"]):
        base = ["--account", "backpack", "--side", "buy", "--size", "0.01", "--direct"]
        for i in range(0, len(args), 2):
            base[base.index(args[i]) + 1] = args[i + 1]
        proc = subprocess.run([sys.executable, "-m", "xtb_tasks.cli", "--config", str(dep.config), "order", *base],
                              cwd=ROOT, env=worker_env(dep.config, dep.redis_url), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert len(dep.audit()) == before
