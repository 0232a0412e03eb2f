"""``xtb group resume``: lift the kill switch of a group stopped by an unresolved exit.

An unresolved exit stops its group (``orchestrator.kill_switch``); no cycle starts until an
operator has looked. Resuming reads the three accounts again, fresh from the venues, and refuses
while any of them holds a position or cannot be read: unknown is not zero. Dust below the venue's
smallest order does not refuse: nothing can close it, and the next cycle carries it as its baseline.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from core.config import GroupConfig, Role, Settings, load_settings
from xtb_tasks.cli import UserError

log = logging.getLogger(__name__)

#: How long a position read through an account's worker may take before it counts as unknown.
READ_TIMEOUT_SECS = 30.0


@click.group("group")
def group() -> None:
    """Hedge groups: resume a group stopped by an unresolved exit (the kill switch)."""


def _readings(settings: Settings, grp: GroupConfig, direct_mode: bool) -> list[Any]:
    from orchestrator.kill_switch import AccountReading

    def reading(role: Role, result: dict[str, Any] | None, error: str) -> AccountReading:
        # A ``get_position`` answer: the position, its error, the market's rules.
        quantity, rules = (result or {}).get("quantity"), (result or {}).get("rules") or {}
        try:
            value = None if quantity is None else Decimal(str(quantity))
            smallest = max(Decimal(str(rules["step_size"])), Decimal(str(rules["min_quantity"]))) if rules else None
        except (InvalidOperation, KeyError):
            value, smallest, error = None, None, f"unreadable quantity {quantity!r}"
        return AccountReading(role.short, grp.account_for(role), value,
                              error or str((result or {}).get("error") or ""), smallest)

    if direct_mode:
        from xtb_tasks.cli.venue import direct
        from xtb_tasks.execution.venue_ops import read_position

        def position(connector: Any, client: Any, symbol: str) -> dict[str, Any]:
            return {**read_position(client, connector, symbol).to_json(),
                    "rules": connector.market_rules(symbol).to_json()}

        out = []
        for role in Role:
            symbol = grp.symbol_for(role)
            try:
                result = direct(grp.account_for(role), settings, lambda c, r, s=symbol: position(c, r, s))
            except Exception as exc:  # any failure to read (a busy lease, the venue) leaves it unknown
                out.append(reading(role, None, str(exc)))
                continue
            out.append(reading(role, result, ""))
        return out

    from xtb_tasks.worker.celery_app import app
    from xtb_tasks.worker.results import wait_result

    # All three reads in flight at once, each on its account's own queue: the position with its market's rules.
    pending = {role: app.send_task("xtb.venue.get_position", queue=grp.account_for(role),
                                   kwargs={"account": grp.account_for(role), "symbol": grp.symbol_for(role)}).id
               for role in Role}
    out = []
    for role, task_id in pending.items():
        try:
            out.append(reading(role, wait_result(app, task_id, READ_TIMEOUT_SECS), ""))
        except TimeoutError:
            out.append(reading(role, None, f"no answer from the {grp.account_for(role)} worker within "
                                           f"{READ_TIMEOUT_SECS:.0f}s"))
        except Exception as exc:  # the read task's own error
            out.append(reading(role, None, str(exc)))
    return out


@group.command("resume")
@click.argument("name")
@click.option("--direct", "direct_mode", is_flag=True,
              help="Read the positions in this process instead of through the account workers.")
@click.pass_context
def resume(ctx: click.Context, name: str, direct_mode: bool) -> None:
    """Let cycles start again in group NAME after an unresolved exit stopped it.

    Refuses (exit 1) while any of the group's three accounts reads a position, or cannot be read; a
    leftover below the venue's smallest order is dust, which no order can close, and does not refuse.
    Check with `xtb status`, close what is open (`xtb flatten --group NAME`), then resume.

    \b
    Example:
      xtb --config examples/demo.toml group resume main
    """
    from core.redis_conn import checked_client
    from monitoring.alert_texts import AlertKind, format_group_resumed
    from monitoring.alerts import raise_alert
    from orchestrator.kill_switch import clear_stop, group_stop, resume_blockers

    settings = load_settings((ctx.obj or {}).get("config_file"))
    grp = settings.group(name)  # an unknown group is a ConfigError: one line, exit 2
    client = checked_client(settings)
    stop = group_stop(client, name)
    if stop is None:
        click.echo(f"group {name} is not stopped; nothing to resume")
        return
    readings = _readings(settings, grp, direct_mode)
    found = ", ".join(r.describe() for r in readings)
    blockers = resume_blockers(readings)
    if blockers:
        # The error line below is the message; the log only keeps it for -v runs.
        log.debug("group=%s resume refused (stopped by cycle=%s): %s", name, stop.cycle_id, found)
        raise UserError(f"group {name} stays stopped (cycle {stop.cycle_id} turned unresolved, {stop.reason}): "
                        f"read {found}; not flat or unknown: {', '.join(b.account for b in blockers)}; close "
                        f"them (xtb flatten --group {name}) and run xtb group resume {name} again")
    if not clear_stop(client, stop):
        raise UserError(f"group {name} was stopped again meanwhile; see xtb status")
    log.info("group=%s resumed by the operator after cycle=%s; positions %s", name, stop.cycle_id, found)
    raise_alert(client, AlertKind.GROUP_RESUMED,
                format_group_resumed(name, stop.cycle_id, {r.role: r.quantity for r in readings}),
                group=name, stopped_cycle=stop.cycle_id, source="cli")
    click.echo(f"group {name} resumed (stopped by cycle {stop.cycle_id}, {stop.reason}); positions read: {found}")
