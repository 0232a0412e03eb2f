"""Run the Backpack, Lighter and Telegram simulators in one process.

All three aiohttp apps share one :class:`market.Exchange` and run on ONE asyncio loop in a daemon
thread, so tests and ``xtb sim`` can start them with a context manager::

    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0) as sim:
        sim.urls["backpack"], sim.urls["lighter_ws"], sim.exchange, sim.telegram

Port 0 picks any free port; :attr:`SimulatorServer.urls` then holds the real ones. The Backpack
WebSocket is served at ``/ws`` on the Backpack port, the Lighter one at ``/stream`` on the Lighter
port. The admin API (``/_sim/...``, documented in :mod:`simulators.admin`) is mounted on both
the Backpack and the Lighter servers. A background ticker calls ``exchange.step_prices()`` every
``price_tick_secs`` (``None`` keeps prices fixed, which tests that assert prices want). The market
rules (depth, fees, funding, margin and liquidation, price path, Backpack limits) are the
``profile`` (:class:`profile.SimProfile`, defaults documented there); when funding or liquidation is
on, a clock task calls ``exchange.clock()`` every ``CLOCK_SECS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from decimal import Decimal
from types import TracebackType

from aiohttp import web

from simulators import market
from simulators.admin import POSITION_HOOK, PositionHook, mount_admin
from simulators.backpack import create_backpack_app
from simulators.lighter import create_lighter_app
from simulators.lighter_rules import LighterRules
from simulators.profile import SimProfile
from simulators.telegram import TelegramState, create_telegram_app

logger = logging.getLogger(__name__)

#: How long stop() lets in-flight requests (a hung fault, say) finish before cutting them off.
SHUTDOWN_GRACE_SECS = 0.5
START_TIMEOUT_SECS = 15.0
#: How often time-driven rules (funding due, maintenance breached) are checked when they are on.
CLOCK_SECS = 0.05


class SimulatorServer:
    """The three simulators on one background event loop."""

    def __init__(self, *, host: str = "127.0.0.1", backpack_port: int = 18080, lighter_port: int = 18081,
                 telegram_port: int = 18082, seed: int = 7, latency_ms: float = 0.0,
                 starting_collateral: Decimal = Decimal(10000), price_tick_secs: float | None = 1.0,
                 profile: SimProfile | None = None, lighter_rules: LighterRules | None = None) -> None:
        self.host = host
        #: Lighter-only rules (lighter_rules.py: tiers, rate limits, nonce window and lag, history).
        self.lighter_rules = lighter_rules
        self.ports = {"backpack": backpack_port, "lighter": lighter_port, "telegram": telegram_port}
        self.price_tick_secs = price_tick_secs
        self.exchange = market.Exchange(seed=seed, starting_collateral=starting_collateral, profile=profile)
        self.exchange.latency_ms = latency_ms
        self.telegram = TelegramState()
        self.urls: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._ticker: asyncio.Task[None] | None = None
        self._clock: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> dict[str, str]:
        """Start every server; returns :attr:`urls` once all of them listen."""
        if self._thread is not None:
            return self.urls
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="xtb-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECS):
            raise RuntimeError("simulator did not start in time")
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"simulator failed to start: {self._error}") from self._error
        return self.urls

    def stop(self) -> None:
        """Close every server and the loop thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(SHUTDOWN_GRACE_SECS + 10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- loop thread -------------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            loop.run_until_complete(self._shutdown())
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _apps(self) -> dict[str, web.Application]:
        backpack = create_backpack_app(self.exchange)
        lighter = create_lighter_app(self.exchange, self.lighter_rules)
        hooks: list[PositionHook] = [app[POSITION_HOOK] for app in (backpack, lighter) if POSITION_HOOK in app]
        mount_admin(backpack, self.exchange, hooks)
        mount_admin(lighter, self.exchange, hooks)
        return {"backpack": backpack, "lighter": lighter, "telegram": create_telegram_app(self.telegram)}

    async def _startup(self) -> None:
        ports: dict[str, int] = {}
        for name, app in self._apps().items():
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECS)
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, self.host, self.ports[name])
            await site.start()
            ports[name] = _bound_port(runner)
        base = {name: f"http://{self.host}:{port}" for name, port in ports.items()}
        self.urls = {
            "backpack": base["backpack"],
            "backpack_ws": f"ws://{self.host}:{ports['backpack']}/ws",
            "lighter": base["lighter"],
            "lighter_ws": f"ws://{self.host}:{ports['lighter']}/stream",
            "telegram": base["telegram"],
        }
        if self.price_tick_secs is not None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(self.price_tick_secs))
        if self.exchange.profile.needs_clock:
            self._clock = asyncio.get_running_loop().create_task(self._run_clock())
        logger.info("simulators listening: %s", self.urls)

    async def _tick(self, secs: float) -> None:
        while True:
            await asyncio.sleep(secs)
            self.exchange.step_prices()

    async def _run_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_SECS)
            try:
                self.exchange.clock()
            except Exception:  # one bad settlement must not stop funding and liquidations for good
                logger.exception("simulator clock failed")

    async def _shutdown(self) -> None:
        for task in (self._ticker, self._clock):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = self._clock = None
        for runner in reversed(self._runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()


def _bound_port(runner: web.AppRunner) -> int:
    """The port the runner's only site actually bound (matters when asked for port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("server bound no TCP address")
