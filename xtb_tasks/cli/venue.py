"""``xtb order``, ``xtb position``, ``xtb flatten`` and ``xtb diag``: one account at a time.

By default a command goes through the account's queue (so it is serialised with everything
else the worker does); ``--direct`` runs the same code in this process under the same lease.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import click

from core.config import DECIMAL_LIMIT, Role, Settings, load_settings, parse_decimal
from xtb_tasks.cli import UserError

RESULT_TIMEOUT_SECS = 90.0


def _settings(ctx: click.Context) -> Settings:
    return load_settings((ctx.obj or {}).get("config_file"))


def symbol_of(settings: Settings, account: str, symbol: str | None) -> str:
    if symbol:
        return symbol
    found = settings.role_of(account)
    if found is None:
        raise UserError(f"account {account!r} is in no group; pass --symbol")
    group, role = found
    return settings.group(group).symbol_for(role)


def parse_size(text: str) -> Decimal:
    size = parse_decimal(text)
    if size is None or size <= 0:
        raise UserError(f"--size: expected a positive decimal number in ASCII digits below "
                        f"{DECIMAL_LIMIT:,}, got {text!r}")
    return size


def via_queue(task: str, kwargs: dict[str, Any], queue: str) -> dict[str, Any]:
    from xtb_tasks.worker.celery_app import app
    from xtb_tasks.worker.results import TaskFailed, wait_result

    task_id = app.send_task(task, kwargs=kwargs, queue=queue).id
    try:
        return wait_result(app, task_id, RESULT_TIMEOUT_SECS)
    except TaskFailed as exc:
        raise UserError(f"{task} on {queue} failed: {exc}") from None
    except TimeoutError:
        raise UserError(f"no answer from the {queue} worker within {RESULT_TIMEOUT_SECS:.0f}s; "
                        f"is it running? (celery -A xtb_tasks worker -Q {queue})") from None


def direct(account: str, settings: Settings, fn: Any) -> Any:
    """Run ``fn(connector, redis)`` in process under the account lease (same rule as the worker)."""
    from core import keys
    from core.redis_conn import checked_client
    from xtb_tasks.worker.connectors import get_connector
    from xtb_tasks.worker.lease import LEASE_TTL, break_dead_lease, lease_token

    client = checked_client(settings)
    key = keys.account_lock(account)
    lock = client.lock(key, timeout=LEASE_TTL, blocking_timeout=10, thread_local=False)
    if not lock.acquire(token=lease_token()) and not (
            break_dead_lease(client, key) and lock.acquire(blocking=False, token=lease_token())):
        raise UserError(f"account {account!r} is busy (its lease is held by a worker); try again or drop --direct")
    connector = get_connector(account, settings)
    try:
        return fn(connector, client)
    finally:
        lock.release()
        connector.close()


@click.command("order")
@click.option("--account", required=True, help="Account name from the config.")
@click.option("--side", type=click.Choice(["buy", "sell"]), required=True)
@click.option("--size", "size_text", required=True, help="Base quantity, e.g. 0.01.")
@click.option("--symbol", default=None, help="Market (default: the account's group symbol).")
@click.option("--reduce-only", is_flag=True)
@click.option("--max-slippage", type=click.FloatRange(0.0, 0.5), default=None,
              help="Lighter worst-price distance, 0 to 0.5 (e.g. 0.001).")
@click.option("--direct", "direct_mode", is_flag=True, help="Run in this process instead of through the queue.")
@click.pass_context
def order(ctx: click.Context, account: str, side: str, size_text: str, symbol: str | None, reduce_only: bool,
          max_slippage: float | None, direct_mode: bool) -> None:
    """Send one market order and print the venue's answer as JSON.

    \b
    Example:
      xtb --config examples/demo.toml order --account lighter1 --side buy --size 0.01 --direct
    """
    settings = _settings(ctx)
    cfg = settings.account(account)
    size = parse_size(size_text)
    market = symbol_of(settings, account, symbol)
    from core.client_ids import allocate_client_ids, record_intent
    from core.redis_conn import checked_client

    client = checked_client(settings)
    client_id = allocate_client_ids(client, account, cfg.venue.value, 1)[0]
    record_intent(client, account, client_id, leg="manual")
    kwargs = {"account": account, "symbol": market, "side": side, "client_ids": [client_id], "quantity": str(size),
              "reduce_only": reduce_only, "max_slippage": max_slippage}
    if direct_mode:
        from venues.base import Side
        from xtb_tasks.execution.venue_ops import OrderRequest, submit_order

        request = OrderRequest(account=account, symbol=market, side=Side(side), client_ids=(client_id,),
                               quantity=size, reduce_only=reduce_only, max_slippage=max_slippage)
        result = {**direct(account, settings, lambda c, r: submit_order(r, c, request)).to_json(), "account": account}
    else:
        result = via_queue("xtb.venue.submit_market_order", kwargs, account)
    click.echo(json.dumps(result))
    if result.get("state") == "failed":
        raise UserError(f"order {client_id} on {account} failed: {result.get('reason')}")


@click.command("position")
@click.option("--account", required=True)
@click.option("--symbol", default=None)
@click.option("--direct", "direct_mode", is_flag=True)
@click.pass_context
def position(ctx: click.Context, account: str, symbol: str | None, direct_mode: bool) -> None:
    """Print the account's signed position (null when the venue could not be read).

    \b
    Example:
      xtb --config examples/demo.toml position --account backpack --direct
    """
    settings = _settings(ctx)
    settings.account(account)
    market = symbol_of(settings, account, symbol)
    if direct_mode:
        from xtb_tasks.execution.venue_ops import read_position

        result = direct(account, settings, lambda c, r: read_position(r, c, market).to_json())
    else:
        result = via_queue("xtb.venue.get_position", {"account": account, "symbol": market}, account)
    click.echo(json.dumps(result))
    if result.get("quantity") is None:
        raise UserError(f"position of {account} is unknown: {result.get('error')}")


@click.command("flatten")
@click.option("--account", default=None, help="One account.")
@click.option("--group", default=None, help="All three accounts of a group, in parallel.")
@click.pass_context
def flatten(ctx: click.Context, account: str | None, group: str | None) -> None:
    """Close positions with reduce-only market orders until a fresh read says flat.

    \b
    Example:
      xtb --config examples/demo.toml flatten --group main
    """
    if bool(account) == bool(group):
        raise UserError("pass exactly one of --account or --group")
    settings = _settings(ctx)
    if account:
        targets = [(account, symbol_of(settings, account, None))]
    else:
        grp = settings.group(str(group))
        targets = [(grp.account_for(role), grp.symbol_for(role)) for role in Role]
    from core.client_ids import allocate_client_ids
    from core.redis_conn import checked_client
    from xtb_tasks.worker.celery_app import app

    client = checked_client(settings)
    from xtb_tasks.worker.results import wait_result

    pending = []
    for name, market in targets:
        ids = allocate_client_ids(client, name, settings.account(name).venue.value, 3)
        pending.append(app.send_task("xtb.venue.flatten", kwargs={"account": name, "symbol": market,
                                                                  "client_ids": ids}, queue=name).id)
    results = [wait_result(app, task_id, RESULT_TIMEOUT_SECS) for task_id in pending]
    click.echo(json.dumps(results))
    not_flat = [_left_open(r) for r in results if not r.get("flat")]
    if not_flat:
        raise UserError(f"not flat after flatten: {'; '.join(not_flat)}; check positions with xtb position")


def _left_open(result: dict[str, Any]) -> str:
    # A position that could not be read is unknown, never "not flat" with no number: the operator
    # learns why (a spent rate budget clears by itself; a refused key does not).
    final = result.get("final_position") or {}
    if final.get("quantity") is None:
        return f"{result['account']} unknown ({final.get('error') or 'no read'})"
    return f"{result['account']} at {final['quantity']}"

