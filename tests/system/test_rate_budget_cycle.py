"""Whole cycles against a rate-limited Lighter (Standard tier: 60 requests a rolling minute per L1
address and per IP), with both Lighter workers on one IP: streams first, REST within the budget.

The simulator counts every Lighter REST request as the venue would (``/_sim/requests``); a 429
anywhere fails the test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from simulators.lighter_rules import LighterRules, Tier
from tests.helpers.harness import Deployment, each_test_clean, run_xtb, running_deployment
from tests.helpers.services import RedisServer
from tests.helpers.support import wait_until

pytestmark = pytest.mark.slow

#: A whole cycle, exit included, within a third of a Standard account's minute (60 requests).
REQUESTS_PER_CYCLE = 20
LIGHTER = {"lighter1": 101, "lighter2": 102}


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # The simulator's defaults: Standard tier, both Lighter accounts on 127.0.0.1, nextNonce lag.
    assert LighterRules().rate_limit and LighterRules().default_tier is Tier.STANDARD
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("budget"))


@pytest.fixture(autouse=True)
def clean_slate(dep: Deployment) -> Iterator[Deployment]:
    yield from each_test_clean(dep)


def stream_connects(dep: Deployment) -> dict[str, int]:
    return {role: int(dep.client.hget(f"xtb:acct:{role}", "stream_connects") or 0) for role in LIGHTER}


def lighter_reads(dep: Deployment, index: int) -> int:
    return sum(row["count"] for row in dep.sim.exchange.request_log("lighter")
               if row["who"] == f"account:{index}" and row["endpoint"] == "account")


def run_cycle_to_liquidation(dep: Deployment, monitor_secs: float, before_entry: Callable[[], None] | None = None,
                             monitoring: Callable[[], None] | None = None) -> dict[str, Any]:
    if before_entry is not None:
        before_entry()
    cycle_id = dep.start_cycle()
    dep.wait_stage(cycle_id, "monitoring", timeout=60)
    if monitoring is not None:
        monitoring()
    time.sleep(monitor_secs)
    dep.liquidate_lighter(LIGHTER["lighter2"])
    done = dep.wait_done(cycle_id, timeout=60)
    # The cycle's last requests are the history reads of its completion report.
    wait_until(lambda: dep.record(cycle_id).get("pnl_split") is not None, timeout=30, what="the PnL split")
    return done


def test_a_cycle_fits_a_standard_budget_with_both_lighter_workers_on_one_ip(dep: Deployment) -> None:
    dep.admin("lighter", "requests/reset", {})
    done = run_cycle_to_liquidation(dep, monitor_secs=5.0)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")
    counts = dep.lighter_requests()
    print("lighter requests per who over the cycle:", counts)  # the figure `pytest -rP` shows
    assert all(c["limited"] == 0 for c in counts.values()), counts
    for role, index in LIGHTER.items():
        assert counts[f"account:{index}"]["requests"] <= REQUESTS_PER_CYCLE, (role, counts)
    # What an operator sees: each Lighter stream live and its account's budget in use.
    status = run_xtb(dep, "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    accounts = json.loads(status.stdout)["groups"][0]["accounts"]
    for role in ("L1", "L2"):
        assert accounts[role]["stream"]["state"] == "live", accounts[role]
        (l1_bucket,) = [used for key, used in accounts[role]["rate_budget"].items() if ":l1:" in key]
        assert 0 < l1_bucket["used"] <= l1_bucket["limit"] == 60, accounts[role]


@pytest.mark.parametrize("killed", ["entering", "monitoring"])
def test_streams_killed_mid_cycle_the_cycle_continues_on_rest_within_budget(dep: Deployment, killed: str) -> None:
    dep.admin("lighter", "requests/reset", {})
    before = {index: lighter_reads(dep, index) for index in LIGHTER.values()}
    connects = stream_connects(dep)

    def kill_streams() -> None:
        # Every Lighter connection dropped, and dropped again on each of the next four reconnects
        # (0.2 s to 3.2 s of back-off): about 6 s on REST, live only for moments in between.
        dep.arm_fault("lighter", "drop_ws", count=5, op="ws")

    hooks = {"before_entry": kill_streams} if killed == "entering" else {"monitoring": kill_streams}
    done = run_cycle_to_liquidation(dep, monitor_secs=5.0, **hooks)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero")
    counts = dep.lighter_requests()
    print(f"lighter requests per who over the cycle, streams dropped while {killed}:", counts)
    assert all(c["limited"] == 0 for c in counts.values()), counts
    # The streams were really cut (each reconnected more than once) and the positions were read from
    # REST meanwhile; the whole cycle stayed within a Standard minute.
    assert all(n > connects[role] + 1 for role, n in stream_connects(dep).items()), stream_connects(dep)
    assert all(lighter_reads(dep, index) > before[index] + 2 for index in LIGHTER.values()), counts
    assert all(counts[f"account:{index}"]["requests"] <= 60 for index in LIGHTER.values()), counts
