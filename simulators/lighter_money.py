"""Fees, funding and liquidations as the Lighter simulator reports them (profile.py holds the rules).

* **Fees**: ``Trade.taker_fee``/``maker_fee`` are the fee rates in integer parts per million. The
  captured ``account_all_trades`` update carries ``"taker_fee": 196, "maker_fee": 28`` (fixtures
  lighter.json, nautilus), exactly the 0.0196 % / 0.0028 % row of the premium fee table
  (apidocs.lighter.xyz/docs/account-types). The amount itself is taken from the collateral by
  ``Exchange.execute_market``.
* **Funding**: ``GET /api/v1/positionFunding`` (lighter-sdk 1.1.8 ``AccountApi.position_funding``:
  ``account_index``, ``limit`` 1..100, ``market_id``, ``cursor``, ``side``, ``start_timestamp``,
  ``end_timestamp``; auth) answers ``PositionFundings{code, position_fundings: [PositionFunding{timestamp,
  market_id, funding_id, change, discount, rate, position_size, position_side}], next_cursor}``.
  ``change`` is signed (+ received); timestamps are ms like every other Lighter time here (UNCONFIRMED).
  Positions show the running total as ``total_funding_paid_out`` (captured position field).
* **Liquidations**: a position the market closes becomes a ``Trade`` of ``type`` "liquidation" (the
  SDK's Trade type enum) against the book's owner, listed by ``/api/v1/trades`` and pushed on the
  account's WebSocket like any fill.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from simulators.lighter_model import (
    ASK_ORDER_BASE,
    BID_ORDER_BASE,
    MAKER_ACCOUNT,
    MAX_48,
    MAX_I64,
    QUOTE_DECIMALS,
    VENUE,
    fmt,
)
from simulators.margin import Liquidation

if TYPE_CHECKING:
    from simulators.funding import FundingPayment
    from simulators.lighter_http import FaultGate
    from simulators.lighter_state import LighterState
    from simulators.market import Exchange, MarketEvent

PPM = Decimal(1_000_000)
MAX_FUNDING_PAGE = 100


def fee_ppm(exchange: Exchange, maker: bool) -> int:
    """The Lighter fee rate of a fill as the venue writes it: integer parts per million."""
    return int(exchange.profile.fees.rate(VENUE, maker) * PPM)


def liquidation_trade(state: LighterState, event: Liquidation) -> dict[str, Any]:
    """The venue's record of a closed position: the user sells a long (buys a short) to the book."""
    market = next(m for m in state.markets.values() if m.base == event.base)
    tid = next(state._trade_ids)
    user_is_ask = event.quantity > 0
    user = (ASK_ORDER_BASE if user_is_ask else BID_ORDER_BASE) + tid, 0, int(event.account)
    other = (BID_ORDER_BASE if user_is_ask else ASK_ORDER_BASE) + tid, 0, MAKER_ACCOUNT
    ask, bid = (user, other) if user_is_ask else (other, user)
    size = abs(event.quantity)
    now = event.ts_ms or int(time.time() * 1000)
    return {
        "trade_id": tid, "trade_id_str": str(tid), "tx_hash": f"{tid:080x}", "type": "liquidation",
        "market_id": market.market_id, "size": market.size_str(size), "price": market.price_str(event.price),
        "usd_amount": fmt(size * event.price, QUOTE_DECIMALS),
        "ask_id": ask[0], "ask_id_str": str(ask[0]), "bid_id": bid[0], "bid_id_str": str(bid[0]),
        "ask_client_id": 0, "ask_client_id_str": "0", "bid_client_id": 0, "bid_client_id_str": "0",
        "ask_account_id": ask[2], "bid_account_id": bid[2], "is_maker_ask": not user_is_ask,
        "block_height": state.block_height, "timestamp": now, "taker_fee": 0, "maker_fee": 0,
        "transaction_time": now * 1000,
    }


def funding_json(state: LighterState, payment: FundingPayment) -> dict[str, Any]:
    market = next(m for m in state.markets.values() if m.base == payment.base)
    return {"timestamp": payment.ts_ms, "market_id": market.market_id, "funding_id": payment.funding_id,
            "change": fmt(payment.amount, QUOTE_DECIMALS), "discount": fmt(Decimal(0), QUOTE_DECIMALS),
            "rate": format(payment.rate.normalize(), "f"), "position_size": market.size_str(abs(payment.position)),
            "position_side": "long" if payment.position > 0 else "short"}


def register(app: web.Application, state: LighterState, gate: FaultGate) -> None:
    """Add ``/api/v1/positionFunding`` and subscribe ``state`` to the market's liquidations."""
    from simulators.lighter_http import qchoice, qint, qreq, require_auth

    def on_market(event: MarketEvent) -> None:
        if isinstance(event, Liquidation) and event.venue == VENUE and event.account.isdigit() and \
                any(m.base == event.base for m in state.markets.values()):
            trade = liquidation_trade(state, event)
            state.trades.append(trade)
            state._emit(int(event.account), [], [trade])

    async def position_funding(request: web.Request) -> web.Response:
        account = qreq(request, "account_index", 0, MAX_48)
        limit = qreq(request, "limit", 1, MAX_FUNDING_PAGE)
        market_id = qint(request, "market_id", 0, 65535)
        side = qchoice(request, "side", ("long", "short", "all"), "all")
        start = qint(request, "start_timestamp", 0, MAX_I64, default=0) or 0
        end = qint(request, "end_timestamp", 0, MAX_I64, default=MAX_I64)
        cursor = qint(request, "cursor", 0, MAX_I64, default=0) or 0
        require_auth(request, account)

        def build() -> dict[str, Any]:
            with state.exchange.lock:
                rows = [funding_json(state, p) for p in reversed(state.exchange.funding_log)
                        if p.venue == VENUE and p.account == str(account)]
            hits = [r for r in rows if market_id in (None, r["market_id"]) and side in ("all", r["position_side"])
                    and start <= r["timestamp"] <= (end if end is not None else MAX_I64)]
            body: dict[str, Any] = {"code": 200, "position_fundings": hits[cursor:cursor + limit]}
            if cursor + limit < len(hits):
                body["next_cursor"] = str(cursor + limit)
            return body

        return await gate.read("orders", account, build)

    state.exchange.listeners.append(on_market)
    app.router.add_get("/api/v1/positionFunding", position_funding)
