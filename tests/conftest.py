"""Shared fixtures: a private redis-server per test session, real ``celery worker`` subprocesses,
the venue simulators over real HTTP/WebSocket, and config files pointing at all of them.

Nothing here is a stand-in: no eager tasks, no fakeredis, no mocks of our own code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from support import free_port, wait_until  # noqa: E402


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


def start_redis_server(directory: Path, *, port: int | None = None, persistent: bool = False) -> RedisServer:
    from xtb_tasks.core.redis_conn import server_args

    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(server_args(port, directory, persistent=persistent),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, proc, directory)
    wait_until(lambda: _pings(server.url), timeout=10, what=f"redis-server on port {port}")
    return server


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except (redis.RedisError, OSError):
        return False


def stop_redis_server(server: RedisServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throw-away redis-server on a free port for the whole session (never touches 6379)."""
    directory = Path(tempfile.mkdtemp(prefix="xtb-redis-"))
    server = start_redis_server(directory)
    yield server
    stop_redis_server(server)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session Redis, flushed, exported as ``$REDIS_URL`` for code under test."""
    redis_server.client().flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return redis_server.url


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
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    env["NO_PROXY"] = "127.0.0.1,localhost"
    if config_path is not None:
        env["XTB_CONFIG"] = str(config_path)
    env.update(extra or {})
    return env


def start_worker(queues: list[str], *, name: str, config_path: Path | None, redis_url: str,
                 log_dir: Path, extra_env: dict[str, str] | None = None, wait: bool = True,
                 concurrency: int = 1) -> WorkerProcess:
    log_path = log_dir / f"worker-{name}-{time.time_ns()}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "xtb_tasks", "worker", "-Q", ",".join(queues),
           "-c", str(concurrency), "-P", "prefork", "--prefetch-multiplier", "1", "-n", f"{name}@%h",
           "--without-mingle", "--without-gossip", "--loglevel", "INFO", "--logfile", str(log_path)]
    env = worker_env(config_path, redis_url, extra_env)
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    worker = WorkerProcess(name, queues, proc, log_path, env)
    if wait:
        wait_until(lambda: "ready." in worker.log() or not worker.alive(), timeout=60,
                   what=f"worker {name} ready")
        if not worker.alive():
            raise RuntimeError(f"worker {name} exited early:\n{worker.log()[-3000:]}")
    return worker


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``workers(["lighter1"], name="l1", config_path=..., redis_url=...)``; all stopped at teardown."""
    started: list[WorkerProcess] = []

    def factory(queues: list[str], **kwargs: Any) -> WorkerProcess:
        kwargs.setdefault("log_dir", tmp_path)
        worker = start_worker(queues, **kwargs)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    """The Backpack, Lighter and Telegram simulators on free ports, in a background thread."""
    from venues.simulator.server import SimulatorServer

    server = SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None)
    server.start()
    yield server
    server.stop()
