"""The configuration's structures: each field's type, bounds, default and meaning in one place.

Every field carries ``Meta(description=...)``; bounds msgspec cannot hold (Decimal amounts, the venue
a key belongs to) sit in ``Meta(extra=...)`` on the same field. :func:`decode_table` turns a TOML
table into a structure, and any problem into one :class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from collections.abc import Callable, Mapping
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from venues.lighter.credentials import USER_API_KEY_MIN
from xtb_tasks.core.errors import XtbError

T = TypeVar("T")


class ConfigError(XtbError):
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


def _doc(description: str, **extra: Any) -> Meta:
    return Meta(description=description, extra=extra or None)


# --------------------------------------------------------------------------------------------
# Field metadata and amounts


def _metas(tp: Any) -> list[Meta]:
    if typing.get_origin(tp) is not Annotated:
        return []
    inner, *metas = typing.get_args(tp)
    return [m for m in metas if isinstance(m, Meta)] + _metas(inner)


def _bare(tp: Any) -> Any:
    # The field's type without Annotated and None: Decimal, an Enum, int...
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return _bare(args[0]) if len(args) == 1 and typing.get_origin(tp) is not None else tp


@functools.cache
def field_info(cls: type) -> dict[str, tuple[Any, str | None, dict[str, Any]]]:
    """Each field's bare type, description and ``extra`` metadata, in declaration order."""
    out = {}
    for f in msgspec.structs.fields(cls):
        metas = _metas(f.type)
        # The outermost Meta wins: a field's own description over its alias's.
        description = next((m.description for m in reversed(metas) if m.description), None)
        extra: dict[str, Any] = {}
        for m in metas:
            extra.update(m.extra or {})
        out[f.name] = (_bare(f.type), description, extra)
    return out


def _check_amounts(obj: msgspec.Struct) -> None:
    for name, (tp, _, extra) in field_info(type(obj)).items():
        value = getattr(obj, name)
        if tp is not Decimal or value is None:
            continue
        if not value.is_finite():
            raise ConfigError(name, f"expected a finite decimal number, got {value}")
        if abs(value) >= DECIMAL_LIMIT:
            # 1e999 is a finite Decimal, but no venue amount is near it and quantizing it overflows.
            raise ConfigError(name, f"expected a decimal number below {DECIMAL_LIMIT:,}, got {value}")
        if "gt" in extra and not value > extra["gt"]:
            raise ConfigError(name, f"expected a decimal number > {extra['gt']}, got {value}")
        if "ge" in extra and not value >= extra["ge"]:
            raise ConfigError(name, f"expected a decimal number >= {extra['ge']}, got {value}")


# Upper bounds keep every countdown far below the broker visibility timeout (celery-redis.md §1.2).
Secs = Annotated[float, Meta(ge=0.0, le=600.0)]
Attempts = Annotated[int, Meta(ge=1, le=20)]
Name = Annotated[str, Meta(min_length=1)]
OptionalEnv = Annotated[str | None, _doc("environment variable holding the credential instead of a key file")]


class HedgeParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Parameters of one hedge group's cycle (original-system.md §1.1; defaults kept).

    Each field is a key of ``[groups.<name>]`` and of ``xtb cycle start --set``; its bounds and
    meaning are on the field. Amounts (Decimal) may be written as strings so that they survive
    TOML's float parsing exactly.
    """

    leverage: Annotated[float, Meta(ge=1.0, le=200.0), _doc(
        "Lighter sizing leverage: size = collateral × collateral_buffer × leverage / price")] = 50.0
    direction: Annotated[Direction, _doc(
        "Backpack entry side; Lighter1 takes the opposite side, Lighter2 the same side")] = Direction.LONG_BACKPACK
    size: Annotated[Decimal | None, _doc(
        "explicit base size of the Backpack entry; None plans from Lighter1 collateral", gt=0)] = None
    collateral_buffer: Annotated[Decimal, _doc("fraction of Lighter1 collateral used for sizing", gt=0)] = Decimal("0.96")
    min_collateral: Annotated[Decimal, _doc("Lighter collateral must exceed this to start a cycle", ge=0)] = Decimal("0")
    timeout_secs: Annotated[float, Meta(ge=1.0, le=30 * 86400.0), _doc(
        "monitoring deadline; reaching it is an emergency exit with reason timeout")] = 86400.0
    poll_interval_secs: Annotated[float, Meta(ge=0.1, le=600.0), _doc("interval of the monitor's checks")] = 5.0
    liquidation_tolerance: Annotated[Decimal, _doc(
        "Backpack drift from -(l1 + l2) beyond which the monitor rebalances", gt=0)] = Decimal("0.0001")
    zero_confirmations: Annotated[int, Meta(ge=1, le=100), _doc(
        "consecutive fresh zero readings of a Lighter leg before it counts as liquidated")] = 2
    reverse_on_timeout: Annotated[bool, _doc("after a timeout exit, the next cycle flips the direction")] = True
    max_cycles: Annotated[int, Meta(ge=1, le=10_000), _doc(
        "cycles run back to back by one trigger, each after the previous one ends flat")] = 1
    backpack_entry_max_attempts: Annotated[Attempts, _doc("Backpack entry and flatten attempts")] = 3
    backpack_retry_delay_secs: Annotated[float, Meta(ge=0.0, le=60.0), _doc(
        "delay between Backpack entry attempts")] = 0.5
    lighter_max_slippage: Annotated[float, Meta(ge=0.0, le=0.5), _doc(
        "worst acceptable price distance from the top of book for Lighter market orders")] = 0.001
    lighter_hedge_max_attempts: Annotated[Attempts, _doc("Lighter order attempts, a new client id each")] = 3
    lighter_retry_delay_secs: Annotated[float, Meta(ge=0.0, le=60.0), _doc("delay between Lighter attempts")] = 0.5
    wait_min_secs: Annotated[Secs, _doc("shortest random wait before the Lighter2 entry, drawn at plan time")] = 2.0
    wait_max_secs: Annotated[Secs, _doc("longest random wait before the Lighter2 entry")] = 5.0
    confirmation_timeout_secs: Annotated[float, Meta(ge=0.1, le=600.0), _doc("position confirmation deadline")] = 2.0
    confirmation_poll_secs: Annotated[float, Meta(ge=0.05, le=60.0), _doc("position confirmation poll interval")] = 0.2
    confirmation_min_fraction: Annotated[float, Meta(ge=0.01, le=1.0), _doc(
        "a leg is confirmed when its position moved by more than this fraction of the request")] = 0.2
    rebalance_max_attempts: Annotated[Attempts, _doc("Backpack rebalance attempts")] = 3
    rebalance_retry_delay_secs: Annotated[float, Meta(ge=0.0, le=60.0), _doc("delay between rebalance attempts")] = 0.5
    test_mode: Annotated[bool, _doc("size every leg at the largest venue minimum instead of from collateral")] = False

    def __post_init__(self) -> None:
        _check_amounts(self)
        if self.wait_min_secs > self.wait_max_secs:
            raise ConfigError("wait_min_secs", "expected wait_min_secs <= wait_max_secs, "
                              f"got {self.wait_min_secs} > {self.wait_max_secs}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], prefix: str = "", base: HedgeParams | None = None) -> HedgeParams:
        """Validate ``values`` (a config table or task overrides) on top of ``base``."""
        start = msgspec.structs.asdict(base) if base is not None else {}
        return decode_table(cls, {**start, **values}, prefix.rstrip("."))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def _url(key: str, value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if not value.startswith(tuple(f"{s}://" for s in schemes)):
        raise ConfigError(key, f"expected a {'/'.join(schemes)} URL, got {value!r}")
    # The Lighter SDK requests //api/v1/... with a trailing slash (lighter-sdk.md §5).
    return value.rstrip("/")


def _normalise(obj: msgspec.Struct, **values: Any) -> None:
    # Frozen structs normalise their own fields once, while being built.
    for name, value in values.items():
        msgspec.structs.force_setattr(obj, name, value)


class AccountConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One venue account (``[accounts.<name>]``); its name is also its Celery queue name.

    Key files are resolved relative to the config file. ``extra={"venue": ...}`` marks keys only
    that venue's accounts may set.
    """

    name: Annotated[str, _doc("account and queue name, the table's key")]
    venue: Annotated[Venue, _doc("the venue, 'backpack' or 'lighter'")]
    base_url: Annotated[str, _doc("the venue's REST base URL (http or https, no trailing slash)")]
    ws_url: Annotated[str | None, _doc("WebSocket URL; for Lighter defaults to <base_url as ws>/stream")] = None
    keys_file: Annotated[Path | None, _doc(
        "key file in the original format (Backpack: api key/api secret; Lighter: api key index/private key)")] = None
    create_keys_if_missing: Annotated[bool, _doc(
        "generate a fresh key pair into keys_file on first use (demo and paper trading only)")] = False
    api_key_env: OptionalEnv = None
    api_secret_env: Annotated[OptionalEnv, _doc("environment variable holding the Backpack API secret",
                                                venue="backpack")] = None
    private_key_env: Annotated[OptionalEnv, _doc("environment variable holding the Lighter API private key",
                                                 venue="lighter")] = None
    account_index: Annotated[Annotated[int, Meta(ge=0, le=2**48 - 1)] | None, _doc(
        "the Lighter account index (an integer >= 0)", venue="lighter")] = None
    # Lighter reserves key indexes 0-3 for its own apps (apidocs.lighter.xyz/docs/api-keys).
    api_key_index: Annotated[Annotated[int, Meta(ge=USER_API_KEY_MIN, le=254)] | None, _doc(
        "the Lighter API key index 4..254 (0-3 are the venue's own); may come from the key file",
        venue="lighter")] = None
    window_ms: Annotated[int, Meta(ge=1, le=60_000), _doc("Backpack signature validity window", venue="backpack")] = 5000

    def __post_init__(self) -> None:
        base_url = _url("base_url", self.base_url, ("http", "https")) or ""
        ws_url = _url("ws_url", self.ws_url, ("ws", "wss"))
        if self.keys_file is not None and not self.create_keys_if_missing and not self.keys_file.is_file():
            raise ConfigError("keys_file", f"file not found: {self.keys_file}")
        envs = (self.api_key_env, self.api_secret_env, self.private_key_env)
        if self.keys_file is None and all(env is None for env in envs):
            needed = "api_key_env and api_secret_env" if self.venue is Venue.BACKPACK else "private_key_env"
            raise ConfigError("keys_file", f"missing; expected a key file or {needed}")
        if self.venue is Venue.LIGHTER:
            if self.account_index is None:
                raise ConfigError("account_index", "missing; expected the Lighter account index (an integer >= 0)")
            if ws_url is None:
                ws_url = base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/stream"
        _normalise(self, base_url=base_url, ws_url=ws_url)

    @property
    def queue(self) -> str:
        return self.name


class GroupConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One hedge triad (``[groups.<name>]``): a Backpack account and two Lighter accounts.

    Every key of the table that is not a field here is a :class:`HedgeParams` field.
    """

    name: Annotated[str, _doc("group name, the table's key")]
    backpack: Annotated[Name, _doc("the name of a backpack account")]
    lighter1: Annotated[Name, _doc("the name of a lighter account")]
    lighter2: Annotated[Name, _doc("the name of a lighter account")]
    backpack_symbol: Annotated[Name, _doc("Backpack market")] = "ETH_USDC_PERP"
    lighter_symbol: Annotated[Name, _doc("Lighter market")] = "ETH"
    params: Annotated[HedgeParams, _doc("the hedge parameters")] = HedgeParams()

    def account_for(self, role: Role) -> str:
        return {Role.BP: self.backpack, Role.L1: self.lighter1, Role.L2: self.lighter2}[role]

    def symbol_for(self, role: Role) -> str:
        return self.backpack_symbol if role is Role.BP else self.lighter_symbol


class ScheduleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A beat schedule that starts cycles of one group (``[schedules.<name>]``)."""

    name: Annotated[str, _doc("schedule name, the table's key")]
    group: Annotated[str, _doc("a configured group name")]
    every_secs: Annotated[float, Meta(ge=1.0), _doc("the interval in seconds between triggers")]
    expires_secs: Annotated[Annotated[float, Meta(ge=1.0)] | None, _doc(
        "drop a trigger not started within this many seconds (default: min(every_secs, 300))")] = None

    def __post_init__(self) -> None:
        for key in ("every_secs", "expires_secs"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ConfigError(key, f"expected a finite number, got {value!r}")


class TelegramConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where alerts go (``[telegram]``)."""

    enabled: Annotated[bool, _doc("send alerts")] = True
    api_url: Annotated[str, _doc("Telegram Bot API base URL (http or https)")] = "https://api.telegram.org"
    keys_file: Annotated[Path | None, _doc("tg_key.txt format: bot_token: ... / chat_id: ...")] = None
    bot_token_env: Annotated[str, _doc("environment variable holding the bot token")] = "XTB_TELEGRAM_BOT_TOKEN"
    chat_id_env: Annotated[str, _doc("environment variable holding the chat id")] = "XTB_TELEGRAM_CHAT_ID"

    def __post_init__(self) -> None:
        _normalise(self, api_url=_url("api_url", self.api_url, ("http", "https")))


class TelemetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Heartbeats and the optional external ingest of the original dashboard (``[telemetry]``)."""

    interval_secs: Annotated[float, Meta(ge=0.2, le=300.0), _doc("heartbeat interval")] = 2.0
    ingest_url: Annotated[str | None, _doc(
        "base URL of an original server.js; each heartbeat is also POSTed to /ingest/<bot>")] = None
    token_env: Annotated[str, _doc("environment variable holding the ingest's x-auth-token")] = "TELEMETRY_TOKEN"

    def __post_init__(self) -> None:
        _normalise(self, ingest_url=_url("ingest_url", self.ingest_url, ("http", "https")))


class DashboardConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The telemetry dashboard (``xtb dashboard``, ``[dashboard]``)."""

    host: Annotated[str, _doc("address to listen on")] = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535), _doc("port to listen on")] = 10123
    token_env: Annotated[str, _doc("environment variable holding the dashboard token")] = "XTB_DASHBOARD_TOKEN"


# --------------------------------------------------------------------------------------------
# Decoding a table, and turning msgspec's errors into one-line ConfigErrors


def _path_hook(base_dir: Path | None) -> Callable[[type, Any], Any]:
    def hook(tp: type, obj: Any) -> Any:
        if tp is not Path:
            raise NotImplementedError(tp)
        if not isinstance(obj, str):
            raise TypeError(f"expected a string, got {type(obj).__name__} {obj!r}")
        path = Path(obj).expanduser()
        return path if path.is_absolute() or base_dir is None else base_dir / path

    return hook


def join_key(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def decode_table(cls: type[T], raw: Any, prefix: str = "", base_dir: Path | None = None) -> T:
    """``raw`` (one TOML table) as ``cls``; any problem is a ConfigError naming ``<prefix>.<key>``."""
    fields = field_info(typing.cast(type, cls))
    for name, value in raw.items() if isinstance(raw, Mapping) else ():
        if isinstance(value, str) and fields.get(name, (None,))[0] is Decimal and not _DECIMAL_TEXT.fullmatch(value):
            raise ConfigError(join_key(prefix, name), f"expected a decimal number in ASCII digits, got {value!r}")
    try:
        return msgspec.convert(raw, cls, strict=True, dec_hook=_path_hook(base_dir))
    except msgspec.ValidationError as exc:
        raise _translate(cls, raw, prefix, str(exc)) from None
    except ConfigError as exc:  # from a __post_init__, keyed relative to the structure
        raise ConfigError(join_key(prefix, exc.key), exc.message) from None
    except UnicodeError:
        raise ConfigError(prefix, "expected text without unpaired surrogates") from None


_AT = re.compile(r"(?s)(.*?)(?: - at `\$\.(\w+)`)?")
_EXPECTED = re.compile(r"Expected `([^`]*)`(, got `[^`]*`)?(.*)")
_PHRASES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
            "decimal": "a decimal number or string", "object": "a table", "array": "an array"}


def _phrase(msgspec_types: str) -> str:
    names = [t for t in msgspec_types.split(" | ") if t != "null"] or ["null"]
    return " or ".join(_PHRASES.get(t, t) for t in names)


def _translate(cls: type, raw: Any, prefix: str, text: str) -> ConfigError:
    match = _AT.fullmatch(text)
    message, name = (match[1], match[2]) if match else (text, None)
    fields = field_info(cls)
    table = raw if isinstance(raw, Mapping) else {}
    if name is None and message.startswith("Object contains unknown field"):
        unknown = next((k for k in table if k not in fields), "")
        allowed = ", ".join(sorted(set(fields) - {"name"}))
        return ConfigError(join_key(prefix, str(unknown)), f"unknown key; expected one of {allowed}")
    if name is None and message.startswith("Object missing required field"):
        missing = next((k for k in fields if k not in table), "")
        description = fields[missing][1] if missing else None
        return ConfigError(join_key(prefix, missing), f"missing; expected {description}" if description else "missing")
    value = table.get(name, raw) if name else raw
    key = join_key(prefix, name or "")
    expected = _EXPECTED.fullmatch(message)
    if expected and expected[2]:
        return ConfigError(key, f"expected {_phrase(expected[1])}, got {type(value).__name__} {value!r}")
    if expected:
        return ConfigError(key, f"expected {_phrase(expected[1])}{expected[3]}, got {value!r}")
    tp = fields[name][0] if name in fields else None
    if message.startswith("Invalid enum value") and isinstance(tp, type) and issubclass(tp, Enum):
        return ConfigError(key, f"expected one of {', '.join(repr(m.value) for m in tp)}, got {value!r}")
    if message.startswith("expected"):  # our own, from a decode hook
        return ConfigError(key, message)
    return ConfigError(key, f"{message[:1].lower()}{message[1:]}, got {value!r}")
