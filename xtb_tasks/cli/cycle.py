"""``xtb cycle start|status|cancel``, ``xtb recover`` and ``xtb status``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import click
import redis

from core import keys
from core.budgets import budget_used, lighter_budget
from core.config import Role, Settings, load_settings
from core.cycle_record import CycleRecord, Stage, active_cycle_ids, recent_cycle_ids
from core.exposure import worst_net_report
from core.legs import LegState, parse_leg
from core.policies import ORCHESTRATOR_QUEUE
from xtb_tasks.cli import UserError


def _context(ctx: click.Context) -> tuple[Settings, redis.Redis]:
    from core.redis_conn import checked_client

    settings = load_settings((ctx.obj or {}).get("config_file"))
    return settings, checked_client(settings)


def cycle_summary(record: CycleRecord) -> dict[str, Any]:
    data = record.all()
    return {
        "cycle_id": record.cycle_id, "group": data.get("group"), "stage": data.get("stage"),
        "positions": data.get("positions") or {}, "net_delta": data.get("net_delta") or None,
        "outcome": data.get("outcome") or None, "reason": data.get("reason") or None,
        "created_at": data.get("created_at"), "updated_at": data.get("updated_at"),
        "legs": {k.removeprefix("leg:"): v for k, v in data.items() if k.startswith("leg:")},
        "pnl": data.get("pnl"), "error": data.get("error"),
        "pnl_split": data.get("pnl_split"), "dust": data.get("dust") or {},
        "worst_net": worst_net_report(data, None if data.get("finished_at") else time.time()),
        "stage_times": {k.removeprefix("t:"): v for k, v in data.items() if k.startswith("t:")},
    }


def report_lines(item: dict[str, Any]) -> list[str]:
    """The end-of-cycle report under a cycle's line: realised PnL per venue, dust, worst net exposure."""
    lines = []
    equity = item.get("pnl") or {}
    for role, part in (item.get("pnl_split") or {}).items():
        if part.get("error"):
            lines.append(f"  pnl {role}: split unknown ({part['error']}); equity {equity.get(role)}")
            continue
        open_text = f", open {part['open']}" if part.get("open") else ""
        lines.append(f"  pnl {role}: net {part.get('net')} = trading {part.get('trading')}, fees {part.get('fees')}, "
                     f"funding {part.get('funding')} ({part.get('fills')} fills{open_text}; equity {equity.get(role)})")
    if not item.get("pnl_split") and equity:
        lines.append(f"  pnl (equity): {', '.join(f'{r} {v}' for r, v in equity.items())}; split not recorded yet")
    for role, quantity in (item.get("dust") or {}).items():
        lines.append(f"  dust {role}: {quantity} (below the venue minimum: flat as far as anything can be traded)")
    worst = item.get("worst_net") or {}
    if worst.get("reads") or worst.get("worst_net_source") == "exit":
        at = worst.get("worst_net_at")
        when = f" at +{float(at) - float(item['created_at']):.1f}s" if at and item.get("created_at") else ""
        beyond = worst.get("beyond_step_secs")
        lines.append(f"  worst net {worst.get('worst_net')}{when} ({worst.get('worst_net_source')}), "
                     f"{beyond if beyond is not None else 'unknown'}s beyond one step")
    return lines


@click.group("cycle")
def cycle() -> None:
    """Start, watch and cancel hedge cycles."""


def parse_overrides(pairs: tuple[str, ...], size: str | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set: expected KEY=VALUE, got {pair!r}", exit_code=2)
        key, value = pair.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    if size is not None:
        overrides["size"] = size
    return overrides


@cycle.command("start")
@click.option("--group", required=True, help="Hedge group from the config.")
@click.option("--size", default=None, help="Explicit Backpack size instead of sizing from collateral.")
@click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE", help="Override a hedge parameter.")
@click.option("--follow", is_flag=True, help="Print each stage with its timing as it happens.")
@click.option("--until", type=click.Choice(["monitoring", "done"]), default="done",
              help="With --follow: stop once hedged (monitoring) or when the cycle ends.")
@click.pass_context
def cycle_start(ctx: click.Context, group: str, size: str | None, pairs: tuple[str, ...], follow: bool,
                until: str) -> None:
    """Start one cycle through the orchestrator queue.

    \b
    Example:
      xtb --config examples/demo.toml cycle start --group main --follow --until monitoring
    """
    _, client = _context(ctx)
    from xtb_tasks.worker.celery_app import app
    from xtb_tasks.worker.hedge_tasks import start_cycle, validate_request
    from xtb_tasks.worker.results import wait_result

    overrides = parse_overrides(pairs, size)
    validate_request(group, overrides)
    try:
        started = wait_result(app, start_cycle.apply_async(kwargs={"group": group, **overrides}).id, 60)
    except TimeoutError:
        raise UserError("no answer from the orchestrator worker within 60s; is it running? "
                        "(celery -A xtb_tasks worker -Q orchestrator)") from None
    except Exception as exc:  # the task's own error, e.g. the group already has an active cycle
        raise UserError(f"cycle not started: {exc}") from None
    cycle_id = started["cycle_id"]
    click.echo(f"cycle {cycle_id} started in group {group}")
    if follow:
        record = follow_cycle(client, cycle_id, lambda line: click.echo(line), until=Stage(until))
        data = record.all()
        if data.get("outcome") == "unresolved":
            raise UserError(f"cycle {cycle_id} is unresolved ({data.get('reason')}): its exit goes on and pages "
                            f"until flat; the group is stopped (xtb status)")


def follow_cycle(client: redis.Redis, cycle_id: str, emit: Callable[[str], None], *, until: Stage = Stage.DONE,
                 timeout: float = 3600.0, interval: float = 0.1, shown: set[str] | None = None) -> CycleRecord:
    """Print stages (with the times the record gives them), fills and positions, until ``until`` or done.

    Stages come from the record's ``t:<stage>`` timestamps, so a stage shorter than the poll
    interval is still reported, in order, with its real timing.
    """
    record = CycleRecord(client, cycle_id)
    deadline = time.monotonic() + timeout
    shown = set() if shown is None else shown  # a caller following in steps passes the same set
    while time.monotonic() < deadline:
        data = record.all()
        origin = float(data.get("created_at") or time.time())
        for event_time, key, line in _new_events(data, shown):
            emit(f"[{event_time - origin:7.2f}s] {line}")
            shown.add(key)
        stage = data.get("stage")
        if stage == Stage.DONE.value or (f"t:{until.value}" in data) or data.get("outcome") == "unresolved":
            return record  # an unresolved exit goes on for as long as it takes: following stops here
        time.sleep(interval)
    raise UserError(f"cycle {cycle_id} still at stage {record.get('stage')} after {timeout:.0f}s")


#: A leg is shown once the venue has answered for it (or it failed before anything was sent).
_NOT_YET_SHOWN = (LegState.ARMED, LegState.SUBMITTING)


def _new_events(data: dict[str, Any], shown: set[str]) -> list[tuple[float, str, str]]:
    events = []
    for key, value in data.items():
        if key.startswith("t:") and key not in shown:
            stage = key.removeprefix("t:")
            extra = f" reason={data.get('reason')}" if stage in ("emergency_exit", "done") and data.get("reason") else ""
            events.append((float(value), key, f"stage {stage}{extra}"))
        elif key.startswith("leg:") and (leg := parse_leg(value)) is not None and leg.state not in _NOT_YET_SHOWN:
            marker = f"{key}:{leg.state.value}:{leg.filled}"
            if marker not in shown:
                when = leg.filled_at or float(data.get("updated_at") or 0)
                events.append((when, marker, f"  {key.removeprefix('leg:')}: {leg.side.value} {leg.filled}/"
                                             f"{leg.requested} on {leg.account} ({leg.state.value}, "
                                             f"avg {leg.avg_price})"))
        elif key.startswith("positions:") and isinstance(value, dict) and key not in shown:
            p = value
            net = p.get("net", "-")
            events.append((float(p.get("read_at") or data.get("updated_at") or 0), key,
                           f"  positions after {key.removeprefix('positions:')}: BP={p.get('BP')} L1={p.get('L1')} "
                           f"L2={p.get('L2')} net={net}"))
    return sorted(events)


@cycle.command("status")
@click.argument("cycle_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cycle_status(ctx: click.Context, cycle_id: str | None, as_json: bool) -> None:
    """Show one cycle, or the active and most recent cycles of every group.

    \b
    Example:
      xtb --config examples/demo.toml cycle status --json
    """
    settings, client = _context(ctx)
    if cycle_id:
        record = CycleRecord(client, cycle_id)
        if not record.exists():
            raise UserError(f"no cycle {cycle_id!r}; list them with: xtb cycle status")
        items = [cycle_summary(record)]
    else:
        ids = list(dict.fromkeys(active_cycle_ids(client) + [c for g in settings.groups
                                                            for c in recent_cycle_ids(client, g, 5)]))
        items = [cycle_summary(CycleRecord(client, c)) for c in ids if CycleRecord(client, c).exists()]
    if as_json:
        click.echo(json.dumps(items if not cycle_id else items[0], default=str))
        return
    for item in items:
        click.echo(f"{item['cycle_id']}  group={item['group']}  stage={item['stage']}  "
                   f"net_delta={item['net_delta']}  outcome={item['outcome'] or '-'}  reason={item['reason'] or '-'}")
        if cycle_id:
            for line in report_lines(item):
                click.echo(line)
    if not items:
        click.echo("no cycles yet")


@cycle.command("cancel")
@click.argument("cycle_id")
@click.pass_context
def cycle_cancel(ctx: click.Context, cycle_id: str) -> None:
    """Stop a cycle: nothing new is entered, all three accounts are flattened.

    \b
    Example:
      xtb --config examples/demo.toml cycle cancel main-20261121-120000-ab12
    """
    _, client = _context(ctx)
    record = CycleRecord(client, cycle_id)
    if not record.exists():
        raise UserError(f"no cycle {cycle_id!r}")
    if record.stage is Stage.DONE:
        raise UserError(f"cycle {cycle_id} already finished ({record.get('outcome')}, {record.get('reason')})")
    record.request_cancel()
    from xtb_tasks.worker.exit_tasks import emergency_exit

    emergency_exit.delay(cycle_id=cycle_id, reason="cancelled")
    click.echo(f"cycle {cycle_id}: cancel requested; flattening all three accounts")


@click.command("recover")
@click.option("--force", is_flag=True, help="Resolve every active cycle now, not only overdue ones.")
@click.option("--unwind", is_flag=True, help="Cancel and flatten every active cycle instead.")
@click.pass_context
def recover(ctx: click.Context, force: bool, unwind: bool) -> None:
    """Resolve cycles left waiting by a crash: resume where safe, unwind otherwise.

    \b
    Example:
      xtb --config examples/demo.toml recover
    """
    _, client = _context(ctx)
    from orchestrator.recovery import sweep, unwind_all
    from xtb_tasks.worker.celery_app import app
    from xtb_tasks.worker.cycle_task import CeleryScheduler

    # The sweep's canvases publish through the current app. Without this it was Celery's default
    # (amqp://localhost): the resumed step went to whatever listened there, or nowhere, silently.
    app.set_current()

    if unwind:
        ids = unwind_all(client, CeleryScheduler())
        click.echo(f"unwinding {len(ids)} cycle(s): {', '.join(ids)}" if ids else "no active cycle")
        return
    actions = sweep(client, CeleryScheduler(), force=force)
    click.echo(json.dumps(actions) if actions else "nothing to recover")


def account_status(client: redis.Redis, settings: Settings, account: str) -> dict[str, Any]:
    state = client.hgetall(keys.account_state(account))
    beats = client.hgetall(keys.HEARTBEAT_LAST)
    beat = next((json.loads(v) for v in beats.values() if json.loads(v).get("account") == account), None)
    age = time.time() - float(beat["timestamp"]) if beat and beat.get("timestamp") else None
    interval = float(beat.get("interval") or settings.telemetry.interval_secs) if beat else settings.telemetry.interval_secs
    heard = state.get("stream_heard_at")
    return {"account": account, "position": state.get("position") or None, "balance": state.get("balance") or None,
            "heartbeat_age_secs": None if age is None else round(age, 2),
            "online": age is not None and age < 2 * interval, "queue_depth": client.llen(account),
            "stream": {"state": state.get("stream_state") or None, "connects": int(state.get("stream_connects") or 0),
                       "heard_age_secs": round(time.time() - float(heard), 2) if heard else None},
            "rate_budget": _budget_used(settings, account)}


def _budget_used(settings: Settings, account: str) -> dict[str, dict[str, int]] | None:
    budget = lighter_budget(settings.account(account), settings)
    return budget_used(budget) if budget is not None else None


def _stream_text(a: dict[str, Any]) -> str:
    stream = a["stream"]
    text = f"  stream {stream['state']} (heard {stream['heard_age_secs']}s ago)" if stream["state"] else ""
    for key, used in (a["rate_budget"] or {}).items():
        text += f"  {key.removeprefix('lighter:')} {used['used']}/{used['limit']} a minute"
    return text


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per group: accounts, positions, heartbeats, net delta, active cycle, stopped or not, queues, pending alerts.

    \b
    Example:
      xtb --config examples/demo.toml status --json
    """
    from orchestrator.kill_switch import group_stop

    settings, client = _context(ctx)
    active = {CycleRecord(client, c).get("group"): c for c in active_cycle_ids(client)}
    groups: list[dict[str, Any]] = []
    for name, grp in settings.groups.items():
        accounts = {role.short: account_status(client, settings, grp.account_for(role)) for role in Role}
        positions = [a["position"] for a in accounts.values()]
        net = None if None in positions else str(sum(Decimal(p) for p in positions))
        cycle_id = active.get(name)
        stop = group_stop(client, name)
        groups.append({"group": name, "accounts": accounts, "net_delta": net, "active_cycle": cycle_id,
                       "stage": CycleRecord(client, cycle_id).get("stage") if cycle_id else None,
                       "stopped": stop.to_json() if stop else None})
    pending = client.xlen(keys.ALERTS_OUTBOX) - client.scard(keys.ALERTS_DELIVERED) if client.exists(
        keys.ALERTS_OUTBOX) else 0
    report = {"groups": groups, "alerts_pending": max(0, pending),
              "orchestrator_queue_depth": client.llen(ORCHESTRATOR_QUEUE)}
    if as_json:
        click.echo(json.dumps(report))
        return
    for g in groups:
        click.echo(f"group {g['group']}: net delta {g['net_delta']}  cycle {g['active_cycle'] or '-'} ({g['stage'] or '-'})")
        if g["stopped"]:
            stopped = g["stopped"]
            click.echo(f"  STOPPED since cycle {stopped['cycle_id']} turned unresolved ({stopped['reason']}): no cycle "
                       f"starts; once the accounts below are flat: xtb group resume {g['group']}")
        for role, a in g["accounts"].items():
            online = "online" if a["online"] else "OFFLINE"
            click.echo(f"  {role} {a['account']:<12} position {a['position']}  balance {a['balance']}  "
                       f"heartbeat {a['heartbeat_age_secs']}s {online}  queue {a['queue_depth']}"
                       f"{_stream_text(a)}")
    click.echo(f"alerts pending delivery: {report['alerts_pending']}")
