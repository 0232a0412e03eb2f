"""The broker connection across a Redis Sentinel failover, through real processes: a primary, a
replica and a sentinel (``redis-server --sentinel``) on free ports, and a real ``celery worker`` on
a ``sentinel://`` broker URL that holds a message for its ETA when the primary is SIGKILLed.

The worker stays up, follows the sentinel to the promoted replica and re-queues the message there
(``xtb_tasks.worker.broker_connection``). The same through a plain Redis restart mid-cycle, with
the whole deployment: ``tests/system/test_faults_venue.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from core.redis_conn import redis_server_binary, server_args
from tests.helpers.services import WorkerProcess, worker_env
from tests.helpers.support import ROOT, free_port, wait_until
from xtb_tasks.worker.broker_connection import AMQP

MASTER = "xtbprobe"


@dataclass
class FailoverSet:
    primary: subprocess.Popen[bytes]
    replica: subprocess.Popen[bytes]
    sentinel: subprocess.Popen[bytes]
    ports: tuple[int, int, int]  # primary, replica, sentinel

    def client(self, index: int) -> redis.Redis:
        return redis.Redis(port=self.ports[index], socket_timeout=2, decode_responses=True)

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.ports[2]}"


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _replica_linked(client: redis.Redis) -> bool:
    try:
        return client.info("replication").get("master_link_status") == "up"
    except (redis.RedisError, OSError):
        return False


def _sentinel_sees_replica(client: redis.Redis, port: int) -> bool:
    try:
        return any(int(r.get("port", 0)) == port for r in client.sentinel_slaves(MASTER))
    except (redis.RedisError, OSError):
        return False


def _role(client: redis.Redis) -> str:
    try:
        return str(client.execute_command("ROLE")[0])
    except (redis.RedisError, OSError):
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def failover_set(tmp_path: Path) -> Iterator[FailoverSet]:
    """A primary and its replica, linked, and one sentinel (quorum 1) that has seen the replica."""
    ports = (free_port(), free_port(), free_port())
    for name in ("primary", "replica"):
        (tmp_path / name).mkdir()
    # No 5 s wait before the replica's first sync (Redis 7's repl-diskless-sync-delay default).
    primary = _spawn([*server_args(ports[0], tmp_path / "primary", persistent=False), "--repl-diskless-sync-delay", "0"],
                     tmp_path / "primary.log")
    replica = _spawn([*server_args(ports[1], tmp_path / "replica", persistent=False),
                      "--replicaof", "127.0.0.1", str(ports[0])], tmp_path / "replica.log")
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {ports[2]}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {ports[0]} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 3000\n")
    started = [primary, replica]
    try:
        replica_client = redis.Redis(port=ports[1], socket_timeout=2, decode_responses=True)
        wait_until(lambda: _replica_linked(replica_client), timeout=20, what="the replica to link to the primary")
        # Started after the link is up, the sentinel finds the replica in the primary's first INFO.
        sentinel = _spawn([redis_server_binary(), str(conf), "--sentinel"], tmp_path / "sentinel.log")
        started.append(sentinel)
        group = FailoverSet(primary, replica, sentinel, ports)
        wait_until(lambda: _sentinel_sees_replica(group.client(2), ports[1]), timeout=20,
                   what="the sentinel to see the replica")
        yield group
    finally:
        for proc in reversed(started):
            _stop(proc)


def _start_probe_worker(group: FailoverSet, tmp_path: Path) -> WorkerProcess:
    log = tmp_path / "worker.log"
    env = worker_env(None, group.url, {"PROBE_BROKER_URL": group.url, "PROBE_MASTER_NAME": MASTER})
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.helpers.broker_probe_app", "worker",
                             "-Q", "probe", "-c", "1", "--prefetch-multiplier", "1", "-n", "probe@%h",
                             "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--logfile", str(log)],
                            cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    worker = WorkerProcess("probe", ["probe"], proc, log, env)
    try:
        wait_until(lambda: "ready." in worker.log() or not worker.alive(), timeout=60, what="the probe worker ready")
        assert worker.alive(), worker.log()[-3000:]
    except BaseException:
        worker.kill()
        raise
    return worker


def _send_held(group: FailoverSet) -> str:
    sender = Celery("xtb-broker-probe-sender", broker=group.url, backend=None, amqp=AMQP)
    sender.conf.broker_transport_options = {"master_name": MASTER, "socket_timeout": 5}
    try:
        return str(sender.send_task("xtb.test.held", queue="probe", countdown=60).id)
    finally:
        sender.close()


def test_a_worker_holding_a_message_rides_a_sentinel_failover_and_requeues_it(failover_set: FailoverSet,
                                                                               tmp_path: Path) -> None:
    group = failover_set
    worker = _start_probe_worker(group, tmp_path)
    try:
        task_id = _send_held(group)
        received = f"xtb.test.held[{task_id}] received"
        wait_until(lambda: received in worker.log(), timeout=20, what="the worker to hold the message")
        primary = group.client(0)
        assert primary.hlen("unacked") == 1, "the worker holds no unacknowledged message: nothing to prove"
        assert primary.wait(1, 2000) == 1, "the replica did not acknowledge the primary's writes"
        _stop(group.primary)  # SIGKILL: the primary is gone mid-hold

        def requeued() -> bool:
            assert worker.alive(), f"the worker died in the failover: {worker.log()[-1500:]}"
            return worker.log().count(received) >= 2

        wait_until(lambda: _role(group.client(1)) == "master", timeout=30, what="the sentinel to promote the replica")
        wait_until(requeued, timeout=45, what="the held message to come back through the promoted replica")
        log = worker.log()
        assert "re-queued 1 unacknowledged message(s)" in log, log[-3000:]
        assert "Unrecoverable error" not in log, log[-3000:]
        promoted = group.client(1)
        assert promoted.hlen("unacked") == 1 and promoted.llen("probe") == 0, "held once more, queued nowhere else"
        assert worker.alive()
    finally:
        worker.stop()
