"""Typed, strictly validated configuration loaded from one TOML file.

Pure module (no Celery import), so venues-free tools such as the dashboard can read it.
Every validation failure is a :class:`ConfigError` that renders as one line naming the file,
the key and what is expected; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = "xtb.toml"
CONFIG_ENV = "XTB_CONFIG"


class ConfigError(Exception):
    """A configuration problem: ``<file>: <key>: <what is expected>``."""

    def __init__(self, key: str, message: str, path: str | None = None) -> None:
        # Keys and values come from the user's file; escape them so the error stays one line.
        self.key = _one_line(key)
        self.message = _one_line(message)
        self.path = path
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.path}: " if self.path else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"

    def with_path(self, path: str) -> ConfigError:
        return ConfigError(self.key, self.message, path)


def _one_line(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class Venue(str, Enum):
    """The trading venue an account lives on."""

    #: Backpack Exchange perpetuals (REST + WebSocket, ED25519 signatures).
    BACKPACK = "backpack"
    #: Lighter (zkLighter) perpetuals through the official lighter-sdk.
    LIGHTER = "lighter"


class Direction(str, Enum):
    """Which way the Backpack leg enters; the Lighter legs follow (original §1.2)."""

    #: Backpack buys, Lighter1 sells, Lighter2 buys.
    LONG_BACKPACK = "long_backpack"
    #: Backpack sells, Lighter1 buys, Lighter2 sells.
    SHORT_BACKPACK = "short_backpack"


class Role(str, Enum):
    """The part an account plays in a hedge group."""

    #: The Backpack account that enters first and absorbs the imbalance.
    BP = "backpack"
    #: The Lighter account that hedges the Backpack entry.
    L1 = "lighter1"
    #: The Lighter account that enters after the random wait.
    L2 = "lighter2"

    @property
    def short(self) -> str:
        return {"backpack": "BP", "lighter1": "L1", "lighter2": "L2"}[self.value]

    @property
    def venue(self) -> Venue:
        return Venue.BACKPACK if self is Role.BP else Venue.LIGHTER


# --------------------------------------------------------------------------------------------
# Field checking helpers. Each takes the dotted key for the error message.


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_str(key: str, value: Any, *, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {_type_name(value)} {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_type_name(value)} {value!r}")
    return value


def _check_int(key: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {_type_name(value)} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(key, f"expected an integer in [{lo}, {hi}], got {value}")
    return value


def _check_float(key: str, value: Any, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {_type_name(value)} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    if lo is not None and number < lo:
        raise ConfigError(key, f"expected a number >= {lo}, got {value!r}")
    if hi is not None and number > hi:
        raise ConfigError(key, f"expected a number <= {hi}, got {value!r}")
    return number


#: Largest magnitude a configured amount may have (sizes, tolerances, collateral).
DECIMAL_LIMIT = Decimal(10) ** 12
# ASCII digits only: Decimal() and float() also read other scripts' digits ("١" is 1).
_DECIMAL_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def parse_decimal(text: str) -> Decimal | None:
    """``text`` as a Decimal when it is a plain ASCII decimal number below DECIMAL_LIMIT, else None."""
    if not _DECIMAL_TEXT.fullmatch(text):
        return None
    number = Decimal(text)
    return number if abs(number) < DECIMAL_LIMIT else None


def _check_decimal(key: str, value: Any, *, lo: Decimal | None = None, positive: bool = False) -> Decimal:
    # Decimals may be written as strings ("0.01") so they survive TOML's float parsing exactly.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(key, f"expected a decimal number or string, got {_type_name(value)} {value!r}")
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
        raise ConfigError(key, f"expected a decimal number in ASCII digits, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(key, f"expected a decimal number, got {value!r}") from None
    if not number.is_finite():
        raise ConfigError(key, f"expected a finite decimal number, got {value!r}")
    if abs(number) >= DECIMAL_LIMIT:
        # 1e999 is a finite Decimal, but no venue amount is near it and quantizing it overflows.
        raise ConfigError(key, f"expected a decimal number below {DECIMAL_LIMIT:,}, got {value!r}")
    if positive and number <= 0:
        raise ConfigError(key, f"expected a decimal number > 0, got {value!r}")
    if lo is not None and number < lo:
        raise ConfigError(key, f"expected a decimal number >= {lo}, got {value!r}")
    return number


def _check_table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, got {_type_name(value)} {value!r}")
    return value


def _reject_unknown(prefix: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    for name in table:
        if name not in allowed:
            where = f"{prefix}.{name}" if prefix else name
            raise ConfigError(where, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _check_url(key: str, value: Any, schemes: tuple[str, ...]) -> str:
    url = _check_str(key, value)
    if not url.startswith(tuple(f"{s}://" for s in schemes)):
        raise ConfigError(key, f"expected a {'/'.join(schemes)} URL, got {url!r}")
    # The Lighter SDK requests //api/v1/... with a trailing slash (lighter-sdk.md §5).
    return url.rstrip("/")


# --------------------------------------------------------------------------------------------
# Hedge parameters


@dataclass(frozen=True)
class HedgeParams:
    """Parameters of one hedge group's cycle (original-system.md §1.1; defaults kept).

    Fields
    ------
    leverage : float, default 50.0
        Lighter sizing leverage: size = collateral × collateral_buffer × leverage / price.
    direction : Direction, default ``long_backpack``
        Backpack entry side; Lighter1 takes the opposite side, Lighter2 the same side.
    size : Decimal or None, default None
        Explicit base size for the Backpack entry; None means plan from Lighter1 collateral.
    collateral_buffer : Decimal, default 0.96
        Fraction of Lighter1 collateral used for sizing.
    min_collateral : Decimal, default 0
        Lighter collateral must exceed this to start a cycle.
    timeout_secs : float, default 86400
        Monitoring deadline; reaching it is an emergency exit with reason ``timeout``.
    poll_interval_secs : float, default 5.0
        Interval of the monitor's self-rescheduling checks.
    liquidation_tolerance : Decimal, default 0.0001
        Backpack drift from ``-(l1 + l2)`` beyond which the monitor rebalances.
    zero_confirmations : int, default 2
        Consecutive fresh zero readings of a Lighter leg before it counts as liquidated.
    reverse_on_timeout : bool, default True
        After a cycle that ended by ``timeout``, the next cycle flips the direction.
    max_cycles : int, default 1
        Cycles run back to back by one trigger (each after the previous one ends flat).
    backpack_entry_max_attempts / backpack_retry_delay_secs : int / float, default 3 / 0.5
        Backpack entry and flatten attempts and the delay between them.
    lighter_max_slippage : float, default 0.001
        Worst acceptable price distance from the top of book for Lighter market orders.
    lighter_hedge_max_attempts / lighter_retry_delay_secs : int / float, default 3 / 0.5
        Lighter order attempts (a new client id each) and the delay between them.
    wait_min_secs / wait_max_secs : float, default 2.0 / 5.0
        Uniform random wait before the Lighter2 entry, drawn at plan time.
    confirmation_timeout_secs / confirmation_poll_secs : float, default 2.0 / 0.2
        Position confirmation deadline and poll interval.
    confirmation_min_fraction : float, default 0.2
        A leg is confirmed when its position moved by more than this fraction of the request.
    rebalance_max_attempts / rebalance_retry_delay_secs : int / float, default 3 / 0.5
        Backpack rebalance attempts and the delay between them.
    test_mode : bool, default False
        Size every leg at the largest venue minimum instead of planning from collateral.
    """

    leverage: float = 50.0
    direction: Direction = Direction.LONG_BACKPACK
    size: Decimal | None = None
    collateral_buffer: Decimal = Decimal("0.96")
    min_collateral: Decimal = Decimal("0")
    timeout_secs: float = 86400.0
    poll_interval_secs: float = 5.0
    liquidation_tolerance: Decimal = Decimal("0.0001")
    zero_confirmations: int = 2
    reverse_on_timeout: bool = True
    max_cycles: int = 1
    backpack_entry_max_attempts: int = 3
    backpack_retry_delay_secs: float = 0.5
    lighter_max_slippage: float = 0.001
    lighter_hedge_max_attempts: int = 3
    lighter_retry_delay_secs: float = 0.5
    wait_min_secs: float = 2.0
    wait_max_secs: float = 5.0
    confirmation_timeout_secs: float = 2.0
    confirmation_poll_secs: float = 0.2
    confirmation_min_fraction: float = 0.2
    rebalance_max_attempts: int = 3
    rebalance_retry_delay_secs: float = 0.5
    test_mode: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], prefix: str = "", base: HedgeParams | None = None) -> HedgeParams:
        """Validate ``values`` (a config table or task overrides) on top of ``base``."""
        start = base or cls()
        allowed = {f.name for f in dataclasses.fields(cls)}
        _reject_unknown(prefix.rstrip("."), values, allowed)
        checked: dict[str, Any] = {}
        for name, raw in values.items():
            checked[name] = _check_hedge_field(f"{prefix}{name}", name, raw)
        params = dataclasses.replace(start, **checked)
        if params.wait_min_secs > params.wait_max_secs:
            raise ConfigError(
                f"{prefix}wait_min_secs",
                f"expected wait_min_secs <= wait_max_secs, got {params.wait_min_secs} > {params.wait_max_secs}",
            )
        return params

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Decimal):
                value = str(value)
            out[f.name] = value
        return out


_HEDGE_INT_BOUNDS = {
    "zero_confirmations": (1, 100),
    "max_cycles": (1, 10_000),
    "backpack_entry_max_attempts": (1, 20),
    "lighter_hedge_max_attempts": (1, 20),
    "rebalance_max_attempts": (1, 20),
}
# Upper bounds keep every countdown far below the broker visibility timeout (celery-redis.md §1.2).
_HEDGE_FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "leverage": (1.0, 200.0),
    "timeout_secs": (1.0, 30 * 86400.0),
    "poll_interval_secs": (0.1, 600.0),
    "lighter_max_slippage": (0.0, 0.5),
    "backpack_retry_delay_secs": (0.0, 60.0),
    "lighter_retry_delay_secs": (0.0, 60.0),
    "rebalance_retry_delay_secs": (0.0, 60.0),
    "wait_min_secs": (0.0, 600.0),
    "wait_max_secs": (0.0, 600.0),
    "confirmation_timeout_secs": (0.1, 600.0),
    "confirmation_poll_secs": (0.05, 60.0),
    "confirmation_min_fraction": (0.01, 1.0),
}


def _check_hedge_field(key: str, name: str, raw: Any) -> Any:
    if name == "direction":
        return Direction(_check_str(key, raw, choices=tuple(d.value for d in Direction)))
    if name == "size":
        return None if raw is None else _check_decimal(key, raw, positive=True)
    if name in ("collateral_buffer", "liquidation_tolerance"):
        return _check_decimal(key, raw, positive=True)
    if name == "min_collateral":
        return _check_decimal(key, raw, lo=Decimal(0))
    if name in ("reverse_on_timeout", "test_mode"):
        return _check_bool(key, raw)
    if name in _HEDGE_INT_BOUNDS:
        lo, hi = _HEDGE_INT_BOUNDS[name]
        return _check_int(key, raw, lo=lo, hi=hi)
    lo_f, hi_f = _HEDGE_FLOAT_BOUNDS[name]
    return _check_float(key, raw, lo=lo_f, hi=hi_f)


# --------------------------------------------------------------------------------------------
# Accounts, groups, services


@dataclass(frozen=True)
class AccountConfig:
    """One venue account; its name is also its Celery queue name.

    Fields
    ------
    name : str
        Account and queue name (``[accounts.<name>]``).
    venue : Venue
        ``backpack`` or ``lighter``.
    base_url : str
        REST base URL, no trailing slash.
    ws_url : str or None
        WebSocket URL; for Lighter defaults to ``<base_url as ws>/stream``.
    keys_file : Path or None
        Key file in the original format (Backpack: ``api key:``/``api secret:``; Lighter:
        ``api key index:``/``private key:``), resolved relative to the config file.
    create_keys_if_missing : bool, default False
        Generate a fresh key pair into ``keys_file`` on first use (demo and paper trading only).
    api_key_env / api_secret_env / private_key_env : str or None
        Environment variables that hold the credentials instead of a key file.
    account_index : int or None
        Lighter account index (required for Lighter).
    api_key_index : int or None
        Lighter API key index 0..254; may come from the key file.
    window_ms : int, default 5000
        Backpack signature validity window (max 60000).
    """

    name: str
    venue: Venue
    base_url: str
    ws_url: str | None = None
    keys_file: Path | None = None
    create_keys_if_missing: bool = False
    api_key_env: str | None = None
    api_secret_env: str | None = None
    private_key_env: str | None = None
    account_index: int | None = None
    api_key_index: int | None = None
    window_ms: int = 5000

    @property
    def queue(self) -> str:
        return self.name


@dataclass(frozen=True)
class GroupConfig:
    """One hedge triad: a Backpack account and two Lighter accounts.

    Fields
    ------
    name : str
        Group name (``[groups.<name>]``).
    backpack / lighter1 / lighter2 : str
        Account names for the three roles.
    backpack_symbol : str, default ``ETH_USDC_PERP``
    lighter_symbol : str, default ``ETH``
    params : HedgeParams
        Every other key of the table (see :class:`HedgeParams`).
    """

    name: str
    backpack: str
    lighter1: str
    lighter2: str
    backpack_symbol: str = "ETH_USDC_PERP"
    lighter_symbol: str = "ETH"
    params: HedgeParams = field(default_factory=HedgeParams)

    def account_for(self, role: Role) -> str:
        return {Role.BP: self.backpack, Role.L1: self.lighter1, Role.L2: self.lighter2}[role]

    def symbol_for(self, role: Role) -> str:
        return self.backpack_symbol if role is Role.BP else self.lighter_symbol


@dataclass(frozen=True)
class ScheduleConfig:
    """A beat schedule that starts cycles of one group.

    Fields
    ------
    name : str
    group : str
        Group whose cycle is started.
    every_secs : float
        Interval between triggers.
    expires_secs : float or None
        Drop a trigger not started within this many seconds (default: min(every_secs, 300)).
    """

    name: str
    group: str
    every_secs: float
    expires_secs: float | None = None


@dataclass(frozen=True)
class TelegramConfig:
    """Where alerts go.

    Fields
    ------
    enabled : bool, default True
    api_url : str, default ``https://api.telegram.org``
    keys_file : Path or None
        ``tg_key.txt`` format (``bot_token: ...`` / ``chat_id: ...``).
    bot_token_env / chat_id_env : str, default ``XTB_TELEGRAM_BOT_TOKEN`` / ``XTB_TELEGRAM_CHAT_ID``
    """

    enabled: bool = True
    api_url: str = "https://api.telegram.org"
    keys_file: Path | None = None
    bot_token_env: str = "XTB_TELEGRAM_BOT_TOKEN"
    chat_id_env: str = "XTB_TELEGRAM_CHAT_ID"


@dataclass(frozen=True)
class TelemetryConfig:
    """Heartbeats and the optional external ingest of the original dashboard.

    Fields
    ------
    interval_secs : float, default 2.0
    ingest_url : str or None
        Base URL of an original ``server.js``; each heartbeat is also POSTed to ``/ingest/<bot>``.
    token_env : str, default ``TELEMETRY_TOKEN``
        Environment variable holding the ``x-auth-token`` for the external ingest.
    """

    interval_secs: float = 2.0
    ingest_url: str | None = None
    token_env: str = "TELEMETRY_TOKEN"


@dataclass(frozen=True)
class DashboardConfig:
    """The telemetry dashboard (``xtb dashboard``).

    Fields
    ------
    host : str, default ``127.0.0.1``
    port : int, default 10123
    token_env : str, default ``XTB_DASHBOARD_TOKEN``
    """

    host: str = "127.0.0.1"
    port: int = 10123
    token_env: str = "XTB_DASHBOARD_TOKEN"


@dataclass(frozen=True)
class Settings:
    """The whole configuration file."""

    path: Path | None
    redis_url: str | None
    accounts: dict[str, AccountConfig]
    groups: dict[str, GroupConfig]
    schedules: dict[str, ScheduleConfig] = field(default_factory=dict)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

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
        """The first (group, role) an account plays, for heartbeats and the dashboard."""
        for group in self.groups.values():
            for role in Role:
                if group.account_for(role) == account:
                    return group.name, role
        return None


_ACCOUNT_KEYS = {
    "venue", "base_url", "ws_url", "keys_file", "create_keys_if_missing", "api_key_env",
    "api_secret_env", "private_key_env", "account_index", "api_key_index", "window_ms",
}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _check_name(key: str, name: str) -> str:
    if not name or not set(name) <= _NAME_CHARS or len(name) > 64:
        raise ConfigError(key, "expected a name of letters, digits, '_' or '-' (at most 64 characters)")
    if name == "orchestrator":
        raise ConfigError(key, "'orchestrator' is reserved for the orchestrator queue")
    return name


def _resolve_file(key: str, raw: Any, base_dir: Path, *, must_exist: bool) -> Path:
    path = Path(_check_str(key, raw)).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if must_exist and not path.is_file():
        raise ConfigError(key, f"file not found: {path}")
    return path


def _parse_account(name: str, table: Mapping[str, Any], base_dir: Path) -> AccountConfig:
    prefix = f"accounts.{name}"
    _check_name(prefix, name)
    _reject_unknown(prefix, table, _ACCOUNT_KEYS)
    if "venue" not in table:
        raise ConfigError(f"{prefix}.venue", "missing; expected 'backpack' or 'lighter'")
    venue = Venue(_check_str(f"{prefix}.venue", table["venue"], choices=tuple(v.value for v in Venue)))
    if "base_url" not in table:
        raise ConfigError(f"{prefix}.base_url", "missing; expected the venue's REST base URL")
    base_url = _check_url(f"{prefix}.base_url", table["base_url"], ("http", "https"))
    ws_url = _check_url(f"{prefix}.ws_url", table["ws_url"], ("ws", "wss")) if "ws_url" in table else None
    create = _check_bool(f"{prefix}.create_keys_if_missing", table.get("create_keys_if_missing", False))
    keys_file = None
    if "keys_file" in table:
        keys_file = _resolve_file(f"{prefix}.keys_file", table["keys_file"], base_dir, must_exist=not create)
    envs = {k: _check_str(f"{prefix}.{k}", table[k]) for k in ("api_key_env", "api_secret_env", "private_key_env") if k in table}
    wrong_env = {"backpack": "private_key_env", "lighter": "api_secret_env"}[venue.value]
    if wrong_env in envs:
        raise ConfigError(f"{prefix}.{wrong_env}", f"not used by a {venue.value} account")
    if keys_file is None and not envs:
        needed = "api_key_env and api_secret_env" if venue is Venue.BACKPACK else "private_key_env"
        raise ConfigError(f"{prefix}.keys_file", f"missing; expected a key file or {needed}")
    account_index = api_key_index = None
    window_ms = 5000
    if venue is Venue.LIGHTER:
        if "account_index" not in table:
            raise ConfigError(f"{prefix}.account_index", "missing; expected the Lighter account index (an integer >= 0)")
        account_index = _check_int(f"{prefix}.account_index", table["account_index"], lo=0, hi=2**48 - 1)
        if "api_key_index" in table:
            api_key_index = _check_int(f"{prefix}.api_key_index", table["api_key_index"], lo=0, hi=254)
        if "window_ms" in table:
            raise ConfigError(f"{prefix}.window_ms", "not used by a lighter account")
        if ws_url is None:
            ws_url = base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/stream"
    else:
        for lighter_only in ("account_index", "api_key_index"):
            if lighter_only in table:
                raise ConfigError(f"{prefix}.{lighter_only}", "not used by a backpack account")
        if "window_ms" in table:
            window_ms = _check_int(f"{prefix}.window_ms", table["window_ms"], lo=1, hi=60_000)
    return AccountConfig(
        name=name, venue=venue, base_url=base_url, ws_url=ws_url, keys_file=keys_file,
        create_keys_if_missing=create, account_index=account_index, api_key_index=api_key_index,
        window_ms=window_ms, **envs,
    )


_GROUP_FIXED = {"backpack", "lighter1", "lighter2", "backpack_symbol", "lighter_symbol"}


def _parse_group(name: str, table: Mapping[str, Any], accounts: dict[str, AccountConfig]) -> GroupConfig:
    prefix = f"groups.{name}"
    _check_name(prefix, name)
    roles: dict[str, str] = {}
    for role in Role:
        key = f"{prefix}.{role.value}"
        if role.value not in table:
            raise ConfigError(key, f"missing; expected the name of a {role.venue.value} account")
        account = _check_str(key, table[role.value])
        if account not in accounts:
            raise ConfigError(key, f"unknown account {account!r}; configured: {', '.join(accounts) or 'none'}")
        if accounts[account].venue is not role.venue:
            actual = accounts[account].venue.value
            raise ConfigError(key, f"account {account!r} is on {actual}; expected a {role.venue.value} account")
        roles[role.value] = account
    if roles["lighter1"] == roles["lighter2"]:
        raise ConfigError(f"{prefix}.lighter2", "must be a different account from lighter1")
    symbols = {k: _check_str(f"{prefix}.{k}", table[k]) for k in ("backpack_symbol", "lighter_symbol") if k in table}
    params_table = {k: v for k, v in table.items() if k not in _GROUP_FIXED}
    params = HedgeParams.from_mapping(params_table, prefix=f"{prefix}.")
    return GroupConfig(name=name, params=params, **roles, **symbols)


def _parse_schedule(name: str, table: Mapping[str, Any], groups: dict[str, GroupConfig]) -> ScheduleConfig:
    prefix = f"schedules.{name}"
    _reject_unknown(prefix, table, {"group", "every_secs", "expires_secs"})
    if "group" not in table:
        raise ConfigError(f"{prefix}.group", "missing; expected a configured group name")
    group = _check_str(f"{prefix}.group", table["group"])
    if group not in groups:
        raise ConfigError(f"{prefix}.group", f"unknown group {group!r}; configured: {', '.join(groups) or 'none'}")
    if "every_secs" not in table:
        raise ConfigError(f"{prefix}.every_secs", "missing; expected the interval in seconds")
    every = _check_float(f"{prefix}.every_secs", table["every_secs"], lo=1.0)
    expires = _check_float(f"{prefix}.expires_secs", table["expires_secs"], lo=1.0) if "expires_secs" in table else None
    return ScheduleConfig(name=name, group=group, every_secs=every, expires_secs=expires)


def _check_roles_consistent(groups: dict[str, GroupConfig]) -> None:
    seen: dict[str, tuple[str, Role]] = {}
    for group in groups.values():
        for role in Role:
            account = group.account_for(role)
            if account in seen and seen[account][1] is not role:
                other_group, other_role = seen[account]
                raise ConfigError(
                    f"groups.{group.name}.{role.value}",
                    f"account {account!r} is already {other_role.value} of group {other_group!r}; "
                    "an account plays one role",
                )
            seen.setdefault(account, (group.name, role))


def _parse_services(doc: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "telegram" in doc:
        t = _check_table("telegram", doc["telegram"])
        _reject_unknown("telegram", t, {"enabled", "api_url", "keys_file", "bot_token_env", "chat_id_env"})
        out["telegram"] = TelegramConfig(
            enabled=_check_bool("telegram.enabled", t.get("enabled", True)),
            api_url=_check_url("telegram.api_url", t.get("api_url", TelegramConfig.api_url), ("http", "https")),
            keys_file=(_resolve_file("telegram.keys_file", t["keys_file"], base_dir, must_exist=False)
                       if "keys_file" in t else None),
            bot_token_env=_check_str("telegram.bot_token_env", t.get("bot_token_env", TelegramConfig.bot_token_env)),
            chat_id_env=_check_str("telegram.chat_id_env", t.get("chat_id_env", TelegramConfig.chat_id_env)),
        )
    if "telemetry" in doc:
        t = _check_table("telemetry", doc["telemetry"])
        _reject_unknown("telemetry", t, {"interval_secs", "ingest_url", "token_env"})
        out["telemetry"] = TelemetryConfig(
            interval_secs=_check_float("telemetry.interval_secs", t.get("interval_secs", 2.0), lo=0.2, hi=300.0),
            ingest_url=_check_url("telemetry.ingest_url", t["ingest_url"], ("http", "https")) if "ingest_url" in t else None,
            token_env=_check_str("telemetry.token_env", t.get("token_env", TelemetryConfig.token_env)),
        )
    if "dashboard" in doc:
        t = _check_table("dashboard", doc["dashboard"])
        _reject_unknown("dashboard", t, {"host", "port", "token_env"})
        out["dashboard"] = DashboardConfig(
            host=_check_str("dashboard.host", t.get("host", DashboardConfig.host)),
            port=_check_int("dashboard.port", t.get("port", DashboardConfig.port), lo=0, hi=65535),
            token_env=_check_str("dashboard.token_env", t.get("token_env", DashboardConfig.token_env)),
        )
    return out


_TOP_KEYS = {"redis", "accounts", "groups", "schedules", "telegram", "telemetry", "dashboard"}


def parse_settings(doc: Mapping[str, Any], path: Path | None = None) -> Settings:
    """Validate a parsed TOML document; raises :class:`ConfigError`."""
    base_dir = path.parent if path else Path.cwd()
    _reject_unknown("", doc, _TOP_KEYS)
    redis_url = None
    if "redis" in doc:
        redis_table = _check_table("redis", doc["redis"])
        _reject_unknown("redis", redis_table, {"url"})
        if "url" in redis_table:
            redis_url = _check_url("redis.url", redis_table["url"], ("redis", "rediss", "unix"))
    accounts_table = _check_table("accounts", doc.get("accounts", {}))
    accounts = {
        name: _parse_account(name, _check_table(f"accounts.{name}", table), base_dir)
        for name, table in accounts_table.items()
    }
    groups_table = _check_table("groups", doc.get("groups", {}))
    groups = {
        name: _parse_group(name, _check_table(f"groups.{name}", table), accounts)
        for name, table in groups_table.items()
    }
    _check_roles_consistent(groups)
    schedules_table = _check_table("schedules", doc.get("schedules", {}))
    schedules = {
        name: _parse_schedule(name, _check_table(f"schedules.{name}", table), groups)
        for name, table in schedules_table.items()
    }
    return Settings(
        path=path, redis_url=redis_url, accounts=accounts, groups=groups, schedules=schedules,
        **_parse_services(doc, base_dir),
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
