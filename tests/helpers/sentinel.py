"""A real Redis Sentinel deployment for the tests: a primary, a replica and three Sentinels
(``redis-server --sentinel``), each on a free loopback port with a config file written here, ACL
AUTH on the data nodes, and timings short enough that a failover takes a few seconds.

``SentinelDeployment`` is the harness's deployment configured through the Sentinels: its workers,
its Redis client and its Celery app all follow the current primary.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from core.redis_target import RedisAccess, SentinelTarget, make_client
from tests.helpers.harness import Deployment
from tests.helpers.services import terminate
from tests.helpers.support import free_port, wait_until

MASTER_NAME = "xtb"
USER = "xtb"
USER_ENV = "XTB_TEST_REDIS_USER"
PASSWORD_ENV = "XTB_TEST_REDIS_PASSWORD"
#: How long the Sentinels wait before they call a silent primary down, and the failover's bound.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


@dataclass
class Node:
    """One redis-server process (data node or Sentinel) and how to start it again."""

    port: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            terminate(self.proc)


@dataclass
class SentinelCluster:
    directory: Path
    password: str
    data: dict[int, Node] = field(default_factory=dict)
    sentinels: list[Node] = field(default_factory=list)

    @property
    def target(self) -> SentinelTarget:
        return SentinelTarget(tuple(("127.0.0.1", n.port) for n in self.sentinels), MASTER_NAME)

    @property
    def url(self) -> str:
        return self.target.url()

    @property
    def access(self) -> RedisAccess:
        return RedisAccess(username_env=USER_ENV, password_env=PASSWORD_ENV, failover_retry_secs=30.0)

    def access_from_env(self) -> RedisAccess:
        """The access options with the credentials set in this process's environment (tests that
        do not export them for good)."""
        import os

        os.environ.update(self.env())
        return self.access

    def env(self) -> dict[str, str]:
        return {USER_ENV: USER, PASSWORD_ENV: self.password}

    # ---- processes ------------------------------------------------------------------------
    def _data_args(self, port: int, replica_of: int | None) -> list[str]:
        from core.redis_conn import server_args

        node_dir = self.directory / f"redis-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [*server_args(port, node_dir, persistent=False),
                "--user", "default", "off", "--user", USER, "on", f">{self.password}", "~*", "&*", "+@all",
                "--masteruser", USER, "--masterauth", self.password,
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return args

    def _sentinel_args(self, port: int, primary: int) -> list[str]:
        conf = self.directory / f"sentinel-{port}.conf"
        conf.write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {self.directory}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
            f"sentinel auth-user {MASTER_NAME} {USER}", f"sentinel auth-pass {MASTER_NAME} {self.password}", ""]))
        from core.redis_conn import redis_server_binary

        return [redis_server_binary(), str(conf), "--sentinel"]

    def start(self) -> SentinelCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        primary, replica = free_port(), free_port()
        for port, of in ((primary, None), (replica, primary)):
            node = Node(port, self._data_args(port, of), self.directory / f"redis-{port}.log")
            node.start()
            self.data[port] = node
        for _ in range(3):
            port = free_port()
            node = Node(port, self._sentinel_args(port, primary), self.directory / f"sentinel-{port}.log")
            node.start()
            self.sentinels.append(node)
        wait_until(lambda: self.replicas_of(primary) == 1, timeout=20, what="the replica to sync")
        wait_until(lambda: all(self._sentinel_sees(n.port) for n in self.sentinels), timeout=20,
                   what="the sentinels to find each other and the replica")
        return self

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data.values()]:
            node.stop()

    # ---- state ----------------------------------------------------------------------------
    def node_client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, username=USER, password=self.password, decode_responses=True,
                           socket_timeout=1, socket_connect_timeout=1)

    def replicas_of(self, port: int) -> int:
        with contextlib.suppress(redis.RedisError):
            info = self.node_client(port).info("replication")
            return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                       and v.get("state") == "online")
        return 0

    def _sentinel_sees(self, port: int) -> bool:
        with contextlib.suppress(redis.RedisError):
            master = redis.Redis(port=port, decode_responses=True, socket_timeout=1).sentinel_master(MASTER_NAME)
            return int(master.get("num-other-sentinels", 0)) == 2 and int(master.get("num-slaves", 0)) >= 1
        return False

    def primary_port(self) -> int | None:
        """The primary the Sentinels name (the first that answers)."""
        for node in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                found: Any = redis.Redis(port=node.port, socket_timeout=1).sentinel_get_master_addr_by_name(
                    MASTER_NAME)
                if found:
                    return int(found[1])
        return None

    def kill_primary(self) -> int:
        """SIGKILL the current primary; its port."""
        port = self.primary_port()
        assert port is not None, "no sentinel names a primary"
        self.data[port].kill()
        return port

    def wait_failover(self, old: int, timeout: float = 30) -> int:
        """The promoted replica's port once every Sentinel names it and it answers as a primary."""
        def promoted() -> bool:
            port = self.primary_port()
            if port is None or port == old:
                return False
            with contextlib.suppress(redis.RedisError):
                return self.node_client(port).info("replication").get("role") == "master"
            return False

        wait_until(promoted, timeout=timeout, interval=0.05, what=f"a failover away from port {old}")
        port = self.primary_port()
        assert port is not None
        return port

    def rejoin(self, port: int, timeout: float = 30) -> None:
        """Start the killed node again (empty: no persistence in the tests); the Sentinels make it
        a replica of the current primary, which then holds two replicas' worth of safety again.

        Sentinel converts a returning old primary only after it has seen it report as a primary for
        a while, through INFO polls that a loaded machine (the suite runs four test processes on two
        cores) can stretch past a minute. After half of ``timeout`` the node is told whom to follow,
        as an operator would, so that the next kill fails over to a replica again."""
        self.data[port].start()
        primary = self.primary_port()
        assert primary is not None
        try:
            wait_until(lambda: self.replicas_of(primary) == 1, timeout=timeout / 2, what="Sentinel's conversion")
        except TimeoutError:
            # Whom to follow now: another failover may have happened meanwhile (on a loaded machine
            # the Sentinels can promote this very node), and a REPLICAOF naming the primary read
            # before would demote the current one.
            primary = self.primary_port()
            assert primary is not None
            if primary != port:
                with contextlib.suppress(redis.RedisError):
                    self.node_client(port).replicaof("127.0.0.1", primary)
            wait_until(lambda: (now := self.primary_port()) is not None and self.replicas_of(now) == 1,
                       timeout=timeout / 2, what=f"port {port} to rejoin, the primary with its replica")


@dataclass
class SentinelDeployment(Deployment):
    """A deployment whose every process reaches Redis through the Sentinels."""

    cluster: SentinelCluster | None = None
    _client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            assert self.cluster is not None
            self._client = make_client(self.redis_url, self.cluster.access)
        return self._client


def sentinel_redis_options(cluster: SentinelCluster) -> dict[str, Any]:
    """The ``[redis]`` lines of a config that reaches ``cluster`` (values as TOML literals)."""
    return {"username_env": f'"{USER_ENV}"', "password_env": f'"{PASSWORD_ENV}"',
            "replica_wait_ms": 500, "failover_retry_secs": 30}


def export_credentials(cluster: SentinelCluster) -> None:
    """Put the ACL user and password where the workers (which copy this environment) read them."""
    os.environ.update(cluster.env())


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> float | None:
    """Monotonic time ``predicate()`` first held, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if predicate():
                return time.monotonic()
        time.sleep(interval)
    return None
