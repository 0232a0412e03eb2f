"""``xtb diag min-order`` and ``xtb diag smoke``: operator checks of one venue account at a time.

Both print JSON lines on stdout (one per target or step, then a verdict) and exit non-zero with
one line ``name:reason, ...`` on failure. They run in process under the account lease, like
``xtb order --direct``; stop the account's worker or expect "busy" while it holds the lease.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import click

from core.config import Settings, Venue
from xtb_tasks.cli import UserError
from xtb_tasks.cli.venue import _settings, direct, symbol_of

log = logging.getLogger(__name__)


@click.group("diag")
def diag() -> None:
    """Diagnostics: minimum-size orders and the connector smoke test (they trade real size on a real venue)."""


@diag.command("min-order")
@click.option("--target", "targets", multiple=True, metavar="ACCOUNT:DIRECTION[:reduce_only][:MULT]",
              help="Repeatable. Default: lighter1:buy and lighter2:sell, not reduce-only, multiplier 1.")
@click.option("--symbol", default=None, help="Market (default: each account's group symbol).")
@click.option("--max-attempts", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--retry-delay", type=click.FloatRange(0, 30), default=0.5, show_default=True,
              help="Seconds × attempt number between attempts.")
@click.option("--max-slippage", type=click.FloatRange(0, 0.1), default=0.001, show_default=True,
              help="Worst acceptable price distance from the top of book.")
@click.pass_context
def min_order(ctx: click.Context, targets: tuple[str, ...], symbol: str | None, max_attempts: int,
              retry_delay: float, max_slippage: float) -> None:
    """Send the minimum market order the venue accepts on each Lighter target and report the fill.

    The size is max(min base amount, min notional / price) × multiplier, rounded up to the step.
    The orders are not closed afterwards (as in the original); close them with a reduce-only target.

    \b
    Example:
      xtb --config examples/demo.toml diag min-order --target lighter1:buy --target lighter2:sell
      xtb diag min-order --target lighter1:sell:reduce_only
    """
    from xtb_tasks.execution.diagnostics import DEFAULT_TARGETS, MinOrderTarget

    settings = _settings(ctx)
    try:
        parsed = [MinOrderTarget.parse(t) for t in targets] or list(DEFAULT_TARGETS)
    except ValueError as exc:
        raise UserError(f"--target: {exc}", exit_code=2) from None
    jobs = [(t.to_text(), _lighter_symbol(settings, t.account, symbol)) for t in parsed]
    options = {"max_attempts": max_attempts, "retry_delay": retry_delay, "max_slippage": max_slippage,
               "log_level": logging.getLogger().getEffectiveLevel()}
    failures = []
    for target_text, market in jobs:
        result = _in_own_process(target_text, market, options)
        click.echo(json.dumps(result))
        if not result.get("ok"):
            failures.append(f"{result['target']}:{result.get('reason')}")
    click.echo(json.dumps({"ok": not failures, "targets": len(jobs), "failure_reason": ", ".join(failures) or None}))
    if failures:
        raise UserError(", ".join(failures))


def _lighter_symbol(settings: Settings, account: str, symbol: str | None) -> str:
    if settings.account(account).venue is not Venue.LIGHTER:
        raise UserError(f"--target {account}: min-order is for Lighter accounts only", exit_code=2)
    return symbol_of(settings, account, symbol)


def _in_own_process(target_text: str, symbol: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run one target in a fresh process: the Lighter signer keeps process-global state per key
    index, so one process serves one Lighter account (the workers follow the same rule)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(min_order_child, target_text, symbol, options).result()


def min_order_child(target_text: str, symbol: str, options: dict[str, Any]) -> dict[str, Any]:
    """Entry point of the per-target process; always returns a result, never raises."""
    from core.config import load_settings
    from xtb_tasks.execution.diagnostics import MinOrderTarget, Venue, run_min_order

    logging.basicConfig(level=options["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = MinOrderTarget.parse(target_text)
    try:
        settings = load_settings()

        def run(connector: Any, client: Any) -> dict[str, Any]:
            venue = Venue(client, connector, symbol)
            return run_min_order(venue, target, max_attempts=options["max_attempts"],
                                 retry_delay=options["retry_delay"], max_slippage=options["max_slippage"]).to_json()

        return direct(target.account, settings, run)
    except Exception as exc:  # one line for the verdict; the log has the details
        log.debug("account=%s min-order failed", target.account, exc_info=True)
        reason = exc.format_message() if isinstance(exc, click.ClickException) else f"{type(exc).__name__}: {exc}"
        return {"target": target.account, "symbol": symbol, "ok": False, "reason": reason}


@diag.command("smoke")
@click.option("--account", required=True, help="Account name from the config (Backpack or Lighter).")
@click.option("--symbol", default=None, help="Market (default: the account's group symbol).")
@click.option("--side", type=click.Choice(["auto", "buy", "sell"]), default="auto", show_default=True,
              help="Opening side; auto buys when flat and grows an existing position otherwise.")
@click.option("--settle-secs", type=click.FloatRange(0, 30), default=1.0, show_default=True,
              help="Wait before the one recheck of the position.")
@click.option("--max-slippage", type=click.FloatRange(0, 0.1), default=0.001, show_default=True)
@click.pass_context
def smoke(ctx: click.Context, account: str, symbol: str | None, side: str, settle_secs: float,
          max_slippage: float) -> None:
    """Connector smoke test: rules and book, minimum market order, reduce-only close of exactly the
    fill, no open orders left, position back to the baseline, final flatten of any residual.

    \b
    Example:
      xtb --config examples/demo.toml diag smoke --account lighter1
    """
    from xtb_tasks.execution.diagnostics import Venue, run_smoke

    settings = _settings(ctx)
    settings.account(account)
    market = symbol_of(settings, account, symbol)

    def run(connector: Any, client: Any) -> Any:
        return run_smoke(Venue(client, connector, market), side=side, settle_secs=settle_secs,
                         max_slippage=max_slippage)

    report = direct(account, settings, run)
    for step in report.steps:
        click.echo(json.dumps({"account": account, **step}))
    click.echo(json.dumps({"account": account, "symbol": market, "ok": report.ok,
                           "failure_reason": report.failure_reason}))
    if not report.ok:
        raise UserError(str(report.failure_reason))
