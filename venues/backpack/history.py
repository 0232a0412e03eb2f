"""Backpack fill and funding history for one symbol (``venues.ledger``): what the cycle
report's realised PnL split is computed from.

* ``GET /wapi/v1/history/fills`` (``fillHistoryQueryAll``; ``symbol``, ``from``/``to`` in ms,
  ``limit`` ≤ 1000, ``offset``, ``sortDirection``): rows ``{tradeId, clientId: string|null, orderId,
  symbol, side, price, quantity, fee, feeSymbol, isMaker, systemOrderType|null, timestamp}`` with a
  naive UTC ISO timestamp. System fills (liquidation, ADL) are listed
  since 2025-04-22 and carry ``systemOrderType``.
* ``GET /wapi/v1/history/funding`` (``fundingHistoryQueryAll``, the instruction bpx clients sign;
  the OpenAPI "Get funding payments"): rows ``{userId, subaccountId, symbol, quantity,
  intervalEndTimestamp, fundingRate}``, ``quantity`` + received, − paid. It takes no time filter, so
  the window is applied here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from venues.backpack.parsing import arr, bad, dec, obj, parse_client_id, side
from venues.backpack.rest import BackpackRest
from venues.ledger import AccountHistory, FillRecord, FundingRecord, iso_utc_ms

#: The endpoints' largest page.
PAGE = 1000
#: More pages than this for one cycle's window is not a cycle's history: refuse rather than guess.
MAX_PAGES = 20


def quote_of(symbol: str) -> str:
    """``ETH_USDC_PERP`` -> ``USDC``: the asset PnL and fees are counted in."""
    parts = symbol.split("_")
    return parts[1] if len(parts) > 1 else ""


def parse_fill(row: Any, quote: str) -> FillRecord:
    fill = obj(row, "fill")
    fee_asset = str(fill.get("feeSymbol") or quote)
    fee = dec(fill.get("fee") or "0", "fee")
    when = fill.get("timestamp")
    if not isinstance(when, str):
        raise bad(f"fill timestamp is {when!r}, expected an ISO time")
    return FillRecord(client_id=parse_client_id(fill.get("clientId")), side=side(fill.get("side")),
                      quantity=dec(fill.get("quantity"), "quantity"), price=dec(fill.get("price"), "price"),
                      fee=fee if fee_asset == quote else None, ts_ms=iso_utc_ms(when),
                      system=fill.get("systemOrderType") is not None)


def parse_funding(row: Any) -> FundingRecord:
    payment = obj(row, "funding payment")
    when = payment.get("intervalEndTimestamp")
    if not isinstance(when, str):
        raise bad(f"funding intervalEndTimestamp is {when!r}, expected an ISO time")
    return FundingRecord(dec(payment.get("quantity"), "quantity"), iso_utc_ms(when))


def _pages(fetch: Callable[[int], Any], what: str, done: Callable[[list[Any]], bool] = lambda _: False) -> list[Any]:
    rows: list[Any] = []
    for page in range(MAX_PAGES):
        batch = arr(fetch(page * PAGE), what)
        rows.extend(batch)
        if len(batch) < PAGE or done(batch):
            return rows
    raise bad(f"{what}: more than {MAX_PAGES * PAGE} rows in the window")


def read_history(rest: BackpackRest, account: str, symbol: str, since_ms: int, until_ms: int) -> AccountHistory:
    quote = quote_of(symbol)

    def fills(offset: int) -> Any:
        return rest.signed("GET", "/wapi/v1/history/fills", "fillHistoryQueryAll",
                           {"symbol": symbol, "from": since_ms, "to": until_ms, "limit": PAGE, "offset": offset,
                            "sortDirection": "Asc"})

    def funding(offset: int) -> Any:
        return rest.signed("GET", "/wapi/v1/history/funding", "fundingHistoryQueryAll",
                           {"symbol": symbol, "limit": PAGE, "offset": offset, "sortDirection": "Desc"})

    # intervalEndTimestamp is written in whole seconds: a payment in the window's first second reads
    # as before it. Newest first, until a page reaches back past the window (no time filter here).
    funding_since = since_ms - since_ms % 1000
    fill_rows = [parse_fill(r, quote) for r in _pages(fills, "fill history")]
    payments = [parse_funding(r) for r in _pages(funding, "funding history",
                                                 lambda page: parse_funding(page[-1]).ts_ms < funding_since)]
    return AccountHistory(account, symbol, since_ms, until_ms,
                          tuple(f for f in fill_rows if since_ms <= f.ts_ms <= until_ms),
                          tuple(sorted((p for p in payments if funding_since <= p.ts_ms <= until_ms),
                                       key=lambda p: p.ts_ms)))
