"""The exit in step and price-capped Backpack orders, end to end.

Real Redis, real workers, the simulators; the books are shaped through the admin API
(``/_sim/depth``). A sampler thread reads the simulator's ledger every few milliseconds, so the
net the group carried between the exit's own reads is measured too, not only what the exit saw.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.faults import STEP, venue_flat, venue_hedged
from tests.helpers.harness import Deployment, each_test_clean, running_deployment
from tests.helpers.services import RedisServer
from tests.helpers.support import wait_until

pytestmark = pytest.mark.slow

BIG = {"size": "50", "leverage": 20.0, "lighter_max_slippage": 0.005}


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("exitstep"))


@pytest.fixture
def clean(dep: Deployment) -> Iterator[Deployment]:
    yield from each_test_clean(dep, unwind_timeout=120)
    assert venue_flat(dep), dep.positions()


class NetSampler:
    """The group's net at the simulator every ``interval`` seconds: the worst, and how long it was off."""

    def __init__(self, dep: Deployment, interval: float = 0.002) -> None:
        self.dep, self.interval = dep, interval
        self.worst = Decimal(0)
        self.off_secs = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            net = abs(sum(self.dep.positions().values(), Decimal(0)))
            now = time.monotonic()
            if net > STEP:
                self.off_secs += now - last
            self.worst = max(self.worst, net)
            last = now
            time.sleep(self.interval)

    def __enter__(self) -> NetSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def exit_reads(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The exit's reads (``positions:exit_<k>``), in step order."""
    keys = sorted((k for k in record if k.startswith("positions:exit_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [record[k] for k in keys]


def test_exit_after_a_liquidation_on_a_thin_lighter_book_stays_in_step(clean: Deployment) -> None:
    dep = clean
    cycle_id = dep.start_cycle(**BIG)
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    assert venue_hedged(dep) and dep.positions()["lighter1"] == -50, dep.positions()
    # 4 levels of 2 ETH: a Lighter order takes at most 8 ETH; Backpack's book stays deep.
    dep.admin("lighter", "depth", {"venue": "lighter", "levels": 4, "level_size": "2"})
    dep.liquidate_lighter(102)
    dep.wait_stage(cycle_id, ("emergency_exit", "done"), timeout=30)
    with NetSampler(dep) as sampler:  # from the exit's start: what the monitor did before it is not the exit's
        done = dep.wait_done(cycle_id, timeout=120)
    print(f"exit: outcome={done.get('outcome')} sampled worst net={sampler.worst} "
          f"sampled time off by more than a step={sampler.off_secs:.3f}s worst read net={done.get('exit_worst_net')}")
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), (done.get("error"), done.get("events"))
    assert venue_flat(dep), dep.positions()
    reads = exit_reads(done)
    assert len(reads) > 6, reads  # 50 ETH at 8 per Lighter order: the exit went in steps
    start = abs(Decimal(reads[0]["net"]))
    worst = Decimal(done["exit_worst_net"])
    # Within one step of what the exit started from (the liquidation's own gap, if any).
    assert worst <= max(STEP, start), (worst, start, [r["net"] for r in reads])
    assert isinstance(done["exit_worst_net_at"], float)
    # The monitor does not rebalance Backpack onto a zero read (it confirms the read first), so the exit
    # starts with Lighter1's 50 ETH unhedged and closes it step by step: the net only ever shrinks.
    nets = [abs(Decimal(r["net"])) for r in reads]
    assert all(later <= earlier + STEP for earlier, later in itertools.pairwise(nets)), nets


def test_exit_during_the_wait_on_a_thin_lighter_book_reduces_backpack_in_step(clean: Deployment) -> None:
    # During the random wait Backpack holds the entry against Lighter1: the net is zero, and the exit
    # must keep it so while Lighter1 closes 8 ETH at a time.
    dep = clean
    cycle_id = dep.start_cycle(**BIG, wait_min_secs=5.0, wait_max_secs=5.0)
    dep.wait_stage(cycle_id, "wait", timeout=60)
    dep.admin("lighter", "depth", {"venue": "lighter", "levels": 4, "level_size": "2"})
    dep.client.set(f"xtb:cycle:{cycle_id}:cancel", "1")
    with NetSampler(dep) as sampler:
        dep.app.send_task("xtb.hedge.emergency_exit", kwargs={"cycle_id": cycle_id, "reason": "cancelled"},
                          queue="orchestrator")
        done = dep.wait_done(cycle_id, timeout=120)
    print(f"exit: sampled worst net={sampler.worst} off by more than a step={sampler.off_secs:.3f}s "
          f"worst read net={done.get('exit_worst_net')}")
    assert (done["outcome"], done["reason"]) == ("flat", "cancelled"), (done.get("error"), done.get("events"))
    assert venue_flat(dep), dep.positions()
    assert Decimal(done["exit_worst_net"]) <= STEP, [r["net"] for r in exit_reads(done)]
    backpack_orders = [k for k in done if k.startswith("leg:exit_bp_")]
    assert len(backpack_orders) > 3, backpack_orders  # Backpack followed the Lighter fills, not one order


def test_backpack_entry_beyond_the_slippage_cap_fills_only_to_the_cap(clean: Deployment) -> None:
    dep = clean
    # Backpack asks 1 ETH a level, 5 bp apart: a 0.1 % cap reaches the best three levels (best, +5, +10 bp).
    dep.admin("backpack", "depth", {"venue": "backpack", "levels": 20, "level_size": "1", "level_step": "0.0005"})
    try:
        cycle_id = dep.start_cycle(size="10", leverage=20.0, backpack_max_slippage=0.001)
        record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    finally:
        dep.admin("backpack", "depth", {"venue": "backpack", "reset": True})
    entry = record["leg:bp_entry"]
    assert Decimal(entry["filled"]) == 3 and Decimal(entry["requested"]) == 10, entry
    assert entry["state"] == "cancelled", entry  # Expired after its partial fill: a partial, not "filled"
    # The hedge mirrored the recorded fill: the group is hedged at 3, not at the planned 10.
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    positions = dep.positions()
    assert positions["lighter1"] == -3 and positions["lighter2"] == 3 and venue_hedged(dep), positions
    sent = [e for e in dep.audit() if e["venue"] == "backpack" and e.get("client_id") == entry["client_id"]]
    assert len(sent) == 1, sent
    dep.client.set(f"xtb:cycle:{cycle_id}:cancel", "1")
    dep.app.send_task("xtb.hedge.emergency_exit", kwargs={"cycle_id": cycle_id, "reason": "cancelled"},
                      queue="orchestrator")
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "cancelled"), done.get("events")


def test_an_exit_keeps_closing_in_step_on_the_venues_it_can_read(clean: Deployment) -> None:
    # Backpack's position reads fail (HTTP 500, stream down) when Lighter2 is liquidated. Lighter1's
    # close needs no Backpack read for the part Lighter2 hedged: the exit takes the net back within
    # a step on Lighter1 alone, never trades Backpack blind, and finishes once the reads heal.
    dep = clean
    cycle_id = dep.start_cycle()
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    backpack_before = dep.positions()["backpack"]
    dep.arm_fault("backpack", "drop_ws", count=100_000, op="ws")
    dep.arm_fault("backpack", "http_500", count=100_000, op="position")
    dep.liquidate_lighter(102)
    try:
        dep.wait_stage(cycle_id, "emergency_exit", timeout=30)
        in_step = wait_for_net(dep, timeout=20)
        record = dep.record(cycle_id)
        unknown_steps = [v for k, v in record.items() if k.startswith("exit_step:") and "BP" in v.get("unknown", [])]
        assert in_step, f"net {sum(dep.positions().values())} while Backpack was unreadable: {dep.positions()}"
        assert record["stage"] == "emergency_exit" and unknown_steps, record.get("events")
        assert dep.positions()["backpack"] == backpack_before, "Backpack was traded while its reads failed"
    finally:
        dep.sim.exchange.clear_faults()
    done = dep.wait_done(cycle_id, timeout=90)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), (done.get("error"), done.get("events"))
    assert venue_flat(dep), dep.positions()


def wait_for_net(dep: Deployment, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if abs(sum(dep.positions().values(), Decimal(0))) <= STEP:
            return True
        time.sleep(0.05)
    return False


def test_a_timeout_exit_with_one_thin_lighter_leg_stays_in_step_on_backpack(clean: Deployment) -> None:
    # Both Lighter legs close on the timeout; Lighter2 fills only 5 % of each of its next 8 orders
    # while Lighter1 closes whole. What Lighter1 closed beyond Lighter2 is offset on Backpack at once,
    # not left to more tries on Lighter2's book.
    dep = clean
    cycle_id = dep.start_cycle(timeout_secs=3.0)
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "partial_fill", "count": 8, "op": "order",
                                   "account": "102", "params": {"fraction": 0.05}})
    try:
        dep.wait_stage(cycle_id, ("emergency_exit", "done"), timeout=30)
        with NetSampler(dep) as sampler:
            dep.wait_stage(cycle_id, "done", timeout=150)
    finally:
        dep.sim.exchange.clear_faults()
    done = dep.record(cycle_id)
    print(f"timeout exit, thin Lighter2: sampled worst net={sampler.worst} off by more than a step "
          f"{sampler.off_secs:.3f}s, worst read net={done.get('exit_worst_net')}, reads={len(exit_reads(done))}")
    assert (done["outcome"], done["reason"]) == ("flat", "timeout"), (done.get("error"), done.get("events"))
    assert venue_flat(dep), dep.positions()
    assert Decimal(done["exit_worst_net"]) <= STEP, [r["net"] for r in exit_reads(done)]
    assert sampler.off_secs < 2.0, sampler.off_secs  # only between a Lighter fill and its Backpack offset


def test_an_exit_outlasting_its_quick_attempts_goes_on_unresolved_and_ends_flat_when_reads_heal(
        clean: Deployment) -> None:
    # Lighter1's reads fail (HTTP 500, no stream) when Lighter2 is liquidated: Lighter1 has no stand-in,
    # so the exit can do nothing until its reads come back, longer than its two quick attempts. It
    # turns unresolved (the group stopped, a page) and goes on; when the reads heal it closes by itself.
    dep = clean
    cycle_id = dep.start_cycle()
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "drop_ws", "count": 100_000, "op": "ws",
                                   "account": "101", "params": {}})
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "http_500", "count": 100_000, "op": "position",
                                   "account": "101", "params": {}})
    dep.liquidate_lighter(102)
    try:
        dep.wait_stage(cycle_id, "emergency_exit", timeout=40)
        wait_until(lambda: dep.client.exists("xtb:group:main:stopped"), timeout=120,
                   what="the exit to turn unresolved")
        record = dep.record(cycle_id)
        assert (record["stage"], record["outcome"]) == ("emergency_exit", "unresolved"), record.get("events")
    finally:
        dep.sim.exchange.clear_faults()
    done = dep.wait_done(cycle_id, timeout=120)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), (done.get("error"), done.get("events"))
    assert venue_flat(dep), dep.positions()
    assert dep.client.exists("xtb:group:main:stopped"), "an exit that was unresolved leaves its group stopped"


def test_an_exit_order_the_venue_holds_past_the_exit_grace_is_retried_and_sent_once(clean: Deployment) -> None:
    # Backpack holds the exit's first order for 18 s (our request timeout is 10 s), then fills it:
    # the exit writes nothing while the order's outcome is unknown, longer than the exit's watchdog
    # grace (10 s here, the step grace being 30 s), so the watchdog retries the exit as its next
    # attempt. The held order is found, never sent again (under its client id or another), and the
    # new attempt closes the exit flat.
    dep = clean
    cycle_id = dep.start_cycle()
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    before = len(dep.audit())
    dep.arm_fault("backpack", "hang", count=1, op="order", seconds=18)
    dep.liquidate_lighter(102)
    done = dep.wait_done(cycle_id, timeout=120)
    assert not dep.sim.exchange.faults, "the exit sent no Backpack order"
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), (done.get("error"), done.get("events"))
    events = [e["text"] for e in done.get("events") or []]
    assert any("watchdog: emergency_exit overdue; retry_exit" in t for t in events), events
    assert done["exit_attempts"] >= 2, events
    # Nothing else reached Backpack while the held order's outcome was unknown: it lands first.
    held = next(e for e in dep.audit()[before:] if e["venue"] == "backpack")
    assert sum(1 for e in dep.audit() if (e["venue"], e["client_id"]) == ("backpack", held["client_id"])) == 1
    assert dep.duplicate_client_ids() == [], dep.duplicate_client_ids()
    assert venue_flat(dep), dep.positions()
