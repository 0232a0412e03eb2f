"""Build a venue connector from its account config, once per process.

Credentials are read here, in the worker that owns the account, and never leave it: tasks carry
only the account name. The Lighter signer keeps process-global state keyed by API key index
(two accounts in one process would share, and overwrite, one client), so one process serves one
Lighter account; asking for a second is an error.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from core import keys
from core.budgets import lighter_budget
from core.config import AccountConfig, Settings, Venue, load_settings
from core.errors import XtbError
from core.redis_conn import redis_client, resolve_redis_url
from monitoring.alert_texts import AlertKind
from monitoring.alerts import raise_alert
from venues.base import VenueConnector
from xtb_tasks.execution.venue_ops import note_account_state
from xtb_tasks.worker.lease import break_dead_lease

log = logging.getLogger(__name__)

_connectors: dict[str, VenueConnector] = {}
_lock = threading.Lock()


class ConnectorConfigError(XtbError, RuntimeError):
    """The account cannot be served by this process (credentials, or a second Lighter account)."""


def _build_backpack(cfg: AccountConfig, settings: Settings) -> VenueConnector:
    from venues.backpack.connector import BackpackConnector
    from venues.backpack.credentials import generate_backpack_keys, load_backpack_credentials

    if cfg.create_keys_if_missing and cfg.keys_file and not cfg.keys_file.exists():
        log.info("account=%s generating a demo Backpack key pair into %s", cfg.name, cfg.keys_file)
        generate_backpack_keys(cfg.keys_file)
    credentials = load_backpack_credentials(cfg.keys_file, cfg.api_key_env, cfg.api_secret_env)
    connector = BackpackConnector(cfg.name, cfg.base_url, cfg.ws_url, credentials, window_ms=cfg.window_ms)
    symbols = [g.backpack_symbol for g in settings.groups.values() if g.backpack == cfg.name]
    if cfg.stream and cfg.ws_url and symbols:
        connector.start_streams(symbols)
    return connector


def _build_lighter(cfg: AccountConfig, settings: Settings) -> VenueConnector:
    from venues.lighter.connector import LighterConnector
    from venues.lighter.credentials import USER_API_KEY_MIN, generate_lighter_keys, load_lighter_credentials

    others = [name for name, c in _connectors.items() if c.venue == "lighter" and name != cfg.name]
    if others:
        raise ConnectorConfigError(
            f"this process already serves Lighter account {others[0]!r}; run one worker per Lighter "
            f"account (the signer library keeps process-global state)"
        )
    if cfg.create_keys_if_missing and cfg.keys_file and not cfg.keys_file.exists():
        log.info("account=%s generating a demo Lighter API key into %s", cfg.name, cfg.keys_file)
        generate_lighter_keys(cfg.keys_file, cfg.api_key_index if cfg.api_key_index is not None else USER_API_KEY_MIN)
    credentials = load_lighter_credentials(cfg.keys_file, cfg.private_key_env, cfg.api_key_index)
    assert cfg.account_index is not None  # enforced by the config schema
    url = resolve_redis_url(settings)
    return LighterConnector(cfg.name, cfg.base_url, cfg.ws_url, cfg.account_index, credentials,
                            stream=cfg.stream, reconcile_secs=cfg.reconcile_secs,
                            on_disagreement=lambda text: _alert_disagreement(url, cfg.name, text),
                            on_stream_state=lambda fields: _note_stream(url, cfg.name, fields),
                            budget=lighter_budget(cfg, settings))


def _alert_disagreement(url: str, account: str, text: str) -> None:
    raise_alert(redis_client(url), AlertKind.STREAM_DISAGREEMENT, text, account=account)


def _note_stream(url: str, account: str, fields: dict[str, Any]) -> None:
    note_account_state(redis_client(url), account, **fields)


def get_connector(account: str, settings: Settings | None = None) -> VenueConnector:
    """The connector of ``account`` in this process, built on first use."""
    with _lock:
        connector = _connectors.get(account)
        if connector is not None:
            return connector
        settings = settings or load_settings()
        cfg = settings.account(account)
        try:
            connector = (_build_backpack(cfg, settings) if cfg.venue is Venue.BACKPACK
                         else _build_lighter(cfg, settings))
        except ValueError as exc:
            # Credential loaders raise one-line ValueErrors that name the file or variable, never the value.
            raise ConnectorConfigError(f"account {account!r}: {exc}") from None
        _connectors[account] = connector
        return connector


def close_connectors() -> None:
    with _lock:
        for connector in _connectors.values():
            try:
                connector.close()
            except Exception:
                log.exception("account=%s closing the connector failed", connector.account)
        _connectors.clear()


_consumed_accounts: list[str] = []


def install_prewarm_hooks() -> None:
    """Build each consumed account's connector when a pool child starts, not on the first order, and
    close it (its WebSocket streams and HTTP sessions) when the child shuts down."""
    from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown

    @celeryd_after_setup.connect(weak=False)
    def _remember_queues(sender: object = None, instance: object = None, **_: object) -> None:
        queues = getattr(getattr(instance, "app", None), "amqp", None)
        names = list(queues.queues.consume_from) if queues is not None else []
        try:
            accounts = set(load_settings().accounts)
        except Exception:
            return
        _consumed_accounts[:] = [name for name in names if name in accounts]

    @worker_process_init.connect(weak=False)
    def _prewarm(**_: object) -> None:
        for account in _consumed_accounts:
            _break_dead_lease(account)
            try:
                get_connector(account)
            except Exception:
                # The first task reports the problem properly; a boot-time failure must not kill the pool.
                log.exception("account=%s connector could not be built at worker start", account)

    @worker_process_shutdown.connect(weak=False)
    def _close(**_: object) -> None:
        close_connectors()


def _break_dead_lease(account: str) -> None:
    # A worker restarted after a crash frees the lease its dead process left at once: an emergency
    # exit sends nothing to a leased account (exit_step_tasks.held_leases) and would otherwise wait
    # out the TTL on another host, which cannot tell that the holder is gone.
    try:
        break_dead_lease(redis_client(), keys.account_lock(account))
    except Exception:
        log.warning("account=%s could not check its lease at worker start", account, exc_info=True)
