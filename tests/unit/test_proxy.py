"""The venues' proxy comes from the environment once per session (venues/proxy.py)."""

from __future__ import annotations

import asyncio

import pytest

from venues.backpack.rest import BackpackRest
from venues.lighter.rest import LighterRest
from venues.proxy import env_proxy

VENUE = "https://mainnet.zklighter.elliot.ai"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_proxy_follows_scheme_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_proxy(VENUE) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert env_proxy(VENUE) == "http://proxy.internal:3128"
    assert env_proxy("http://127.0.0.1:8080") is None  # HTTPS_PROXY does not cover plain http
    monkeypatch.setenv("NO_PROXY", "elliot.ai")
    assert env_proxy(VENUE) is None


def test_sessions_take_the_proxy_once_and_stop_reading_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    backpack = BackpackRest("bp", "https://api.backpack.exchange", signer=None, window_ms=5000,  # type: ignore[arg-type]
                            timeout=5.0)
    assert backpack.session.trust_env is False
    assert backpack.session.proxies == {"https": "http://proxy.internal:3128"}

    async def lighter_session() -> tuple[str | None, bool]:
        rest = LighterRest(VENUE, 5.0, "lighter1")
        session = rest._sess()  # aiohttp sessions belong to a running loop
        try:
            return rest._proxy, session.trust_env
        finally:
            await rest.close()

    assert asyncio.run(lighter_session()) == ("http://proxy.internal:3128", False)
