"""JSON views of the simulated Lighter venue, shaped like the captured responses.

Field sets follow ``tests/fixtures/lighter.json`` (orderBookDetails, account, positions,
orderBookOrders); ints stay JSON numbers and amounts JSON strings, because the SDK does not
coerce types.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from simulators.lighter_model import (
    ASK_ORDER_BASE,
    BID_ORDER_BASE,
    MAKER_ACCOUNT,
    QUOTE_DECIMALS,
    VENUE,
    LighterMarket,
    fmt,
)
from simulators.lighter_state import LighterState, now_ms
from simulators.market import SimAccount

USDC_ASSET_ID = 3
#: Resting synthetic liquidity is shown with the 28-day expiry the SDK gives GTT orders.
BOOK_ORDER_TTL_MS = 28 * 24 * 3600 * 1000


def _usdc(value: Decimal) -> str:
    return fmt(value, QUOTE_DECIMALS)


def _liquidation_price(collateral: Decimal, qty: Decimal, entry: Decimal, mmf: Decimal) -> Decimal:
    """Where equity meets maintenance margin for this position alone (0 when it never does)."""
    if qty == 0:
        return Decimal(0)
    denom = qty * (1 - mmf) if qty > 0 else qty * (1 + mmf)
    return max((entry * qty - collateral) / denom, Decimal(0))


def position_json(state: LighterState, account: int, market: LighterMarket) -> dict[str, Any]:
    ex = state.exchange
    with ex.lock:
        acct = state.ensure_account(account)
        pos = acct.position(market.base)
        # position_quantity honours an armed stale_position fault; the rest is live.
        qty = ex.position_quantity(VENUE, str(account), market.base)
        mark = ex.mark(VENUE, market.base)
        entry, realized, collateral = pos.entry_price, pos.realized_pnl, acct.collateral
        funding_paid = -pos.cumulative_funding  # funding.py: + received, so "paid out" is its negative
    mmf = Decimal(market.maintenance_mf) / 10000
    liq = _liquidation_price(collateral, qty, entry, mmf)
    return {
        "market_id": market.market_id, "symbol": market.base,
        # Percent, as REST reports it ("5.00" at the default 20x; captured account fixtures).
        "initial_margin_fraction": fmt(own_fraction(state, account, market) * 100, 2),
        "open_order_count": len(state.active_orders(account, market.market_id)),
        "pending_order_count": 0, "position_tied_order_count": 0,
        # A flat position reports sign 1 (captured account fixture: "sign": 1, "position": "0.00000").
        "sign": -1 if qty < 0 else 1, "position": market.size_str(abs(qty)),
        "avg_entry_price": market.price_str(entry), "position_value": _usdc(abs(qty) * mark),
        "unrealized_pnl": _usdc((mark - entry) * qty), "realized_pnl": _usdc(realized),
        "liquidation_price": market.price_str(liq) if qty else "0",
        "total_funding_paid_out": _usdc(funding_paid), "margin_mode": 0,
        "allocated_margin": _usdc(Decimal(0)), "total_discount": _usdc(Decimal(0)),
    }


def positions_map(state: LighterState, account: int) -> dict[str, dict[str, Any]]:
    """Positions of every market the account ever touched, keyed by market id (WS shape)."""
    with state.exchange.lock:
        bases = set(state.ensure_account(account).positions)
    return {str(m.market_id): position_json(state, account, m) for m in state.markets.values() if m.base in bases}


def account_json(state: LighterState, account: int) -> dict[str, Any]:
    ex = state.exchange
    positions = list(positions_map(state, account).values())
    with ex.lock:
        acct = state.ensure_account(account)
        equity, collateral = ex.equity(acct), acct.collateral
        margin = sum((abs(p.quantity) * ex.mark(VENUE, b) * _imf(state, acct, b) for b, p in acct.positions.items()),
                     Decimal(0))
        for order in state.active_orders(account):
            margin += order.remaining * order.price * _imf(state, acct, order.market.base)
    cancel_at = state.cancel_all_at.get(account, (0, None))[0]
    return {
        "code": 0, "account_type": 0, "index": account, "l1_address": state.l1_address(account),
        "cancel_all_time": cancel_at, "total_order_count": len(state.active_orders(account)),
        "total_isolated_order_count": 0, "pending_order_count": 0,
        "available_balance": _usdc(max(equity - margin, Decimal(0))), "status": 1,
        "collateral": _usdc(collateral), "transaction_time": 0, "account_trading_mode": 0,
        "account_index": account, "name": "", "description": "", "can_invite": True,
        "referral_points_percentage": "", "positions": positions,
        "assets": [{"symbol": "USDC", "asset_id": USDC_ASSET_ID, "balance": _usdc(collateral),
                    "locked_balance": _usdc(Decimal(0)), "margin_mode": "enabled",
                    "margin_balance": _usdc(collateral)}],
        "total_asset_value": _usdc(equity), "cross_asset_value": _usdc(equity),
        "cross_initial_margin_requirement": _usdc(margin), "shares": [], "pending_unlocks": [],
        "approved_integrators": [],
    }


def own_fraction(state: LighterState, account: int, market: LighterMarket) -> Decimal:
    """The account's initial-margin fraction on ``market``: its UpdateLeverage setting, else the default."""
    with state.exchange.lock:
        return _imf(state, state.ensure_account(account), market.base)


def _imf(state: LighterState, acct: SimAccount, base: str) -> Decimal:
    own = acct.initial_fractions.get(base)
    if own is not None:
        return own
    market = next((m for m in state.markets.values() if m.base == base), None)
    return Decimal(market.default_imf if market else 500) / 10000


def book_sides(state: LighterState, market: LighterMarket) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(asks best-first, bids best-first) as (price, size) strings with the market's exact decimals.

    Asks round up and bids down, so a worst price copied from the book never falls short of the
    unrounded level the fill engine uses.
    """
    bids, asks = state.exchange.book(VENUE, market.base)
    return _levels(market, asks, ROUND_CEILING), _levels(market, bids, ROUND_FLOOR)


def _levels(market: LighterMarket, levels: list[tuple[Decimal, Decimal]], rounding: str) -> list[tuple[str, str]]:
    merged: dict[str, Decimal] = {}
    for price, size in levels:
        key = market.price_str(price, rounding)
        merged[key] = merged.get(key, Decimal(0)) + size
    return [(p, market.size_str(s)) for p, s in merged.items()]


def order_book_orders_json(state: LighterState, market: LighterMarket, limit: int) -> dict[str, Any]:
    asks, bids = book_sides(state, market)
    expiry = now_ms() + BOOK_ORDER_TTL_MS

    def simple(base: int, i: int, price: str, size: str) -> dict[str, Any]:
        return {"order_index": base + i + 1, "order_id": str(base + i + 1), "owner_account_index": MAKER_ACCOUNT,
                "initial_base_amount": size, "remaining_base_amount": size, "price": price,
                "order_expiry": expiry, "transaction_time": 0}

    return {"code": 200, "total_asks": min(limit, len(asks)),
            "asks": [simple(ASK_ORDER_BASE, i, p, s) for i, (p, s) in enumerate(asks[:limit])],
            "total_bids": min(limit, len(bids)),
            "bids": [simple(BID_ORDER_BASE, i, p, s) for i, (p, s) in enumerate(bids[:limit])]}


def order_book_json(market: LighterMarket) -> dict[str, Any]:
    """orderBooks entry: supported_* decimals only, no size_decimals/price_decimals."""
    return {
        "symbol": market.base, "market_id": market.market_id, "market_type": "perp",
        "base_asset_id": 0, "quote_asset_id": 0, "status": "active",
        "taker_fee": "0.0000", "is_taker_fee_enabled": True, "maker_fee": "0.0000", "is_maker_fee_enabled": True,
        "liquidation_fee": "1.0000", "min_base_amount": market.min_base_str(),
        "min_quote_amount": _usdc(market.min_quote_amount), "order_quote_limit": "281474976.710655",
        "supported_size_decimals": market.size_decimals, "supported_price_decimals": market.price_decimals,
        "supported_quote_decimals": QUOTE_DECIMALS,
    }


def order_book_detail_json(state: LighterState, market: LighterMarket) -> dict[str, Any]:
    trades = [t for t in state.trades if t["market_id"] == market.market_id]
    mark = state.exchange.mark(VENUE, market.base)
    last = Decimal(trades[-1]["price"]) if trades else mark
    return {
        **order_book_json(market),
        "size_decimals": market.size_decimals, "price_decimals": market.price_decimals, "quote_multiplier": 1,
        "default_initial_margin_fraction": market.default_imf, "min_initial_margin_fraction": market.min_imf,
        "maintenance_margin_fraction": market.maintenance_mf, "closeout_margin_fraction": market.closeout_mf,
        "last_trade_price": float(market.price_str(last)), "daily_trades_count": len(trades),
        "daily_base_token_volume": float(sum((Decimal(t["size"]) for t in trades), Decimal(0))),
        "daily_quote_token_volume": float(sum((Decimal(t["usd_amount"]) for t in trades), Decimal(0))),
        "daily_price_low": float(market.price_str(mark)), "daily_price_high": float(market.price_str(mark)),
        "daily_price_change": 0.0, "open_interest": 0.0, "daily_chart": {},
        "market_config": {"market_margin_mode": 0, "insurance_fund_account_index": 281474976710655,
                          "liquidation_mode": 0, "force_reduce_only": False, "trading_hours": "",
                          "funding_fee_discounts_enabled": False, "hidden": False, "rfq_enabled": False},
    }
