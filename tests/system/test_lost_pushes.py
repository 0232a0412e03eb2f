"""Silence is not evidence: a Lighter liquidation whose account pushes are lost is still acted on,
by the REST read that checks the streamed position at least every ``reconcile_secs``.

Real Redis, real workers, the simulators with streams on. The simulator's ``miss_push`` fault drops
every account push for Lighter2 while its socket stays up: the stream keeps answering the position
it last pushed, so only the REST reconciliation can show the liquidation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.helpers.faults import venue_flat
from tests.helpers.harness import Deployment, each_test_clean, running_deployment
from tests.helpers.services import RedisServer
from tests.helpers.support import wait_until
from venues.lighter.reconcile import DEFAULT_RECONCILE_SECS

pytestmark = pytest.mark.slow

#: Reads are ``poll_interval_secs`` (0.5 s) apart and a zero is acted on after two of them.
CONFIRMATION_SECS = 2 * 0.5


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from running_deployment(redis_server, tmp_path_factory.mktemp("lostpush"))


@pytest.fixture
def clean(dep: Deployment) -> Iterator[Deployment]:
    yield from each_test_clean(dep, unwind_timeout=120)
    assert venue_flat(dep), dep.positions()


def test_a_liquidation_whose_pushes_are_lost_is_acted_on_within_the_reconcile_interval(clean: Deployment) -> None:
    dep = clean
    reconcile_secs = DEFAULT_RECONCILE_SECS  # the test config leaves the default in force
    cycle_id = dep.start_cycle()
    record = dep.wait_stage(cycle_id, ("monitoring", "done"), timeout=60)
    assert record["stage"] == "monitoring", (record.get("reason"), record.get("error"))
    wait_until(lambda: dep.client.hget("xtb:acct:lighter2", "stream_state") == "live", timeout=10,
               what="lighter2's stream")
    dep.admin("lighter", "fault", {"venue": "lighter", "kind": "miss_push", "count": 100_000, "op": "ws",
                                   "account": "102", "params": {}})
    dep.liquidate_lighter(102)
    liquidated = time.monotonic()
    try:
        dep.wait_stage(cycle_id, ("emergency_exit", "done"), timeout=reconcile_secs + 30)
        noticed = time.monotonic() - liquidated
    finally:
        dep.sim.exchange.clear_faults()
    print(f"liquidation with its pushes lost -> exit start: {noticed:.2f} s (reconcile_secs {reconcile_secs})")
    assert noticed <= reconcile_secs + CONFIRMATION_SECS + 1.0, noticed
    done = dep.wait_done(cycle_id, timeout=90)
    assert (done["outcome"], done["reason"]) == ("flat", "lighter2_zero"), (done.get("error"), done.get("events"))
