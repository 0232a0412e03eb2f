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
from decimal import Decimal, InvalidOperation
from types import FrameType

import click

from venues.simulator.server import SimulatorServer

logger = logging.getLogger(__name__)


def _collateral(ctx: click.Context, param: click.Parameter, value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter("must be a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise click.BadParameter("must be a non-negative number")
    return amount


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
def sim(backpack_port: int, lighter_port: int, telegram_port: int, seed: int, latency_ms: float,
        collateral: Decimal, price_tick_secs: float, fixed_prices: bool) -> None:
    """Run local Backpack, Lighter and Telegram servers (demo, tests, paper trading).

    \b
    Example:
      xtb sim --backpack-port 0 --lighter-port 0 --telegram-port 0
    """
    server = SimulatorServer(backpack_port=backpack_port, lighter_port=lighter_port, telegram_port=telegram_port,
                             seed=seed, latency_ms=latency_ms, starting_collateral=collateral,
                             price_tick_secs=None if fixed_prices else price_tick_secs)
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
