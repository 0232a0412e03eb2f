"""Where Redis is and how to reach it: one URL string, plus the access options of ``[redis]``.

A target is ``redis://``, ``rediss://`` or ``unix://`` (as redis-py reads them), or
``redis+sentinel://host:port,host:port/<master_name>/<db>``: the Sentinels to ask for the current
primary, its name and the database. The string never holds a secret (it travels in ``$REDIS_URL``
to every process ``xtb workers`` starts, and into logs): credentials are read from the environment
variables that :class:`RedisAccess` names, when a client is built.

Every redis-py client of the runtime is built by :func:`make_client` (through
``core.redis_conn``), and the Celery broker and result backend settings by
:func:`celery_redis_settings`, so all of them follow the same primary through a failover.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection

from core.errors import XtbError

SENTINEL_SCHEME = "redis+sentinel://"
#: Seconds a Sentinel may take to answer one question before the next one is asked.
SENTINEL_TIMEOUT_SECS = 1.0


class RedisUnavailable(XtbError, RuntimeError):
    """No Redis could be reached or started."""

    reason = "redis_unavailable"
    label = "redis"


class RedisAccess(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How to authenticate to Redis (and its Sentinels), TLS, and the durability of the writes that
    must survive a failover. Names of environment variables, never the secrets themselves."""

    username_env: Annotated[str | None, msgspec.Meta(
        description="environment variable holding the ACL user name of the Redis servers")] = None
    password_env: Annotated[str | None, msgspec.Meta(
        description="environment variable holding the password of that user (or of requirepass)")] = None
    sentinel_username_env: Annotated[str | None, msgspec.Meta(
        description="environment variable holding the ACL user name of the Sentinels, if they require AUTH")] = None
    sentinel_password_env: Annotated[str | None, msgspec.Meta(
        description="environment variable holding the Sentinels' password, if they require AUTH")] = None
    tls: Annotated[bool, msgspec.Meta(
        description="TLS to the Redis servers and Sentinels (a rediss:// URL implies it)")] = False
    tls_ca_file: Annotated[Path | None, msgspec.Meta(description="CA bundle that signed the servers' certificates")] = None
    tls_cert_file: Annotated[Path | None, msgspec.Meta(description="client certificate, when the servers require one")] = None
    tls_key_file: Annotated[Path | None, msgspec.Meta(description="the client certificate's private key")] = None
    replica_wait_ms: Annotated[int, msgspec.Meta(ge=10, le=10000, description=(
        "milliseconds a write that must survive a failover waits for a replica to acknowledge it (WAIT)"))] = 500
    failover_retry_secs: Annotated[float, msgspec.Meta(ge=0, le=600, description=(
        "seconds a client keeps retrying a command through a Sentinel failover before it fails"))] = 30.0


@dataclass(frozen=True)
class SentinelTarget:
    """A Sentinel-managed primary: the Sentinels to ask, the primary's name, the database."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0

    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{SENTINEL_SCHEME}{hosts}/{self.master_name}/{self.db}"

    def where(self) -> str:
        return f"primary {self.master_name!r} via sentinels {', '.join(f'{h}:{p}' for h, p in self.sentinels)}"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too); raises ValueError naming what is expected."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The Sentinel target a ``redis+sentinel://`` URL names; None for any other URL."""
    if not url.startswith(SENTINEL_SCHEME):
        return None
    hosts, _, rest = url[len(SENTINEL_SCHEME):].partition("/")
    master_name, _, db = rest.strip("/").partition("/")
    if not hosts or not master_name or (db and not db.isdigit()):
        raise ValueError(f"expected {SENTINEL_SCHEME}host:port,host:port/<master_name>/<db>, got {url!r}")
    return SentinelTarget(tuple(parse_address(h) for h in hosts.split(",")), master_name, int(db or 0))


def _env(name: str | None, key: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise RedisUnavailable(f"[redis] {key} names ${name}, which is not set in this process's environment")
    return value


def credentials(access: RedisAccess) -> dict[str, str]:
    """``username``/``password`` for the Redis servers, read from the environment now."""
    found = {"username": _env(access.username_env, "username_env"),
             "password": _env(access.password_env, "password_env")}
    return {k: v for k, v in found.items() if v is not None}


def sentinel_credentials(access: RedisAccess) -> dict[str, str]:
    found = {"username": _env(access.sentinel_username_env, "sentinel_username_env"),
             "password": _env(access.sentinel_password_env, "sentinel_password_env")}
    return {k: v for k, v in found.items() if v is not None}


def tls_options(access: RedisAccess) -> dict[str, Any]:
    """redis-py's TLS keyword arguments (none without ``tls``)."""
    if not access.tls:
        return {}
    options: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"}
    for key, path in (("ssl_ca_certs", access.tls_ca_file), ("ssl_certfile", access.tls_cert_file),
                      ("ssl_keyfile", access.tls_key_file)):
        if path is not None:
            options[key] = str(path)
    return options


def failover_retry(access: RedisAccess) -> Retry:
    """Retries that span ``failover_retry_secs``: 50 ms doubling up to 1 s between attempts. A retried
    command may have run once already; the runtime's writes are idempotent or fail safe when
    repeated (HSETNX claims read as taken, a counter skips an id)."""
    secs = access.failover_retry_secs
    if secs <= 0:
        return Retry(NoBackoff(), 0)
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), int(secs) + 5,
                 supported_errors=(redis.ConnectionError, redis.TimeoutError))


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary that asks the Sentinels where it is on every reconnect.

    redis-py's own reconnects a connection that a command is retrying on (``send_packed_command``
    → ``connect_check_health``) to the address it last had, without asking the Sentinels: after a
    failover that is the demoted primary, which takes writes that its resync then discards while it
    still believes it is primary, and answers READONLY once it rejoins as a replica."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            # A primary demoted while a client blocks on it (the broker's BRPOP; a Sentinel failover
            # or an operator's REPLICAOF) answers the blocked command "UNBLOCKED ... (master ->
            # replica?)": the READONLY case redis-py turns into a reconnect, for a blocking read.
            # As a ResponseError it would stop a Celery worker ("Unrecoverable error").
            if not (self.connection_pool.is_master and str(exc).startswith("UNBLOCKED")):
                raise
            self.disconnect()
            raise redis.ConnectionError(f"the primary was demoted while a command blocked on it: {exc}") from exc


class PrimarySSLConnection(PrimaryConnection, SentinelManagedSSLConnection):
    """The same over TLS."""


def make_client(url: str, access: RedisAccess, *, decode_responses: bool = True, socket_timeout: float = 10,
                socket_connect_timeout: float = 5, health_check_interval: int = 25,
                retry: Retry | None = None) -> redis.Redis:
    """A client of the target ``url``: a plain URL as redis-py reads it, a Sentinel URL through a
    pool that asks the Sentinels for the primary on every new connection (and drops connections
    to a primary that was demoted)."""
    options: dict[str, Any] = dict(decode_responses=decode_responses, socket_timeout=socket_timeout,
                                   socket_connect_timeout=socket_connect_timeout,
                                   health_check_interval=health_check_interval,
                                   **credentials(access), **tls_options(access))
    target = parse_sentinel_url(url)
    if target is None:
        if retry is not None:
            options["retry"] = retry
        # A plain URL's scheme picks the connection class: TLS is rediss://, and unix:// has none.
        if options.pop("ssl", False) and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        if url.startswith("unix://"):
            options = {k: v for k, v in options.items() if not k.startswith("ssl")}
        return redis.Redis.from_url(url, **options)
    options["connection_class"] = PrimarySSLConnection if options.pop("ssl", False) else PrimaryConnection
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options(access), db=target.db,
                        retry=retry if retry is not None else failover_retry(access), **options)
    return sentinel.master_for(target.master_name)


def sentinel_options(access: RedisAccess) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: short timeouts (a dead one must not stall the
    discovery of the primary), their own AUTH and TLS."""
    return {"socket_timeout": SENTINEL_TIMEOUT_SECS, "socket_connect_timeout": SENTINEL_TIMEOUT_SECS,
            **sentinel_credentials(access), **tls_options(access)}


def celery_redis_settings(url: str, access: RedisAccess) -> dict[str, Any]:
    """Celery's broker and result backend settings for the target ``url``.

    A Sentinel target becomes kombu's ``sentinel://host:port;sentinel://…`` broker and Celery's
    Sentinel result backend, both with ``master_name``. Credentials are read from the environment
    here and percent-encoded into the URLs, as kombu and Celery take them (both mask passwords when
    they print a URL)."""
    creds = credentials(access)
    userinfo = ""
    if creds:
        userinfo = f"{quote(creds.get('username', ''), safe='')}:{quote(creds.get('password', ''), safe='')}@"
    tls = tls_options(access)
    ssl_conf = {k: v for k, v in tls.items() if k != "ssl"} or None
    target = parse_sentinel_url(url)
    if target is None:
        plain = url.replace("://", f"://{userinfo}", 1) if userinfo and "@" not in url else url
        return {"broker_url": plain, "result_backend": plain, "broker_use_ssl": ssl_conf,
                "redis_backend_use_ssl": ssl_conf}
    joined = ";".join(f"sentinel://{userinfo}{host}:{port}/{target.db}" for host, port in target.sentinels)
    sentinel_part = {"master_name": target.master_name, "sentinel_kwargs": sentinel_options(access)}
    return {"broker_url": joined, "result_backend": joined, "broker_use_ssl": ssl_conf,
            "redis_backend_use_ssl": ssl_conf, "sentinel": sentinel_part}


def _secret_hint(access: RedisAccess, sentinels: bool = False) -> str:
    names = ([access.sentinel_username_env, access.sentinel_password_env] if sentinels
             else [access.username_env, access.password_env])
    shown = [f"${n}" for n in names if n]
    return f"check {' and '.join(shown)}" if shown else "no credentials configured ([redis] username_env, password_env)"


def _ask_sentinels(target: SentinelTarget, access: RedisAccess) -> tuple[str, int]:
    """The primary's address from the first Sentinel that knows it; one line naming what failed."""
    failures: list[str] = []
    known_nowhere: list[str] = []
    for host, port in target.sentinels:
        node = redis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), decode_responses=True,
                           **sentinel_options(access))
        try:
            found: Any = node.sentinel_get_master_addr_by_name(target.master_name)
        except redis.AuthenticationError as exc:
            failures.append(f"{host}:{port} refused AUTH ({exc}; {_secret_hint(access, sentinels=True)})")
            continue
        except (redis.RedisError, OSError) as exc:
            failures.append(str(exc) if f"{host}:{port}" in str(exc) else f"{host}:{port} {exc}")
            continue
        finally:
            node.close()
        if found:
            return str(found[0]), int(found[1])
        known_nowhere.append(f"{host}:{port}")
    if known_nowhere:
        raise RedisUnavailable(f"no primary named {target.master_name!r} is known to the sentinels at "
                               f"{', '.join(known_nowhere)} (check [redis] master_name)")
    raise RedisUnavailable(f"no sentinel answered for {target.where()}: {'; '.join(failures)}")


def probe(url: str, access: RedisAccess, timeout: float = 2.0) -> None:
    """Connect once, no retries, and PING; raises :class:`RedisUnavailable` with one line naming
    what failed (no sentinel answers, no such primary, AUTH refused, nothing listening)."""
    target = parse_sentinel_url(url)
    where = "redis at " + url if target is None else target.where()
    if target is not None:
        host, port = _ask_sentinels(target, access)
        where = f"primary {target.master_name!r} at {host}:{port}"
        options: dict[str, Any] = {**credentials(access), **tls_options(access)}
        client = redis.Redis(host=host, port=port, db=target.db, socket_timeout=timeout,
                             socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), **options)
    else:
        client = make_client(url, access, socket_timeout=timeout, socket_connect_timeout=timeout,
                             retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"{where} refused AUTH: {exc} ({_secret_hint(access)})") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
            raise RedisUnavailable(f"{where} refused the command: {exc} ({_secret_hint(access)})") from None
        raise RedisUnavailable(f"{where}: {exc}") from None
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(f"cannot reach {where}: {exc}") from None
    finally:
        client.close()
