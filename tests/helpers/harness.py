"""An end-to-end deployment for tests and benchmarks: the simulators, real worker processes (one
per account plus the orchestrator), a config pointing at both, and helpers to drive cycles.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import redis

from tests.helpers.services import ROOT, RedisServer, start_worker, worker_env
from tests.helpers.support import wait_until, write_config

ROLES = ("backpack", "lighter1", "lighter2")
FAST_PARAMS: dict[str, object] = {
    "leverage": 3.0, "wait_min_secs": 0.2, "wait_max_secs": 0.4, "poll_interval_secs": 0.5,
    "confirmation_timeout_secs": 3.0, "zero_confirmations": 2,
}


def deployment_app(config: Path, redis_url: str) -> Any:
    """A Celery app (the production wiring: ``celery_settings``, the broker connection class) bound
    to ``redis_url`` with ``config``'s queues, for a test process to publish and wait on results."""
    from celery import Celery

    from core.config import load_settings
    from xtb_tasks.worker.celery_app import BROKER_AMQP, celery_settings

    settings = load_settings(config)
    app = Celery("xtb-test-deployment", amqp=BROKER_AMQP)
    app.conf.update(celery_settings(settings, redis_url))
    app.xtb_settings = settings  # as create_app does: the bench reads the group's parameters from it
    return app


@dataclass
class Deployment:
    tmp: Path
    redis_url: str
    sim: Any
    config: Path
    workers: dict[str, Any] = field(default_factory=dict)
    start_worker_fn: Any = None
    _app: Any = field(default=None, repr=False)

    # ---- processes ------------------------------------------------------------------------
    def start_workers(self, names: tuple[str, ...] = (*ROLES, "orchestrator")) -> None:
        for name in names:
            self.workers[name] = self.start_worker_fn([name], name=name, config_path=self.config,
                                                      redis_url=self.redis_url, log_dir=self.tmp)

    def kill_worker(self, name: str) -> None:
        self.workers[name].kill()

    def restart_worker(self, name: str) -> None:
        self.workers[name].stop()
        self.workers[name] = self.start_worker_fn([name], name=name, config_path=self.config,
                                                  redis_url=self.redis_url, log_dir=self.tmp)

    def stop(self) -> None:
        # SIGTERM every worker first so that their warm shutdowns overlap, then wait for (or kill) each.
        for worker in self.workers.values():
            if worker.alive():
                worker.proc.terminate()
        for worker in self.workers.values():
            worker.stop()

    # ---- celery and redis -----------------------------------------------------------------
    @property
    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    @property
    def app(self) -> Any:
        """A Celery app of this deployment's own (its config, its Redis): the process-wide app is
        bound to whichever Redis the first import saw, and modules run deployments on their own Redis."""
        os.environ["XTB_CONFIG"] = str(self.config)
        os.environ["REDIS_URL"] = self.redis_url
        if self._app is None:
            self._app = deployment_app(self.config, self.redis_url)
        return self._app

    def start_cycle(self, group: str = "main", **overrides: Any) -> str:
        from xtb_tasks.worker.results import wait_result

        task_id = self.app.send_task("xtb.hedge.start_cycle", kwargs={"group": group, **overrides},
                                     queue="orchestrator").id
        return str(wait_result(self.app, task_id, 60)["cycle_id"])

    def record(self, cycle_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in cast(dict[str, str], self.client.hgetall(f"xtb:cycle:{cycle_id}")).items():
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    def wait_stage(self, cycle_id: str, stages: str | tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        wanted = (stages,) if isinstance(stages, str) else stages
        try:
            wait_until(lambda: self.record(cycle_id).get("stage") in wanted, timeout=timeout,
                       what=f"cycle {cycle_id} to reach {wanted}")
        except TimeoutError as exc:
            data = self.record(cycle_id)
            last = [e.get("text") for e in (data.get("events") or [])[-5:]]
            raise TimeoutError(f"{exc}; stage is {data.get('stage')}, error {data.get('error')}, "
                               f"last events {last}") from None
        return self.record(cycle_id)

    def wait_done(self, cycle_id: str, timeout: float = 90) -> dict[str, Any]:
        return self.wait_stage(cycle_id, "done", timeout)

    def unwind_leftovers(self, timeout: float = 60) -> None:
        """Cancel whatever cycle a failed test left active, so the next test starts clean."""
        for cycle_id in map(str, self.client.smembers("xtb:cycles:active")):
            self.client.set(f"xtb:cycle:{cycle_id}:cancel", "1")
            self.app.send_task("xtb.hedge.emergency_exit", kwargs={"cycle_id": cycle_id, "reason": "cancelled",
                                                                   "attempt": 90}, queue="orchestrator")
        wait_until(lambda: not self.client.scard("xtb:cycles:active"), timeout=timeout, what="leftover cycles to end")
        # A test whose cycle turned unresolved leaves its group stopped (the kill switch); the next
        # test would be refused. The fixtures check the venues flat themselves.
        for key in list(self.client.scan_iter("xtb:group:*:stopped")):
            self.client.delete(key)

    # ---- venue truth ----------------------------------------------------------------------
    def admin(self, venue: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import requests

        base = self.sim.urls[venue]
        response = (requests.post(f"{base}/_sim/{path}", json=body or {}, timeout=10) if body is not None
                    else requests.get(f"{base}/_sim/{path}", timeout=10))
        response.raise_for_status()
        return response.json()

    def arm_fault(self, venue: str, kind: str, count: int = 1, op: str = "any", **params: Any) -> None:
        self.admin(venue, "fault", {"venue": venue, "kind": kind, "count": count, "op": op, "params": params})

    def lighter_position(self, index: int, base: str = "ETH") -> Decimal:
        return self.sim.exchange.position_quantity("lighter", str(index), base)

    def positions(self) -> dict[str, Decimal]:
        """Venue truth for the three roles, straight from the simulator's ledger."""
        out = {}
        with self.sim.exchange.lock:
            for (venue, key), acct in self.sim.exchange.accounts.items():
                pos = acct.positions.get("ETH")
                if venue == "lighter" and key in ("101", "102"):
                    out["lighter1" if key == "101" else "lighter2"] = pos.quantity if pos else Decimal(0)
                elif venue == "backpack":
                    out["backpack"] = pos.quantity if pos else Decimal(0)
        return out

    def fresh_rate_minute(self) -> None:
        """Every Lighter rate window empty, at the venue and in the workers' budget, as a minute without
        requests would leave them: a test starts with the budget a scenario of its own would have,
        not what the test before it spent (its own requests still count as the venue counts them)."""
        self.admin("lighter", "lighter/limits/reset", {})
        client = self.client
        keys = list(client.scan_iter("xtb:budget:*"))
        if keys:
            client.delete(*keys)

    def liquidate_lighter(self, index: int) -> None:
        self.admin("lighter", "liquidate", {"venue": "lighter", "account": str(index), "base": "ETH"})

    def lighter_requests(self) -> dict[str, dict[str, int]]:
        """Lighter REST requests per ``who`` (``account:<index>``, ``ip:<address>``): total and 429s."""
        return self.sim.exchange.request_totals("lighter")

    def audit(self) -> list[dict[str, Any]]:
        return [entry.to_json() for entry in list(self.sim.exchange.audit)]

    def duplicate_client_ids(self) -> list[tuple[str, str, int]]:
        """Every (venue, account, client id) that produced more than one venue order."""
        counts = Counter((e["venue"], e["account"], e["client_id"]) for e in self.audit() if e["client_id"])
        return [key for key, n in counts.items() if n > 1]

    def telegram_texts(self) -> list[str]:
        return list(self.sim.telegram.texts())

    def alerts(self) -> list[dict[str, str]]:
        return [cast(dict[str, str], fields) for _, fields in self.client.xrange("xtb:alerts:outbox") or []]


def make_deployment(tmp: Path, redis_url: str, start_worker_fn: Any, *, params: dict[str, object] | None = None,
                    redis_options: dict[str, int] | None = None, profile: Any = None,
                    step_grace_secs: float | None = None, lighter_rules: Any = None,
                    streams: bool = True, sim_host: str = "127.0.0.1") -> Deployment:
    """``profile``: the simulators' market rules (``simulators.profile.SimProfile``; None = defaults);
    ``step_grace_secs``: the config's ``[watchdog] step_grace_secs`` (None = the default 30 s);
    ``lighter_rules``: the Lighter simulator's own rules (``lighter_rules.LighterRules``; None = the
    defaults: Standard-tier rate limits, nextNonce lag);
    ``streams=False``: every worker reads REST only, unbudgeted (tests whose faults are REST's), against
    the easy Lighter (``LighterRules.easy()``) unless ``lighter_rules`` says otherwise: polling REST
    every 0.2-0.5 s is what the streams replaced, and it spends a Standard minute in seconds;
    ``sim_host``: the address the simulators listen on (the partition tests' venue bridge)."""
    from simulators.lighter_rules import LighterRules
    from simulators.server import SimulatorServer

    if lighter_rules is None and not streams:
        lighter_rules = LighterRules.easy()

    sim = SimulatorServer(host=sim_host, backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None,
                          profile=profile, lighter_rules=lighter_rules)
    urls = sim.start()
    config = write_config(tmp / "xtb.toml", urls, group_params={**FAST_PARAMS, **(params or {})},
                          redis_options=redis_options, step_grace_secs=step_grace_secs,
                          streams=streams)
    return Deployment(tmp=tmp, redis_url=redis_url, sim=sim, config=config, start_worker_fn=start_worker_fn)


def teardown(dep: Deployment) -> None:
    dep.stop()
    with contextlib.suppress(Exception):
        dep.sim.stop()


def running_deployment(redis_server: RedisServer, tmp: Path, *, params: dict[str, object] | None = None,
                       redis_options: dict[str, int] | None = None, profile: Any = None,
                       step_grace_secs: float | None = None, lighter_rules: Any = None,
                       streams: bool = True) -> Iterator[Deployment]:
    """A test module's deployment on a flushed Redis with its workers up (the body of a module
    fixture: ``yield from``); stopped when the fixture is torn down."""
    redis_server.client().flushall()
    deployment = make_deployment(tmp, redis_server.url, start_worker, params=params, redis_options=redis_options,
                                 profile=profile, step_grace_secs=step_grace_secs, lighter_rules=lighter_rules,
                                 streams=streams)
    deployment.start_workers()
    yield deployment
    teardown(deployment)


def each_test_clean(dep: Deployment, unwind_timeout: float = 60) -> Iterator[Deployment]:
    """The body of a per-test fixture (``yield from``; it yields ``dep``): no fault armed before or
    after the test, a fresh rate-limit minute, the books restored, what it left active unwound, and
    no client id that produced two venue orders."""
    dep.sim.exchange.clear_faults()
    dep.fresh_rate_minute()
    yield dep
    dep.admin("lighter", "depth", {"reset": True})  # a test may have thinned a book
    dep.sim.exchange.clear_faults()
    dep.unwind_leftovers(timeout=unwind_timeout)
    assert dep.duplicate_client_ids() == [], "a client id produced two venue orders"


def run_xtb(dep: Deployment, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``xtb --config <the deployment's> ARGS`` in a subprocess, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "xtb_tasks.cli", "--config", str(dep.config), *args], cwd=ROOT,
                          env=worker_env(dep.config, dep.redis_url), capture_output=True, text=True, timeout=timeout)


def net_is_hedged(positions: dict[str, Decimal], step: Decimal = Decimal("0.0001")) -> bool:
    return abs(sum(positions.values(), Decimal(0))) <= step


def sleep_briefly(secs: float = 0.2) -> None:
    time.sleep(secs)
