"""``xtb watchman``: the dead-man switch outside the cluster (``orchestrator.watchman``)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Any

import click

from core.config import ConfigError, Settings, load_settings
from xtb_tasks.cli import UserError

log = logging.getLogger(__name__)


def _watchman_url(settings: Settings) -> str:
    from core.redis_conn import configured_url, embedded_url

    # The URL only, answering or not: the watchman never starts a Redis, it looks at the cluster's.
    own = settings.watchman.redis_url if settings.watchman is not None else None
    return own or configured_url(settings) or embedded_url()


@click.command("watchman")
@click.option("--once", is_flag=True,
              help="Read every watched account and Redis once, print them as JSON, exit 1 if one is unreadable.")
@click.pass_context
def watchman(ctx: click.Context, once: bool) -> None:
    """Watch the groups' positions from outside the cluster; alert (and unwind, if configured).

    Needs the [watchman] section: its own key per account, its own Telegram path. Runs until SIGTERM.

    \b
    Example:
      xtb --config xtb.toml watchman
    """
    from core.watchman_config import watched_groups
    from monitoring.telegram import CredentialsError
    from orchestrator.watchman import Watchman
    from orchestrator.watchman_io import ClusterProbe, Pager, group_venues

    settings = load_settings((ctx.obj or {}).get("config_file"))
    config = settings.watchman
    if config is None:
        raise ConfigError("watchman", "missing; expected a [watchman] section with the watchman's own keys per account",
                          str(settings.path))
    try:
        pager = Pager(config, settings.base_dir)
    except CredentialsError as exc:
        raise ConfigError("watchman.telegram", str(exc), str(settings.path)) from None
    venues = []
    try:
        for group in watched_groups(config, settings.groups):
            venues.append(group_venues(settings, config, group))
    except ConfigError as exc:
        for built in venues:
            built.close()
        raise exc.with_path(str(settings.path)) from None
    probe = ClusterProbe(_watchman_url(settings), settings.redis_access)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopper(stop))
    try:
        if once:
            summary = Watchman(config, venues, probe, pager).check()
            click.echo(json.dumps(summary))
            unread = [name for name, group in summary["groups"].items()
                      if group is None or None in group["positions"].values()]
            if unread:
                raise UserError(f"positions not readable in group {', '.join(unread)} (see the log above)")
        else:
            Watchman(config, venues, probe, pager).run(stop)
    finally:
        for built in venues:
            built.close()
        probe.close()
        pager.close()


def _stopper(stop: threading.Event) -> Any:
    def handler(signum: int, _frame: Any) -> None:
        log.info("watchman: signal %d, stopping", signum)
        stop.set()

    return handler
