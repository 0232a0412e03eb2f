"""Shared fixtures: a private redis-server per test session, real ``celery worker`` subprocesses,
the venue simulators over real HTTP/WebSocket, and config files pointing at all of them.

Nothing here is a stand-in: no eager tasks, no fakeredis, no mocks of our own code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.services import RedisServer, WorkerProcess, start_redis_server, start_worker, stop_redis_server

#: This process's session Redis (:func:`pytest_configure`).
SESSION_REDIS = pytest.StashKey[RedisServer]()

#: Under ``pytest -n`` the files reach the workers in collection order (``--no-loadscope-reorder``
#: in the Makefile), so the longest come first and the short ones fill in behind them: the run ends
#: about when its longest file does, not a long file's length after the others. Files marked ``slow``
#: first, then by folder as their tests wait (system, integration, conformance, unit).
FOLDER_ORDER = ("tests/system/", "tests/integration/", "tests/conformance/", "tests/unit/")


def _longest_first(item: pytest.Item) -> tuple[bool, int]:
    folder = next((n for n, prefix in enumerate(FOLDER_ORDER) if item.nodeid.startswith(prefix)), len(FOLDER_ORDER))
    return item.get_closest_marker("slow") is None, folder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a serial run keeps the folders' own order
        items.sort(key=_longest_first)  # stable: each file keeps its own order


def _runs_tests(config: pytest.Config) -> bool:
    """This process collects and runs tests: a serial run, or an xdist worker (not its controller)."""
    return hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


def pytest_configure(config: pytest.Config) -> None:
    """Start this process's session Redis and bind the process-wide Celery app to it, before any
    test module is imported.

    The app (``xtb_tasks.worker.celery_app.app``) is built once per process, by the first import of
    that module, and keeps the broker it was built with; the tests use it as a client (``send_task``
    with explicit queues, results). A test module may import it while it is collected, and with no
    ``$REDIS_URL`` then it would be bound to the embedded default port, where nothing answers. Bound
    here, it never depends on which module a process collected or ran first (under ``pytest -n``
    each worker runs its own share of the files)."""
    if not _runs_tests(config):
        return
    directory = Path(tempfile.mkdtemp(prefix="xtb-redis-"))
    server = start_redis_server(directory)
    config.stash[SESSION_REDIS] = server
    saved = {key: os.environ.pop(key, None) for key in ("REDIS_URL", "XTB_CONFIG")}
    os.environ["REDIS_URL"] = server.url
    os.environ["XTB_CONFIG"] = str(directory / "no-such-config.toml")  # not ./xtb.toml of the checkout
    try:
        import xtb_tasks.worker.celery_app  # noqa: F401  (builds the app)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(SESSION_REDIS, None)
    if server is not None:
        stop_redis_server(server)
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> RedisServer:
    """This process's throw-away redis-server on a free port (never touches 6379), started at configure."""
    return pytestconfig.stash[SESSION_REDIS]


@pytest.fixture(scope="session")
def client_app() -> Any:
    """The process-wide Celery app, bound to the session Redis by :func:`pytest_configure`."""
    from xtb_tasks.worker.celery_app import app

    return app


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
    from simulators.server import SimulatorServer

    server = SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None)
    server.start()
    yield server
    server.stop()
