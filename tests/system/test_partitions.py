"""Hosts and partitions: every worker on its own host (a network namespace, ``tests/helpers/hosts.py``),
one host cut from Redis mid-cycle while it can still reach the venues.

- A venue worker cut while it holds its account's lease, its order at the venue: it sends nothing
  more, its lease runs out, a standby worker for the account on another host finishes the cycle,
  and the copies of its task that come back are refused by fencing.
- The orchestrator cut during monitoring: a second orchestrator on another host resumes the loop;
  once the first is back, the two run side by side and the cycle still has one loop.

Each run checks that no client id filled twice and samples the group's net at the venue throughout.
The deployment runs with a 10 s step grace and a 6 s broker visibility timeout (tests' values), and
reads REST only (``streams=False``): the held order answer is a REST fault.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from tests.helpers.faults import STEP, cycle_alerts, raised_alerts
from tests.helpers.harness import Deployment, each_test_clean, make_deployment, teardown
from tests.helpers.hosts import Hosts, network, placed_start_worker
from tests.helpers.services import WorkerProcess, start_redis_server, start_worker, stop_redis_server
from tests.helpers.support import wait_until
from xtb_tasks.worker.lease import LEASE_TTL

pytestmark = pytest.mark.timeout(400)

STEP_GRACE_SECS = 10.0
VISIBILITY_SECS = 6
HOSTS = ("orch-a", "orch-b", "bp", "l1", "l2-a", "l2-b")
#: Which host each worker runs on; ``lighter2-b`` and ``orchestrator-b`` are the standbys a test starts.
PLACEMENT = {"orchestrator": "orch-a", "orchestrator-b": "orch-b", "backpack": "bp", "lighter1": "l1",
             "lighter2": "l2-a", "lighter2-b": "l2-b"}
STANDBY_QUEUES = {"lighter2-b": "lighter2", "orchestrator-b": "orchestrator"}


@dataclass
class Net:
    dep: Deployment
    hosts: Hosts
    standbys: list[str] = field(default_factory=list)

    def start_standby(self, name: str) -> WorkerProcess:
        worker = self.dep.start_worker_fn([STANDBY_QUEUES[name]], name=name, config_path=self.dep.config,
                                          redis_url=self.dep.redis_url, log_dir=self.dep.tmp)
        self.dep.workers[name] = worker
        self.standbys.append(name)
        return worker

    def stop_standbys(self) -> None:
        for name in self.standbys:
            self.dep.workers.pop(name).stop()
        self.standbys.clear()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("partitions")
    with network(HOSTS) as hosts:
        redis = start_redis_server(tmp / "redis", host=hosts.redis_addr)
        dep = make_deployment(tmp, redis.url, placed_start_worker(hosts, PLACEMENT, start_worker),
                              sim_host=hosts.venue_addr, step_grace_secs=STEP_GRACE_SECS,
                              redis_options={"visibility_timeout_secs": VISIBILITY_SECS}, streams=False)
        try:
            dep.start_workers()
            yield Net(dep, hosts)
        finally:
            for name in list(hosts.hosts):  # a warm shutdown needs the broker
                hosts.heal(name)
            teardown(dep)
            stop_redis_server(redis)


@pytest.fixture(autouse=True)
def clean(net: Net) -> Iterator[Net]:
    steps = each_test_clean(net.dep, unwind_timeout=120)
    next(steps)
    yield net
    # Every host back on the network before what a failed test left is unwound; then the standbys go.
    for name in list(net.hosts.hosts):
        net.hosts.heal(name)
    try:
        next(steps, None)
    finally:
        net.stop_standbys()


class NetSampler:
    """The group's net at the venue every 20 ms, in a thread: the worst |net| and the longest time
    it stayed a step or more off zero."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.worst = Decimal(0)
        self.longest_off = 0.0
        self._off_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="net-sampler", daemon=True)

    def __enter__(self) -> NetSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            net = abs(sum(self.dep.positions().values(), Decimal(0)))
            now = time.monotonic()
            self.worst = max(self.worst, net)
            if net >= STEP:
                self._off_since = self._off_since or now
                self.longest_off = max(self.longest_off, now - self._off_since)
            else:
                self._off_since = None


def orders_of(dep: Deployment, account: str, since_wall: float = 0.0) -> list[dict[str, object]]:
    return [e for e in dep.audit() if e["venue"] == "lighter" and e["account"] == account
            and float(str(e["ts"])) >= since_wall]


def refusals(dep: Deployment, cycle_id: str, what: str) -> list[str]:
    return [e["text"] for e in dep.record(cycle_id).get("events") or [] if "refused a stale" in e["text"]
            and what in e["text"]]


def lease_holder(dep: Deployment, account: str) -> str | None:
    value = dep.client.get(f"xtb:lock:account:{account}")
    return str(value) if value else None


def test_a_venue_worker_cut_from_redis_sends_nothing_more_and_its_lease_runs_out(net: Net) -> None:
    dep, hosts = net.dep, net.hosts
    before = len(orders_of(dep, "102"))
    # Lighter2's entry reaches the venue and fills; the answer is held, so its worker still holds
    # the account lease, with the fill unrecorded, when its host loses Redis.
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "timeout_after_accept", "op": "order", "count": 1,
                                   "account": "102", "params": {"seconds": 3}})
    with NetSampler(dep) as sampler:
        cycle_id = dep.start_cycle()
        wait_until(lambda: len(orders_of(dep, "102")) > before, timeout=60, what="Lighter2's entry at the venue")
        holder = lease_holder(dep, "lighter2")
        hosts.cut("l2-a")
        cut_at, cut_wall = time.monotonic(), time.time()
        assert holder and holder.startswith("xtb-l2-a:"), holder
        net.start_standby("lighter2-b")

        # The lease outlives every task of the cut worker (time limit 60 s < TTL 75 s) and then expires.
        wait_until(lambda: lease_holder(dep, "lighter2") != holder, timeout=LEASE_TTL + 10,
                   what="the cut worker's lease to expire")
        freed_at, freed_wall = time.monotonic(), time.time()
        # Nothing reached the venue for the account while the cut worker held its lease.
        assert orders_of(dep, "102", cut_wall) == [] or min(
            float(str(e["ts"])) for e in orders_of(dep, "102", cut_wall)) >= freed_wall - 0.5
        done = dep.wait_done(cycle_id, timeout=90)
        ended_at = time.monotonic()
    print(f"\npartition l2-a: lease expired {freed_at - cut_at:.1f} s after the cut, cycle {done['outcome']} "
          f"({done.get('reason')}) {ended_at - cut_at:.1f} s after it; worst net {sampler.worst}, "
          f"longest {sampler.longest_off:.1f} s a step or more off zero")
    assert done["outcome"] == "flat", done
    assert freed_at - cut_at <= LEASE_TTL + 5
    assert all(abs(q) < STEP for q in dep.positions().values()), dep.positions()
    assert dep.duplicate_client_ids() == []
    # The fill the cut worker never recorded is found through the venue and unwound in step; the
    # group is off by it only until the watchdog's unwind (step grace plus a sweep and an exit step).
    assert sampler.longest_off <= STEP_GRACE_SECS + 15, sampler.longest_off
    assert len(cycle_alerts(dep, cycle_id, "emergency_exit")) == 1
    # Meanwhile the exit closed no Lighter leg alone: it waited, hedged, for the lease.
    events = [e["text"] for e in dep.record(cycle_id).get("events") or []]
    assert any("waits, the account lease of L2 (lighter2" in t for t in events), events

    # Back on the network, the cut worker acts on nothing of the finished cycle.
    healed_wall = time.time()
    hosts.heal("l2-a")
    wait_until(lambda: "ready." in dep.workers["lighter2"].log() and dep.workers["lighter2"].alive(), timeout=5,
               what="the cut worker alive")
    time.sleep(VISIBILITY_SECS + 4)
    assert orders_of(dep, "102", healed_wall) == []
    assert refusals(dep, cycle_id, "l2_entry"), dep.record(cycle_id).get("events")


def test_a_cut_orchestrator_is_replaced_by_one_on_another_host_and_the_cycle_keeps_one_loop(net: Net) -> None:
    dep, hosts = net.dep, net.hosts
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    with NetSampler(dep) as sampler:
        step = int(dep.record(cycle_id).get("step_seq") or 0)
        hosts.cut("orch-a")
        cut_at = time.monotonic()
        net.start_standby("orchestrator-b")
        # The loop goes on under the replacement by whichever recovery comes first: the broker hands
        # it the cut worker's unacknowledged tick once the visibility timeout (6 s) has passed, or its
        # watchdog finds the loop overdue (step grace 10 s, then a sweep) and resumes it from venue
        # truth. The watchdog's own resume is tested in test_fencing and the crash matrix.
        wait_until(lambda: int(dep.record(cycle_id).get("step_seq") or 0) > step + 2, timeout=60,
                   what="monitoring to go on under the second orchestrator")
        resumed_at = time.monotonic()
        hosts.heal("orch-a")
        # Both orchestrators up: the first one's held tick comes back and refuses; one loop goes on.
        time.sleep(VISIBILITY_SECS + 6)
        assert dep.record(cycle_id)["stage"] == "monitoring"
    stale = refusals(dep, cycle_id, "monitor")
    events = [e["text"] for e in dep.record(cycle_id).get("events") or []]
    by = "the watchdog" if any("watchdog: monitoring overdue; resume_monitoring" in t for t in events) \
        else "the redelivered tick"
    print(f"\npartition orch-a: monitoring resumed by {by} {resumed_at - cut_at:.1f} s after the cut; worst net "
          f"{sampler.worst} while cut and after; {len(stale)} stale loop step(s) refused")
    # In step throughout the partition: the loop only reads while nothing moves.
    assert sampler.worst < STEP, sampler.worst
    dep.liquidate_lighter(102)
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), done
    assert dep.duplicate_client_ids() == []
    assert len(raised_alerts(dep, cycle_id, "cycle_completed")) == 1
