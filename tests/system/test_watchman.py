"""The watchman through real processes: its own ``xtb watchman`` process with its own keys (its own
Lighter API key indexes, its own Backpack API key on the same account), the simulators over HTTP,
a private redis-server and real workers that the last test kills.

Its Lighter client ids live in [2^47, 2^48), and the Backpack simulator counts what its second key
signed. So "the watchman never traded" is: no Lighter order in that range, no Backpack order signed
by its key.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers.harness import Deployment, each_test_clean, make_deployment, run_xtb, teardown
from tests.helpers.services import ROOT, RedisServer, start_redis_server, start_worker, stop_redis_server, worker_env
from tests.helpers.support import wait_until
from venues.backpack.credentials import generate_backpack_keys, load_backpack_credentials
from venues.lighter.credentials import generate_lighter_keys

STEP = Decimal("0.0001")
WATCHMAN_ID_MIN = 2**47
TELEGRAM_ENV = {"XTB_WATCHMAN_TELEGRAM_BOT_TOKEN": "123456:watchman-test-token",
                "XTB_WATCHMAN_TELEGRAM_CHAT_ID": "-1009"}


@dataclass
class Setup:
    dep: Deployment
    redis: RedisServer
    keys: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("watchman")
    # A Redis of this module's own: the last test kills it.
    redis = start_redis_server(tmp / "redis")
    dep = make_deployment(tmp, redis.url, start_worker)
    dep.start_workers()
    keys = tmp / "watchman-keys"
    generate_lighter_keys(keys / "l1.txt", 10)
    generate_lighter_keys(keys / "l2.txt", 11)
    own = generate_backpack_keys(keys / "bp.txt")
    worker_key_file = tmp / "keys" / "bp.txt"
    wait_until(worker_key_file.exists, timeout=30, what="the Backpack worker's key")
    worker_key = load_backpack_credentials(worker_key_file).api_key
    # A second API key on the worker's Backpack account, as the venue lets an account hold several.
    dep.admin("backpack", "backpack/apikey", {"api_key": own.api_key, "account": worker_key})
    yield Setup(dep, redis, keys)
    teardown(dep)
    stop_redis_server(redis)


def start_watchman(setup: Setup, name: str, **options: object) -> subprocess.Popen[bytes]:
    """``xtb watchman`` on the deployment's config plus a [watchman] section, in its own process."""
    lines = ["", "[watchman]"] + [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]
    lines += ["", "[watchman.telegram]", f'api_url = "{setup.dep.sim.urls["telegram"]}"']
    for account, file in (("backpack", "bp"), ("lighter1", "l1"), ("lighter2", "l2")):
        lines += ["", f"[watchman.accounts.{account}]", f'keys_file = "{setup.keys / file}.txt"']
    config = setup.dep.tmp / f"{name}.toml"
    config.write_text(setup.dep.config.read_text() + "\n".join(lines) + "\n")
    log = (setup.dep.tmp / f"{name}.log").open("wb")
    env = worker_env(config, setup.redis.url, TELEGRAM_ENV)
    proc = subprocess.Popen([sys.executable, "-m", "xtb_tasks.cli", "--config", str(config), "watchman"], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    log_path = setup.dep.tmp / f"{name}.log"
    wait_until(lambda: "watchman: watching" in log_path.read_text() or proc.poll() is not None, timeout=30,
               what="the watchman to start")
    assert proc.poll() is None, log_path.read_text()[-2000:]
    return proc


def stop_watchman(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def watchman_texts(dep: Deployment, since: int = 0) -> list[str]:
    """The watchman's pages among the Telegram simulator's messages from index ``since`` on."""
    return [text for text in dep.telegram_texts()[since:] if text.startswith("WATCHMAN")]


def watchman_orders(dep: Deployment) -> list[object]:
    """Orders of the watchman's keys, at the venues: Lighter ids in its range, Backpack orders its key signed."""
    lighter = [e for e in dep.audit() if e["venue"] == "lighter" and int(e["client_id"] or 0) >= WATCHMAN_ID_MIN]
    backpack = [key for key, seen in dep.admin("backpack", "backpack/apikey")["keys"].items()
                if seen["uses"].get("orderExecute")]
    return [*lighter, *backpack]


def start_cycle(dep: Deployment) -> str:
    """``xtb cycle start`` as an operator runs it: this module's Redis is not the one the test
    process's Celery app may already be bound to."""
    result = run_xtb(dep, "cycle", "start", "--group", "main")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


@pytest.fixture
def clean(setup: Setup) -> Iterator[Deployment]:
    yield from each_test_clean(setup.dep)


def test_a_healthy_cycle_with_the_watchman_running_is_never_touched(setup: Setup, clean: Deployment) -> None:
    dep = clean
    before = len(dep.telegram_texts())
    proc = start_watchman(setup, "healthy", interval_secs=0.5, out_of_step_secs=4, silent_secs=4, unwind=True,
                          unwind_delay_secs=0.5)
    try:
        cycle_id = start_cycle(dep)
        dep.wait_stage(cycle_id, "monitoring", timeout=60)
        time.sleep(6)  # beyond silent_secs + unwind_delay_secs: the watchman would have acted by now
        dep.liquidate_lighter(102)
        done = dep.wait_done(cycle_id, timeout=60)
        assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")
        time.sleep(1.5)
        assert proc.poll() is None, (dep.tmp / "healthy.log").read_text()[-2000:]
    finally:
        stop_watchman(proc)
    assert watchman_texts(dep, before) == []
    assert watchman_orders(dep) == []


def test_a_net_out_of_step_with_redis_alive_is_alerted_and_not_traded(setup: Setup, clean: Deployment) -> None:
    dep = clean
    before = len(dep.telegram_texts())
    proc = start_watchman(setup, "step", interval_secs=0.5, out_of_step_secs=2, silent_secs=60, unwind=False)
    try:
        sent_at = time.time()
        result = run_xtb(dep, "order", "--account", "backpack", "--side", "buy", "--size", "0.01")
        assert result.returncode == 0, result.stderr
        off_at = time.time()
        wait_until(lambda: any("beyond one step" in t for t in watchman_texts(dep, before)), timeout=15,
                   what="the watchman's out-of-step alert")
        alerted_at = time.time()
        text = next(t for t in watchman_texts(dep, before) if "beyond one step" in t)
        assert "group main" in text and "net 0.01 " in text and "unwind = false" in text, text
        # Not before the net has been off for out_of_step_secs (it can be off from the moment the order
        # is sent, before the command returns), and within a read interval and a poll of it after.
        assert alerted_at - sent_at >= 2 and alerted_at - off_at <= 2 + 0.5 + 2.5, (sent_at, off_at, alerted_at)
        assert watchman_orders(dep) == []
        assert run_xtb(dep, "flatten", "--account", "backpack").returncode == 0
        wait_until(lambda: any("no trigger left" in t for t in watchman_texts(dep, before)), timeout=10,
                   what="the watchman's all-clear")
    finally:
        stop_watchman(proc)
    assert len(watchman_texts(dep, before)) == len(dep.telegram_texts()) - before == 2, watchman_texts(dep, before)
    assert watchman_orders(dep) == []


def test_a_net_out_of_step_that_lasts_is_unwound_by_the_watchmans_own_backpack_key(setup: Setup,
                                                                                   clean: Deployment) -> None:
    dep = clean
    before = len(dep.telegram_texts())
    proc = start_watchman(setup, "bp", interval_secs=0.5, out_of_step_secs=1, silent_secs=60, unwind=True,
                          unwind_delay_secs=0.5)
    try:
        result = run_xtb(dep, "order", "--account", "backpack", "--side", "sell", "--size", "0.02")
        assert result.returncode == 0, result.stderr
        wait_until(lambda: any("no trigger left" in t for t in watchman_texts(dep, before)), timeout=20,
                   what="the watchman's unwind report and all-clear")
    finally:
        stop_watchman(proc)
    positions = dep.positions()
    assert all(abs(q) < STEP for q in positions.values()), positions
    signed = dep.admin("backpack", "backpack/apikey")["keys"]
    assert [seen["uses"].get("orderExecute") for seen in signed.values()] == [1], signed
    texts = watchman_texts(dep, before)
    assert any("net -0.02 beyond one step" in t for t in texts) and any("unwind flat" in t for t in texts), texts


def test_redis_and_every_worker_killed_mid_cycle_the_watchman_alerts_and_unwinds_flat(setup: Setup) -> None:
    # Last in the module: it kills the module's Redis and workers.
    dep = setup.dep
    dep.sim.exchange.clear_faults()
    dep.fresh_rate_minute()
    silent_secs, interval = 3.0, 0.5
    before = len(dep.telegram_texts())
    proc = start_watchman(setup, "dead", interval_secs=interval, out_of_step_secs=30, silent_secs=silent_secs,
                          unwind=True, unwind_delay_secs=1)
    try:
        cycle_id = start_cycle(dep)
        dep.wait_stage(cycle_id, "monitoring", timeout=60)
        time.sleep(1.0)
        hedged = dep.positions()
        assert hedged["lighter1"] < 0 < hedged["lighter2"], hedged
        # A thin Lighter book: each close fills only part, so the unwind takes several steps in step.
        dep.admin("lighter", "depth", {"venue": "lighter", "levels": 2, "level_size": "2"})
        killed_at = time.time()
        os.kill(setup.redis.proc.pid, signal.SIGKILL)
        for name in list(dep.workers):
            dep.kill_worker(name)
        wait_until(lambda: any("cluster gone" in t for t in watchman_texts(dep, before)), timeout=silent_secs + 10,
                   what="the watchman's cluster-gone alert")
        alerted_after = time.time() - killed_at
        wait_until(lambda: any("unwind flat" in t for t in watchman_texts(dep, before)), timeout=60,
                   what="the watchman's unwind report")
        unwound_after = time.time() - killed_at
    finally:
        stop_watchman(proc)
    print(f"watchman: alert {alerted_after:.1f} s and flat {unwound_after:.1f} s after the kill")
    alert = next(t for t in watchman_texts(dep, before) if "cluster gone" in t)
    assert "Redis unreachable" in alert and "group main" in alert, alert
    # The last heartbeat came up to one beat (2 s) before the kill; one read interval to notice.
    assert alerted_after <= silent_secs + interval + 1.0, alerted_after
    positions = dep.positions()
    assert all(abs(q) < STEP for q in positions.values()), positions
    assert dep.duplicate_client_ids() == []
    ours = [e for e in dep.audit() if e["venue"] == "lighter" and int(e["client_id"] or 0) >= WATCHMAN_ID_MIN]
    assert len(ours) >= 4 and all(e["reduce_only"] for e in ours), ours
    # In step: after each pair of closes (one per leg) the two legs had closed the same amount.
    fills = [(e["account"], Decimal(e["filled"])) for e in ours]
    closed = {"101": Decimal(0), "102": Decimal(0)}
    for account, filled in fills:
        closed[account] += filled
        assert abs(closed["101"] - closed["102"]) <= Decimal(4), fills  # at most one close's fill apart
