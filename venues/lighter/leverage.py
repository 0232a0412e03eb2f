"""The account's own initial-margin fraction on one market (Lighter's leverage setting).

An account trades at the market's ``default_initial_margin_fraction`` (ETH: 500 bp, 20x) until an
UpdateLeverage tx (type 20, lighter-sdk ``update_leverage``) sets its own, down to the market's
``min_initial_margin_fraction`` (200 bp, 50x). The tx executes after ``sendTx`` answers, so the
setting counts only once the account reports it (``positions[].initial_margin_fraction``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from venues.base import MarketRules, ReasonCode, VenueError
from venues.lighter.parsing import market_index, parse_initial_margin_fraction
from venues.lighter.signer import LighterSigner
from venues.margin import LIGHTER_FRACTION_UNITS

log = logging.getLogger(__name__)

MAX_POLL_INTERVAL = 1.0


async def update_fraction(signer: LighterSigner, read_account: Callable[[], Awaitable[dict[str, Any]]],
                          rules: MarketRules, fraction_bp: int, *, wait: float, poll_interval: float,
                          account: str) -> Decimal:
    """Send UpdateLeverage (cross margin) for ``fraction_bp`` and return the fraction once the account
    reports it. A send whose outcome is unknown (timeout, 5xx) is settled by the same reads."""
    lowest = rules.initial_margin.lowest if rules.initial_margin else None
    lowest_bp = 1 if lowest is None else int(lowest * LIGHTER_FRACTION_UNITS)
    if not lowest_bp <= fraction_bp <= LIGHTER_FRACTION_UNITS:
        raise VenueError(ReasonCode.INVALID_REQUEST, f"initial-margin fraction {fraction_bp} bp is outside "
                                                     f"{lowest_bp}..10000 on {rules.symbol}")
    market = market_index(rules)
    unknown: VenueError | None = None
    try:
        await signer.send_update_leverage(market, fraction_bp, what=f"leverage market={market} fraction={fraction_bp}bp")
    except VenueError as exc:
        if not exc.outcome_unknown:
            raise
        unknown = exc
    wanted = Decimal(fraction_bp) / LIGHTER_FRACTION_UNITS
    seen = await _await_fraction(read_account, market, wanted, wait, poll_interval, account)
    if seen != wanted:
        raise unknown or VenueError(ReasonCode.UNAVAILABLE, f"leverage update accepted but the account still "
                                                            f"reports {seen} on {rules.symbol} after {wait}s")
    log.info("account=%s %s initial margin fraction now %s (%.0fx)", account, rules.symbol, seen, 1 / seen)
    return seen


async def _await_fraction(read_account: Callable[[], Awaitable[dict[str, Any]]], market: int, wanted: Decimal,
                          wait: float, poll_interval: float, account: str) -> Decimal | None:
    deadline = time.monotonic() + wait
    delay, seen = poll_interval, None
    while True:
        try:
            seen = parse_initial_margin_fraction(await read_account(), market)
        except VenueError as exc:
            log.warning("account=%s leverage confirmation read: %s", account, exc)
        if seen == wanted or time.monotonic() >= deadline:
            return seen
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        # Back off like the order lookups: reads share the account's request budget.
        delay = min(delay * 2, MAX_POLL_INTERVAL)
