"""Crash matrix: SIGKILL each worker at each stage boundary of a cycle, restart it, and check that
the cycle ends hedged or flat within 60 s of the restart, that no client id produced two venue
orders, and that the right alert reached the outbox.

One module-scoped deployment. Each boundary runs one cycle, held at the boundary by a simulator
fault (a request hanging inside the worker that owns it); the worker that owns the boundary is
killed first, at the precise point, then the other three are killed one after the other while the
cycle is still stuck at that boundary (the table records the stage each kill really hit). The
rebalance, monitoring and emergency-exit boundaries share one cycle, in that order.

The module-scoped ``matrix`` fixture runs all ten boundaries once, whichever test asks first;
``test_boundary_ends_safe[<boundary>]`` and ``test_crash_matrix_all_safe`` only read its results, so
any of them run alone still runs the whole matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from tests.helpers.faults import CrashCell, cycle_alerts, kill_and_restart, matrix_lines, poll, safe_state
from tests.helpers.harness import Deployment, running_deployment
from tests.helpers.services import RedisServer

# The matrix fixture runs all ten boundaries (~5 min) inside the first test that asks for it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

RESOLVE_SECS = 60.0
STEP_GRACE_SECS = 10.0
CELLS: list[CrashCell] = []
SHARED: dict[str, str] = {}


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # A stuck step is resolved after the watchdog's grace: 10 s here instead of 30 s (each boundary
    # waits it out once), still above every healthy step of the fast parameters.
    # REST only: the position faults below are REST's.
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("crash"), step_grace_secs=STEP_GRACE_SECS,
                                  streams=False)


def _orders(dep: Deployment, venue: str, account: str | None = None) -> int:
    return sum(1 for e in dep.audit() if e["venue"] == venue and (account is None or e["account"] == account))


def _start_clean(dep: Deployment, **overrides: Any) -> str:
    assert not dep.client.scard("xtb:cycles:active"), "a previous boundary left a cycle active"
    return dep.start_cycle(**overrides)


def _leg(dep: Deployment, cycle_id: str, leg: str) -> dict[str, Any]:
    return dep.record(cycle_id).get(f"leg:{leg}") or {}


def _filled(dep: Deployment, cycle_id: str, leg: str) -> bool:
    data = _leg(dep, cycle_id, leg)
    return data.get("state") not in (None, "submitting") and Decimal(str(data.get("filled") or 0)) > 0


def end_alerts(dep: Deployment, cycle_id: str) -> list[dict[str, str]]:
    return cycle_alerts(dep, cycle_id, "emergency_exit") + cycle_alerts(dep, cycle_id, "cycle_completed")


def crash_at(dep: Deployment, cycle_id: str, boundary: str, order: tuple[str, ...],
             expect: tuple[str, ...] = ("flat", "hedged")) -> list[CrashCell]:
    """Kill and restart each worker of ``order`` in turn, then wait for the cycle to end safe."""
    dups_before = set(dep.duplicate_client_ids())
    kills: list[tuple[str, str, float]] = []
    for name in order:
        stage = str(dep.record(cycle_id).get("stage"))
        kills.append((name, stage, kill_and_restart(dep, name)))
    # The fault only held the cycle at the boundary; recovery is measured against a healthy venue.
    dep.sim.exchange.clear_faults()
    last_restart_wall = time.time()
    first_restart = min(t for _, _, t in kills)
    outcome: list[str] = []
    poll(lambda: outcome.append(s) or True if (s := safe_state(dep, cycle_id, last_restart_wall)) else False,
         timeout=max(1.0, first_restart + RESOLVE_SECS - time.monotonic()), interval=0.25)
    resolved_at = time.monotonic() if outcome else None
    result = outcome[0] if outcome else f"stuck:{dep.record(cycle_id).get('stage')}"
    if result == "flat":
        # One end alert: cycle_completed after a liquidation or timeout, emergency_exit otherwise.
        poll(lambda: end_alerts(dep, cycle_id), timeout=10)
        alert_ok = len(end_alerts(dep, cycle_id)) == 1
    elif result == "hedged":
        alert_ok = len(cycle_alerts(dep, cycle_id, "cycle_hedged")) == 1
    else:
        alert_ok = False
    new_dups = len(set(dep.duplicate_client_ids()) - dups_before)
    cells = []
    for name, stage, restarted in kills:
        secs = None if resolved_at is None else round(resolved_at - restarted, 1)
        note = "" if result in expect else f"expected {'/'.join(expect)}"
        cells.append(CrashCell(name, boundary, stage, result, secs, new_dups, alert_ok, note))
    CELLS.extend(cells)
    return cells


def recover(dep: Deployment) -> None:
    """After a boundary that did not end safe in time: clear faults and unwind, so the next
    boundary starts from a flat deployment (its own cells are already recorded as failures)."""
    dep.sim.exchange.clear_faults()
    if dep.client.scard("xtb:cycles:active"):
        dep.unwind_leftovers(timeout=200)


def check(dep: Deployment, cells: list[CrashCell], *, keep_hedged: bool = False) -> None:
    dep.sim.exchange.clear_faults()
    unsafe = [c for c in cells if not c.safe]
    if unsafe:
        recover(dep)
    assert not unsafe, unsafe
    if not keep_hedged and dep.client.scard("xtb:cycles:active"):
        # Ended hedged (a safe outcome: recovery resumed the cycle). The next boundary starts flat.
        dep.unwind_leftovers(timeout=120)


def wait_point(what: str, predicate: Callable[[], object], timeout: float = 40) -> None:
    assert poll(predicate, timeout=timeout), f"never reached the kill point: {what}"


# ---- the boundaries ----------------------------------------------------------------------------

def boundary_after_planning(dep: Deployment) -> None:
    # The Backpack submit hangs before the venue accepts it: the cycle is planned, nothing sent.
    dep.arm_fault("backpack", "hang", count=1, op="order", seconds=8)
    cycle_id = _start_clean(dep)
    wait_point("plan recorded", lambda: "plan" in dep.record(cycle_id))
    check(dep, crash_at(dep, cycle_id, "after_planning", ("orchestrator", "backpack", "lighter1", "lighter2")))


def boundary_bp_sent_not_recorded(dep: Deployment) -> None:
    before = _orders(dep, "backpack")
    dep.arm_fault("backpack", "timeout_after_accept", count=1, op="order", seconds=9)
    cycle_id = _start_clean(dep)
    wait_point("Backpack order accepted, answer held",
               lambda: _orders(dep, "backpack") > before and _leg(dep, cycle_id, "bp_entry").get("state") == "submitting")
    check(dep, crash_at(dep, cycle_id, "bp_sent", ("backpack", "orchestrator", "lighter1", "lighter2")))


def boundary_bp_filled(dep: Deployment) -> None:
    dep.arm_fault("lighter", "hang", count=1, op="order", account="101", seconds=8)
    cycle_id = _start_clean(dep)
    wait_point("Backpack fill recorded", lambda: _filled(dep, cycle_id, "bp_entry"))
    check(dep, crash_at(dep, cycle_id, "bp_filled", ("backpack", "lighter1", "orchestrator", "lighter2")))


def boundary_l1_sent_not_recorded(dep: Deployment) -> None:
    before = _orders(dep, "lighter", "101")
    dep.arm_fault("lighter", "timeout_after_accept", count=1, op="order", account="101", seconds=9)
    cycle_id = _start_clean(dep)
    wait_point("Lighter1 order accepted, answer held", lambda: _orders(dep, "lighter", "101") > before)
    check(dep, crash_at(dep, cycle_id, "l1_sent", ("lighter1", "orchestrator", "backpack", "lighter2")))


def boundary_l1_confirmation(dep: Deployment) -> None:
    # Stale reads keep the confirmation polling (retry with countdown) for a while. Armed before the
    # cycle: the armed hedge fills within milliseconds of the entry, before a poll of the record
    # could arm it. The planning snapshot takes one of the 10 (one account read for balance and position).
    dep.arm_fault("lighter", "stale_position", count=10, op="position", account="101")
    cycle_id = _start_clean(dep)
    wait_point("Lighter1 filled, not yet confirmed",
               lambda: _filled(dep, cycle_id, "l1_hedge") and "confirm:l1_hedge" not in dep.record(cycle_id))
    check(dep, crash_at(dep, cycle_id, "l1_confirm", ("lighter1", "orchestrator", "backpack", "lighter2")))


def boundary_random_wait(dep: Deployment) -> None:
    cycle_id = _start_clean(dep, wait_min_secs=10.0, wait_max_secs=10.0)
    wait_point("the random wait", lambda: dep.record(cycle_id).get("stage") == "wait")
    check(dep, crash_at(dep, cycle_id, "random_wait", ("lighter2", "orchestrator", "backpack", "lighter1")))


def boundary_l2_sent_not_recorded(dep: Deployment) -> None:
    before = _orders(dep, "lighter", "102")
    dep.arm_fault("lighter", "timeout_after_accept", count=1, op="order", account="102", seconds=9)
    cycle_id = _start_clean(dep)
    wait_point("Lighter2 order accepted, answer held", lambda: _orders(dep, "lighter", "102") > before)
    check(dep, crash_at(dep, cycle_id, "l2_sent", ("lighter2", "orchestrator", "backpack", "lighter1")))


def boundary_rebalance(dep: Deployment) -> None:
    cycle_id = _start_clean(dep)
    wait_point("Lighter2 filled", lambda: _filled(dep, cycle_id, "l2_entry"))
    dep.arm_fault("backpack", "hang", count=1, op="position", seconds=8)
    wait_point("rebalance reading positions", lambda: dep.record(cycle_id).get("stage") == "rebalance")
    cells = crash_at(dep, cycle_id, "rebalance", ("backpack", "orchestrator", "lighter1", "lighter2"),
                     expect=("hedged",))
    if all(c.safe for c in cells):
        SHARED["cycle"] = cycle_id
    check(dep, cells, keep_hedged=True)


def boundary_monitoring(dep: Deployment) -> None:
    cycle_id = SHARED.get("cycle") or _start_clean(dep)
    SHARED["cycle"] = cycle_id
    wait_point("monitoring", lambda: dep.record(cycle_id).get("stage") == "monitoring", timeout=60)
    dep.arm_fault("lighter", "hang", count=1, op="position", account="102", seconds=8)
    cells = crash_at(dep, cycle_id, "monitoring", ("orchestrator", "lighter2", "lighter1", "backpack"),
                     expect=("hedged",))
    if not all(c.safe for c in cells):
        SHARED.pop("cycle", None)
    check(dep, cells, keep_hedged=True)


def boundary_emergency_exit(dep: Deployment) -> None:
    cycle_id = SHARED.get("cycle") or _start_clean(dep)
    wait_point("monitoring", lambda: dep.record(cycle_id).get("stage") == "monitoring", timeout=60)
    dep.sim.exchange.clear_faults()
    # Backpack is flat while monitoring (it holds -(l1 + l2) = 0); Lighter2 is the leg to unwind.
    dep.arm_fault("lighter", "hang", count=1, op="order", account="102", seconds=9)
    dep.liquidate_lighter(101)
    wait_point("emergency exit flattening", lambda: dep.record(cycle_id).get("stage") == "emergency_exit")
    # The Lighter2 flatten hangs at the venue: kill the others first, while the exit is still open.
    check(dep, crash_at(dep, cycle_id, "emergency_exit", ("orchestrator", "backpack", "lighter1", "lighter2"),
                        expect=("flat",)))


#: The boundaries in the order they run (rebalance, monitoring and the exit share one cycle).
BOUNDARIES: dict[str, Callable[[Deployment], None]] = {
    "after_planning": boundary_after_planning, "bp_sent_not_recorded": boundary_bp_sent_not_recorded,
    "bp_filled": boundary_bp_filled, "l1_sent_not_recorded": boundary_l1_sent_not_recorded,
    "l1_confirmation": boundary_l1_confirmation, "random_wait": boundary_random_wait,
    "l2_sent_not_recorded": boundary_l2_sent_not_recorded, "rebalance": boundary_rebalance,
    "monitoring": boundary_monitoring, "emergency_exit": boundary_emergency_exit,
}


@dataclass(frozen=True)
class Matrix:
    cells: list[CrashCell]
    #: Boundary name -> why it failed (an unsafe cell, or the kill point never reached).
    failures: dict[str, str]


@pytest.fixture(scope="module")
def matrix(dep: Deployment) -> Matrix:
    """Run every boundary once, in order, whichever test asks first: each test below reads the
    results, so any one of them run alone still runs the whole matrix (and never twice)."""
    CELLS.clear()
    SHARED.clear()
    failures: dict[str, str] = {}
    for name, run in BOUNDARIES.items():
        try:
            run(dep)
        except (Exception, pytest.fail.Exception) as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
            recover(dep)
    return Matrix(list(CELLS), failures)


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_boundary_ends_safe(matrix: Matrix, boundary: str) -> None:
    assert boundary not in matrix.failures, matrix.failures[boundary]


def test_crash_matrix_all_safe(matrix: Matrix, capsys: pytest.CaptureFixture[str]) -> None:
    cells = matrix.cells
    with capsys.disabled():
        print("\n".join(matrix_lines(cells)))
    assert len(cells) == 40, f"only {len(cells)} of 40 cells ran: {matrix.failures}"
    safe = sum(c.safe for c in cells)
    assert safe == len(cells), "\n".join(matrix_lines(cells))
