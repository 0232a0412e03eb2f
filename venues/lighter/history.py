"""Lighter fill and funding history for one market (``venues.ledger``): what the cycle
report's realised PnL split is computed from.

* ``GET /api/v1/trades`` (``OrderApi.trades``: ``sort_by``, ``limit`` 1..100, ``account_index``,
  ``market_id``, ``sort_dir``, ``cursor``, ``from``; auth): ``Trades{code,
  next_cursor?, trades:[Trade]}``. A trade names both sides (``ask_account_id``/``bid_account_id``,
  ``ask_client_id``/``bid_client_id``); ``is_maker_ask`` says which side rested. ``taker_fee`` /
  ``maker_fee`` are the fee rates in integer parts per million (the captured 196 / 28 are the
  0.0196 % / 0.0028 % premium rows, fixtures ``ws_update_account_all_trades_nautilus``); the venue's Go
  JSON omits a zero (the mainnet ``recentTrades`` capture has ``maker_fee`` only, the testnet account
  trades neither), so an absent rate is 0. ``type`` ``liquidation``/``deleverage`` is the venue's own
  order closing the account.
* ``GET /api/v1/positionFunding`` (lighter-sdk 1.1.8 ``AccountApi.position_funding``:
  ``account_index``, ``limit`` 1..100, ``market_id``, ``cursor``, ``start_timestamp``,
  ``end_timestamp``; auth): ``PositionFundings{code, position_fundings:[{timestamp, market_id,
  funding_id, change, rate, position_size, position_side}], next_cursor}``; ``change`` + received.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from venues.base import ReasonCode, Side, VenueError
from venues.ledger import AccountHistory, FillRecord, FundingRecord

PAGE = 100
MAX_PAGES = 50
PPM = Decimal(1_000_000)
SYSTEM_TRADE_TYPES = frozenset({"liquidation", "deleverage"})


def _dec(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise VenueError(ReasonCode.BAD_RESPONSE, f"trade field {name} is {value!r}, expected a decimal")
    return Decimal(str(value))


def parse_trade(trade: dict[str, Any], account_index: int) -> FillRecord:
    """``trade`` as the account ``account_index`` took part in it."""
    is_ask = int(trade.get("ask_account_id", -1)) == account_index
    if not is_ask and int(trade.get("bid_account_id", -1)) != account_index:
        raise VenueError(ReasonCode.BAD_RESPONSE, f"trade {trade.get('trade_id')} is not account {account_index}'s")
    maker = bool(trade.get("is_maker_ask")) == is_ask
    ppm = Decimal(str(trade.get("maker_fee" if maker else "taker_fee") or 0))
    client_id = int(trade.get("ask_client_id" if is_ask else "bid_client_id") or 0)
    usd = _dec(trade.get("usd_amount"), "usd_amount")
    return FillRecord(client_id=client_id or None, side=Side.SELL if is_ask else Side.BUY,
                      quantity=_dec(trade.get("size"), "size"), price=_dec(trade.get("price"), "price"),
                      fee=usd * ppm / PPM, ts_ms=int(trade.get("timestamp") or 0),
                      system=str(trade.get("type") or "trade") in SYSTEM_TRADE_TYPES, notional=usd)


def parse_funding(row: dict[str, Any]) -> FundingRecord:
    return FundingRecord(_dec(row.get("change"), "change"), int(row.get("timestamp") or 0))


Fetch = Callable[[dict[str, Any]], Awaitable[Any]]


async def _pages(fetch: Fetch, params: dict[str, Any], items: str, older_than: int = 0) -> list[dict[str, Any]]:
    # Newest first where the endpoint sorts: paging stops once a page reaches back past ``older_than``.
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        body = await fetch({**params, "cursor": cursor})
        if not isinstance(body, dict) or body.get("code", 200) != 200 or not isinstance(body.get(items), list):
            raise VenueError(ReasonCode.BAD_RESPONSE, f"{items}: unexpected answer {str(body)[:120]!r}")
        page = [r for r in body[items] if isinstance(r, dict)]
        rows.extend(page)
        cursor = body.get("next_cursor")
        if not cursor or not page or (older_than and int(page[-1].get("timestamp") or 0) < older_than):
            return rows
    raise VenueError(ReasonCode.BAD_RESPONSE, f"{items}: more than {MAX_PAGES * PAGE} rows in the window")


async def read_history(get: Callable[[str, dict[str, Any]], Awaitable[Any]], account: str, account_index: int,
                       market_id: int, symbol: str, since_ms: int, until_ms: int) -> AccountHistory:
    """``get(path, params)`` sends one authenticated GET (the connector adds the auth header)."""
    # Newest first, back to the window's start: what the trades endpoint's ``from`` means is not
    # documented (a time or a trade index), so it is not sent and the window is applied here.
    trades = await _pages(lambda p: get("/api/v1/trades", p),
                          {"account_index": account_index, "market_id": market_id, "sort_by": "timestamp",
                           "sort_dir": "desc", "limit": PAGE}, "trades", older_than=since_ms)
    funding = await _pages(lambda p: get("/api/v1/positionFunding", p),
                           {"account_index": account_index, "market_id": market_id, "limit": PAGE,
                            "start_timestamp": since_ms, "end_timestamp": until_ms}, "position_fundings")
    fills = tuple(f for f in (parse_trade(t, account_index) for t in reversed(trades)) if since_ms <= f.ts_ms <= until_ms)
    payments = tuple(p for p in map(parse_funding, funding) if since_ms <= p.ts_ms <= until_ms)
    return AccountHistory(account, symbol, since_ms, until_ms, fills, payments)
