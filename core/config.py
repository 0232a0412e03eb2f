"""Typed, strictly validated configuration loaded from one TOML file.

Pure module (no Celery import), so venues-free tools such as the dashboard can read it. The
structures and their fields live in :mod:`core.config_schema`, how a table is decoded into
one in :mod:`core.config_decode`; this module loads the file and checks what spans tables
(group roles against accounts, one group per account, schedules against groups).
Every validation failure is a :class:`ConfigError` that renders as one line naming the file,
the key and what is expected; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from core import policies
from core.config_decode import DECIMAL_LIMIT, ConfigError, decode_table, field_info, parse_decimal
from core.config_schema import (
    AccountConfig,
    DashboardConfig,
    Direction,
    GroupConfig,
    HedgeParams,
    LighterTier,
    RateBudgetConfig,
    Role,
    ScheduleConfig,
    TelegramConfig,
    TelemetryConfig,
    Venue,
)
from core.redis_target import SENTINEL_SCHEME, RedisAccess, SentinelTarget, parse_address, parse_sentinel_url
from core.watchman_config import WatchmanConfig, check_watchman, parse_watchman

__all__ = [
    "CONFIG_ENV", "DECIMAL_LIMIT", "DEFAULT_CONFIG_PATH", "AccountConfig", "ConfigError", "DashboardConfig",
    "Direction", "GroupConfig", "HedgeParams", "LighterTier", "RateBudgetConfig", "Role", "ScheduleConfig",
    "Settings", "TelegramConfig", "TelemetryConfig", "Venue", "WatchmanConfig", "config_path", "load_settings", "parse_decimal",
    "parse_settings",
]

DEFAULT_CONFIG_PATH = "xtb.toml"
CONFIG_ENV = "XTB_CONFIG"


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole configuration file, validated."""

    path: Annotated[Path | None, msgspec.Meta(description="the file it was read from")]
    redis_url: Annotated[str | None, msgspec.Meta(
        description="[redis] url, or the redis+sentinel:// URL of [redis] sentinels and master_name; $REDIS_URL wins")]
    redis_access: Annotated[RedisAccess, msgspec.Meta(
        description="[redis] credentials (environment variable names), TLS and replica waits")] = RedisAccess()
    visibility_timeout_secs: Annotated[int, msgspec.Meta(description="[redis] visibility_timeout_secs")] = 3600
    step_grace_secs: Annotated[float, msgspec.Meta(description="[watchdog] step_grace_secs")] = (
        policies.DEFAULT_STEP_GRACE_SECS)
    accounts: dict[str, AccountConfig]
    groups: dict[str, GroupConfig]
    schedules: dict[str, ScheduleConfig] = {}
    telegram: TelegramConfig = TelegramConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    dashboard: DashboardConfig = DashboardConfig()
    rate_budget: RateBudgetConfig = RateBudgetConfig()
    watchman: Annotated[WatchmanConfig | None, msgspec.Meta(description="[watchman]; None when absent")] = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def account(self, name: str) -> AccountConfig:
        try:
            return self.accounts[name]
        except KeyError:
            raise ConfigError("account", f"unknown account {name!r}; configured: {', '.join(self.accounts) or 'none'}") from None

    def group(self, name: str) -> GroupConfig:
        try:
            return self.groups[name]
        except KeyError:
            raise ConfigError("group", f"unknown group {name!r}; configured: {', '.join(self.groups) or 'none'}") from None

    def role_of(self, account: str) -> tuple[str, Role] | None:
        """The (group, role) an account plays (at most one: the loader refuses an account in two
        groups), for heartbeats and the dashboard."""
        for group in self.groups.values():
            for role in Role:
                if group.account_for(role) == account:
                    return group.name, role
        return None


class _Redis(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[str | None, msgspec.Meta(description="a redis, rediss, unix or redis+sentinel URL")] = None
    sentinels: Annotated[list[str], msgspec.Meta(
        description="host:port of each Sentinel; the clients follow the primary they name (instead of url)")] = []
    master_name: Annotated[str | None, msgspec.Meta(description="the primary's name in the Sentinels' config")] = None
    db: Annotated[int, msgspec.Meta(ge=0, le=15, description="database number with sentinels")] = 0
    # Production keeps the hour: below the task time limit a slow task is
    # delivered twice. Short values exist to test exactly that (the fencing tokens refuse the stale copy).
    visibility_timeout_secs: Annotated[int, msgspec.Meta(ge=5, le=86400), msgspec.Meta(
        description="seconds before the broker redelivers an unacknowledged message")] = 3600


class _Watchdog(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Above the longest a healthy step takes (an order's confirmation, a hedge's fill wait), or the
    # watchdog resolves cycles that are only slow. Short values exist for the crash tests.
    step_grace_secs: Annotated[float, msgspec.Meta(ge=5, le=3600), msgspec.Meta(
        description="seconds a cycle step may make no progress before the watchdog resolves it from venue truth")] = (
        policies.DEFAULT_STEP_GRACE_SECS)


# The file's top-level tables, each decoded on its own so that errors name the table's keys
# (msgspec's paths show a dict key as [...]).
class _Document(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    redis: dict[str, Any] = {}
    watchdog: dict[str, Any] = {}
    accounts: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    schedules: dict[str, Any] = {}
    telegram: dict[str, Any] = {}
    telemetry: dict[str, Any] = {}
    dashboard: dict[str, Any] = {}
    rate_budget: dict[str, Any] = {}
    watchman: dict[str, Any] = {}


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _check_name(key: str, name: str) -> None:
    if not name or not set(name) <= _NAME_CHARS or len(name) > 64:
        raise ConfigError(key, "expected a name of letters, digits, '_' or '-' (at most 64 characters)")
    if name == policies.ORCHESTRATOR_QUEUE:
        raise ConfigError(key, "'orchestrator' is reserved for the orchestrator queue")


def _named(cls: type, prefix: str, name: str, table: Any) -> Any:
    # The table's key becomes the structure's name; a `name` key inside would shadow it.
    if not isinstance(table, Mapping):
        return table
    if "name" in table:
        allowed = ", ".join(sorted(set(field_info(cls)) - {"name"}))
        raise ConfigError(f"{prefix}.name", f"unknown key; expected one of {allowed}")
    return {**table, "name": name}


def _parse_account(name: str, table: Any, base_dir: Path) -> AccountConfig:
    prefix = f"accounts.{name}"
    _check_name(prefix, name)
    account = decode_table(AccountConfig, _named(AccountConfig, prefix, name, table), prefix, base_dir)
    for key, (_, _, extra) in field_info(AccountConfig).items():
        if key in table and extra.get("venue", account.venue.value) != account.venue.value:
            raise ConfigError(f"{prefix}.{key}", f"not used by a {account.venue.value} account")
    return account


_GROUP_KEYS = set(field_info(GroupConfig)) - {"name", "params"}


def _parse_group(name: str, table: Any, accounts: dict[str, AccountConfig]) -> GroupConfig:
    prefix = f"groups.{name}"
    _check_name(prefix, name)
    if not isinstance(table, Mapping):
        return decode_table(GroupConfig, table, prefix)
    params = HedgeParams.from_mapping({k: v for k, v in table.items() if k not in _GROUP_KEYS}, prefix=f"{prefix}.")
    fixed = {k: v for k, v in table.items() if k in _GROUP_KEYS}
    group = decode_table(GroupConfig, {**fixed, "name": name, "params": params}, prefix)
    for role in Role:
        key, account = f"{prefix}.{role.value}", group.account_for(role)
        if account not in accounts:
            raise ConfigError(key, f"unknown account {account!r}; configured: {', '.join(accounts) or 'none'}")
        if accounts[account].venue is not role.venue:
            actual = accounts[account].venue.value
            raise ConfigError(key, f"account {account!r} is on {actual}; expected a {role.venue.value} account")
    if group.lighter1 == group.lighter2:
        raise ConfigError(f"{prefix}.lighter2", "must be a different account from lighter1")
    return group


def _parse_schedule(name: str, table: Any, groups: dict[str, GroupConfig]) -> ScheduleConfig:
    prefix = f"schedules.{name}"
    schedule = decode_table(ScheduleConfig, _named(ScheduleConfig, prefix, name, table), prefix)
    if schedule.group not in groups:
        raise ConfigError(f"{prefix}.group", f"unknown group {schedule.group!r}; configured: {', '.join(groups) or 'none'}")
    return schedule


def _check_one_group_per_account(groups: dict[str, GroupConfig]) -> None:
    # Two groups on one account would run two cycles on one venue position: each would read the
    # other's legs as its own, rebalance against them and unwind them at its exit.
    seen: dict[str, tuple[str, Role]] = {}
    for group in groups.values():
        for role in Role:
            account = group.account_for(role)
            if account in seen:
                other_group, other_role = seen[account]
                raise ConfigError(
                    f"groups.{group.name}.{role.value}",
                    f"account {account!r} is already {other_role.value} of group {other_group!r}; "
                    "an account belongs to one group",
                )
            seen[account] = (group.name, role)


_ACCESS_KEYS = frozenset(RedisAccess.__struct_fields__)


def _redis_url(table: _Redis) -> str | None:
    url = table.url
    if table.sentinels or table.master_name is not None:
        return _sentinel_url(table)
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
        raise ConfigError("redis.url", f"expected a redis/rediss/unix/{SENTINEL_SCHEME} URL, got {url!r}")
    if url is not None and url.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            raise ConfigError("redis.url", str(exc)) from None
    return url.rstrip("/") if url is not None else None


def _sentinel_url(table: _Redis) -> str:
    if table.url is not None:
        raise ConfigError("redis.sentinels", "set either url or sentinels and master_name, not both")
    if not table.sentinels:
        raise ConfigError("redis.sentinels", 'expected a list of "host:port" with master_name')
    if not table.master_name:
        raise ConfigError("redis.master_name", "expected the primary's name as the Sentinels know it (with sentinels)")
    try:
        addresses = tuple(parse_address(entry) for entry in table.sentinels)
    except ValueError as exc:
        raise ConfigError("redis.sentinels", str(exc)) from None
    return SentinelTarget(addresses, table.master_name, table.db).url()


def _redis_access(table: dict[str, Any], base_dir: Path) -> RedisAccess:
    known = _ACCESS_KEYS | set(_Redis.__struct_fields__)
    for key in table:
        if key not in known:
            raise ConfigError(f"redis.{key}", f"unknown key; expected one of {', '.join(sorted(known))}")
    access = decode_table(RedisAccess, {k: v for k, v in table.items() if k in _ACCESS_KEYS}, "redis", base_dir)
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(access, key)
        if path is not None and not path.is_file():
            raise ConfigError(f"redis.{key}", f"file not found: {path}")
    if (access.tls_cert_file is None) != (access.tls_key_file is None):
        raise ConfigError("redis.tls_cert_file", "expected tls_cert_file and tls_key_file together")
    return access


def parse_settings(doc: Mapping[str, Any], path: Path | None = None) -> Settings:
    """Validate a parsed TOML document; raises :class:`ConfigError`."""
    base_dir = path.parent if path else Path.cwd()
    top = decode_table(_Document, doc)
    accounts = {name: _parse_account(name, table, base_dir) for name, table in top.accounts.items()}
    groups = {name: _parse_group(name, table, accounts) for name, table in top.groups.items()}
    _check_one_group_per_account(groups)
    schedules = {name: _parse_schedule(name, table, groups) for name, table in top.schedules.items()}
    redis_access = _redis_access(top.redis, base_dir)
    redis_table = decode_table(_Redis, {k: v for k, v in top.redis.items() if k not in _ACCESS_KEYS}, "redis")
    watchman = parse_watchman(top.watchman, base_dir)
    if watchman is not None:
        check_watchman(watchman, accounts, groups)
    return Settings(
        path=path, redis_url=_redis_url(redis_table), visibility_timeout_secs=redis_table.visibility_timeout_secs,
        redis_access=redis_access,
        step_grace_secs=decode_table(_Watchdog, top.watchdog, "watchdog").step_grace_secs,
        accounts=accounts, groups=groups, schedules=schedules,
        telegram=decode_table(TelegramConfig, top.telegram, "telegram", base_dir),
        telemetry=decode_table(TelemetryConfig, top.telemetry, "telemetry", base_dir),
        dashboard=decode_table(DashboardConfig, top.dashboard, "dashboard", base_dir),
        rate_budget=decode_table(RateBudgetConfig, top.rate_budget, "rate_budget", base_dir),
        watchman=watchman,
    )


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_settings(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate the config file (``--config``, ``$XTB_CONFIG`` or ``./xtb.toml``)."""
    path = config_path(explicit)
    shown = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("", f"config file not found (pass --config FILE or set {CONFIG_ENV})", shown) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file: {exc.strerror}", shown) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", "expected a UTF-8 TOML file", shown) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML: {exc}", shown) from None
    try:
        return parse_settings(doc, path.resolve())
    except ConfigError as exc:
        raise exc.with_path(shown) from None

