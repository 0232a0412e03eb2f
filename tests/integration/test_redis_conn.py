"""The embedded Redis: started on demand with an AOF, survives restarts, never another checkout's."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.helpers.support import free_port
from xtb_tasks.core.redis_conn import RedisUnavailable, embedded_url, ensure_embedded_redis, stop_embedded_redis


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XTB_EMBEDDED_REDIS_PORT", str(free_port()))
    monkeypatch.setenv("XTB_DATA_DIR", str(tmp_path / "one"))
    yield tmp_path
    stop_embedded_redis()


def test_counters_survive_a_restart_of_the_embedded_redis(embedded: Path) -> None:
    url = ensure_embedded_redis()
    assert url == embedded_url()
    client = redis.Redis.from_url(url, decode_responses=True)
    client.set("xtb:coi:lighter1", 42)
    assert stop_embedded_redis()
    assert redis.Redis.from_url(ensure_embedded_redis(), decode_responses=True).get("xtb:coi:lighter1") == "42"


def test_an_embedded_redis_of_another_data_dir_is_refused(embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_embedded_redis()
    monkeypatch.setenv("XTB_DATA_DIR", str(embedded / "two"))
    with pytest.raises(RedisUnavailable, match="another embedded Redis"):
        ensure_embedded_redis()
    monkeypatch.setenv("XTB_DATA_DIR", str(embedded / "one"))
