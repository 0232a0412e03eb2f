"""The Redis target: Sentinel URLs, the [redis] keys, and the Celery settings built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, parse_settings
from core.redis_target import RedisAccess, RedisUnavailable, SentinelTarget, credentials, parse_sentinel_url
from xtb_tasks.worker.celery_app import celery_settings


def settings_with(redis: dict[str, object]) -> object:
    return parse_settings({"redis": redis}, Path("/tmp/xtb.toml"))


def test_sentinel_keys_become_one_target_url() -> None:
    settings = settings_with({"sentinels": ["10.0.0.1:26379", "[::1]:26380"], "master_name": "xtb", "db": 2,
                              "username_env": "U", "password_env": "P", "replica_wait_ms": 250})
    assert settings.redis_url == "redis+sentinel://10.0.0.1:26379,::1:26380/xtb/2"  # type: ignore[attr-defined]
    assert parse_sentinel_url(settings.redis_url) == SentinelTarget(  # type: ignore[attr-defined]
        (("10.0.0.1", 26379), ("::1", 26380)), "xtb", 2)
    access = settings.redis_access  # type: ignore[attr-defined]
    assert (access.username_env, access.password_env, access.replica_wait_ms) == ("U", "P", 250)


@pytest.mark.parametrize(("redis", "key", "text"), [
    ({"sentinels": ["h:1"]}, "redis.master_name", "expected the primary's name"),
    ({"master_name": "x"}, "redis.sentinels", "host:port"),
    ({"sentinels": ["nohost"], "master_name": "x"}, "redis.sentinels", "expected host:port"),
    ({"sentinels": ["h:1"], "master_name": "x", "url": "redis://h"}, "redis.sentinels", "not both"),
    ({"url": "redis+sentinel://h:1"}, "redis.url", "master_name"),
    ({"tls_ca_file": "missing.pem"}, "redis.tls_ca_file", "file not found"),
    ({"password": "inline"}, "redis.password", "unknown key"),
])
def test_bad_redis_keys_name_the_key(redis: dict[str, object], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_with(redis)
    assert err.value.key == key and text in err.value.message, err.value.render()


def test_celery_follows_the_sentinels_with_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XTB_U", "bot")
    monkeypatch.setenv("XTB_P", "p@ss:/word")
    settings = settings_with({"sentinels": ["s1:26379", "s2:26379"], "master_name": "xtb",
                              "username_env": "XTB_U", "password_env": "XTB_P"})
    conf = celery_settings(settings, settings.redis_url)  # type: ignore[arg-type, attr-defined]
    assert conf["broker_url"] == "sentinel://bot:p%40ss%3A%2Fword@s1:26379/0;sentinel://bot:p%40ss%3A%2Fword@s2:26379/0"
    assert conf["result_backend"] == f"xtb_tasks.worker.sentinel_wiring:PrimarySentinelBackend+{conf['broker_url']}"
    from kombu.transport import get_transport_cls

    from xtb_tasks.worker.sentinel_wiring import PrimarySentinelTransport

    assert get_transport_cls("sentinel") is PrimarySentinelTransport
    for options in (conf["broker_transport_options"], conf["result_backend_transport_options"]):
        assert options["master_name"] == "xtb" and options["sentinel_kwargs"]["socket_timeout"] > 0
    assert conf["redbeat_redis_url"].startswith("redis-sentinel")
    assert conf["redbeat_redis_options"]["service_name"] == "xtb"
    assert conf["redbeat_redis_options"]["password"] == "p@ss:/word"


def test_a_credential_variable_that_is_not_set_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XTB_NOT_SET", raising=False)
    with pytest.raises(RedisUnavailable, match=r"password_env names \$XTB_NOT_SET"):
        credentials(RedisAccess(password_env="XTB_NOT_SET"))
