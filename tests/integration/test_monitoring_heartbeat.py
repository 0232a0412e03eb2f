"""Heartbeats: payload contents from the account-state hash, and a real ``celery worker`` that beats
for the accounts of the queues it consumes (and as the orchestrator)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from core import keys
from core.budgets import lighter_budget
from core.config import Direction, Role, load_settings
from monitoring.alert_texts import AlertKind
from monitoring.heartbeat import (
    BotIdentity,
    HeartbeatPublisher,
    beat_interval,
    build_payload,
    identities_for,
    load_last_beats,
    role_direction,
)
from monitoring.watcher import HeartbeatWatcher
from tests.helpers.support import wait_until, write_config
from venues.budget import RequestPriority

DUMMY_URLS = {"backpack": "http://127.0.0.1:9", "backpack_ws": "ws://127.0.0.1:9/ws",
              "lighter": "http://127.0.0.1:9", "lighter_ws": "ws://127.0.0.1:9/stream",
              "telegram": "http://127.0.0.1:9"}


def make_config(tmp_path: Path, interval: float = 0.5, direction: str = "long_backpack") -> Path:
    path = write_config(tmp_path / "xtb.toml", DUMMY_URLS, group_params={"direction": direction})
    with path.open("a") as f:
        f.write(f"\n[telemetry]\ninterval_secs = {interval}\n")
    return path


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_role_directions_follow_the_original() -> None:
    assert [role_direction(Direction.LONG_BACKPACK, role) for role in Role] == ["long", "short", "long"]
    assert [role_direction(Direction.SHORT_BACKPACK, role) for role in Role] == ["short", "long", "short"]


def test_payload_from_account_state_and_staleness(tmp_path: Path) -> None:
    settings = load_settings(make_config(tmp_path, direction="short_backpack"))
    bp, l1, orch = identities_for(settings, ["backpack", "lighter1"], orchestrator=True)
    assert (bp.role, bp.group, bp.venue, bp.symbol, bp.direction) == ("BP", "main", "backpack", "ETH_USDC_PERP",
                                                                      "short")
    assert (l1.role, l1.symbol, l1.direction) == ("L1", "ETH", "long")
    assert (orch.bot, orch.role, orch.account) == ("orchestrator", "orchestrator", None)
    now = 1_000_000.0
    state = {"position": "-0.50", "position_read_at": str(now - 3), "balance": "1234.5",
             "balance_read_at": str(now - 4), "latency_ms": "12.5", "cycle_id": "c-7", "stage": "monitoring"}
    payload = build_payload(l1, state, now=now, interval=2.0, stale_after=10)
    assert payload["position"] == "-0.50" and payload["position_base"] == -0.5
    assert payload["position_age_secs"] == 3.0 and payload["position_stale"] is False
    assert payload["balance_total"] == 1234.5 and payload["latency_ms"] == 12.5
    assert (payload["cycle_id"], payload["stage"]) == ("c-7", "monitoring")
    assert (payload["group"], payload["role"], payload["direction"]) == ("main", "L1", "long")
    assert payload["timestamp"] == now and payload["telemetry_interval_secs"] == 2.0
    assert isinstance(payload["pid"], int) and payload["host"]
    stale = build_payload(l1, state, now=now + 60, interval=2.0, stale_after=10)
    assert stale["position"] is None and stale["position_base"] is None
    assert stale["position_stale"] is True and stale["last_known_position"] == "-0.50"
    unknown = build_payload(l1, {}, now=now, interval=2.0)
    assert unknown["position"] is None and unknown["position_stale"] is False and unknown["balance"] is None
    # A position with no read time cannot be judged fresh: unknown, never zero.
    undated = build_payload(l1, {"position": "0"}, now=now, interval=2.0)
    assert undated["position"] is None
    assert "secret" not in json.dumps(payload).lower()


def test_beat_interval_defaults_like_server_js() -> None:
    assert beat_interval({"telemetry_interval_secs": 2.0}) == 2.0
    assert beat_interval({"interval": 0.5}) == 0.5
    assert beat_interval({}) == 10.0
    assert beat_interval({"telemetry_interval_secs": "soon"}) == 10.0


def test_publisher_keeps_latest_and_publishes_live(r: redis.Redis) -> None:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.HEARTBEAT_CHANNEL)
    r.hset(keys.account_state("acct"), mapping={"position": "1.5", "position_read_at": str(time.time())})
    publisher = HeartbeatPublisher([BotIdentity(bot="acct", role="account", account="acct")], interval=0.2,
                                   redis_factory=lambda: r).start()
    try:
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while len(received) < 3 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message:
                received.append(json.loads(message["data"]))
    finally:
        publisher.stop()
        pubsub.close()
    assert len(received) == 3
    stamps = [p["timestamp"] for p in received]
    assert all(0.1 < b - a < 0.5 for a, b in itertools.pairwise(stamps)), stamps
    assert received[-1]["position"] == "1.5"
    assert load_last_beats(r)["acct"]["timestamp"] >= stamps[-1]


def test_real_worker_beats_for_its_queues_and_goes_missing_when_stopped(
    tmp_path: Path, redis_url: str, r: redis.Redis, workers: Callable[..., Any]
) -> None:
    config = make_config(tmp_path, interval=0.5)
    r.hset(keys.account_state("lighter1"), mapping={
        "position": "-0.25", "position_read_at": str(time.time()), "balance": "500",
        "balance_read_at": str(time.time()), "latency_ms": "7", "cycle_id": "c-1", "stage": "hedged"})
    worker = workers(["lighter1", "orchestrator"], name="hbtest", config_path=config, redis_url=redis_url)
    wait_until(lambda: {"lighter1", "orchestrator"} <= set(load_last_beats(r)), timeout=20,
               what="beats from the worker")
    beats = load_last_beats(r)
    assert set(beats) == {"lighter1", "orchestrator"}, "only the consumed queues beat"
    l1 = beats["lighter1"]
    assert (l1["role"], l1["group"], l1["venue"], l1["symbol"], l1["direction"]) == ("L1", "main", "lighter",
                                                                                       "ETH", "short")
    assert (l1["position"], l1["balance"], l1["latency_ms"], l1["cycle_id"], l1["stage"]) == (
        "-0.25", "500", 7.0, "c-1", "hedged")
    assert l1["pid"] == worker.proc.pid, "beats come from the worker's main process"
    assert l1["telemetry_interval_secs"] == 0.5
    assert beats["orchestrator"]["role"] == "orchestrator"
    first = l1["timestamp"]
    wait_until(lambda: load_last_beats(r)["lighter1"]["timestamp"] >= first + 1.0, timeout=10,
               what="later beats")
    watcher = HeartbeatWatcher(r)
    assert watcher.check() == []
    worker.stop()
    last = load_last_beats(r)["lighter1"]["timestamp"]
    time.sleep(1.5)
    assert load_last_beats(r)["lighter1"]["timestamp"] == last, "beats stop with the worker"
    raised = watcher.check()
    assert len(raised) == 2
    kinds = {e[1]["text"].split(":")[0]: e[1]["kind"] for e in r.xrange(keys.ALERTS_OUTBOX)}
    assert kinds == {"Heartbeat missing from lighter1": AlertKind.HEARTBEAT_MISSING.value,
                     "Heartbeat missing from orchestrator": AlertKind.HEARTBEAT_MISSING.value}
    assert watcher.check() == [], "raised once"


def test_worker_lost_raises_a_worker_crash_alert(tmp_path: Path, r: redis.Redis,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery sends task_failure(WorkerLostError) in the main process when a pool child dies."""
    from billiard.exceptions import WorkerLostError
    from celery import Celery, signals

    from xtb_tasks.worker.monitoring_hooks import install_heartbeat_hooks

    monkeypatch.setenv("XTB_CONFIG", str(make_config(tmp_path)))
    app = Celery("crash-test")
    install_heartbeat_hooks(app)

    @app.task(name="xtb.test.victim")
    def victim() -> None:
        return None

    try:
        signals.task_failure.send(sender=victim, task_id="t-1", exception=ValueError("ordinary failure"))
        assert r.xlen(keys.ALERTS_OUTBOX) == 0, "ordinary task failures are not crashes"
        signals.task_failure.send(sender=victim, task_id="t-2",
                                  exception=WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."))
    finally:
        uid = f"xtb-monitoring-{id(app)}"
        signals.task_failure.disconnect(dispatch_uid=f"{uid}-failure")
        signals.worker_ready.disconnect(dispatch_uid=f"{uid}-ready")
        signals.worker_shutdown.disconnect(dispatch_uid=f"{uid}-shutdown")
    (entry,) = r.xrange(keys.ALERTS_OUTBOX)
    assert entry[1]["kind"] == AlertKind.WORKER_CRASH.value
    assert "xtb.test.victim [t-2]" in entry[1]["text"] and "SIGKILL" in entry[1]["text"]


def test_a_lighter_beat_carries_its_stream_and_the_budget_its_buckets_hold(tmp_path: Path, redis_url: str,
                                                                          r: redis.Redis) -> None:
    settings = load_settings(make_config(tmp_path))
    budget = lighter_budget(settings.account("lighter1"), settings)
    assert budget is not None
    budget.rate_budget.try_acquire(budget.charges("account", authenticated=True), RequestPriority.READ)
    now = time.time()
    r.hset(keys.account_state("lighter1"), mapping={"stream_state": "live", "stream_connects": "2",
                                                    "stream_heard_at": str(now - 1.5)})
    (identity,) = identities_for(settings, ["lighter1"], orchestrator=False)
    publisher = HeartbeatPublisher([identity], interval=0.2, redis_factory=lambda: r,
                                   budgets={"lighter1": budget})
    (payload,) = publisher.beat_once()
    assert (payload["stream_state"], payload["stream_connects"]) == ("live", 2)
    assert 1.4 <= payload["stream_age_secs"] <= 1.6
    assert payload["rate_budget"][budget.l1.key] == {"used": 1, "limit": 60}
