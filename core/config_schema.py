"""The configuration's structures: each field's type, bounds, default and meaning in one place.

Every field carries ``Meta(description=...)``; bounds msgspec cannot hold (Decimal amounts, the venue
a key belongs to) sit in ``Meta(extra=...)`` on the same field. How those are read, checked and
decoded (:func:`decode_table`, :class:`ConfigError`) lives in :mod:`core.config_decode`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from core.config_decode import ConfigError, check_amounts, check_url, decode_table, doc, normalise
from venues.lighter.credentials import USER_API_KEY_MIN
from venues.lighter.reconcile import DEFAULT_RECONCILE_SECS


class Venue(str, Enum):
    """The trading venue an account lives on."""

    #: Backpack Exchange perpetuals (REST + WebSocket, ED25519 signatures).
    BACKPACK = "backpack"
    #: Lighter (zkLighter) perpetuals through the official lighter-sdk.
    LIGHTER = "lighter"


class LighterTier(str, Enum):
    """A Lighter L1 address's account type (apidocs.lighter.xyz/docs/account-types)."""

    #: 60 requests per rolling minute, unweighted (the default).
    STANDARD = "standard"
    #: 24,000 weighted requests per rolling minute; sendTx in its own bucket.
    PREMIUM = "premium"


class Direction(str, Enum):
    """Which way the Backpack leg enters; the Lighter legs' sides follow from it."""

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


# Upper bounds keep every countdown far below the broker visibility timeout.
Secs = Annotated[float, Meta(ge=0.0, le=600.0)]
Attempts = Annotated[int, Meta(ge=1, le=20)]
Name = Annotated[str, Meta(min_length=1)]
OptionalEnv = Annotated[str | None, doc("environment variable holding the credential instead of a key file")]


class HedgeParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Parameters of one hedge group's cycle (the defaults are the values of the bot this one replaces).

    Each field is a key of ``[groups.<name>]`` and of ``xtb cycle start --set``; its bounds and
    meaning are on the field. Amounts (Decimal) may be written as strings so that they survive
    TOML's float parsing exactly.
    """

    leverage: Annotated[float, Meta(ge=1.0, le=200.0), doc(
        "Lighter sizing leverage: size = collateral × collateral_buffer × leverage / price; each Lighter "
        "account's leverage is raised to it before the cycle")] = 50.0
    direction: Annotated[Direction, doc(
        "Backpack entry side; Lighter1 takes the opposite side, Lighter2 the same side")] = Direction.LONG_BACKPACK
    size: Annotated[Decimal | None, doc(
        "explicit base size of the Backpack entry; None plans from Lighter1 collateral", gt=0)] = None
    collateral_buffer: Annotated[Decimal, doc("fraction of Lighter1 collateral used for sizing", gt=0)] = Decimal("0.96")
    min_collateral: Annotated[Decimal, doc("Lighter collateral must exceed this to start a cycle", ge=0)] = Decimal("0")
    timeout_secs: Annotated[float, Meta(ge=1.0, le=30 * 86400.0), doc(
        "monitoring deadline; reaching it is an emergency exit with reason timeout")] = 86400.0
    poll_interval_secs: Annotated[float, Meta(ge=0.1, le=600.0), doc("interval of the monitor's checks")] = 5.0
    liquidation_tolerance: Annotated[Decimal, doc(
        "Backpack drift from its own-delta target (-(l1 + l2) from flat accounts) beyond which the monitor "
        "rebalances", gt=0)] = Decimal("0.0001")
    zero_confirmations: Annotated[int, Meta(ge=1, le=100), doc(
        "consecutive fresh zero readings of a Lighter leg (below one step or below the venue's minimum "
        "order size) before it counts as liquidated")] = 2
    unknown_reads_alert: Annotated[int, Meta(ge=1, le=10_000), doc(
        "monitor reads in a row with a position unknown before a positions_unknown alert (then every as many)")] = 12
    zero_reread_secs: Annotated[float, Meta(ge=0.05, le=60.0), doc(
        "interval of the re-reads that confirm a Lighter leg read zero (no rebalance meanwhile)")] = 0.2
    reverse_on_timeout: Annotated[bool, doc("after a timeout exit, the next cycle flips the direction")] = True
    max_cycles: Annotated[int, Meta(ge=1, le=10_000), doc(
        "cycles run back to back by one trigger, each after the previous one ends flat")] = 1
    backpack_entry_max_attempts: Annotated[Attempts, doc("Backpack entry and flatten attempts")] = 3
    backpack_retry_delay_secs: Annotated[float, Meta(ge=0.0, le=60.0), doc(
        "delay between Backpack entry attempts")] = 0.5
    lighter_max_slippage: Annotated[float, Meta(ge=0.0, le=0.5), doc(
        "worst acceptable price distance from the top of book for Lighter market orders")] = 0.001
    backpack_max_slippage: Annotated[float, Meta(ge=0.0, le=0.5), doc(
        "worst acceptable price distance from the top of book for Backpack entry and rebalance orders "
        "(sent as a Limit IOC at that price; 0 sends plain market orders)")] = 0.005
    exit_start_slippage: Annotated[float, Meta(ge=0.0, le=0.5), doc(
        "price cap of the emergency exit's first Lighter close (a reduce-only IOC), as a fraction from "
        "the top of book; 0 is the best price itself")] = 0.001
    exit_slippage_step: Annotated[float, Meta(ge=0.0, le=0.5), doc(
        "how much each further exit step widens the Lighter and Backpack price caps")] = 0.001
    exit_max_slippage: Annotated[float, Meta(ge=0.0, le=0.5), doc(
        "the widest price cap the exit uses on either venue (at least the starting caps)")] = 0.01
    exit_max_steps: Annotated[int, Meta(ge=1, le=500), doc(
        "exit steps (fresh read, then orders) per exit attempt before it reports the accounts not flat")] = 40
    lighter_hedge_max_attempts: Annotated[Attempts, doc("Lighter order attempts, a new client id each")] = 3
    lighter_retry_delay_secs: Annotated[float, Meta(ge=0.0, le=60.0), doc("delay between Lighter attempts")] = 0.5
    wait_min_secs: Annotated[Secs, doc("shortest random wait before the Lighter2 entry, drawn at plan time")] = 2.0
    wait_max_secs: Annotated[Secs, doc("longest random wait before the Lighter2 entry")] = 5.0
    confirmation_timeout_secs: Annotated[float, Meta(ge=0.1, le=600.0), doc("position confirmation deadline")] = 2.0
    confirmation_poll_secs: Annotated[float, Meta(ge=0.05, le=60.0), doc("position confirmation poll interval")] = 0.2
    confirmation_min_fraction: Annotated[float, Meta(ge=0.01, le=1.0), doc(
        "a leg is confirmed when its position moved by more than this fraction of the request")] = 0.2
    rebalance_max_attempts: Annotated[Attempts, doc("Backpack rebalance attempts")] = 3
    rebalance_retry_delay_secs: Annotated[float, Meta(ge=0.0, le=60.0), doc("delay between rebalance attempts")] = 0.5
    test_mode: Annotated[bool, doc("size every leg at the largest venue minimum instead of from collateral")] = False
    allow_existing_positions: Annotated[bool, doc(
        "start on accounts that already hold a position: they become the cycle's baselines, and the "
        "hedge trades only its own deltas from them; false refuses to start unless all three are flat")] = False
    backpack_taker_fee: Annotated[Decimal, doc(
        "Backpack taker fee rate reserved twice (entry and exit) in the margin check; Tier 1 futures 0.05 %",
        ge=0, le=Decimal("0.01"))] = Decimal("0.0005")
    lighter_taker_fee: Annotated[Decimal, doc(
        "Lighter taker fee rate reserved twice (entry and exit) in the margin check; Premium 0.028 % "
        "(Standard accounts pay 0)", ge=0, le=Decimal("0.01"))] = Decimal("0.00028")

    def __post_init__(self) -> None:
        check_amounts(self)
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


class AccountConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One venue account (``[accounts.<name>]``); its name is also its Celery queue name.

    Key files are resolved relative to the config file. ``extra={"venue": ...}`` marks keys only
    that venue's accounts may set.
    """

    name: Annotated[str, doc("account and queue name, the table's key")]
    venue: Annotated[Venue, doc("the venue, 'backpack' or 'lighter'")]
    base_url: Annotated[str, doc("the venue's REST base URL (http or https, no trailing slash)")]
    ws_url: Annotated[str | None, doc("WebSocket URL; for Lighter defaults to <base_url as ws>/stream")] = None
    keys_file: Annotated[Path | None, doc(
        "key file in the original format (Backpack: api key/api secret; Lighter: api key index/private key)")] = None
    create_keys_if_missing: Annotated[bool, doc(
        "generate a fresh key pair into keys_file on first use (demo and paper trading only)")] = False
    api_key_env: OptionalEnv = None
    api_secret_env: Annotated[OptionalEnv, doc("environment variable holding the Backpack API secret",
                                               venue="backpack")] = None
    private_key_env: Annotated[OptionalEnv, doc("environment variable holding the Lighter API private key",
                                                venue="lighter")] = None
    account_index: Annotated[Annotated[int, Meta(ge=0, le=2**48 - 1)] | None, doc(
        "the Lighter account index (an integer >= 0)", venue="lighter")] = None
    # Lighter reserves key indexes 0-3 for its own apps (apidocs.lighter.xyz/docs/api-keys).
    api_key_index: Annotated[Annotated[int, Meta(ge=USER_API_KEY_MIN, le=254)] | None, doc(
        "the Lighter API key index 4..254 (0-3 are the venue's own); may come from the key file",
        venue="lighter")] = None
    window_ms: Annotated[int, Meta(ge=1, le=60_000), doc("Backpack signature validity window", venue="backpack")] = 5000
    stream: Annotated[bool, doc(
        "read positions, fills and the top of book from the venue's WebSocket while it is up (REST otherwise)")] = True
    reconcile_secs: Annotated[float, Meta(ge=1, le=3600), doc(
        "seconds between REST reads that check the streamed position (REST wins a disagreement): the "
        "longest a liquidation whose push was lost stays unseen",
        venue="lighter")] = DEFAULT_RECONCILE_SECS
    tier: Annotated[LighterTier, doc(
        "the Lighter account type of the account's L1 address, 'standard' or 'premium': its rate limit",
        venue="lighter")] = LighterTier.STANDARD
    l1_address: Annotated[str | None, doc(
        "the account's L1 address; accounts of one address share its rate budget (default: one per account)",
        venue="lighter")] = None

    def __post_init__(self) -> None:
        base_url = check_url("base_url", self.base_url, ("http", "https")) or ""
        ws_url = check_url("ws_url", self.ws_url, ("ws", "wss"))
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
        normalise(self, base_url=base_url, ws_url=ws_url)

    @property
    def queue(self) -> str:
        return self.name


class GroupConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One hedge triad (``[groups.<name>]``): a Backpack account and two Lighter accounts.

    Every key of the table that is not a field here is a :class:`HedgeParams` field.
    """

    name: Annotated[str, doc("group name, the table's key")]
    backpack: Annotated[Name, doc("the name of a backpack account")]
    lighter1: Annotated[Name, doc("the name of a lighter account")]
    lighter2: Annotated[Name, doc("the name of a lighter account")]
    backpack_symbol: Annotated[Name, doc("Backpack market")] = "ETH_USDC_PERP"
    lighter_symbol: Annotated[Name, doc("Lighter market")] = "ETH"
    params: Annotated[HedgeParams, doc("the hedge parameters")] = HedgeParams()

    def account_for(self, role: Role) -> str:
        return {Role.BP: self.backpack, Role.L1: self.lighter1, Role.L2: self.lighter2}[role]

    def symbol_for(self, role: Role) -> str:
        return self.backpack_symbol if role is Role.BP else self.lighter_symbol


class ScheduleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A beat schedule that starts cycles of one group (``[schedules.<name>]``)."""

    name: Annotated[str, doc("schedule name, the table's key")]
    group: Annotated[str, doc("a configured group name")]
    every_secs: Annotated[float, Meta(ge=1.0), doc("the interval in seconds between triggers")]
    expires_secs: Annotated[Annotated[float, Meta(ge=1.0)] | None, doc(
        "drop a trigger not started within this many seconds (default: min(every_secs, 300))")] = None

    def __post_init__(self) -> None:
        for key in ("every_secs", "expires_secs"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ConfigError(key, f"expected a finite number, got {value!r}")


class TelegramConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where alerts go (``[telegram]``)."""

    enabled: Annotated[bool, doc("send alerts")] = True
    api_url: Annotated[str, doc("Telegram Bot API base URL (http or https)")] = "https://api.telegram.org"
    keys_file: Annotated[Path | None, doc("tg_key.txt format: bot_token: ... / chat_id: ...")] = None
    bot_token_env: Annotated[str, doc("environment variable holding the bot token")] = "XTB_TELEGRAM_BOT_TOKEN"
    chat_id_env: Annotated[str, doc("environment variable holding the chat id")] = "XTB_TELEGRAM_CHAT_ID"

    def __post_init__(self) -> None:
        normalise(self, api_url=check_url("api_url", self.api_url, ("http", "https")))


class RateBudgetConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The venues' REST rate budgets, counted in Redis across workers (``[rate_budget]``).

    Fields:
      enabled = true       wait for the budget before each Lighter request; false: send and risk a 429
      egress = None        the public IP's name; workers behind one IP must share it (default: hostname)
      read_share = 0.8     share of a budget reads may use; the rest is kept for orders and exits
    """

    enabled: Annotated[bool, doc("wait for the rate budget before each Lighter request")] = True
    egress: Annotated[str | None, doc(
        "name of the public IP requests leave from; every worker behind it must use the same (default: hostname)")] = None
    read_share: Annotated[float, Meta(ge=0.1, le=1.0), doc(
        "share of each budget reads may use; the rest is kept for orders and exits")] = 0.8


class TelemetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Heartbeats and the optional external ingest of the original dashboard (``[telemetry]``)."""

    interval_secs: Annotated[float, Meta(ge=0.2, le=300.0), doc("heartbeat interval")] = 2.0
    ingest_url: Annotated[str | None, doc(
        "base URL of an original server.js; each heartbeat is also POSTed to /ingest/<bot>")] = None
    token_env: Annotated[str, doc("environment variable holding the ingest's x-auth-token")] = "TELEMETRY_TOKEN"

    def __post_init__(self) -> None:
        normalise(self, ingest_url=check_url("ingest_url", self.ingest_url, ("http", "https")))


class DashboardConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The telemetry dashboard (``xtb dashboard``, ``[dashboard]``)."""

    host: Annotated[str, doc("address to listen on")] = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535), doc("port to listen on")] = 10123
    token_env: Annotated[str, doc("environment variable holding the dashboard token")] = "XTB_DASHBOARD_TOKEN"
