"""The watchman's configuration (``[watchman]``): what it watches, when it alerts, whether it unwinds.

The watchman runs outside the cluster, so everything it needs is here: its own key per account (a
Lighter API key index of its own, so its nonces never collide with the worker's; a Backpack API key
of its own), its own Telegram path, and optionally the Redis whose heartbeats tell it the cluster
is alive. Cross-table checks (groups and accounts exist, every watched account has keys) are in
:func:`check_watchman`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from core.config_decode import ConfigError, decode_table, doc
from core.config_schema import AccountConfig, GroupConfig, Role, TelegramConfig, Venue
from venues.lighter.credentials import USER_API_KEY_MIN

Secs = Annotated[float, Meta(ge=0.0, le=86400.0)]

#: The watchman's Telegram credentials default to variables of their own, not the relay's.
WATCHMAN_TELEGRAM = TelegramConfig(bot_token_env="XTB_WATCHMAN_TELEGRAM_BOT_TOKEN",
                                   chat_id_env="XTB_WATCHMAN_TELEGRAM_CHAT_ID")


class WatchmanKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The watchman's own credentials for one account (``[watchman.accounts.<account>]``)."""

    keys_file: Annotated[Path | None, doc(
        "key file in the account's format (Backpack: api key/api secret; Lighter: api key index/private key)")] = None
    api_key_env: Annotated[str | None, doc("environment variable holding the Backpack API key")] = None
    api_secret_env: Annotated[str | None, doc("environment variable holding the Backpack API secret")] = None
    private_key_env: Annotated[str | None, doc("environment variable holding the Lighter API private key")] = None
    api_key_index: Annotated[Annotated[int, Meta(ge=USER_API_KEY_MIN, le=254)] | None, doc(
        "the watchman's own Lighter API key index (4..254), never the worker's; may come from the key file")] = None

    def __post_init__(self) -> None:
        if self.keys_file is not None and not self.keys_file.is_file():
            raise ConfigError("keys_file", f"file not found: {self.keys_file}")
        if self.keys_file is None and self.private_key_env is None and self.api_secret_env is None:
            raise ConfigError("keys_file", "missing; expected a key file, api_secret_env (Backpack) "
                                           "or private_key_env (Lighter)")


class WatchmanConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``xtb watchman`` (``[watchman]``): a dead-man switch outside the cluster."""

    groups: Annotated[list[str], doc("groups to watch (default: every configured group)")] = []
    interval_secs: Annotated[float, Meta(ge=0.2, le=600.0), doc(
        "seconds between two reads of every watched account's position, straight from the venues")] = 10.0
    out_of_step_secs: Annotated[Secs, doc(
        "how long a group's net (the sum of its three positions) may stay beyond one Backpack step "
        "before the watchman alerts")] = 60.0
    silent_secs: Annotated[Annotated[float, Meta(ge=1.0, le=86400.0)], doc(
        "how long the cluster may be unreachable or silent (no fresh heartbeat of the orchestrator "
        "and the group's three workers) while a position is open before the watchman alerts")] = 60.0
    unwind: Annotated[bool, doc(
        "after an alert and unwind_delay_secs, unwind the group in step itself with its own keys")] = False
    unwind_delay_secs: Annotated[Secs, doc(
        "seconds between the alert and the watchman's own unwind (the cluster's last chance)")] = 30.0
    alert_repeat_secs: Annotated[Annotated[float, Meta(ge=1.0, le=86400.0)], doc(
        "while a trigger lasts its alert is repeated this often")] = 300.0
    redis_url: Annotated[str | None, doc(
        "the cluster's Redis, read for heartbeats only (default: $REDIS_URL, then [redis] url, then the "
        "embedded Redis's URL); unreachable counts as the cluster gone")] = None
    telegram: Annotated[TelegramConfig, doc(
        "the watchman's own Telegram path ([watchman.telegram], the keys of [telegram]; token and chat "
        "from $XTB_WATCHMAN_TELEGRAM_BOT_TOKEN / $XTB_WATCHMAN_TELEGRAM_CHAT_ID)")] = WATCHMAN_TELEGRAM
    accounts: Annotated[dict[str, WatchmanKeys], doc(
        "the watchman's own keys per account ([watchman.accounts.<account>])")] = {}

    def __post_init__(self) -> None:
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis_url", f"expected a redis/rediss/unix URL, got {self.redis_url!r}")


def parse_watchman(table: Any, base_dir: Path) -> WatchmanConfig | None:
    """``[watchman]`` decoded, its sub-tables each under their own key so errors name them."""
    if not table:
        return None
    if not isinstance(table, Mapping):
        return decode_table(WatchmanConfig, table, "watchman")
    telegram_table = table.get("telegram", {})
    telegram = decode_table(TelegramConfig, {**_telegram_defaults(), **telegram_table} if isinstance(
        telegram_table, Mapping) else telegram_table, "watchman.telegram", base_dir)
    accounts_table = table.get("accounts", {})
    if not isinstance(accounts_table, Mapping):
        raise ConfigError("watchman.accounts", "expected a table of [watchman.accounts.<account>] tables")
    accounts = {name: decode_table(WatchmanKeys, keys, f"watchman.accounts.{name}", base_dir)
                for name, keys in accounts_table.items()}
    rest = {k: v for k, v in table.items() if k not in ("telegram", "accounts")}
    base = decode_table(WatchmanConfig, rest, "watchman", base_dir)
    return msgspec.structs.replace(base, telegram=telegram, accounts=accounts)


def _telegram_defaults() -> dict[str, Any]:
    return {"bot_token_env": WATCHMAN_TELEGRAM.bot_token_env, "chat_id_env": WATCHMAN_TELEGRAM.chat_id_env}


def check_watchman(config: WatchmanConfig, accounts: Mapping[str, AccountConfig],
                   groups: Mapping[str, GroupConfig]) -> None:
    """Every watched group exists and every account in it has the watchman's own, distinct keys."""
    for name in config.groups:
        if name not in groups:
            raise ConfigError("watchman.groups", f"unknown group {name!r}; configured: {', '.join(groups) or 'none'}")
    for name in config.accounts:
        if name not in accounts:
            raise ConfigError(f"watchman.accounts.{name}",
                              f"unknown account {name!r}; configured: {', '.join(accounts) or 'none'}")
    for group in watched_groups(config, groups):
        for role in Role:
            account = group.account_for(role)
            keys = config.accounts.get(account)
            prefix = f"watchman.accounts.{account}"
            if keys is None:
                raise ConfigError(prefix, f"missing; the watchman reads group {group.name!r} with its own key "
                                          f"for every account")
            _check_keys(prefix, keys, accounts[account])


def _check_keys(prefix: str, keys: WatchmanKeys, account: AccountConfig) -> None:
    if account.venue is Venue.LIGHTER:
        if keys.api_secret_env is not None or keys.api_key_env is not None:
            raise ConfigError(f"{prefix}.api_secret_env", "not used by a lighter account")
        if keys.api_key_index is not None and keys.api_key_index == account.api_key_index:
            raise ConfigError(f"{prefix}.api_key_index", f"{keys.api_key_index} is the worker's own; expected an "
                                                         "index of the watchman's own, so their nonces never collide")
    else:
        if keys.private_key_env is not None or keys.api_key_index is not None:
            raise ConfigError(f"{prefix}.private_key_env", "not used by a backpack account")
        if keys.keys_file is not None and keys.keys_file == account.keys_file:
            raise ConfigError(f"{prefix}.keys_file", "is the worker's own; expected an API key of the watchman's own")


def watched_groups(config: WatchmanConfig, groups: Mapping[str, GroupConfig]) -> list[GroupConfig]:
    return [groups[name] for name in (config.groups or list(groups))]
