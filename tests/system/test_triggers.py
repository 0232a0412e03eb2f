"""Cycles triggered three ways: the CLI, Flower's HTTP API, and beat (RedBeat), each to completion."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from tests.helpers.harness import Deployment, run_xtb, running_deployment
from tests.helpers.services import ROOT, RedisServer, worker_env
from tests.helpers.support import free_port, wait_until


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("triggers"))




def latest_cycle(dep: Deployment) -> str | None:
    ids = dep.client.lrange("xtb:cycles:main", 0, 0)
    return ids[0] if ids else None


def cancel_and_wait_flat(dep: Deployment, cycle_id: str) -> None:
    result = run_xtb(dep, "cycle", "cancel", cycle_id)
    assert result.returncode == 0, result.stderr
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "cancelled")


def test_cycle_from_the_cli_with_live_progress(dep: Deployment) -> None:
    result = run_xtb(dep, "cycle", "start", "--group", "main", "--follow", "--until", "monitoring")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for stage in ("planning", "bp_entry", "l1_hedge", "wait", "l2_entry", "rebalance", "monitoring"):
        assert any(f"stage {stage}" in line for line in lines), (stage, result.stdout)
    assert any("bp_entry: buy" in line for line in lines)
    cycle_id = latest_cycle(dep)
    assert cycle_id
    status = run_xtb(dep, "cycle", "status", cycle_id, "--json")
    assert '"stage": "monitoring"' in status.stdout and '"net_delta"' in status.stdout
    cancel_and_wait_flat(dep, cycle_id)


def test_cycle_from_flowers_http_api(dep: Deployment) -> None:
    port, password = free_port(), "flower-test-pw"
    cmd = [sys.executable, "-m", "celery", "-A", "xtb_tasks", "flower", "--address=127.0.0.1", f"--port={port}",
           f"--basic-auth=ops:{password}"]
    flower = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(dep.config, dep.redis_url),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{base}/healthcheck"), timeout=60, what="flower to listen")
        url = f"{base}/api/task/async-apply/xtb.hedge.start_cycle"
        assert requests.post(url, json={"kwargs": {"group": "main"}}, timeout=10).status_code == 401
        before = latest_cycle(dep)
        reply = requests.post(url, json={"kwargs": {"group": "main"}}, auth=("ops", password), timeout=10)
        assert reply.status_code == 200, reply.text
        wait_until(lambda: latest_cycle(dep) not in (None, before), timeout=30, what="the flower-started cycle")
        cycle_id = latest_cycle(dep)
        assert cycle_id
        dep.wait_stage(cycle_id, "monitoring", timeout=60)
        cancel_and_wait_flat(dep, cycle_id)
    finally:
        flower.terminate()
        flower.wait(20)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_cycle_from_a_beat_schedule(dep: Deployment) -> None:
    config = dep.config.with_name("beat.toml")
    config.write_text(dep.config.read_text() + '\n[schedules.often]\ngroup = "main"\nevery_secs = 3.0\n')
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "xtb_tasks", "beat", "-S",
                             "redbeat.RedBeatScheduler", "--loglevel", "INFO", "--schedule", str(config.parent / "s")],
                            cwd=ROOT, env=worker_env(config, dep.redis_url), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    before = latest_cycle(dep)
    try:
        wait_until(lambda: latest_cycle(dep) not in (None, before), timeout=60, what="beat to start a cycle")
        cycle_id = latest_cycle(dep)
        assert cycle_id
        dep.wait_stage(cycle_id, "monitoring", timeout=60)
        # Further beats while this cycle is active are refused (one active cycle per group) and alerted.
        wait_until(lambda: any("refused" in a.get("text", "") for a in dep.alerts()), timeout=30,
                   what="a refused second trigger")
        assert latest_cycle(dep) == cycle_id
    finally:
        beat.terminate()
        beat.wait(20)
    cancel_and_wait_flat(dep, cycle_id)
