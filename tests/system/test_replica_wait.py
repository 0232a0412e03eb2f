"""An order whose intent no replica acknowledged does not go out.

A primary with one replica; the replica is frozen (SIGSTOP), so the primary still counts it as
connected but it acknowledges nothing. An order through the account's real worker records its
intent, waits ``replica_wait_ms`` for the replica, retries a few times and gives up with the order
never sent; once the replica runs again, the same order goes out, once.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.harness import Deployment, make_deployment, run_xtb, teardown
from tests.helpers.services import RedisServer, start_redis_server, start_worker, stop_redis_server
from tests.helpers.support import free_port, wait_until


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, subprocess.Popen[bytes]]]:
    from core.redis_conn import server_args

    primary = start_redis_server(tmp_path / "primary")
    (tmp_path / "replica").mkdir()
    replica = subprocess.Popen([*server_args(free_port(), tmp_path / "replica", persistent=False),
                                "--replicaof", "127.0.0.1", str(primary.port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: primary.client().info("replication").get("connected_slaves") == 1, timeout=20,
                   what="the replica to connect")
        yield primary, replica
    finally:
        replica.send_signal(signal.SIGCONT)
        replica.terminate()
        replica.wait(10)
        stop_redis_server(primary)


@pytest.fixture
def dep(tmp_path: Path, pair: tuple[RedisServer, subprocess.Popen[bytes]]) -> Iterator[Deployment]:
    (tmp_path / "d").mkdir()
    deployment = make_deployment(tmp_path / "d", pair[0].url, start_worker, redis_options={"replica_wait_ms": 200},
                                 streams=False)
    try:
        deployment.start_workers(("backpack",))
        yield deployment
    finally:
        teardown(deployment)


def backpack_orders(dep: Deployment) -> int:
    return sum(1 for e in dep.audit() if e["venue"] == "backpack")


def test_an_intent_no_replica_acknowledged_sends_nothing(dep: Deployment,
                                                         pair: tuple[RedisServer, subprocess.Popen[bytes]]) -> None:
    replica = pair[1]
    replica.send_signal(signal.SIGSTOP)
    try:
        refused = run_xtb(dep, "order", "--account", "backpack", "--side", "buy", "--size", "0.01", timeout=60)
    finally:
        replica.send_signal(signal.SIGCONT)
    assert refused.returncode != 0, refused
    assert "not acknowledged by a replica" in dep.workers["backpack"].log()
    assert backpack_orders(dep) == 0, "an order went out although no replica held its intent"
    assert "Traceback" not in refused.stderr

    sent = run_xtb(dep, "order", "--account", "backpack", "--side", "sell", "--size", "0.01", timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert backpack_orders(dep) == 1
    assert dep.duplicate_client_ids() == []
