"""Real processes for the tests: a private redis-server and ``celery worker`` subprocesses.

Nothing here is a stand-in: no eager tasks, no fakeredis, no mocks of our own code.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from core.policies import worker_argv
from tests.helpers.support import ROOT, free_port, wait_until


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    directory: Path
    #: The address the URL names (the server also listens on loopback).
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


#: How many free ports a redis-server is offered before giving up: a port that free_port() found free
#: can be taken (by a parallel test worker's server, or as an ephemeral client port) before it binds.
PORT_ATTEMPTS = 5


def start_redis_server(directory: Path, *, port: int | None = None, persistent: bool = False,
                       host: str = "127.0.0.1") -> RedisServer:
    """A redis-server of this process on ``port`` (default: a free one, retried on a fresh port when
    another process took it first); it answers only once it is this server that answers there.
    ``host``: an address to listen on besides loopback (the partition tests' Redis bridge)."""
    attempts = 1 if port else PORT_ATTEMPTS
    for _ in range(attempts):
        server = _launch_redis(directory, port or free_port(), persistent, host)
        if _came_up(server):
            return server
    raise RuntimeError(f"redis-server exited at start-up {attempts} time(s) "
                       f"(last on port {server.port}, exit code {server.proc.returncode})")


def _launch_redis(directory: Path, port: int, persistent: bool, host: str) -> RedisServer:
    from core.redis_conn import server_args

    directory.mkdir(parents=True, exist_ok=True)
    args = server_args(port, directory, persistent=persistent)
    if host != "127.0.0.1":
        # Protected mode refuses every client off loopback while no password is set; this server
        # listens only on loopback and the test's own bridge, which nothing outside the test reaches.
        bind = args.index("--bind") + 1
        args[bind:bind + 1] = ["127.0.0.1", host]
        args[args.index("--protected-mode") + 1] = "no"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return RedisServer(port, proc, directory, host)


def _came_up(server: RedisServer) -> bool:
    """True once ``server`` answers; False when it exited first (its port was taken)."""
    wait_until(lambda: _serves(server) or server.proc.poll() is not None, timeout=10,
               what=f"redis-server on port {server.port}")
    return server.proc.poll() is None


def _serves(server: RedisServer) -> bool:
    """The server on the port answers, and it is ours (not another worker's that won the port)."""
    try:
        info = redis.Redis.from_url(server.url, socket_connect_timeout=0.2).info("server")
    except (redis.RedisError, OSError):
        return False
    return int(info.get("process_id", -1)) == server.proc.pid


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited 10 s later."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_redis_server(server: RedisServer) -> None:
    terminate(server.proc)



@dataclass
class WorkerProcess:
    name: str
    queues: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _reap_children(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the worker and its pool children (a crash, not a shutdown)."""
        _reap_children(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _reap_children(pid: int) -> None:
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def worker_env(config_path: Path | None, redis_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    env["NO_PROXY"] = "127.0.0.1,localhost"
    if config_path is not None:
        env["XTB_CONFIG"] = str(config_path)
    env.update(extra or {})
    return env


def start_worker(queues: list[str], *, name: str, config_path: Path | None, redis_url: str,
                 log_dir: Path, extra_env: dict[str, str] | None = None, wait: bool = True,
                 concurrency: int = 1, prefix: list[str] | None = None) -> WorkerProcess:
    """``prefix``: a command the worker runs under (``ip netns exec NS``: the partition tests' hosts);
    it must exec the worker, so that the process started is the worker itself."""
    log_path = log_dir / f"worker-{name}-{time.time_ns()}.log"
    # The production command line, plus what the tests need: a log file per worker, and no
    # start-up handshake with (or gossip about) the other test workers, which only slows them.
    cmd = [*(prefix or []), sys.executable, "-m", "celery", *worker_argv(queues, name=name, concurrency=concurrency),
           "--without-mingle", "--without-gossip", "--logfile", str(log_path)]
    env = worker_env(config_path, redis_url, extra_env)
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    worker = WorkerProcess(name, queues, proc, log_path, env)
    if wait:
        wait_until(lambda: "ready." in worker.log() or not worker.alive(), timeout=60,
                   what=f"worker {name} ready")
        if not worker.alive():
            raise RuntimeError(f"worker {name} exited early:\n{worker.log()[-3000:]}")
    return worker
