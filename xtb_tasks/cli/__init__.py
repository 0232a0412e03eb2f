"""The ``xtb`` command line.

Subcommands live next to what they drive and are imported only when used, so ``xtb --help``
stays fast and a broken optional area cannot break the others. Every failure a user can cause
ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

import click

from core.config import CONFIG_ENV, ConfigError
from core.errors import EXIT_FAILURE, EXIT_USAGE, XtbError

# name -> "module:attribute" of a click command or group.
SUBCOMMANDS: dict[str, str] = {
    "check-config": "xtb_tasks.cli.config_commands:check_config",
    "config": "xtb_tasks.cli.config_commands:config_group",
    "redis": "xtb_tasks.cli.config_commands:redis_command",
    "workers": "xtb_tasks.cli.config_commands:workers_command",
    "sim": "simulators.cli:sim",
    "order": "xtb_tasks.cli.venue:order",
    "position": "xtb_tasks.cli.venue:position",
    "flatten": "xtb_tasks.cli.venue:flatten",
    "diag": "xtb_tasks.cli.diag:diag",
    "cycle": "xtb_tasks.cli.cycle:cycle",
    "recover": "xtb_tasks.cli.cycle:recover",
    "group": "xtb_tasks.cli.group:group",
    "status": "xtb_tasks.cli.cycle:status",
    "alerts": "xtb_tasks.cli.monitoring:alerts",
    "dashboard": "xtb_tasks.cli.monitoring:dashboard",
    "demo": "xtb_tasks.cli.demo:demo",
    "watchman": "xtb_tasks.cli.watchman:watchman",
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


class UserError(XtbError):
    """A failure the user can act on: printed as one line, exit status ``exit_code``."""

    reason = "user"

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit status a failure ends ``xtb`` with; the only place that maps them."""
    from redis import RedisError

    from venues.base import VenueError

    if isinstance(exc, ConfigError):
        return exc.render(), EXIT_USAGE
    if isinstance(exc, click.UsageError):
        # What is wrong, and where to look.
        command = exc.ctx.command_path if exc.ctx else "xtb"
        return f"{' '.join(exc.format_message().split())} (see: {command} --help)", EXIT_USAGE
    if isinstance(exc, click.exceptions.Abort):
        return "aborted", 130
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, XtbError):
        return (f"{exc.label}: {exc}" if exc.label else str(exc)), exc.exit_code
    if isinstance(exc, VenueError):
        return f"venue: {exc}", EXIT_FAILURE
    if isinstance(exc, RedisError):
        return f"redis: {exc}", EXIT_FAILURE
    # Anything else is a bug or an environment problem; the log (-v) has the traceback.
    return f"{type(exc).__name__}: {exc} (run with -v for details)", EXIT_FAILURE


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="xtb", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (Exception, KeyboardInterrupt) as exc:
        logging.getLogger("xtb").debug("command failed", exc_info=True)
        message, status = describe(exc)
        click.echo(message if status == 130 else f"error: {message}", err=True)
        sys.exit(status)


if __name__ == "__main__":
    main()
