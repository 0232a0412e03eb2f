"""The ``xtb`` command line.

Subcommands live next to what they drive and are imported only when used, so ``xtb --help``
stays fast and a broken optional area cannot break the others. Every failure a user can cause
ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from xtb_tasks.core.config import CONFIG_ENV, ConfigError

# name -> "module:attribute" of a click command or group.
SUBCOMMANDS: dict[str, str] = {
    "check-config": "xtb_tasks.cli.config_commands:check_config",
    "config": "xtb_tasks.cli.config_commands:config_group",
    "redis": "xtb_tasks.cli.config_commands:redis_command",
    "workers": "xtb_tasks.cli.config_commands:workers_command",
    "sim": "venues.simulator.cli:sim",
    "order": "xtb_tasks.cli.venue:order",
    "position": "xtb_tasks.cli.venue:position",
    "flatten": "xtb_tasks.cli.venue:flatten",
    "diag": "xtb_tasks.cli.diag:diag",
    "cycle": "xtb_tasks.cli.cycle:cycle",
    "recover": "xtb_tasks.cli.cycle:recover",
    "status": "xtb_tasks.cli.cycle:status",
    "alerts": "xtb_tasks.cli.monitoring:alerts",
    "dashboard": "xtb_tasks.cli.monitoring:dashboard",
    "demo": "xtb_tasks.cli.demo:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in SUBCOMMANDS if self._importable(name))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None
            raise
        command: click.Command = getattr(module, attr)
        return command

    @staticmethod
    def _importable(name: str) -> bool:
        module_name = SUBCOMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", envvar="XTB_CONFIG", default=None, metavar="FILE",
              help="Config file (default: $XTB_CONFIG or ./xtb.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """XTradingBot liquidation hedge on Celery and Redis.

    \b
    Example:
      xtb --config examples/demo.toml check-config
      xtb demo
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    if config_file:
        # The Celery app is built lazily from $XTB_CONFIG, here and in every process we start.
        os.environ[CONFIG_ENV] = str(Path(config_file).resolve())


class UserError(click.ClickException):
    """A failure the user can act on: printed as one line, exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="xtb", standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"error: {exc.render()}", err=True)
        sys.exit(2)
    except click.UsageError as exc:
        # One line, like every other error: what is wrong, and where to look.
        command = exc.ctx.command_path if exc.ctx else "xtb"
        message = " ".join(exc.format_message().split())
        click.echo(f"error: {message} (see: {command} --help)", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Anything else is a bug or an environment problem; one line, and the log has details.
        logging.getLogger("xtb").debug("unhandled error", exc_info=True)
        from venues.base import VenueError
        from xtb_tasks.core.redis_conn import RedisUnavailable

        if isinstance(exc, RedisUnavailable):
            click.echo(f"error: redis: {exc}", err=True)
        elif isinstance(exc, VenueError):
            click.echo(f"error: venue: {exc}", err=True)
        else:
            click.echo(f"error: {type(exc).__name__}: {exc} (run with -v for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
