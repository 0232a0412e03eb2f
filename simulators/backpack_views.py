"""Response bodies of the Backpack read endpoints."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from simulators.backpack_model import (
    IMF_FUNCTION,
    MMF_FUNCTION,
    QUOTE,
    MarketRules,
    fmt,
    fmt_price,
    margin_fraction,
    now_us,
    user_id,
)

if TYPE_CHECKING:
    from simulators.backpack_engine import BackpackEngine

VENUE = "backpack"
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)


def _position_numbers(engine: BackpackEngine, account: str, rules: MarketRules, qty: Decimal) -> dict[str, Any]:
    pos = engine.exchange.account(VENUE, account).position(rules.base)
    mark = engine.exchange.mark(VENUE, rules.base)
    entry = pos.entry_price
    return {"qty": qty, "mark": mark, "entry": entry, "realized": pos.realized_pnl, "funding": pos.cumulative_funding,
            "unrealized": (mark - entry) * qty if entry else Decimal(0),
            "imf": margin_fraction(IMF_FUNCTION, qty), "mmf": margin_fraction(MMF_FUNCTION, qty)}


def position_rest(engine: BackpackEngine, account: str, rules: MarketRules, qty: Decimal) -> dict[str, Any]:
    """One element of GET /api/v1/position (shape of the ccxt capture). No fees: breakEven = entry."""
    n = _position_numbers(engine, account, rules, qty)
    return {
        "breakEvenPrice": fmt(n["entry"]), "cumulativeFundingPayment": fmt_price(n["funding"], "0.000001"),
        "cumulativeInterest": "0",
        "entryPrice": fmt(n["entry"]), "estLiquidationPrice": "0", "imf": fmt(n["imf"]),
        "imfFunction": dict(IMF_FUNCTION), "markPrice": fmt_price(n["mark"]), "mmf": fmt(n["mmf"]),
        "mmfFunction": dict(MMF_FUNCTION), "netCost": fmt(qty * n["entry"]),
        "netExposureNotional": fmt(abs(qty) * n["mark"]), "netExposureQuantity": fmt(abs(qty)),
        "netQuantity": fmt(qty), "pnlRealized": fmt(n["realized"]), "pnlUnrealized": fmt_price(n["unrealized"]),
        "positionId": str(engine.position_id(account, rules.base)), "subaccountId": None, "symbol": rules.symbol,
        "userId": user_id(account),
    }


def position_ws(engine: BackpackEngine, account: str, rules: MarketRules, qty: Decimal,
                event: str | None) -> dict[str, Any]:
    """``account.positionUpdate`` data: string values, ``i`` a number; no ``e`` on the snapshot."""
    n = _position_numbers(engine, account, rules, qty)
    now = now_us()
    data: dict[str, Any] = {
        "B": fmt(n["entry"]), "E": now, "M": fmt_price(n["mark"]), "P": fmt_price(n["unrealized"]),
        "Q": fmt(abs(qty)), "T": now - 1, "b": fmt(n["entry"]), "f": fmt(n["imf"]),
        "i": engine.position_ids.get((account, rules.base)) or engine.position_id(account, rules.base),
        "l": "0", "m": fmt(n["mmf"]), "n": fmt_price(abs(qty) * n["mark"]), "p": fmt(n["realized"]),
        "q": fmt(qty), "s": rules.symbol,
    }
    if event is not None:
        data["e"] = event
    return data


def open_positions(engine: BackpackEngine, account: str) -> list[tuple[MarketRules, Decimal]]:
    """Non-flat positions as reads see them (a stale_position fault freezes the quantity)."""
    out = []
    with engine.exchange.lock:
        acct = engine.exchange.account(VENUE, account)
        for rules in engine.markets.values():
            qty = engine.exchange.position_quantity(VENUE, account, rules.base) \
                if rules.base in acct.positions else Decimal(0)
            if qty != 0:
                out.append((rules, qty))
    return out


def collateral(engine: BackpackEngine, account: str) -> dict[str, Any]:
    """GET /api/v1/capital/collateral: USDC is the only collateral asset here."""
    ex = engine.exchange
    with ex.lock:
        acct = ex.account(VENUE, account)
        pnl, exposure, locked, maintenance = Decimal(0), Decimal(0), Decimal(0), Decimal(0)
        for rules in engine.markets.values():
            pos = acct.positions.get(rules.base)
            if pos is None or pos.quantity == 0:
                continue
            mark = ex.mark(VENUE, rules.base)
            pnl += (mark - pos.entry_price) * pos.quantity
            notional = abs(pos.quantity) * mark
            exposure += notional
            locked += notional * margin_fraction(IMF_FUNCTION, pos.quantity)
            maintenance += notional * margin_fraction(MMF_FUNCTION, pos.quantity)
        cash = acct.collateral
    equity = cash + pnl
    # Account IMF/MMF: the exposure-weighted fractions of the positions.
    imf = locked / exposure if exposure else Decimal(0)
    mmf = maintenance / exposure if exposure else Decimal(0)
    return {
        "assetsValue": fmt(cash), "borrowLiability": "0",
        "collateral": [{"symbol": QUOTE, "assetMarkPrice": "1", "totalQuantity": fmt(cash),
                        "balanceNotional": fmt(cash), "collateralWeight": "1", "collateralValue": fmt(cash),
                        "openOrderQuantity": "0", "lendQuantity": "0", "availableQuantity": fmt(cash)}],
        "imf": fmt(imf), "unsettledEquity": fmt_price(pnl), "liabilitiesValue": "0",
        "marginFraction": fmt_price(equity / exposure) if exposure else None, "mmf": fmt(mmf),
        "netEquity": fmt_price(equity), "netEquityAvailable": fmt_price(equity - locked),
        "netEquityLocked": fmt_price(locked), "netExposureFutures": fmt_price(exposure),
        "pnlUnrealized": fmt_price(pnl),
    }


def capital(engine: BackpackEngine, account: str) -> dict[str, Any]:
    """GET /api/v1/capital: the spot balance map; perps margin from the USDC balance."""
    with engine.exchange.lock:
        cash = engine.exchange.account(VENUE, account).collateral
    return {QUOTE: {"available": fmt(cash), "locked": "0", "staked": "0"}}


def depth(engine: BackpackEngine, rules: MarketRules, limit: int) -> dict[str, Any]:
    """GET /api/v1/depth: BOTH sides ascending by price, best bid LAST."""
    update_id, (bids, asks) = engine.book(rules)
    return {"asks": [[fmt(p), str(q)] for p, q in asks[:limit]],
            "bids": [[fmt(p), str(q)] for p, q in bids[-limit:]],
            "lastUpdateId": str(update_id), "timestamp": now_us()}


def ticker(engine: BackpackEngine, rules: MarketRules) -> dict[str, Any]:
    """GET /api/v1/ticker: every value a string, ``trades`` included."""
    first, high, low = engine.stats(rules.base)
    last = engine.exchange.prices[rules.base].mid
    vol, quote, trades = engine.volume.get(rules.base, (Decimal(0), Decimal(0), 0))
    change = last - first
    return {"symbol": rules.symbol, "firstPrice": fmt_price(first, "0.01"), "lastPrice": fmt_price(last, "0.01"),
            "priceChange": fmt_price(change, "0.01"), "priceChangePercent": fmt_price(change / first * 100, "0.0001"),
            "high": fmt_price(high, "0.01"), "low": fmt_price(low, "0.01"), "volume": fmt(vol),
            "quoteVolume": fmt_price(quote, "0.01"), "trades": str(trades)}


def mark_price(engine: BackpackEngine, rules: MarketRules) -> dict[str, Any]:
    """One element of GET /api/v1/markPrices; the rate and interval of profile.FundingProfile
    (hourly by default, as Backpack settles)."""
    mark = engine.exchange.mark(VENUE, rules.base)
    funding = engine.exchange.profile.funding
    interval_ms = max(int(funding.interval_secs * 1000), 1)
    next_funding = (int(time.time() * 1000) // interval_ms + 1) * interval_ms
    return {"fundingRate": fmt(funding.backpack_rate), "indexPrice": fmt_price(mark), "markPrice": fmt_price(mark),
            "nextFundingTimestamp": next_funding, "symbol": rules.symbol}
