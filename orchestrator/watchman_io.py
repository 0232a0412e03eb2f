"""What the watchman reaches outside itself: the venues with its own keys, the cluster's heartbeats
in Redis (read only, short timeouts, never needed), and its own Telegram path.

A heartbeat counts as fresh when its payload changed within the silence limit, by the watchman's
own clock: the sender's timestamp only has to change, so a skewed clock on another host cannot make
a dead worker look alive or a live one look dead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core import keys
from core.config import AccountConfig, ConfigError, GroupConfig, Role, Settings, Venue
from core.redis_target import RedisAccess, make_client
from core.watchman_config import WatchmanConfig, WatchmanKeys
from monitoring.heartbeat import ORCHESTRATOR_BOT
from monitoring.telegram import SendStatus, TelegramClient, load_credentials
from orchestrator.watchman_unwind import GroupVenues
from venues.base import VenueConnector

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 1.0


def _backpack(account: AccountConfig, own: WatchmanKeys) -> VenueConnector:
    from venues.backpack.connector import BackpackConnector
    from venues.backpack.credentials import load_backpack_credentials

    credentials = load_backpack_credentials(own.keys_file, own.api_key_env, own.api_secret_env)
    worker_file = account.keys_file
    if worker_file is not None and worker_file.is_file():
        try:
            theirs = load_backpack_credentials(worker_file, account.api_key_env, account.api_secret_env)
        except ValueError:
            theirs = None
        if theirs is not None and theirs.api_key == credentials.api_key:
            raise ConfigError(f"watchman.accounts.{account.name}", "is the worker's own API key; expected one of "
                                                                   "the watchman's own")
    return BackpackConnector(f"watchman-{account.name}", account.base_url, account.ws_url, credentials,
                             window_ms=account.window_ms)


def _lighter(account: AccountConfig, own: WatchmanKeys) -> VenueConnector:
    from venues.lighter.connector import LighterConnector
    from venues.lighter.credentials import load_lighter_credentials

    credentials = load_lighter_credentials(own.keys_file, own.private_key_env, own.api_key_index)
    worker_index = account.api_key_index
    if worker_index is None and account.keys_file is not None and account.keys_file.is_file():
        try:
            worker_index = load_lighter_credentials(account.keys_file, account.private_key_env).api_key_index
        except ValueError:
            worker_index = None
    if credentials.api_key_index == worker_index:
        raise ConfigError(f"watchman.accounts.{account.name}.api_key_index",
                          f"{worker_index} is the worker's own; expected an index of the watchman's own, so their "
                          "nonces never collide")
    assert account.account_index is not None  # enforced by the config schema
    # REST only and no shared budget: the watchman must work with Redis and the workers gone.
    return LighterConnector(f"watchman-{account.name}", account.base_url, None, account.account_index, credentials,
                            stream=False)


def group_venues(settings: Settings, config: WatchmanConfig, group: GroupConfig) -> GroupVenues:
    """The group's three accounts through the watchman's own keys (one line per bad key: ConfigError)."""
    connectors: dict[str, VenueConnector] = {}
    for role in Role:
        account = settings.account(group.account_for(role))
        own = config.accounts[account.name]
        try:
            connectors[role.short] = (_backpack(account, own) if account.venue is Venue.BACKPACK
                                      else _lighter(account, own))
        except ValueError as exc:  # the credential loaders' one-line errors name the file or variable
            raise ConfigError(f"watchman.accounts.{account.name}", str(exc)) from None
    return GroupVenues(group, connectors)


@dataclass
class ClusterProbe:
    """When each bot's heartbeat last changed, by this process's clock (see the module docstring)."""

    url: str
    #: The cluster's ``[redis]`` credentials and TLS; a Sentinel URL is followed to the current primary.
    access: RedisAccess = field(default_factory=RedisAccess)
    started_at: float = field(default_factory=time.monotonic)
    error: str | None = None
    _seen: dict[str, str] = field(default_factory=dict)
    _changed_at: dict[str, float] = field(default_factory=dict)
    _client: redis.Redis | None = None

    def poll(self) -> None:
        """Read every bot's latest heartbeat once; a failure only leaves the ages growing."""
        if self._client is None:
            # No retries: a partitioned Redis costs one timeout per tick, never several, so the venue
            # reads (what the watchman is for) keep their interval.
            self._client = make_client(self.url, self.access, socket_timeout=_PROBE_TIMEOUT,
                                       socket_connect_timeout=_PROBE_TIMEOUT, retry=Retry(NoBackoff(), 0))
        try:
            beats = cast(dict[str, str], self._client.hgetall(keys.HEARTBEAT_LAST))
        except (redis.RedisError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.error = None
        now = time.monotonic()
        for bot, raw in beats.items():
            stamp = _stamp(raw)
            if stamp is not None and self._seen.get(bot) != stamp:
                self._seen[bot], self._changed_at[bot] = stamp, now

    def silent_for(self, bots: Iterable[str], now: float) -> dict[str, float]:
        """Seconds since each bot's heartbeat last changed (since the watchman started, at most)."""
        return {bot: now - self._changed_at.get(bot, self.started_at) for bot in bots}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _stamp(raw: str) -> str | None:
    try:
        payload = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return str(payload.get("timestamp")) if isinstance(payload, dict) else None


def group_bots(group: GroupConfig) -> list[str]:
    """The heartbeats a group's cycle needs: the orchestrator's and its three workers'."""
    return [ORCHESTRATOR_BOT, *(group.account_for(role) for role in Role)]


class Pager:
    """The watchman's own Telegram path; a message that could not be sent is tried again next tick."""

    def __init__(self, config: WatchmanConfig, base_dir: Path) -> None:
        self.client: TelegramClient | None = None
        if config.telegram.enabled:
            self.client = TelegramClient(config.telegram.api_url, load_credentials(config.telegram, base_dir=base_dir),
                                         timeout=5.0)
        self.pending: list[str] = []

    def send(self, text: str) -> None:
        log.warning("watchman alert: %s", text)
        self.pending.append(text)
        self.flush()

    def flush(self) -> None:
        while self.client is not None and self.pending:
            result = self.client.send(self.pending[0])
            if result.status in (SendStatus.OK, SendStatus.BAD_REQUEST):
                if result.status is SendStatus.BAD_REQUEST:
                    log.error("watchman: Telegram refused an alert for good: %s", result.description)
                self.pending.pop(0)
                continue
            log.warning("watchman: Telegram not reached (%s): %s; trying again next tick", result.status.value,
                        result.description)
            return

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
