"""The benchmark deployment: a private redis-server, the simulators (latency 0), a config with up to
four hedge groups, and real ``celery worker`` processes, reusing the test fixtures' helpers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from core.policies import ORCHESTRATOR_QUEUE
from simulators.lighter_rules import LighterRules
from tests.helpers.harness import FAST_PARAMS, Deployment
from tests.helpers.services import RedisServer, WorkerProcess, start_redis_server, start_worker, stop_redis_server
from tests.helpers.support import wait_until

NOOP_MODULE = "bench.noop_tasks"
ORCHESTRATOR = ORCHESTRATOR_QUEUE
#: Orchestrator pool size: the production unit runs it without ``-c`` (one child per core).
ORCHESTRATOR_CONCURRENCY = 2
MAX_GROUPS = 4


@dataclass(frozen=True)
class GroupSpec:
    name: str
    backpack: str
    lighter1: str
    lighter2: str
    lighter_indexes: tuple[int, int]

    @property
    def accounts(self) -> tuple[str, str, str]:
        return (self.backpack, self.lighter1, self.lighter2)


def group_specs(n: int = MAX_GROUPS) -> list[GroupSpec]:
    specs = []
    for i in range(1, n + 1):
        sfx = "" if i == 1 else str(i)
        specs.append(GroupSpec(f"main{sfx}", f"backpack{sfx}", f"lighter1{sfx}", f"lighter2{sfx}",
                               (99 + 2 * i, 100 + 2 * i)))
    return specs


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')


def write_bench_config(path: Path, urls: dict[str, str], specs: list[GroupSpec],
                       params: dict[str, object]) -> Path:
    """Like tests/support.write_config, with one group (and three accounts) per spec.

    The rate budget is off: the latency phases run 100 cycles back to back (about 16 a second), far
    past any Lighter tier, against a Lighter simulator without limits; ``budget_bench`` measures the
    rate-limited venue with the budget on."""
    keys = path.parent / "keys"
    lines: list[str] = ["[rate_budget]", "enabled = false", ""]
    for spec in specs:
        lines += [f"[accounts.{spec.backpack}]", 'venue = "backpack"', f'base_url = "{urls["backpack"]}"',
                  f'ws_url = "{urls["backpack_ws"]}"', f'keys_file = "{keys}/{spec.backpack}.txt"',
                  "create_keys_if_missing = true", ""]
        for n, (account, index) in enumerate(zip((spec.lighter1, spec.lighter2), spec.lighter_indexes,
                                                 strict=True), start=1):
            lines += [f"[accounts.{account}]", 'venue = "lighter"', f'base_url = "{urls["lighter"]}"',
                      f'ws_url = "{urls["lighter_ws"]}"', f"account_index = {index}", f"api_key_index = {3 + n}",
                      f'keys_file = "{keys}/{account}.txt"', "create_keys_if_missing = true", ""]
        lines += [f"[groups.{spec.name}]", f'backpack = "{spec.backpack}"', f'lighter1 = "{spec.lighter1}"',
                  f'lighter2 = "{spec.lighter2}"']
        lines += [f"{key} = {_value(value)}" for key, value in params.items()]
        lines.append("")
    lines += ["[telegram]", f'api_url = "{urls.get("telegram", "http://127.0.0.1:9")}"',
              f'keys_file = "{keys}/tg_key.txt"', ""]
    path.write_text("\n".join(lines))
    return path


@dataclass
class Bench:
    """Everything the benchmark started; :meth:`close` stops all of it."""

    tmp: Path
    redis: RedisServer
    sim: Any
    dep: Deployment
    specs: list[GroupSpec]
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    task_modules: str = NOOP_MODULE

    def start_workers(self, queues: list[str]) -> None:
        """Start one worker per queue in parallel (prefork, ``-c 1`` for accounts), then wait for all."""
        started = []
        for queue in queues:
            concurrency = ORCHESTRATOR_CONCURRENCY if queue == ORCHESTRATOR else 1
            worker = start_worker([queue], name=queue, config_path=self.dep.config, redis_url=self.redis.url,
                                  log_dir=self.tmp, extra_env={"XTB_TASK_MODULES": self.task_modules}, wait=False,
                                  concurrency=concurrency)
            self.workers[queue] = worker
            started.append(worker)
        for worker in started:
            wait_until(partial(_ready_or_dead, worker), timeout=90, what=f"worker {worker.name} ready")
            if not worker.alive():
                raise RuntimeError(f"worker {worker.name} exited early:\n{worker.log()[-3000:]}")
        self.dep.workers.update({w.name: w for w in started})

    def venue_workers(self) -> dict[str, WorkerProcess]:
        return {name: w for name, w in self.workers.items() if name != ORCHESTRATOR}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.dep.stop()  # every worker started here is in dep.workers too
        self.workers.clear()
        with contextlib.suppress(Exception):
            self.sim.stop()
        with contextlib.suppress(Exception):
            stop_redis_server(self.redis)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def bench_deployment(params: dict[str, object] | None = None) -> Iterator[Bench]:
    """Redis + simulators + a four-group config; workers are started by the caller."""
    from simulators.server import SimulatorServer

    tmp = Path(tempfile.mkdtemp(prefix="xtb-bench-"))
    redis_server = start_redis_server(tmp / "redis")
    sim = SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None,
                          lighter_rules=LighterRules.easy())
    bench: Bench | None = None
    try:
        urls = sim.start()
        specs = group_specs()
        config = write_bench_config(tmp / "xtb.toml", urls, specs, {**FAST_PARAMS, **(params or {})})
        os.environ["XTB_CONFIG"] = str(config)
        os.environ["REDIS_URL"] = redis_server.url
        os.environ["XTB_TASK_MODULES"] = NOOP_MODULE
        dep = Deployment(tmp=tmp, redis_url=redis_server.url, sim=sim, config=config, start_worker_fn=start_worker)
        bench = Bench(tmp, redis_server, sim, dep, specs, task_modules=NOOP_MODULE)
        yield bench
    finally:
        if bench is not None:
            bench.close()
        else:
            with contextlib.suppress(Exception):
                sim.stop()
            stop_redis_server(redis_server)
            shutil.rmtree(tmp, ignore_errors=True)


def _ready_or_dead(worker: WorkerProcess) -> bool:
    return "ready." in worker.log() or not worker.alive()
