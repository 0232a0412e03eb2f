"""Venue faults per leg (21104, 429, 500, timeout after accept, partial fill),
stale and failing position reads while monitoring, a leg liquidated during the entry, a Redis
restart mid-cycle, and the alert relay and Telegram down together.

Every cycle ends hedged or flat at the simulator, and no client id produced two venue orders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from monitoring.alert_texts import AlertKind
from monitoring.alerts import raise_alert
from monitoring.relay import pending_delivery
from simulators.telegram import TelegramServer, TelegramState
from tests.helpers.faults import STEP, cycle_alerts, poll, raised_alerts, venue_flat, venue_hedged
from tests.helpers.harness import Deployment, each_test_clean, make_deployment, running_deployment, teardown
from tests.helpers.services import ROOT, RedisServer, start_redis_server, start_worker, stop_redis_server
from tests.helpers.support import free_port, wait_until

pytestmark = pytest.mark.slow

LEG_TARGET = {"bp_entry": ("backpack", None), "l1_hedge": ("lighter", "101"), "l2_entry": ("lighter", "102")}


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # REST only: these faults are REST's (test_rate_budget_cycle drops the streams).
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("vfault"), streams=False)


@pytest.fixture
def clean(dep: Deployment) -> Iterator[Deployment]:
    yield from each_test_clean(dep, unwind_timeout=90)
    assert venue_flat(dep), dep.positions()


def end_hedged_then_cancel(dep: Deployment, cycle_id: str, timeout: float = 60) -> dict[str, Any]:
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=timeout)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    assert venue_hedged(dep), dep.positions()
    assert cycle_alerts(dep, cycle_id, "cycle_hedged")
    return record


FAULTS = [
    ("http_429", 1, {}), ("http_500", 1, {}), ("timeout_after_accept", 1, {"seconds": 11}),
    ("partial_fill", 1, {"fraction": 0.5}), ("invalid_nonce", 2, {}),
]


# 21104 (invalid nonce) exists only on Lighter: Backpack signs with a timestamp window, not nonces.
LEG_FAULTS = [(leg, *fault) for leg in LEG_TARGET for fault in FAULTS
              if not (fault[0] == "invalid_nonce" and LEG_TARGET[leg][0] != "lighter")]


@pytest.mark.parametrize(("leg", "kind", "count", "params"), LEG_FAULTS,
                         ids=[f"{leg}-{kind}" for leg, kind, *_ in LEG_FAULTS])
def test_order_fault_on_each_leg_still_ends_hedged(clean: Deployment, leg: str, kind: str, count: int,
                                                   params: dict[str, Any]) -> None:
    dep = clean
    venue, account = LEG_TARGET[leg]
    dep.admin(venue, "fault", {"venue": venue, "kind": kind, "count": count, "op": "order", "account": account,
                               "params": params})
    cycle_id = dep.start_cycle()
    record = end_hedged_then_cancel(dep, cycle_id, timeout=75)
    if kind == "partial_fill":
        legs = {name: Decimal(str((record.get(f"leg:{name}") or {}).get("filled") or 0)) for name in LEG_TARGET}
        assert all(v > 0 for v in legs.values()), legs
    assert not dep.sim.exchange.faults, "the armed fault never fired"


def test_an_entry_the_venue_holds_past_the_timeout_fills_once(clean: Deployment) -> None:
    # Backpack holds the entry's POST for 13 s (our timeout is 10 s), then fills it. The lookup right
    # after the timeout finds nothing; sending the same client id again would fill a second order when
    # the held one lands. Nothing is sent until the held order shows up.
    dep = clean
    dep.arm_fault("backpack", "hang", count=1, op="order", seconds=13)
    held_until = time.monotonic() + 13 + 2
    cycle_id = dep.start_cycle()
    record = end_hedged_then_cancel(dep, cycle_id, timeout=75)
    time.sleep(max(0.0, held_until - time.monotonic()))  # whatever the venue held has landed by now
    assert venue_hedged(dep), dep.positions()
    assert dep.duplicate_client_ids() == [], dep.duplicate_client_ids()
    entry = record["leg:bp_entry"]
    sent = [e for e in dep.audit() if e["venue"] == "backpack" and int(e["client_id"] or 0) == entry["client_id"]]
    assert len(sent) == 1 and entry["state"] == "filled", (sent, entry)


def test_stale_and_failing_position_reads_never_fake_a_liquidation(clean: Deployment) -> None:
    dep = clean
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    dep.arm_fault("lighter", "stale_position", count=1000, op="position")
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "http_500", "count": 1000, "op": "position",
                                   "account": "102"})
    dep.arm_fault("backpack", "http_500", count=1000, op="position")
    # Meanwhile Lighter2 really is liquidated, but no read may be trusted to say so yet.
    dep.liquidate_lighter(102)
    read_before = float((dep.record(cycle_id).get("positions") or {}).get("read_at") or 0)
    time.sleep(6.0)  # ~12 monitor polls at 0.5 s
    record = dep.record(cycle_id)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("events"))
    assert float((record.get("positions") or {}).get("read_at") or 0) > read_before, "monitoring stopped polling"
    dep.sim.exchange.clear_faults()
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), done.get("error")
    assert len(raised_alerts(dep, cycle_id, "cycle_completed", timeout=20)) == 1
    assert not cycle_alerts(dep, cycle_id, "emergency_exit")


def test_a_partial_lighter1_hedge_is_topped_up_and_backpack_and_lighter2_follow_its_fill(clean: Deployment) -> None:
    # A 30 % Lighter1 fill taken as the whole hedge would leave the group naked by the rest through
    # the random wait, and Lighter2 sized from the Backpack fill would not match Lighter1.
    dep = clean
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "partial_fill", "count": 2, "op": "order",
                                   "account": "101", "params": {"fraction": 0.3}})
    cycle_id = dep.start_cycle(wait_min_secs=2.0, wait_max_secs=2.0)
    record = dep.wait_stage(cycle_id, "wait", timeout=60)
    during_wait = dep.positions()
    filled = {name: Decimal(str((record.get(f"leg:{name}") or {}).get("filled") or 0))
              for name in ("bp_entry", "l1_hedge", "l1_topup", "bp_balance")}
    l1_total = filled["l1_hedge"] + filled["l1_topup"]
    assert filled["l1_topup"] > 0 and l1_total < filled["bp_entry"] * Decimal("0.6"), filled  # 30 %, then 30 % of the rest
    assert filled["bp_entry"] - filled["bp_balance"] - l1_total <= STEP, filled
    assert abs(sum(during_wait.values(), Decimal(0))) <= STEP, during_wait  # hedged through the wait
    record = end_hedged_then_cancel(dep, cycle_id)
    assert Decimal(record["leg:l2_entry"]["filled"]) == l1_total, record["leg:l2_entry"]
    assert not dep.sim.exchange.faults, "the armed fault never fired"


def test_a_backpack_read_lagging_its_rebalance_fill_is_read_again_not_traded_on(clean: Deployment) -> None:
    # The entry's rebalance sells the Backpack entry, and the next read can still show it (a read can
    # lag the last fill). Trading on that read would sell it a second time.
    dep = clean
    cycle_id = dep.start_cycle(wait_min_secs=2.0, wait_max_secs=2.0)
    dep.wait_stage(cycle_id, "wait", timeout=60)
    dep.arm_fault("backpack", "stale_position", count=2, op="position")  # frozen at the entry's fill
    record = dep.wait_stage(cycle_id, "monitoring", timeout=60)
    assert record.get("rebalances") == 1, record.get("events")
    assert venue_hedged(dep), dep.positions()
    assert any("but the cycle's fills put it at" in e["text"] for e in record["events"]), record["events"]


def test_unknown_reads_in_a_row_raise_an_alert_and_monitoring_goes_on(clean: Deployment) -> None:
    dep = clean
    cycle_id = dep.start_cycle(unknown_reads_alert=3)
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    dep.arm_fault("backpack", "http_500", count=1000, op="position")
    wait_until(lambda: cycle_alerts(dep, cycle_id, "positions_unknown"), timeout=30,
               what="a positions_unknown alert")
    alert = cycle_alerts(dep, cycle_id, "positions_unknown")[0]
    assert "BP position unknown on 3 monitor reads in a row" in alert["text"], alert["text"]
    assert dep.record(cycle_id)["stage"] == "monitoring"
    dep.sim.exchange.clear_faults()
    wait_until(lambda: dep.record(cycle_id).get("unknown_reads") == 0, timeout=30, what="reads to heal")


def monitor_reads(dep: Deployment, cycle_id: str, secs: float) -> list[dict[str, Any]]:
    """The distinct monitor readings (``positions``) the cycle record shows over ``secs`` seconds."""
    seen: dict[float, dict[str, Any]] = {}
    stop = time.monotonic() + secs
    while time.monotonic() < stop:
        positions = dep.record(cycle_id).get("positions") or {}
        seen.setdefault(float(positions.get("read_at") or 0), positions)
        time.sleep(0.1)
    return [p for t, p in sorted(seen.items()) if t > 0]


def test_failing_lighter_reads_alone_do_not_exit(clean: Deployment) -> None:
    """Failing reads on both Lighter legs for many polls: unknown is not zero, monitoring goes on
    (the monitor keeps deciding on unknown reads, counts no zero, and carries on once reads heal)."""
    dep = clean
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    dep.arm_fault("lighter", "http_500", count=1000, op="position")
    armed_at = time.time()
    failing = [p for p in monitor_reads(dep, cycle_id, 5.0) if float(p["read_at"]) > armed_at + 0.5]
    record = dep.record(cycle_id)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    # ~10 polls at 0.5 s; a monitor loop that died (or stopped rescheduling) shows none.
    assert len(failing) >= 4, f"the monitor stopped deciding while reads failed: {failing}"
    assert all(p["L1"] is None and p["L2"] is None for p in failing), failing
    assert all(n == 0 for n in (record.get("zero_streaks") or {}).values()), record.get("zero_streaks")
    assert venue_hedged(dep)
    dep.sim.exchange.clear_faults()
    healed_at = time.time()
    healed = [p for p in monitor_reads(dep, cycle_id, 3.0) if float(p["read_at"]) > healed_at + 0.5]
    assert healed and all(p["L1"] is not None and p["L2"] is not None for p in healed), healed
    assert dep.record(cycle_id)["stage"] == "monitoring"


def test_lighter1_liquidated_during_the_random_wait(clean: Deployment) -> None:
    dep = clean
    cycle_id = dep.start_cycle(wait_min_secs=3.0, wait_max_secs=3.0)
    dep.wait_stage(cycle_id, "wait", timeout=60)
    dep.liquidate_lighter(101)
    done = dep.wait_done(cycle_id, timeout=60)
    assert done["outcome"] == "flat", (done.get("reason"), done.get("error"))
    assert venue_flat(dep), dep.positions()
    # One end alert: cycle_completed when the exit followed a liquidation, emergency_exit after a failure.
    def ends() -> list[dict[str, str]]:
        return cycle_alerts(dep, cycle_id, "cycle_completed") + cycle_alerts(dep, cycle_id, "emergency_exit")

    assert poll(ends, timeout=20) and len(ends()) == 1, ends()


# ---- Redis restart with AOF mid-cycle --------------------------------------------------------------

def start_cycle_on(url: str, **overrides: Any) -> str:
    """Start a cycle through the broker at ``url`` (the process-wide Celery app points elsewhere)."""
    import json

    from celery import Celery

    app = Celery("xtb-aof-test", broker=url, backend=url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    try:
        task_id = app.send_task("xtb.hedge.start_cycle", kwargs={"group": "main", **overrides},
                                queue="orchestrator").id
        client = redis.Redis.from_url(url, decode_responses=True)
        def final() -> bool:
            raw = client.get(f"celery-task-meta-{task_id}")
            return bool(raw) and json.loads(raw).get("status") in ("SUCCESS", "FAILURE")

        wait_until(final, timeout=60, what="start_cycle result")
        meta = json.loads(client.get(f"celery-task-meta-{task_id}") or "{}")
        assert meta.get("status") == "SUCCESS", meta
        return str(meta["result"]["cycle_id"])
    finally:
        app.close()


def test_redis_restart_with_aof_mid_cycle_kills_no_worker(tmp_path: Path) -> None:
    """Redis (AOF) restarts during the random wait, while workers hold unacknowledged messages (the
    cycle's next step waits for its ETA in the orchestrator). Every worker rides the restart out and
    reconnects, none exits; the held step is re-queued on reconnect, the cycle goes on to monitoring
    hedged, and no client id fills twice."""
    port = free_port()
    directory = tmp_path / "aof"
    server = start_redis_server(directory, port=port, persistent=True)
    (tmp_path / "d").mkdir()
    try:
        own = make_deployment(tmp_path / "d", server.url, start_worker)
    except BaseException:
        stop_redis_server(server)
        raise
    try:
        own.start_workers()
        cycle_id = start_cycle_on(server.url, wait_min_secs=4.0, wait_max_secs=4.0)
        own.wait_stage(cycle_id, "wait", timeout=60)
        # kombu's index of delivered, unacknowledged messages: what a worker re-queues when it loses Redis.
        assert server.client().hlen("unacked"), "no worker held an unacknowledged message: nothing to prove"
        stop_redis_server(server)
        time.sleep(2.0)
        server = start_redis_server(directory, port=port, persistent=True)
        assert own.record(cycle_id), "the cycle record did not survive the restart (AOF)"

        def settled() -> bool:
            dead = {name: (w.proc.returncode, w.log()[-800:]) for name, w in own.workers.items() if not w.alive()}
            assert not dead, f"a worker died when Redis restarted: {dead}"
            return own.record(cycle_id).get("stage") in ("monitoring", "done")

        wait_until(settled, timeout=90, what="the cycle to go on after the Redis restart", interval=0.25)
        # The steps the workers held went back to their queues when the workers reconnected, so the
        # cycle went on from its wait, long before the watchdog would have unwound it as overdue.
        record = own.record(cycle_id)
        assert record["stage"] == "monitoring", (record.get("outcome"), record.get("reason"), record.get("error"))
        positions = own.positions()
        assert abs(sum(positions.values())) <= STEP and positions["lighter1"] == -positions["lighter2"] != 0, positions
        assert own.duplicate_client_ids() == []
        wait_until(lambda: all(w.log().count("Connected to redis") >= 2 for w in own.workers.values()), timeout=30,
                   what="every worker to reconnect")
        own.unwind_leftovers(timeout=60)
        assert all(abs(q) < STEP for q in own.positions().values()), own.positions()
        assert all(w.alive() for w in own.workers.values()), "a worker died after the Redis restart"
    finally:
        teardown(own)
        stop_redis_server(server)


# ---- relay and Telegram down together ----------------------------------------------------------

def _relay(config: Path, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", "from xtb_tasks.cli import main; main()", "--config",
                                 str(config), "alerts", "relay", "--min-idle", "1", "--lock-ttl", "1",
                                 "--backoff-max", "0.5", "--timeout", "1"], cwd=str(config.parent), env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_relay_and_telegram_down_together_deliver_exactly_once(tmp_path: Path, redis_server: RedisServer) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/3"  # its own database: the module deployment uses /0
    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushdb()
    port = free_port()
    state = TelegramState()
    tg = TelegramServer(state, port=port).start()
    (tmp_path / "tg_key.txt").write_text("bot_token: 111:relay-down-token\nchat_id: -1009\n")
    config = tmp_path / "xtb.toml"
    config.write_text(f'[telegram]\napi_url = "http://127.0.0.1:{port}"\nkeys_file = "tg_key.txt"\n')
    log = tmp_path / "relay.log"
    relay = _relay(config, url, log)
    try:
        texts = [f"alert {i:02d}" for i in range(30)]
        for text in texts[:5]:
            raise_alert(r, AlertKind.CYCLE_FINISHED, text)
        # Killed once it has acknowledged them: a kill between Telegram's answer and the ack is the
        # relay's documented at-least-once window (monitoring/relay.py), not what this test is about.
        wait_until(lambda: len(state.messages) == 5 and pending_delivery(r) == {"pending": 0, "undelivered": 0},
                   timeout=30, what="first alerts delivered and acknowledged")
        _kill(relay)
        tg.stop()
        for text in texts[5:20]:  # both down
            raise_alert(r, AlertKind.EMERGENCY_EXIT, text)
        relay = _relay(config, url, log)  # the relay is back, Telegram is still down
        for text in texts[20:25]:
            raise_alert(r, AlertKind.EMERGENCY_EXIT, text)
        time.sleep(3.0)
        assert len(state.messages) == 5
        tg = TelegramServer(state, port=port).start()
        for text in texts[25:]:
            raise_alert(r, AlertKind.CYCLE_FINISHED, text)
        wait_until(lambda: len(state.messages) >= 30, timeout=60, what="every alert after the outage")
        time.sleep(1.5)  # anything delivered twice would show now
        assert state.texts() == texts
        assert pending_delivery(r) == {"pending": 0, "undelivered": 0}
    finally:
        _kill(relay)
        tg.stop()
        r.flushdb()


def _flatten_account(dep: Deployment, account: str) -> None:
    env = {**os.environ, "REDIS_URL": dep.redis_url, "XTB_CONFIG": str(dep.config), "PYTHONPATH": str(ROOT),
           "NO_PROXY": "127.0.0.1,localhost"}
    subprocess.run([sys.executable, "-c", "from xtb_tasks.cli import main; main()", "--config", str(dep.config),
                    "flatten", "--account", account], env=env, capture_output=True, timeout=90, check=False)


def test_stale_zero_reads_never_make_an_open_leg_count_as_flat(clean: Deployment) -> None:
    dep = clean
    # Backpack's REST position lags: it keeps showing the flat position from before the entry filled.
    # Lighter1 cannot hedge, so the cycle must unwind the Backpack entry.
    dep.arm_fault("backpack", "stale_position", count=200, op="position")
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "http_500", "count": 200, "op": "order",
                                   "account": "101"})
    cycle_id = dep.start_cycle()
    # Flat, or unresolved: the exit could not confirm flat and goes on (stage emergency_exit).
    wait_until(lambda: dep.record(cycle_id).get("outcome") in ("flat", "unresolved"), timeout=120,
               what="the cycle to end flat or turn unresolved")
    done = dep.record(cycle_id)
    positions = dep.positions()
    dep.sim.exchange.clear_faults()
    try:
        assert Decimal(str((done.get("leg:bp_entry") or {}).get("filled") or 0)) > 0, "the entry never filled"
        if done["outcome"] == "flat":
            assert all(abs(q) < STEP for q in positions.values()), \
                f"cycle reported flat ({done['reason']}) but the venue holds {positions}"
        else:
            assert done["stage"] == "emergency_exit", done["stage"]
            # Reads healed: the exit that went on finishes the job by itself.
            healed = dep.wait_done(cycle_id, timeout=120)
            assert healed["outcome"] == "flat" and venue_flat(dep), (healed.get("events"), dep.positions())
    finally:
        if not venue_flat(dep):
            _flatten_account(dep, "backpack")


def _xtb(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": dep.redis_url, "XTB_CONFIG": str(dep.config), "PYTHONPATH": str(ROOT),
           "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run([sys.executable, "-m", "xtb_tasks.cli", "--config", str(dep.config), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_failed_balance_read_while_planning_ends_not_started_and_touches_nothing(clean: Deployment) -> None:
    """One HTTP 500 on Backpack's balance read during planning ends the cycle
    ``not_started``; the Backpack position held before the cycle is not the cycle's to close."""
    dep = clean
    opened = _xtb(dep, "order", "--account", "backpack", "--side", "buy", "--size", "0.5")
    assert opened.returncode == 0, opened.stderr[-2000:]
    held = dep.positions()
    assert held["backpack"] == Decimal("0.5"), held
    orders_before = len(dep.audit())
    alerts_before = len(dep.alerts())
    dep.arm_fault("backpack", "http_500", count=1, op="collateral")
    try:
        cycle_id = dep.start_cycle()
        done = dep.wait_done(cycle_id, timeout=60)
        assert not dep.sim.exchange.faults, "the armed fault never fired"
        assert (done["outcome"], done["reason"]) == ("flat", "not_started"), (done.get("reason"), done.get("error"))
        after = dep.positions()
        assert after["backpack"] == held["backpack"], f"the cycle touched a position it did not open: {after}"
        assert all(after.get(a, Decimal(0)) == 0 for a in ("lighter1", "lighter2")), after
        assert dep.audit()[orders_before:] == [], "an order was sent although planning failed"
        assert not dep.client.exists("xtb:lock:group:main"), "the group lock was not released"
        texts = [a.get("text", "") for a in cycle_alerts(dep, cycle_id)]
        assert not cycle_alerts(dep, cycle_id, "emergency_exit"), texts
        not_started = [t for t in texts if "not started" in t]
        assert not_started, texts
        assert "account_snapshot on backpack" in not_started[0] and "500" in not_started[0], not_started
        assert "ChordError" not in " ".join(texts), texts
        assert len(dep.alerts()) > alerts_before
    finally:
        dep.sim.exchange.clear_faults()
        _flatten_account(dep, "backpack")
