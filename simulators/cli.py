"""``xtb sim``: run the Backpack, Lighter and Telegram simulators until SIGTERM or Ctrl-C.

Prints exactly one JSON line with the URLs once every server listens (so a parent process can
read it and connect), then stays quiet on stdout; logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import Any

import click

from simulators.lighter_rules import LighterRules, Tier
from simulators.profile import LIGHTER_PREMIUM, LIGHTER_STANDARD, SimProfile
from simulators.server import SimulatorServer

logger = logging.getLogger(__name__)

DEFAULTS = SimProfile()


def _collateral(ctx: click.Context, param: click.Parameter, value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter("must be a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise click.BadParameter("must be a non-negative number")
    return amount


def build_profile(opts: dict[str, Any]) -> SimProfile:
    """The SimProfile the market-rule options describe (the defaults, then each option)."""
    base = SimProfile()
    depth = replace(base.depth, levels=opts["depth_levels"], level_size=opts["depth_size"],
                    size_jitter=opts["depth_jitter"])
    lighter_fees = LIGHTER_PREMIUM if opts["lighter_fee_tier"] == "premium" else LIGHTER_STANDARD
    fees = replace(base.fees, enabled=opts["fees"], lighter=lighter_fees)
    funding = base.funding if opts["funding_secs"] is None else \
        replace(base.funding, enabled=opts["funding_secs"] > 0, interval_secs=opts["funding_secs"] or 3600.0)
    margin = replace(base.margin, enforce_initial=opts["margin"], liquidate=opts["liquidations"])
    path = replace(base.price_path, volatility=opts["volatility"], jump_probability=opts["jump_prob"],
                   jump_size=opts["jump_size"], seed=opts["path_seed"])
    backpack = replace(base.backpack, rate_limit=opts["rate_limit"])
    return SimProfile(depth=depth, fees=fees, funding=funding, margin=margin, price_path=path, backpack=backpack)


def build_lighter_rules(opts: dict[str, Any]) -> LighterRules:
    """The LighterRules the ``--lighter-*`` options describe (the defaults, then each option)."""
    base = LighterRules()
    tiers: dict[int, Tier] = {}
    for item in opts["lighter_account_tier"]:
        account, sep, tier = item.partition("=")
        if not (sep and account.isdigit() and tier in {t.value for t in Tier}):
            raise ValueError(f"--lighter-account-tier {item!r}: expected ACCOUNT_INDEX=standard|premium")
        tiers[int(account)] = Tier(tier)
    lag = base.nonce_lag_ms if opts["lighter_nonce_lag_ms"] is None else opts["lighter_nonce_lag_ms"]
    return replace(base, rate_limit=opts["lighter_rate_limit"],
                   default_tier=Tier(opts["lighter_tier"]), tiers=tiers, nonce_lag_ms=lag,
                   history=not opts["lighter_no_history_limit"])


def _lighter_options(command: Any) -> Any:
    """The Lighter-rule options of ``xtb sim`` (lighter_rules.py documents every rule and its source)."""
    options = [
        click.option("--lighter-rate-limit/--no-lighter-rate-limit", default=LighterRules().rate_limit,
                     show_default=True,
                     help="Lighter: HTTP 429 past the account tier's budget (standard: 60 requests/min per IP "
                          "and per L1 address; premium: 24,000 weight/min), plus 40 txs/min per tx type."),
        click.option("--lighter-tier", type=click.Choice([t.value for t in Tier]), default="standard",
                     show_default=True, help="Lighter account tier of every account (rate limits)."),
        click.option("--lighter-account-tier", multiple=True, metavar="INDEX=TIER",
                     help="Lighter tier of one account index (repeatable), e.g. 281474976710654=premium."),
        click.option("--lighter-nonce-lag-ms", type=click.FloatRange(0), default=None,
                     help=f"Lighter: nextNonce shows an accepted tx only after this many ms "
                          f"(default {LighterRules().nonce_lag_ms:g}; 0 = at once)."),
        click.option("--lighter-no-history-limit", is_flag=True,
                     help="Lighter: list every order in accountOrders (default: last 10K active, 1K inactive, 24 h)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _market_options(command: Any) -> Any:
    """The market-rule options of ``xtb sim`` (profile.py documents every rule and its source)."""
    options = [
        click.option("--depth-levels", type=click.IntRange(1, 1000), default=20, show_default=True,
                     help="Book levels per side on every market."),
        click.option("--depth-size", type=str, default="5", show_default=True, callback=_collateral,
                     help="Base units per book level (thin book: e.g. 0.5 with 3 levels leaves IOC remainders)."),
        click.option("--depth-jitter", type=str, default="0", show_default=True, callback=_collateral,
                     help="Seeded ± fraction applied to each level's size (0 = identical levels)."),
        click.option("--fees/--no-fees", default=DEFAULTS.fees.enabled, show_default=True,
                     help="Charge maker/taker fees on every fill (Backpack 0.02%/0.05%, Lighter by tier)."),
        click.option("--lighter-fee-tier", type=click.Choice(["standard", "premium"]), default="standard",
                     show_default=True, help="Lighter account tier: standard 0/0, premium 0.004%/0.028%."),
        click.option("--funding-secs", type=click.FloatRange(0), default=None,
                     help="Funding interval in seconds; 0 = off (default 3600: the venues settle hourly)."),
        click.option("--margin/--no-margin", default=DEFAULTS.margin.enforce_initial, show_default=True,
                     help="Refuse orders beyond initial margin with the venue's error."),
        click.option("--liquidations/--no-liquidations", default=DEFAULTS.margin.liquidate, show_default=True,
                     help="Liquidate accounts the mark pushes below maintenance margin."),
        click.option("--volatility", type=str, default="0.0005", show_default=True, callback=_collateral,
                     help="Price path: standard deviation of one tick's return."),
        click.option("--jump-prob", type=str, default="0", show_default=True, callback=_collateral,
                     help="Price path: probability of a jump per tick."),
        click.option("--jump-size", type=str, default="0.05", show_default=True, callback=_collateral,
                     help="Price path: jump size as a fraction of the price (random sign)."),
        click.option("--path-seed", type=int, default=None, help="Price path seed (default: --seed)."),
        click.option("--rate-limit/--no-rate-limit", default=DEFAULTS.backpack.rate_limit, show_default=True,
                     help="Backpack: HTTP 429 beyond 2000 requests a minute per API key."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command("sim")
@click.option("--backpack-port", type=click.IntRange(0, 65535), default=18080, show_default=True,
              help="Backpack REST + /ws port (0 = any free port).")
@click.option("--lighter-port", type=click.IntRange(0, 65535), default=18081, show_default=True,
              help="Lighter REST + /stream port (0 = any free port).")
@click.option("--telegram-port", type=click.IntRange(0, 65535), default=18082, show_default=True,
              help="Telegram Bot API port (0 = any free port).")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the price process.")
@click.option("--latency-ms", type=click.FloatRange(0, 600_000), default=0.0, show_default=True,
              help="Delay added to every venue response.")
@click.option("--collateral", type=str, default="10000", show_default=True, callback=_collateral,
              help="Starting collateral of every new account (USDC).")
@click.option("--price-tick-secs", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Seconds between random-walk price steps.")
@click.option("--fixed-prices", is_flag=True, help="Do not move prices (only /_sim/price does).")
@_market_options
@_lighter_options
def sim(backpack_port: int, lighter_port: int, telegram_port: int, seed: int, latency_ms: float,
        collateral: Decimal, price_tick_secs: float, fixed_prices: bool, **market: Any) -> None:
    """Run local Backpack, Lighter and Telegram servers (demo, tests, paper trading).

    Every rule is on by default, as the venues behave; each option switches one off or tunes it.
    Market rules (simulators/profile.py): a 20-level book, fees, hourly funding, initial-margin
    refusals, the liquidation engine and the Backpack rate limit (price jumps are off).
    Lighter rules (simulators/lighter_rules.py): the tier rate limits, standard (60 requests/min
    per IP and per L1 address) or premium (24,000 weight/min), a 200 ms nextNonce lag, the order
    history window, 16 out-of-order nonces and the reserved API key indexes 0-3.

    \b
    Example:
      xtb sim --backpack-port 0 --lighter-port 0 --telegram-port 0
      xtb sim --depth-levels 3 --depth-size 0.5 --funding-secs 60 --jump-prob 0.01
      xtb sim --no-lighter-rate-limit --lighter-nonce-lag-ms 0   # the easy Lighter of the REST-only tests
    """
    try:
        lighter_rules = build_lighter_rules(market)
        profile = build_profile(market)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    server = SimulatorServer(backpack_port=backpack_port, lighter_port=lighter_port, telegram_port=telegram_port,
                             seed=seed, latency_ms=latency_ms, starting_collateral=collateral,
                             price_tick_secs=None if fixed_prices else price_tick_secs, profile=profile,
                             lighter_rules=lighter_rules)
    try:
        urls = server.start()
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sys.stdout.write(json.dumps(urls) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        logger.info("simulators stopped")
