"""The bot's Sentinel client retries a command that the failover cut on the promoted primary,
never on the old primary's address, even when the old one is back up and still believes it is
primary (an empty node whose resync will discard what it takes); a blocking read unblocked by a
demotion of its primary is a connection error."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.redis_target import make_client
from tests.helpers.sentinel import SentinelCluster, export_credentials


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    nodes = SentinelCluster(tmp_path / "sentinel", secrets.token_hex(12)).start()
    export_credentials(nodes)
    yield nodes
    nodes.stop()


def test_a_command_cut_by_the_failover_is_retried_on_the_promoted_primary(cluster: SentinelCluster) -> None:
    client = make_client(cluster.url, cluster.access)
    errors: list[BaseException] = []

    def blocked_then_write() -> None:
        # In flight when the primary dies: the whole pipeline is sent again on a new socket.
        pipe = client.pipeline(transaction=False)
        pipe.blpop(["xtb:test:never"], 2)
        pipe.set("xtb:test:after", "2")
        try:
            pipe.execute()
        except BaseException as exc:  # reported below, with what the main thread saw
            errors.append(exc)

    thread = threading.Thread(target=blocked_then_write)
    thread.start()
    time.sleep(0.3)
    old = cluster.kill_primary()
    new = cluster.wait_failover(old)
    # The old primary restarts empty and answers as a primary until the Sentinels demote it (seconds).
    cluster.data[old].start()
    time.sleep(0.3)
    assert cluster.node_client(old).info("replication")["role"] == "master"
    thread.join(40)
    assert not thread.is_alive() and not errors, errors
    assert cluster.node_client(new).get("xtb:test:after") == "2"
    assert cluster.node_client(old).get("xtb:test:after") is None


def test_a_read_blocked_on_a_primary_demoted_by_hand_is_a_connection_error(cluster: SentinelCluster) -> None:
    # The broker's consumers block on the primary (BRPOP). An operator's REPLICAOF (the Sentinels'
    # own demotion kills the clients instead) answers them "UNBLOCKED", a ResponseError, which a
    # Celery worker takes for unrecoverable and exits on; the client turns it into a connection
    # error, which kombu reconnects from (through the Sentinels).
    client = make_client(cluster.url, cluster.access, retry=Retry(NoBackoff(), 0))
    got: list[object] = []

    def blocked() -> None:
        try:
            got.append(client.blpop(["xtb:test:queue"], 20))
        except BaseException as exc:  # reported below
            got.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.3)
    old = cluster.primary_port()
    replica = next(port for port in cluster.data if port != old)
    cluster.node_client(replica).replicaof("NO", "ONE")
    cluster.node_client(old).replicaof("127.0.0.1", replica)
    thread.join(10)
    assert not thread.is_alive() and len(got) == 1, got
    assert isinstance(got[0], redis.ConnectionError) and "demoted" in str(got[0]), repr(got[0])
