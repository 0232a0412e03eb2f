"""``xtb alerts relay|send|tail`` and ``xtb dashboard``."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import replace
from typing import Any

import click
import redis

from core.config import Settings, load_settings
from monitoring.alert_texts import AlertKind
from xtb_tasks.cli import UserError

log = logging.getLogger(__name__)


def _settings(ctx: click.Context) -> Settings:
    return load_settings((ctx.obj or {}).get("config_file"))


def _redis(settings: Settings | None) -> redis.Redis:
    from core.redis_conn import checked_client

    r = checked_client(settings)
    r.ping()  # fail here, before a command starts; xtb_tasks.cli.describe words the error
    return r


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@click.group("alerts")
def alerts() -> None:
    """Alerts: deliver to Telegram (relay), raise a test alert, watch them live."""


@alerts.command("relay")
@click.option("--min-idle", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds before another relay's unacknowledged alerts are taken over.")
@click.option("--lock-ttl", type=click.FloatRange(0.5), default=15.0, show_default=True,
              help="Leader lock TTL: how soon a standby takes over from a dead relay.")
@click.option("--backoff-max", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Longest wait between retries of one alert.")
@click.option("--timeout", "http_timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Telegram HTTP timeout in seconds.")
@click.option("--watch/--no-watch", default=True, show_default=True,
              help="Also run the missing-heartbeat watcher.")
@click.option("--watch-every", type=click.FloatRange(0.05), default=0.5, show_default=True,
              help="Seconds between heartbeat checks.")
@click.option("--consumer", default=None, help="Consumer name (default: <host>-<pid>).")
@click.pass_context
def relay(ctx: click.Context, min_idle: float, lock_ttl: float, backoff_max: float, http_timeout: float,
          watch: bool, watch_every: float, consumer: str | None) -> None:
    """Deliver the alert outbox to Telegram: at least once, in order, never twice.

    Also raises heartbeat_missing / heartbeat_back alerts (unless --no-watch). Runs until SIGTERM.

    \b
    Example:
      xtb --config examples/demo.toml alerts relay
    """
    from monitoring.relay import AlertRelay, RelayOptions
    from monitoring.telegram import TelegramClient, load_credentials
    from monitoring.watcher import HeartbeatWatcher

    settings = _settings(ctx)
    enabled = settings.telegram.enabled
    if not enabled and not watch:
        raise UserError("telegram is disabled ([telegram] enabled = false) and --no-watch: nothing to do")
    credentials = load_credentials(settings.telegram) if enabled else None
    r = _redis(settings)
    stop = _stop_on_signals()
    if watch:
        watcher = HeartbeatWatcher(r, check_every=watch_every).start(stop)
    if credentials is None:
        # Alerts still reach the outbox, the live channel and the dashboard; only Telegram is off.
        log.warning("telegram is disabled; only watching heartbeats")
        while watcher.is_alive() and not stop.wait(1.0):
            pass
        return
    client = TelegramClient(settings.telegram.api_url, credentials, timeout=http_timeout)
    options = RelayOptions(min_idle_secs=min_idle, lock_ttl_secs=lock_ttl, backoff_max_secs=backoff_max)
    if consumer:
        options = replace(options, consumer=consumer)
    try:
        AlertRelay(r, client, options).run(stop)
    finally:
        client.close()


@alerts.command("send")
@click.argument("kind", type=click.Choice([k.value for k in AlertKind]))
@click.argument("text")
@click.pass_context
def send(ctx: click.Context, kind: str, text: str) -> None:
    """Raise an alert of KIND with TEXT (goes to Telegram through the relay); prints its id.

    \b
    Example:
      xtb --config examples/demo.toml alerts send cycle_finished "test alert from the operator"
    """
    from monitoring.alerts import raise_alert

    settings = _optional_settings(ctx)
    try:
        alert_id = raise_alert(_redis(settings), AlertKind(kind), text, source="cli")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    click.echo(alert_id)


@alerts.command("tail")
@click.option("--last", "last", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="Show this many recent alerts from the outbox first.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep printing new alerts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def tail(ctx: click.Context, last: int, follow: bool, as_json: bool) -> None:
    """Print recent alerts, then new ones as they are raised.

    \b
    Example:
      xtb --config examples/demo.toml alerts tail --last 20
    """
    from core import keys
    from monitoring.alerts import recent_alerts

    r = _redis(_optional_settings(ctx))
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    if follow:
        # Subscribe before reading history so nothing raised in between is missed.
        pubsub.subscribe(keys.ALERTS_CHANNEL)
    shown: set[str] = set()
    for alert in reversed(recent_alerts(r, last) if last else []):
        shown.add(alert.alert_id)
        _echo_alert(alert.to_json(), as_json)
    if not follow:
        return
    stop = _stop_on_signals()
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.5)
        if not message or message.get("type") != "message":
            continue
        try:
            data = json.loads(message["data"])
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("id") not in shown:
            _echo_alert(data, as_json)
    pubsub.close()


def _echo_alert(alert: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(alert, default=str))
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(alert.get("ts") or 0)))
    click.echo(f"{when}  {alert.get('kind', ''):<18} {alert.get('text', '')}")


def _optional_settings(ctx: click.Context) -> Settings | None:
    """The config when there is one; ``send``/``tail``/``dashboard`` also work from $REDIS_URL alone."""
    from core.config import ConfigError, config_path

    explicit = (ctx.obj or {}).get("config_file")
    try:
        return load_settings(explicit)
    except ConfigError:
        if explicit or config_path(None).exists():
            raise
        return None


#: The original server.js read its token from here; still honoured after ours.
LEGACY_TOKEN_ENV = "TELEMETRY_TOKEN"


@click.command("dashboard")
@click.option("--host", default=None, help="Listen address (default: [dashboard].host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default: [dashboard].port, 10123).")
@click.option("--token", default=None,
              help="Token for /ingest and /admin (default: $XTB_DASHBOARD_TOKEN, then $TELEMETRY_TOKEN). "
                   "Prefer the environment: a command-line token is visible to other users in ps.")
@click.option("--private", is_flag=True, help="Also require the token for the page's data and /metrics.")
@click.pass_context
def dashboard(ctx: click.Context, host: str | None, port: int | None, token: str | None, private: bool) -> None:
    """Telemetry dashboard: live page, the original server.js API (/ingest, /api/status,
    /admin/prune) and /metrics.

    \b
    Example:
      XTB_DASHBOARD_TOKEN=... xtb --config examples/demo.toml dashboard --port 10123
    """
    import os

    from core.config import DashboardConfig
    from monitoring.dashboard import DashboardOptions, make_app, serve

    settings = _optional_settings(ctx)
    config = settings.dashboard if settings is not None else DashboardConfig()
    secret = token or os.environ.get(config.token_env) or os.environ.get(LEGACY_TOKEN_ENV) or ""
    if private and not secret:
        raise UserError(f"--private needs a token (--token or ${config.token_env})")
    options = DashboardOptions(token=secret, private=private)
    app = make_app(_redis(settings), settings, options)
    log.info("dashboard token %s", "required for /ingest and /admin" if secret else "not set: /ingest is open")
    bind_host, bind_port = host or config.host, config.port if port is None else port
    try:
        serve(app, bind_host, bind_port)
    except OSError as exc:
        raise UserError(f"cannot listen on {bind_host}:{bind_port}: {exc.strerror}") from None
