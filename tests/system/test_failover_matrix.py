"""Failover matrix: SIGKILL the Redis primary at each stage of a cycle, with a replica and three
Sentinels promoting it, and check that the cycle ends hedged-and-monitored or flat, that no client
id produced two venue orders, and that every order the venues saw has its intent in Redis.

One module-scoped Sentinel cluster (ACL AUTH on) and one deployment whose workers, client and
Celery app all reach Redis through the Sentinels. Each stage is held by a simulator fault (a
request hanging inside the worker that owns it) while the primary is killed; the killed node
rejoins as a replica in the background, so every stage fails over from a primary with a replica.
A worker that dies on the lost connection is restarted, as systemd's ``Restart=on-failure`` does,
and fails its stage. The table reports, per stage, the seconds from the kill to the promoted primary
answering, to the cycle's next recorded step, and to the safe end.
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

import pytest
import redis

from core import keys
from tests.helpers.faults import poll, safe_state
from tests.helpers.harness import Deployment, make_deployment, teardown
from tests.helpers.sentinel import (
    SentinelCluster,
    SentinelDeployment,
    export_credentials,
    sentinel_redis_options,
    wait_for,
)
from tests.helpers.services import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STEP_GRACE_SECS = 10.0
RESOLVE_SECS = 60.0
LIGHTER_ACCOUNTS = {"101": "lighter1", "102": "lighter2"}


@dataclass
class FailoverCell:
    stage: str
    killed_at: str
    failover_secs: float | None
    next_step_secs: float | None
    resolved_secs: float | None
    outcome: str
    duplicates: int
    lost_intents: list[str]
    worker_restarts: list[str] = field(default_factory=list)
    expect: tuple[str, ...] = ("flat", "hedged")

    @property
    def safe(self) -> bool:
        # Every worker rides the failover out (xtb_tasks/worker/broker_connection.py); one that had
        # to be restarted is a failure even when the cycle still ended safe.
        return (self.outcome in self.expect and self.resolved_secs is not None and self.duplicates == 0
                and not self.lost_intents and self.next_step_secs is not None and not self.worker_restarts)


CELLS: list[FailoverCell] = []
SHARED: dict[str, str] = {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    nodes = SentinelCluster(tmp_path_factory.mktemp("sentinel"), secrets.token_hex(12)).start()
    export_credentials(nodes)
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def dep(cluster: SentinelCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    # REST only: the faults that hold each stage are REST's (as in the crash matrix).
    base = make_deployment(tmp_path_factory.mktemp("failover"), cluster.url, start_worker,
                           redis_options=sentinel_redis_options(cluster), step_grace_secs=STEP_GRACE_SECS,
                           streams=False)
    deployment = SentinelDeployment(**{f.name: getattr(base, f.name) for f in fields(Deployment)}, cluster=cluster)
    try:
        deployment.start_workers()
    except BaseException:
        teardown(deployment)
        raise
    yield deployment
    teardown(deployment)


# ---- measuring one kill ------------------------------------------------------------------------

class Rejoin:
    """The killed node coming back as a replica, in the background while the cycle goes on."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.failed: BaseException | None = None

    def start(self, cluster: SentinelCluster, port: int) -> None:
        def rejoin() -> None:
            try:
                cluster.rejoin(port, 60)
            except BaseException as exc:  # kept for wait(): the next kill needs the replica
                self.failed = exc

        self.failed = None
        self.thread = threading.Thread(target=rejoin, daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join(70)
            assert not self.thread.is_alive(), "the killed primary did not rejoin as a replica"
            self.thread = None
            # A kill with no replica to promote leaves the cluster without a primary: say why here.
            assert self.failed is None, f"the killed primary did not rejoin as a replica: {self.failed}"


REJOIN = Rejoin()


def supervise(dep: Deployment, restarts: list[str]) -> None:
    """Restart any worker that died (systemd's Restart=on-failure), noting which and how."""
    for name, worker in list(dep.workers.items()):
        if not worker.alive():
            restarts.append(f"{name} (exit {worker.proc.returncode})")
            dep.restart_worker(name)


def lost_intents(dep: Deployment) -> list[str]:
    """Every venue order (by client id) whose intent is not in Redis: an intent a failover lost."""
    lost = []
    for entry in dep.audit():
        if not entry.get("client_id"):
            continue
        account = "backpack" if entry["venue"] == "backpack" else LIGHTER_ACCOUNTS.get(str(entry["account"]))
        if account and not dep.client.exists(keys.intent(account, int(entry["client_id"]))):
            lost.append(f"{account}:{entry['client_id']}")
    return lost


def kill_primary_at(dep: SentinelDeployment, cycle_id: str, stage: str,
                    expect: tuple[str, ...] = ("flat", "hedged")) -> FailoverCell:
    """SIGKILL the primary now; measure the failover, the next step and the safe end."""
    cluster = dep.cluster
    assert cluster is not None
    restarts: list[str] = []
    dups_before = set(dep.duplicate_client_ids())
    killed_at = str(dep.record(cycle_id).get("stage"))
    killed = time.monotonic()
    old = cluster.kill_primary()
    cluster.wait_failover(old)
    failover = time.monotonic()
    since_wall = time.time()
    REJOIN.start(cluster, old)
    before = dep.record(cycle_id)

    def stepped() -> bool:
        supervise(dep, restarts)
        return dep.record(cycle_id) != before

    stepped_at = wait_for(stepped, timeout=RESOLVE_SECS)
    # The fault only held the cycle at the stage; the end is measured against a healthy venue.
    dep.sim.exchange.clear_faults()
    outcome: list[str] = []

    def settled() -> bool:
        supervise(dep, restarts)
        state = safe_state(dep, cycle_id, since_wall)
        return bool(state) and not outcome.append(str(state))

    resolved_at = wait_for(settled, timeout=RESOLVE_SECS, interval=0.25)
    cell = FailoverCell(
        stage, killed_at, round(failover - killed, 2),
        None if stepped_at is None else round(stepped_at - killed, 2),
        None if resolved_at is None else round(resolved_at - killed, 2),
        outcome[0] if outcome else f"stuck:{dep.record(cycle_id).get('stage')}",
        len(set(dep.duplicate_client_ids()) - dups_before), lost_intents(dep), restarts, expect)
    CELLS.append(cell)
    return cell


def finish(dep: Deployment, cell: FailoverCell, *, keep_hedged: bool = False) -> None:
    dep.sim.exchange.clear_faults()
    if not cell.safe or (not keep_hedged and dep.client.scard("xtb:cycles:active")):
        dep.unwind_leftovers(timeout=120)
    assert cell.safe, cell


def _filled(dep: Deployment, cycle_id: str, leg: str) -> bool:
    data = dep.record(cycle_id).get(f"leg:{leg}") or {}
    return data.get("state") not in (None, "submitting") and Decimal(str(data.get("filled") or 0)) > 0


def reach(dep: Deployment, cycle_id: str, what: str, predicate: Callable[[], object], timeout: float = 40) -> None:
    if poll(predicate, timeout=timeout, interval=0.02):
        return
    data = dep.record(cycle_id)
    events = [e.get("text") for e in (data.get("events") or [])[-6:] if isinstance(e, dict)]
    problems = {name: [line for line in worker.log().splitlines() if " ERROR/" in line or " CRITICAL/" in line][-3:]
                for name, worker in dep.workers.items()}
    pytest.fail(f"never reached the kill point: {what}; cycle {cycle_id} at stage {data.get('stage')!r}, "
                f"error {data.get('error')!r}, last events {events}; workers alive "
                f"{ {n: w.alive() for n, w in dep.workers.items()} }; worker errors {problems}")


def start(dep: SentinelDeployment, **overrides: Any) -> str:
    REJOIN.wait()
    assert not dep.client.scard("xtb:cycles:active"), "a previous stage left a cycle active"
    return dep.start_cycle(**overrides)


# ---- the stages ----------------------------------------------------------------------------------

def stage_planning(dep: SentinelDeployment) -> None:
    # The Backpack submit hangs before the venue takes it: planned, nothing sent yet.
    dep.arm_fault("backpack", "hang", count=1, op="order", seconds=6)
    cycle_id = start(dep)
    reach(dep, cycle_id, "plan recorded", lambda: "plan" in dep.record(cycle_id))
    finish(dep, kill_primary_at(dep, cycle_id, "planning"))


def stage_entry(dep: SentinelDeployment) -> None:
    dep.arm_fault("lighter", "hang", count=1, op="order", account="101", seconds=6)
    cycle_id = start(dep)
    reach(dep, cycle_id, "Backpack entry filled, Lighter1 hedge in flight", lambda: _filled(dep, cycle_id, "bp_entry"))
    finish(dep, kill_primary_at(dep, cycle_id, "entry"))


def stage_wait(dep: SentinelDeployment) -> None:
    cycle_id = start(dep, wait_min_secs=8.0, wait_max_secs=8.0)
    reach(dep, cycle_id, "the random wait", lambda: dep.record(cycle_id).get("stage") == "wait")
    finish(dep, kill_primary_at(dep, cycle_id, "wait"))


def stage_rebalance(dep: SentinelDeployment) -> None:
    cycle_id = start(dep)
    reach(dep, cycle_id, "Lighter2 filled", lambda: _filled(dep, cycle_id, "l2_entry"))
    dep.arm_fault("backpack", "hang", count=1, op="position", seconds=6)
    reach(dep, cycle_id, "rebalance reading positions", lambda: dep.record(cycle_id).get("stage") == "rebalance")
    cell = kill_primary_at(dep, cycle_id, "rebalance")
    if cell.safe and cell.outcome == "hedged":
        SHARED["cycle"] = cycle_id
    finish(dep, cell, keep_hedged=True)


def stage_monitoring(dep: SentinelDeployment) -> None:
    cycle_id = SHARED.get("cycle") or start(dep)
    SHARED["cycle"] = cycle_id
    reach(dep, cycle_id, "monitoring", lambda: dep.record(cycle_id).get("stage") == "monitoring", timeout=60)
    REJOIN.wait()
    cell = kill_primary_at(dep, cycle_id, "monitoring")
    if not (cell.safe and cell.outcome == "hedged"):
        SHARED.pop("cycle", None)
    finish(dep, cell, keep_hedged=True)


def stage_exit(dep: SentinelDeployment) -> None:
    cycle_id = SHARED.get("cycle") or start(dep)
    reach(dep, cycle_id, "monitoring", lambda: dep.record(cycle_id).get("stage") == "monitoring", timeout=60)
    REJOIN.wait()
    # Lighter1 is liquidated; the exit's Lighter2 close hangs at the venue while the primary dies.
    dep.arm_fault("lighter", "hang", count=1, op="order", account="102", seconds=6)
    dep.liquidate_lighter(101)
    reach(dep, cycle_id, "emergency exit flattening", lambda: dep.record(cycle_id).get("stage") == "emergency_exit")
    finish(dep, kill_primary_at(dep, cycle_id, "exit", expect=("flat",)))


STAGES: dict[str, Callable[[SentinelDeployment], None]] = {
    "planning": stage_planning, "entry": stage_entry, "wait": stage_wait, "rebalance": stage_rebalance,
    "monitoring": stage_monitoring, "exit": stage_exit,
}


@dataclass(frozen=True)
class Matrix:
    cells: list[FailoverCell]
    failures: dict[str, str]


@pytest.fixture(scope="module")
def matrix(dep: SentinelDeployment) -> Matrix:
    """Every stage once, in order, whichever test asks first (the tests below only read it)."""
    CELLS.clear()
    SHARED.clear()
    failures: dict[str, str] = {}
    for name, run in STAGES.items():
        try:
            run(dep)
        except (Exception, pytest.fail.Exception) as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
            dep.sim.exchange.clear_faults()
            with_active = False
            with contextlib.suppress(redis.RedisError):
                with_active = bool(dep.client.scard("xtb:cycles:active"))
            if with_active:
                dep.unwind_leftovers(timeout=120)
    REJOIN.wait()
    return Matrix(list(CELLS), failures)


def table(cells: list[FailoverCell]) -> list[str]:
    lines = ["stage      | killed at      | failover s | next step s | safe end s | outcome | dup ids | lost intents "
             "| workers restarted"]
    for c in cells:
        lines.append(f"{c.stage:<10} | {c.killed_at:<14} | {c.failover_secs!s:>10} | {c.next_step_secs!s:>11} | "
                     f"{c.resolved_secs!s:>10} | {c.outcome:<7} | {c.duplicates:>7} | {len(c.lost_intents):>12} | "
                     f"{', '.join(c.worker_restarts) or '-'}")
    steps = [c.next_step_secs for c in cells if c.next_step_secs is not None]
    if steps:
        lines.append(f"kill -> next step: median {statistics.median(steps):.2f} s, worst {max(steps):.2f} s; "
                     f"kill -> promoted primary: median {statistics.median(c.failover_secs or 0 for c in cells):.2f} s")
    lines.append(f"failover matrix: {sum(c.safe for c in cells)}/{len(STAGES)} safe")
    return lines


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_ends_safe(matrix: Matrix, stage: str) -> None:
    assert stage not in matrix.failures, matrix.failures[stage]
    cells = [c for c in matrix.cells if c.stage == stage]
    assert cells and all(c.safe for c in cells), cells


def test_failover_matrix_all_safe(matrix: Matrix, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\n" + "\n".join(table(matrix.cells)))
    assert not matrix.failures, matrix.failures
    assert len(matrix.cells) == len(STAGES) and all(c.safe for c in matrix.cells), table(matrix.cells)
