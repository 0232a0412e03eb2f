"""Lighter REST use against a rate-limited Lighter simulator (Standard tier, both Lighter workers on one IP).

Its own Redis, simulators and workers, started after the latency bench: whole cycles to a Lighter2
liquidation and their report, one of them monitored for a minute. Figures, from the simulator's
request log (``/_sim/requests``, counted as the venue counts):

* ``lighter_rest_requests_per_cycle``: per Lighter account, each cycle from start to its PnL split;
* ``lighter_rest_requests_per_monitor_minute``: per Lighter account, a minute of monitoring;
* ``http_429_per_cycle``: 429 answers per cycle, every account and the IP;
* ``confirm_latency_stream_ms``: the venue's push of a leg's fill (its receipt in the worker, the
  confirmation's ``read_at``) to the confirmation task done (the next stage's ``t:``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import measure
from tests.helpers.harness import Deployment, make_deployment, teardown
from tests.helpers.services import start_redis_server, start_worker, stop_redis_server
from tests.helpers.support import wait_until
from venues.simulator.lighter_rules import LighterRules

LIGHTER = {"lighter1": "account:101", "lighter2": "account:102"}
#: Confirmations and the stage each one's task sets when done (orchestrator/canvas.py).
CONFIRMS = {"l1_hedge": "t:wait", "l2_entry": "t:rebalance"}


def _delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], who: str, key: str) -> int:
    return after.get(who, {}).get(key, 0) - before.get(who, {}).get(key, 0)


def _one_cycle(dep: Deployment, monitor_secs: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    before = dep.lighter_requests()
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    monitored: dict[str, int] = {}
    if monitor_secs:
        at_start = dep.lighter_requests()
        time.sleep(monitor_secs)
        at_end = dep.lighter_requests()
        monitored = {role: _delta(at_end, at_start, who, "requests") for role, who in LIGHTER.items()}
    dep.liquidate_lighter(102)
    dep.wait_done(cycle_id, timeout=90)
    wait_until(lambda: dep.record(cycle_id).get("pnl_split") is not None, timeout=60, what="the PnL split")
    return dep.record(cycle_id), {"before": before, "after": dep.lighter_requests()}, monitored


def measure_budget(out: dict[str, Any], *, cycles: int, monitor_secs: float) -> None:
    """Run :func:`measure_in_process` in a fresh interpreter (the process-wide Celery app is bound to
    the broker it was built with, the latency bench's) and merge its figures into ``out``."""
    proc = subprocess.run([sys.executable, "-m", "bench.budget_bench", str(cycles), str(monitor_secs)],
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"budget bench failed:\n{proc.stderr[-3000:]}")
    out.update(json.loads(proc.stdout.strip().splitlines()[-1]))


def measure_in_process(out: dict[str, Any], *, cycles: int, monitor_secs: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="xtb-bench-budget-"))
    redis_server = start_redis_server(tmp / "redis")
    dep = make_deployment(tmp, redis_server.url, start_worker, lighter_rules=LighterRules(rate_limit=True))
    try:
        dep.start_workers()
        per_cycle: dict[str, list[int]] = {role: [] for role in LIGHTER}
        limited: list[int] = []
        latencies: list[float] = []
        per_minute: dict[str, float] = {}
        for i in range(cycles):
            record, counts, monitored = _one_cycle(dep, monitor_secs if i == 0 else 0.0)
            before, after = counts["before"], counts["after"]
            for role, who in LIGHTER.items():
                per_cycle[role].append(_delta(after, before, who, "requests"))
            limited.append(sum(_delta(after, before, who, "limited") for who in after))
            for leg, done_field in CONFIRMS.items():
                confirm, done = record.get(f"confirm:{leg}") or {}, record.get(done_field)
                if confirm.get("read_at") and done:
                    latencies.append((float(done) - float(confirm["read_at"])) * 1000)
            if monitored:
                per_minute = {role: round(n * 60.0 / monitor_secs, 1) for role, n in monitored.items()}
        out["lighter_rest_requests_per_cycle"] = {role: {"max": max(v), "mean": round(sum(v) / len(v), 1), "n": len(v)}
                                                  for role, v in per_cycle.items()}
        out["lighter_rest_requests_per_monitor_minute"] = per_minute
        out["lighter_monitor_secs_measured"] = monitor_secs
        out["http_429_per_cycle"] = round(sum(limited) / max(len(limited), 1), 2)
        out["confirm_latency_stream_ms"] = measure.p50_p99(latencies)
    finally:
        teardown(dep)
        stop_redis_server(redis_server)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    figures: dict[str, Any] = {}
    measure_in_process(figures, cycles=int(sys.argv[1]), monitor_secs=float(sys.argv[2]))
    print(json.dumps(figures))
