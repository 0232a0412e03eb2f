"""Every `xtb` command explains itself: `--help` works and shows an example."""

from __future__ import annotations

import click
from click.testing import CliRunner

from xtb_tasks.cli import SUBCOMMANDS, cli


def all_commands() -> list[list[str]]:
    paths: list[list[str]] = []
    ctx = click.Context(cli)
    for name in SUBCOMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None, f"xtb {name} cannot be loaded"
        if isinstance(command, click.Group):
            paths += [[name, sub] for sub in command.list_commands(ctx)]
        else:
            paths.append([name])
    return paths


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    missing = []
    for path in all_commands():
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        if "Example" not in result.output:
            missing.append(" ".join(path))
    assert missing == [], f"--help without an example: {missing}"
