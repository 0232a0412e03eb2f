"""`xtb workers` keeps its workers alive: a worker that dies is restarted, as systemd would."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.config import load_settings
from tests.helpers.support import wait_until, write_config

FAKE_URLS = {"backpack": "http://127.0.0.1:9", "backpack_ws": "ws://127.0.0.1:9/ws",
             "lighter": "http://127.0.0.1:9", "lighter_ws": "ws://127.0.0.1:9/stream"}


def test_a_dead_worker_is_restarted(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from xtb_tasks.cli.processes import ProcessSet

    config = write_config(tmp_path / "xtb.toml", FAKE_URLS)
    monkeypatch.setenv("XTB_CONFIG", str(config))
    with ProcessSet(load_settings(config), log_dir=tmp_path) as procs:
        procs.start_workers(accounts=["lighter1"], orchestrator=False)
        assert procs.ping_workers(timeout=60) == {"lighter1"}
        victim = procs.procs[0].proc
        victim.kill()
        victim.wait(10)
        wait_until(lambda: procs.supervise() == ["worker-lighter1"], timeout=10, what="supervise to restart lighter1")
        assert procs.procs[0].proc.pid != victim.pid and procs.procs[0].restarts == 1
        assert procs.ping_workers(timeout=60) == {"lighter1"}
        time.sleep(0.2)
        assert procs.supervise() == []
