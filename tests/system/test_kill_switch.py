"""The kill switch: an exit that cannot confirm flat is ``unresolved`` and stops its group.

Unresolved is a state the exit goes on in (paging), not an end: the cycle stays in
``emergency_exit`` and ends flat once a read confirms it, and its group stays stopped. No trigger
(task, CLI, beat) starts a cycle on top of the open position until an operator runs ``xtb group
resume``, which itself refuses while any account of the group reads a position or cannot be read.
Real workers, the simulators over HTTP, the CLI as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.helpers.faults import STEP, venue_flat
from tests.helpers.harness import Deployment, run_xtb, running_deployment
from tests.helpers.services import ROOT, RedisServer, worker_env
from tests.helpers.support import wait_until
from xtb_tasks.worker.results import TaskFailed

pytestmark = pytest.mark.slow

STOP_KEY = "xtb:group:main:stopped"


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("killswitch"))




def kinds(dep: Deployment, kind: str) -> list[dict[str, object]]:
    out = []
    for alert in dep.alerts():
        if alert.get("kind") == kind:
            out.append({"text": alert.get("text", ""), **json.loads(alert.get("fields") or "{}")})
    return out


def latest_cycle(dep: Deployment) -> str | None:
    ids = dep.client.lrange("xtb:cycles:main", 0, 0)
    return ids[0] if ids else None


def end_unresolved(dep: Deployment) -> str:
    """A hedged cycle whose exit cannot close Lighter1 (the venue refuses every order there):
    ``unresolved``, the group stopped, the exit still working."""
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    # Refused unexecuted (not a 5xx, whose outcome is unknown and waits ORDER_SETTLE_SECS per order).
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "invalid_nonce", "count": 100_000, "op": "order",
                                   "account": "101", "params": {}})
    cancelled = run_xtb(dep, "cycle", "cancel", cycle_id)
    assert cancelled.returncode == 0, cancelled.stderr[-2000:]
    wait_until(lambda: dep.client.exists(STOP_KEY), timeout=120, what="the exit to stop the group")
    record = dep.record(cycle_id)
    assert (record["stage"], record["outcome"]) == ("emergency_exit", "unresolved"), \
        (record.get("stage"), record.get("outcome"), record.get("events"))
    assert abs(dep.positions()["lighter1"]) >= STEP, dep.positions()
    return cycle_id


def test_unresolved_exit_stops_the_group_until_an_operator_resumes_it(dep: Deployment) -> None:
    try:
        stopped = end_unresolved(dep)
        # The task itself refuses, whoever sends it (CLI, beat, Flower all send this task).
        with pytest.raises(TaskFailed) as refused:
            dep.start_cycle()
        for fragment in ("group main", stopped, "xtb group resume main"):
            assert fragment in str(refused.value), str(refused.value)
        assert latest_cycle(dep) == stopped, "a cycle was started on a stopped group"
        stop = json.loads(dep.client.get(STOP_KEY) or "null")
        assert stop and stop["cycle_id"] == stopped and stop["reason"] == "cancelled", stop
        assert dep.client.ttl(STOP_KEY) == -1, "the stop must not expire by itself"
        assert any(a.get("cycle_id") == stopped for a in kinds(dep, "group_stopped")), dep.alerts()[-5:]
        refusals = [a for a in kinds(dep, "group_stopped") if a.get("refused")]
        assert refusals and refusals[-1]["stopped_cycle"] == stopped and "xtb group resume main" in str(
            refusals[-1]["text"]), refusals

        cli = run_xtb(dep, "cycle", "start", "--group", "main")
        assert cli.returncode != 0 and len(cli.stderr.strip().splitlines()) == 1, (cli.returncode, cli.stderr)
        assert "stopped" in cli.stderr and "xtb group resume main" in cli.stderr, cli.stderr

        # Beat, every second: refused each time, never a new cycle.
        config = dep.config.with_name("beat.toml")
        config.write_text(dep.config.read_text() + '\n[schedules.often]\ngroup = "main"\nevery_secs = 1.0\n')
        before = len(refusals)
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "xtb_tasks", "beat", "-S",
                                 "redbeat.RedBeatScheduler", "--loglevel", "INFO", "--schedule",
                                 str(config.parent / "beat-schedule")],
                                cwd=ROOT, env=worker_env(config, dep.redis_url), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: len([a for a in kinds(dep, "group_stopped") if a.get("refused")]) >= before + 2,
                       timeout=60, what="beat's triggers to be refused")
        finally:
            beat.terminate()
            beat.wait(20)
        assert latest_cycle(dep) == stopped, "beat started a cycle on a stopped group"

        status = run_xtb(dep, "status", "--json")
        assert status.returncode == 0, status.stderr
        group = json.loads(status.stdout)["groups"][0]
        assert group["stopped"]["cycle_id"] == stopped, group
        assert f"STOPPED since cycle {stopped}" in run_xtb(dep, "status").stdout

        # Resume refuses while Lighter1 is still open, and says what it read. The exit's failing
        # Lighter1 orders (each looked up before another is sent) may have spent that account's
        # rate budget for a while: until it refills, Lighter1 reads unknown, which refuses too.
        held = dep.positions()["lighter1"]
        refused_resume = run_xtb(dep, "group", "resume", "main")
        deadline = time.monotonic() + 60
        while "lighter1 unknown" in refused_resume.stderr and time.monotonic() < deadline:
            assert refused_resume.returncode == 1, (refused_resume.stdout, refused_resume.stderr)
            time.sleep(5)
            refused_resume = run_xtb(dep, "group", "resume", "main")
        assert refused_resume.returncode == 1, (refused_resume.stdout, refused_resume.stderr)
        assert len(refused_resume.stderr.strip().splitlines()) == 1, refused_resume.stderr
        assert "lighter1" in refused_resume.stderr and str(held.normalize()) in refused_resume.stderr, \
            (held, refused_resume.stderr)
        assert dep.client.exists(STOP_KEY)

        # The venue takes orders again. The operator flattens; the refused orders may have spent
        # Lighter1's rate budget, so until it refills a flatten cannot send or read there and says
        # so, and the exit's own next attempt may close the leg first: either ends flat.
        dep.sim.exchange.clear_faults()
        deadline = time.monotonic() + 120
        while not venue_flat(dep):
            assert time.monotonic() < deadline, dep.positions()
            flattened = run_xtb(dep, "flatten", "--group", "main")
            if flattened.returncode != 0:
                assert len(flattened.stderr.strip().splitlines()) == 1, flattened.stderr[-2000:]
                assert "rate budget lighter:l1" in flattened.stderr, flattened.stderr
                time.sleep(5)
        # The exit was still working: it reads flat now and ends so; the group stays stopped.
        done = dep.wait_done(stopped, timeout=120)
        assert done["outcome"] == "flat", (done.get("outcome"), done.get("events"))
        assert any(a.get("cycle_id") == stopped and "NOT FLAT" in str(a["text"]) for a in kinds(dep, "emergency_exit"))
        assert dep.client.exists(STOP_KEY)

        # Flat, but a read that fails is unknown, not zero: still refused.
        # (Every Backpack position read fails until cleared: a one-shot fault can be spent by another
        # reader first, the finished cycle's report or a heartbeat.)
        dep.arm_fault("backpack", "http_500", count=100_000, op="position")
        unknown = run_xtb(dep, "group", "resume", "main")
        dep.sim.exchange.clear_faults()
        assert unknown.returncode == 1 and "backpack unknown" in unknown.stderr, unknown.stderr
        assert dep.client.exists(STOP_KEY)

        resumed = run_xtb(dep, "group", "resume", "main")
        assert resumed.returncode == 0, resumed.stderr
        assert "resumed" in resumed.stdout, resumed.stdout
        assert not dep.client.exists(STOP_KEY)
        assert any(a.get("stopped_cycle") == stopped for a in kinds(dep, "group_resumed"))

        again = dep.start_cycle()
        dep.wait_stage(again, "monitoring", timeout=60)
        assert run_xtb(dep, "cycle", "cancel", again).returncode == 0
        assert dep.wait_done(again, timeout=60)["outcome"] == "flat"
    finally:
        dep.sim.exchange.clear_faults()
        try:
            dep.unwind_leftovers(timeout=180)
            if not venue_flat(dep):
                run_xtb(dep, "flatten", "--group", "main")
        finally:
            dep.client.delete(STOP_KEY)


def test_resume_of_a_group_that_is_not_stopped_or_unknown(dep: Deployment) -> None:
    assert not dep.client.exists(STOP_KEY)
    fine = run_xtb(dep, "group", "resume", "main")
    assert fine.returncode == 0 and "not stopped" in fine.stdout, (fine.stdout, fine.stderr)
    unknown = run_xtb(dep, "group", "resume", "nope")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "nope" in unknown.stderr


def test_a_flat_exit_does_not_stop_the_group(dep: Deployment) -> None:
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    dep.liquidate_lighter(102)
    done = dep.wait_done(cycle_id, timeout=60)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")
    assert not dep.client.exists(STOP_KEY)
    assert all(abs(q) < STEP for q in dep.positions().values())
