"""The armed hedge (xtb_tasks.execution.handoff) through real workers, Redis and the simulators."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from core import keys
from core.client_ids import IntentStatus, allocate_client_ids, intent_status, record_intent
from core.cycle_record import CycleRecord, Stage
from core.fencing import Fence
from tests.helpers.harness import Deployment, make_deployment, teardown
from tests.helpers.services import RedisServer, start_worker
from tests.helpers.support import wait_until
from xtb_tasks.execution.handoff import WAIT_SLICE_SECS
from xtb_tasks.worker.results import TaskFailed, wait_result

#: The first legs' fence as the cycle sends it; these probes name cycle ids that have no record.
FIRST_LEGS = Fence((Stage.PLANNING, Stage.BP_ENTRY, Stage.L1_HEDGE), missing_ok=True).to_json()


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    redis_server.client().flushall()
    deployment = make_deployment(tmp_path_factory.mktemp("handoff"), redis_server.url, start_worker)
    deployment.start_workers(("backpack", "lighter1"))
    yield deployment
    teardown(deployment)


def entry(dep: Deployment, cycle_id: str, quantity: str = "0.02", **extra: object) -> str:
    return dep.app.send_task("xtb.venue.submit_market_order", queue="backpack", kwargs={
        "account": "backpack", "symbol": "ETH_USDC_PERP", "side": "buy", "quantity": quantity,
        "client_ids": allocate_client_ids(dep.client, "backpack", "backpack", 2), "cycle_id": cycle_id,
        "leg": "bp_entry", "announce_fill": True, "fence": FIRST_LEGS, **extra}).id


def armed_hedge(dep: Deployment, cycle_id: str, expected: str | None = None) -> tuple[str, list[int]]:
    ids = allocate_client_ids(dep.client, "lighter1", "lighter", 2)
    task = dep.app.send_task("xtb.venue.submit_market_order", queue="lighter1", kwargs={
        "account": "lighter1", "symbol": "ETH", "side": "sell", "client_ids": ids, "quantity_from_leg": "bp_entry",
        "armed": True, "expected_quantity": expected, "cycle_id": cycle_id, "leg": "l1_hedge", "fence": FIRST_LEGS})
    return task.id, ids


def sent_presigned(dep: Deployment, client_id: int) -> bool:
    marker = f"submit client_id={client_id} "
    (line,) = [x for x in dep.workers["lighter1"].log().splitlines() if marker in x and "presigned=" in x]
    return "presigned=True" in line


def lighter_orders(dep: Deployment, ids: list[int]) -> list[dict]:
    return [e for e in dep.audit() if e["venue"] == "lighter" and e["client_id"] in ids]


def wait_armed(dep: Deployment, cycle_id: str) -> None:
    # The armed task blocks on the outcome list: Redis lists it as a blocked client on that key.
    key = keys.leg_outcome(cycle_id, "bp_entry")
    wait_until(lambda: any(c.get("cmd") == "blpop" for c in dep.client.client_list()), timeout=30,
               what=f"the hedge blocked on {key}")


def test_armed_hedge_waits_for_the_entry_then_mirrors_its_fill(dep: Deployment) -> None:
    cycle_id = f"t-{uuid.uuid4().hex[:8]}"
    hedge_id, ids = armed_hedge(dep, cycle_id, expected="0.02")
    wait_armed(dep, cycle_id)
    time.sleep(WAIT_SLICE_SECS + 0.3)  # across one wait slice: it must keep waiting, not give up
    assert lighter_orders(dep, ids) == [] and not dep.app.AsyncResult(hedge_id).ready()

    bp = wait_result(dep.app, entry(dep, cycle_id, quantity="0.02"), 30)
    hedge = wait_result(dep.app, hedge_id, 30)
    assert Decimal(bp["filled"]) == Decimal("0.02")
    assert hedge["state"] == "filled" and Decimal(hedge["filled"]) == Decimal("0.02"), hedge
    (order,) = lighter_orders(dep, ids)
    recorded = CycleRecord(dep.client, cycle_id).leg("bp_entry")
    assert recorded is not None and recorded.filled_at is not None
    assert order["ts"] >= recorded.filled_at  # sent after the fill was known, never before
    assert sent_presigned(dep, ids[0])  # signed while waiting: the fill matched the expected size


def test_a_fill_unlike_the_expected_size_is_signed_again_and_mirrored(dep: Deployment) -> None:
    cycle_id = f"t-{uuid.uuid4().hex[:8]}"
    hedge_id, ids = armed_hedge(dep, cycle_id, expected="0.05")
    wait_armed(dep, cycle_id)
    wait_result(dep.app, entry(dep, cycle_id, quantity="0.02"), 30)
    hedge = wait_result(dep.app, hedge_id, 30)
    assert hedge["state"] == "filled" and Decimal(hedge["filled"]) == Decimal("0.02"), hedge
    assert not sent_presigned(dep, ids[0])
    # The nonce the unused signature was made for went to the real order; the next order still lands.
    (next_id,) = allocate_client_ids(dep.client, "lighter1", "lighter", 1)
    plain = wait_result(dep.app, dep.app.send_task("xtb.venue.submit_market_order", queue="lighter1", kwargs={
        "account": "lighter1", "symbol": "ETH", "side": "buy", "client_ids": [next_id], "quantity": "0.01"}).id, 30)
    assert plain["state"] == "filled", plain


def test_a_failed_entry_releases_its_hedge_at_once_without_an_order(dep: Deployment) -> None:
    cycle_id = f"t-{uuid.uuid4().hex[:8]}"
    hedge_id, ids = armed_hedge(dep, cycle_id, expected="0.02")
    wait_armed(dep, cycle_id)
    assert intent_status(dep.client, "lighter1", ids[0]) is IntentStatus.ARMED
    started = time.monotonic()
    with pytest.raises(TaskFailed):
        wait_result(dep.app, entry(dep, cycle_id, quantity="-1"), 30)  # refused before any venue call
    with pytest.raises(TaskFailed, match="filled nothing"):
        wait_result(dep.app, hedge_id, 30)
    # Released by the announcement, not by its 30 s deadline.
    assert time.monotonic() - started < 10
    assert lighter_orders(dep, ids) == []
    assert intent_status(dep.client, "lighter1", ids[0]) is IntentStatus.REJECTED  # never sent, never looked up


def test_an_armed_id_left_by_a_crashed_run_is_looked_up_not_sent_again(dep: Deployment) -> None:
    # The crashed run sent its armed order with no further write: the intent still says ARMED.
    (client_id,) = allocate_client_ids(dep.client, "lighter1", "lighter", 1)
    first = wait_result(dep.app, dep.app.send_task("xtb.venue.submit_market_order", queue="lighter1", kwargs={
        "account": "lighter1", "symbol": "ETH", "side": "sell", "client_ids": [client_id], "quantity": "0.01"}).id, 30)
    record_intent(dep.client, "lighter1", client_id, status=IntentStatus.ARMED.value, quantity="0.01")
    rerun = wait_result(dep.app, dep.app.send_task("xtb.venue.submit_market_order", queue="lighter1", kwargs={
        "account": "lighter1", "symbol": "ETH", "side": "sell", "client_ids": [client_id], "quantity": "0.01"}).id, 30)
    assert rerun["client_id"] == first["client_id"] == client_id and rerun["state"] == "filled"
    assert len(lighter_orders(dep, [client_id])) == 1
    # Found by lookup: the rerun never tried to send (the venue's duplicate check was not needed).
    sends = [x for x in dep.workers["lighter1"].log().splitlines()
             if f"submit client_id={client_id} " in x and "presigned=" in x]
    assert len(sends) == 1, sends


def test_a_cancel_while_armed_ends_the_wait_without_an_order(dep: Deployment) -> None:
    cycle_id = f"t-{uuid.uuid4().hex[:8]}"
    hedge_id, ids = armed_hedge(dep, cycle_id)
    wait_armed(dep, cycle_id)
    CycleRecord(dep.client, cycle_id).request_cancel()
    with pytest.raises(TaskFailed, match="cancelled while waiting"):
        wait_result(dep.app, hedge_id, 30)
    assert lighter_orders(dep, ids) == []


def test_a_hedge_armed_after_the_entry_finished_sends_straight_away(dep: Deployment) -> None:
    cycle_id = f"t-{uuid.uuid4().hex[:8]}"
    wait_result(dep.app, entry(dep, cycle_id, quantity="0.03"), 30)
    hedge_id, ids = armed_hedge(dep, cycle_id)
    hedge = wait_result(dep.app, hedge_id, 30)
    assert Decimal(hedge["filled"]) == Decimal("0.03")
    assert len(lighter_orders(dep, ids)) == 1
