"""Lighter REST use against a rate-limited Lighter simulator (Standard tier, both Lighter workers on one IP).

Its own Redis, simulators and workers, started after the latency bench: whole cycles to a Lighter2
liquidation and their report, one of them monitored for a minute. Figures, from the simulator's
request log (``/_sim/requests``, counted as the venue counts):

* ``lighter_rest_requests_per_cycle``: per Lighter account, each cycle from start to its PnL split;
* ``lighter_rest_requests_per_monitor_minute``: per Lighter account, a minute of monitoring;
* ``http_429_per_cycle``: 429 answers per cycle, every account and the IP;
* ``confirm_latency_stream_ms``: the venue's push → ``xtb.venue.confirm_position`` done, with the
  task waiting for it: the bench sends the task at a random phase of its poll window, then moves
  the account's position with a partial liquidation, which the simulator pushes at once; the
  latency is the task's ``date_done`` minus the moment just before the admin request (so it
  includes that request). No REST read: the pushed position answers.
* ``confirm_latency_in_cycle_ms`` (shown, not judged): in a cycle the fill is pushed while the
  order task still runs, before its confirmation task starts: the leg's pushed fill (the
  confirmation's ``read_at``) → the confirmation recorded (the next stage's ``t:``). That is the
  Celery hops between the two tasks (Lighter1: order → ``balance_entry`` → confirmation).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench import measure
from bench.measure import epoch_of, wait_result
from simulators.lighter_rules import LighterRules
from tests.helpers.harness import Deployment, make_deployment, teardown
from tests.helpers.services import start_redis_server, start_worker, stop_redis_server
from tests.helpers.support import wait_until
from venues.lighter.reconcile import DEFAULT_RECONCILE_SECS

LIGHTER = {"lighter1": "account:101", "lighter2": "account:102"}
#: Confirmations and the stage each one's task sets when done (xtb_tasks/worker/canvas.py).
CONFIRMS = {"l1_hedge": "t:wait", "l2_entry": "t:rebalance"}


def _delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], who: str, key: str) -> int:
    return after.get(who, {}).get(key, 0) - before.get(who, {}).get(key, 0)


def _one_cycle(dep: Deployment, monitor_secs: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    before = dep.lighter_requests()
    cycle_id = dep.start_cycle()
    if dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60).get("stage") == "done":
        return dep.record(cycle_id), {"before": before, "after": dep.lighter_requests()}, {}  # failed entering
    monitored: dict[str, int] = {}
    if monitor_secs:
        at_start = dep.lighter_requests()
        time.sleep(monitor_secs)
        at_end = dep.lighter_requests()
        monitored = {role: _delta(at_end, at_start, who, "requests") for role, who in LIGHTER.items()}
    dep.liquidate_lighter(102)
    done = dep.wait_done(cycle_id, timeout=90)
    if done.get("outcome") == "flat":
        wait_until(lambda: dep.record(cycle_id).get("pnl_split") is not None, timeout=60, what="the PnL split")
    return dep.record(cycle_id), {"before": before, "after": dep.lighter_requests()}, monitored


class NakedSampler:
    """The group's net at the simulator every ``interval`` seconds, integrated as notional: the
    seconds × USD the group carried unhedged (|BP + L1 + L2| × ``price``)."""

    def __init__(self, dep: Deployment, price: Decimal, interval: float = 0.005) -> None:
        self.dep, self.price, self.interval = dep, price, interval
        self.notional_secs = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            net = abs(sum(self.dep.positions().values(), Decimal(0)))
            now = time.monotonic()
            self.notional_secs += float(net * self.price) * (now - last)
            last = now
            time.sleep(self.interval)

    def __enter__(self) -> NakedSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _liquidation_to_exit(dep: Deployment, *, push_lost: bool) -> tuple[float, float] | None:
    """One cycle to monitoring, then Lighter2 liquidated (its pushes lost when ``push_lost``): the
    seconds from the liquidation to the cycle's exit start (its ``t:emergency_exit``), and the naked
    notional × seconds from the liquidation to the exit's end. None when the cycle did not hedge."""
    cycle_id = dep.start_cycle()
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    if record.get("stage") != "monitoring":
        print(f"liquidation cycle {cycle_id} did not hedge: {record.get('reason')} {record.get('error')}",
              file=sys.stderr)
        return None
    wait_until(lambda: dep.client.hget("xtb:acct:lighter2", "stream_state") == "live", timeout=10,
               what="lighter2's stream")
    if push_lost:
        dep.admin("lighter", "fault", {"venue": "lighter", "kind": "miss_push", "count": 100_000, "op": "ws",
                                       "account": "102", "params": {}})
    price = Decimal(str((record.get("plan") or {}).get("reference_price") or 0))
    try:
        with NakedSampler(dep, price) as sampler:
            liquidated = time.time()
            dep.liquidate_lighter(102)
            dep.wait_stage(cycle_id, ("emergency_exit", "done"), timeout=60)
            dep.sim.exchange.clear_faults()
            done = dep.wait_done(cycle_id, timeout=90)
    finally:
        dep.sim.exchange.clear_faults()
    started = done.get("t:emergency_exit")
    return (float(started) - liquidated if started else float("inf")), sampler.notional_secs


#: A cycle spends about 11 Lighter REST requests per account; a Standard account gets 60 a minute.
#: Cycles back to back at this spacing stay within it (the cycles measured here must not be the
#: ones the budget refuses).
CYCLE_SPACING_SECS = 12.0


def measure_liquidations(dep: Deployment, out: dict[str, Any], *, with_push: int, push_lost: int) -> None:
    """Liquidation → exit start (ms) with the push and with every Lighter2 push lost, and each
    cycle's naked notional × seconds, against ``reconcile_secs`` in force."""
    started = time.monotonic()

    def spaced(lost: bool) -> tuple[float, float] | None:
        nonlocal started
        time.sleep(max(0.0, started + CYCLE_SPACING_SECS - time.monotonic()))
        started = time.monotonic()
        return _liquidation_to_exit(dep, push_lost=lost)

    for key, n, lost in (("liquidation_to_exit_ms", with_push, False),
                         ("liquidation_to_exit_push_lost_ms", push_lost, True)):
        runs = [r for r in (spaced(lost) for _ in range(n)) if r is not None]
        out[key.replace("_ms", "_not_hedged")] = n - len(runs)
        out[key] = measure.p50_p99([secs * 1000 for secs, _ in runs])
        out[key.replace("_ms", "_naked_usd_secs")] = {
            "worst": round(max((naked for _, naked in runs), default=0.0), 1),
            "p50": round(measure.percentile([naked for _, naked in runs], 50), 1) if runs else None}
    out["reconcile_secs"] = DEFAULT_RECONCILE_SECS


def _push_confirm_latency(dep: Deployment, n: int, warmup: int = 3) -> list[float]:
    """Samples of the pushed position change → the waiting confirmation task done (ms)."""
    app, exchange, index = dep.app, dep.sim.exchange, 101
    params = dep.app.xtb_settings.group("main").params
    poll, step = float(params.confirmation_poll_secs), Decimal("0.01")
    filled, _, reason = exchange.execute_market("lighter", str(index), "ETH", "buy", step * (warmup + n + 1),
                                                step=Decimal("0.0001"))
    if reason:
        raise RuntimeError(f"simulator order did not fill: {reason}")
    wait_until(lambda: _streamed(dep, "lighter1") == filled, timeout=10, what="the opened position on the stream")
    samples = []
    for i in range(warmup + n):
        baseline = exchange.position_quantity("lighter", str(index), "ETH")
        result = app.send_task("xtb.venue.confirm_position", queue="lighter1", kwargs={
            "account": "lighter1", "symbol": "ETH", "baseline": str(baseline), "expected_sign": -1,
            "min_fraction": 0.5, "poll_secs": poll, "timeout_secs": 10.0, "requested": str(step)})
        time.sleep(0.05 + random.uniform(0, poll))  # at a random phase of its poll window
        pushed = time.time()
        dep.admin("lighter", "liquidate", {"venue": "lighter", "account": str(index), "base": "ETH",
                                           "leave": str(baseline - step)})
        if not wait_result(app, result.id, 30, interval=0.01)["confirmed"]:
            raise RuntimeError("confirmation did not confirm")
        if i >= warmup:
            samples.append((epoch_of(app.backend.get_task_meta(result.id)["date_done"]) - pushed) * 1000)
    dep.liquidate_lighter(index)
    return samples


def _streamed(dep: Deployment, account: str) -> Decimal | None:
    reading = dep.app.send_task("xtb.venue.get_position", queue=account,
                                kwargs={"account": account, "symbol": "ETH"}).get(timeout=10)
    return Decimal(reading["quantity"]) if reading.get("source") == "ws" and reading.get("quantity") else None


def measure_budget(out: dict[str, Any], *, cycles: int, monitor_secs: float, confirms: int,
                   liquidations: int) -> None:
    """Run :func:`measure_in_process` in a fresh interpreter (the process-wide Celery app is bound to
    the broker it was built with, the latency bench's) and merge its figures into ``out``."""
    proc = subprocess.run([sys.executable, "-m", "bench.budget_bench", str(cycles), str(monitor_secs), str(confirms),
                           str(liquidations)], capture_output=True, text=True, timeout=1200, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"budget bench failed:\n{proc.stderr[-3000:]}")
    out.update(json.loads(proc.stdout.strip().splitlines()[-1]))


def measure_in_process(out: dict[str, Any], *, cycles: int, monitor_secs: float, confirms: int,
                       liquidations: int = 0, rest_only: bool = False) -> None:
    """``rest_only``: the workers as they were before the streams (REST only, no budget), against the
    same rate-limited venue; no push confirmations (there is no stream)."""
    tmp = Path(tempfile.mkdtemp(prefix="xtb-bench-budget-"))
    redis_server = start_redis_server(tmp / "redis")
    dep = make_deployment(tmp, redis_server.url, start_worker, lighter_rules=LighterRules(), streams=not rest_only)
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
            out.setdefault("outcomes", []).append(f'{record.get("outcome")} {record.get("reason")}')
        out["lighter_rest_requests_per_cycle"] = {role: {"max": max(v), "mean": round(sum(v) / len(v), 1), "n": len(v)}
                                                  for role, v in per_cycle.items()}
        out["lighter_rest_requests_per_monitor_minute"] = per_minute
        out["lighter_monitor_secs_measured"] = monitor_secs
        out["http_429_per_cycle"] = round(sum(limited) / max(len(limited), 1), 2)
        out["confirm_latency_in_cycle_ms"] = measure.p50_p99(latencies)
        if not rest_only:
            out["confirm_latency_stream_ms"] = measure.p50_p99(_push_confirm_latency(dep, confirms))
            measure_liquidations(dep, out, with_push=liquidations, push_lost=max(liquidations * 2 // 5, 2))
    finally:
        teardown(dep)
        stop_redis_server(redis_server)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.budget_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("cycles", type=int, nargs="?", default=5)
    parser.add_argument("monitor_secs", type=float, nargs="?", default=60.0)
    parser.add_argument("confirms", type=int, nargs="?", default=60)
    parser.add_argument("liquidations", type=int, nargs="?", default=10)
    parser.add_argument("--rest-only", action="store_true",
                        help="the workers as before the streams (REST only, no budget): the 'before' figures")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    measure_in_process(figures, cycles=args.cycles, monitor_secs=args.monitor_secs, confirms=args.confirms,
                       liquidations=args.liquidations, rest_only=args.rest_only)
    print(json.dumps(figures))
