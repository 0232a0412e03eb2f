"""Shared fixtures: a private redis-server per test session, real ``celery worker`` subprocesses,
the venue simulators over real HTTP/WebSocket, and config files pointing at all of them.

Nothing here is a stand-in: no eager tasks, no fakeredis, no mocks of our own code.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.services import RedisServer, WorkerProcess, start_redis_server, start_worker, stop_redis_server


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
