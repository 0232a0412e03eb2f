"""The embedded Redis: started only on request, with an AOF, on a port of its own when another
checkout's holds the preferred one; every other command starts nothing and says how to start one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from core.redis_conn import (
    RedisUnavailable,
    embedded_url,
    ensure_embedded_redis,
    resolve_redis_url,
    stop_embedded_redis,
)
from tests.helpers.services import ROOT, RedisServer
from tests.helpers.support import free_port, write_config


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("XTB_EMBEDDED_REDIS_PORT", str(free_port()))
    monkeypatch.setenv("XTB_DATA_DIR", str(tmp_path / "one"))
    yield tmp_path
    for name in ("one", "two"):
        monkeypatch.setenv("XTB_DATA_DIR", str(tmp_path / name))
        stop_embedded_redis()


def test_counters_survive_a_restart_of_the_embedded_redis(embedded: Path) -> None:
    started = ensure_embedded_redis()
    assert started.started and started.url == embedded_url()
    client = redis.Redis.from_url(started.url, decode_responses=True)
    client.set("xtb:coi:lighter1", 42)
    assert stop_embedded_redis()
    again = ensure_embedded_redis()
    assert redis.Redis.from_url(again.url, decode_responses=True).get("xtb:coi:lighter1") == "42"
    assert ensure_embedded_redis() == type(again)(again.url, started=False)


def test_another_checkouts_embedded_redis_on_the_preferred_port_gets_one_of_its_own(
        embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preferred = int(os.environ["XTB_EMBEDDED_REDIS_PORT"])
    first = ensure_embedded_redis()
    assert first.url == f"redis://127.0.0.1:{preferred}/0"
    redis.Redis.from_url(first.url).set("owner", "one")
    monkeypatch.setenv("XTB_DATA_DIR", str(embedded / "two"))
    with pytest.raises(RedisUnavailable, match="another checkout's embedded Redis"):
        resolve_redis_url(None)  # nothing started yet: the preferred port is the other checkout's
    second = ensure_embedded_redis()
    assert second.started and second.url != first.url
    assert resolve_redis_url(None) == second.url  # the commands of this checkout find its own
    assert redis.Redis.from_url(second.url).get("owner") is None
    assert redis.Redis.from_url(first.url).get("owner") == b"one"
    monkeypatch.setenv("XTB_DATA_DIR", str(embedded / "one"))
    assert resolve_redis_url(None) == first.url


def test_with_no_redis_configured_nothing_is_started_and_the_message_says_where_it_looked(embedded: Path) -> None:
    with pytest.raises(RedisUnavailable) as caught:
        resolve_redis_url(None)
    text = str(caught.value)
    assert "$REDIS_URL is unset" in text and f"127.0.0.1:{os.environ['XTB_EMBEDDED_REDIS_PORT']}" in text
    assert "xtb redis" in text and "\n" not in text
    assert not (embedded / "one" / "redis" / "redis.pid").exists()


def _processes_of(data_dir: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.environ().get("XTB_DATA_DIR") == str(data_dir):
                found.append(" ".join(proc.info["cmdline"] or [])[:120])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.parametrize("with_redis", [False, True], ids=["no-redis-configured", "redis-configured"])
def test_a_direct_order_to_an_unreachable_venue_leaves_no_process_behind(
        tmp_path: Path, with_redis: bool, redis_server: RedisServer) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    urls = {"backpack": closed, "backpack_ws": closed.replace("http", "ws"), "lighter": closed,
            "lighter_ws": closed.replace("http", "ws") + "/stream"}
    config = write_config(tmp_path / "xtb.toml", urls, redis_url=redis_server.url if with_redis else None)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "XTB_CONFIG")}
    data_dir = tmp_path / "data"
    env.update({"XTB_DATA_DIR": str(data_dir), "XTB_EMBEDDED_REDIS_PORT": str(free_port()), "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "xtb_tasks.cli", "--config", str(config), "order", "--account",
                           "lighter1", "--side", "buy", "--size", "0.01", "--direct"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr
    assert "Traceback" not in proc.stderr
    if with_redis:
        assert "unavailable" in errors[0], errors[0]
    else:  # nothing else happened: the order is refused before a client id or a connector exists
        assert proc.stderr.strip() == errors[0], proc.stderr
        assert "no Redis configured" in errors[0] and "xtb redis" in errors[0], errors[0]
    assert _processes_of(data_dir) == []
