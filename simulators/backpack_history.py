"""``/wapi/v1/history/orders`` and ``/wapi/v1/history/fills``.

These matter beyond reporting: GET/DELETE order only see resting orders, so a connector proves that
a clientId never reached the venue (idempotent resubmission) by looking through the order history.
Both list newest first by default (``sortDirection=Desc``), ``limit`` default 100 (max 1000), ``offset``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from simulators.backpack_model import MarketRules, fmt, fmt_price, iso_ms, user_id
from simulators.backpack_parse import query_enum, query_int

if TYPE_CHECKING:
    from simulators.backpack_engine import BackpackEngine

MARKET_TYPES = ("SPOT", "PERP", "IPERP", "DATED", "PREDICTION", "RFQ")
FILL_TYPES = ("User", "BlockTradeUser", "System", "SystemLiquidation", "SystemAdl", "SystemBackstop",
              "AllLiquidation")
SORT = ("Asc", "Desc")
VENUE = "backpack"


def _page(rows: list[Any], query: Mapping[str, str]) -> list[Any]:
    """Sort (rows arrive oldest first), then offset and limit."""
    limit = query_int(query, "limit", "integer(uint64)", default=100, low=1, high=1000)
    offset = query_int(query, "offset", "integer(uint64)", default=0)
    direction = query_enum(query, "sortDirection", "SortDirection", SORT) or "Desc"
    ordered = rows[::-1] if direction == "Desc" else rows
    return ordered[offset:offset + limit]


def order_history(engine: BackpackEngine, account: str, query: Mapping[str, str],
                  rules: MarketRules | None) -> list[dict[str, Any]]:
    """Every accepted order of the account, any status, market orders included (clientId a number)."""
    order_id = query.get("orderId")
    query_enum(query, "marketType", "MarketType", MARKET_TYPES)
    with engine.exchange.lock:
        rows = [o for o in engine.history.get(account, [])
                if (rules is None or o.rules is rules) and (order_id is None or o.id == order_id)]
        return [o.to_history() for o in _page(rows, query)]


def fill_history(engine: BackpackEngine, account: str, query: Mapping[str, str],
                 rules: MarketRules | None) -> list[dict[str, Any]]:
    """The account's fills (clientId a STRING here); ``from``/``to`` are ms."""
    order_id = query.get("orderId")
    start = query_int(query, "from", "integer(int64)")
    end = query_int(query, "to", "integer(int64)")
    fill_type = query_enum(query, "fillType", "FillType", FILL_TYPES)
    query_enum(query, "marketType", "MarketType", MARKET_TYPES)
    # Liquidation fills are system fills (systemOrderType LiquidatePositionOnBook); no ADL or backstop here.
    wanted = {None: (True, True), "User": (True, False), "System": (False, True),
              "SystemLiquidation": (False, True), "AllLiquidation": (False, True)}.get(fill_type, (False, False))
    with engine.exchange.lock:
        rows = [f for f in engine.fills.get(account, [])
                if wanted[f.order.system_order_type is not None]
                and (rules is None or f.order.rules is rules) and (order_id is None or f.order.id == order_id)
                and (start is None or f.ts_ms >= start) and (end is None or f.ts_ms <= end)]
        return [f.to_json() for f in _page(rows, query)]


def funding_history(engine: BackpackEngine, account: str, query: Mapping[str, str],
                    rules: MarketRules | None) -> list[dict[str, Any]]:
    """GET /wapi/v1/history/funding: ``{userId, subaccountId, symbol, quantity, intervalEndTimestamp,
    fundingRate}``, ``quantity`` positive received and negative paid (the OpenAPI FundingPayment as
    the bpx clients type it); newest first, ``limit``/``offset`` like the other history endpoints."""
    query_int(query, "subaccountId", "integer(uint16)")
    uid = user_id(account)
    with engine.exchange.lock:
        rows = [p for p in engine.exchange.funding_log
                if p.venue == VENUE and p.account == account and p.base in engine.by_base
                and (rules is None or engine.by_base[p.base] is rules)]
        return [{"fundingRate": fmt(p.rate), "intervalEndTimestamp": iso_ms(p.ts_ms).split(".")[0],
                 "quantity": fmt_price(p.amount, "0.000001"), "subaccountId": None,
                 "symbol": engine.by_base[p.base].symbol, "userId": uid} for p in _page(rows, query)]
