"""What lets the suite run in parallel (`pytest -n`, docs/ARCHITECTURE.md "Tests in parallel"): each
test process's Redis answers only for its own server, and the process-wide Celery client is bound to
the process's session Redis whichever test ran first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.services import RedisServer, start_redis_server


def test_a_redis_server_asked_for_a_port_another_server_holds_is_refused_not_joined(
        tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.client().set("owner", "session")
    with pytest.raises(RuntimeError, match=f"on port {redis_server.port}"):
        start_redis_server(tmp_path / "second", port=redis_server.port)
    assert redis_server.client().get("owner") == "session"


def test_the_process_wide_celery_client_is_bound_to_the_session_redis(client_app: Any,
                                                                       redis_server: RedisServer) -> None:
    from xtb_tasks.worker.celery_app import app

    assert app is client_app
    assert (app.conf.broker_url, app.conf.result_backend) == (redis_server.url, redis_server.url)
