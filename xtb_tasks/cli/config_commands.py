"""``xtb check-config``, ``xtb config show``, ``xtb redis`` and ``xtb workers``."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from enum import Enum
from typing import Any

import click
import msgspec

from core.config import Settings, load_settings

SECRET_KEYS = ("secret", "private", "token", "password")


def settings_from(ctx: click.Context) -> Settings:
    return load_settings((ctx.obj or {}).get("config_file"))


@click.command("check-config")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def check_config(ctx: click.Context, path: str | None) -> None:
    """Validate a config file; exit 2 with one line naming the bad key.

    \b
    Example:
      xtb check-config examples/demo.toml
    """
    settings = load_settings(path or (ctx.obj or {}).get("config_file"))
    click.echo(f"ok: {settings.path}: {len(settings.accounts)} accounts "
               f"({', '.join(settings.accounts)}), {len(settings.groups)} groups ({', '.join(settings.groups)})")


def _jsonable(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return {name: _jsonable(getattr(value, name)) for name in value.__struct_fields__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def redact(value: Any, key: str = "") -> Any:
    """Hide anything that looks like a secret; env var *names* stay visible, their values never."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key.endswith("_env") or key == "keys_file":
        return value
    if any(word in key.lower() for word in SECRET_KEYS) and value not in (None, ""):
        return "***"
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return value


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the validated config as JSON with secrets redacted.

    \b
    Example:
      xtb --config examples/demo.toml config show
    """
    settings = settings_from(ctx)
    click.echo(json.dumps(redact(_jsonable(settings)), indent=2))


@click.command("redis")
@click.option("--port", type=int, default=None,
              help="Port (default: $XTB_EMBEDDED_REDIS_PORT or 16379, a free one when that is in use).")
def redis_command(port: int | None) -> None:
    """Run this checkout's embedded Redis in the foreground (data in ./.xtb/redis, append-only file).

    The port it takes is recorded in the data directory, so the other commands of this checkout
    (workers, cycle, status) find it.

    \b
    Example:
      xtb redis
      xtb redis --port 16380
    """
    from core.redis_conn import claim_embedded_port, embedded_answers, embedded_dir, embedded_url, server_args
    from xtb_tasks.cli import UserError

    directory = embedded_dir()
    if embedded_answers():
        raise UserError(f"this checkout's embedded Redis already runs at {embedded_url()} (data in {directory})")
    port = claim_embedded_port(port)
    click.echo(f"embedded Redis on redis://127.0.0.1:{port}/0 (data in {directory})", err=True)
    args = server_args(port, directory)
    os.execv(args[0], args)


@click.command("workers")
@click.option("--seconds", type=float, default=0.0, help="Stop after this many seconds (0 = until Ctrl-C).")
@click.pass_context
def workers_command(ctx: click.Context, seconds: float) -> None:
    """Start one real worker per configured account plus the orchestrator worker.

    \b
    Example:
      xtb --config examples/demo.toml workers
    """
    from xtb_tasks.cli.processes import ProcessSet

    settings = settings_from(ctx)
    with ProcessSet(settings) as procs:
        procs.start_workers()
        names = procs.ping_workers()
        click.echo(f"workers answering ping: {', '.join(sorted(names))}")
        deadline = time.monotonic() + seconds if seconds else None
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
            for name in procs.supervise():
                click.echo(f"{name} died and was restarted (log: {procs.log_dir / (name + '.log')})", err=True)

