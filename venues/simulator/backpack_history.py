"""``/wapi/v1/history/orders`` and ``/wapi/v1/history/fills`` (backpack-api.md §2.1, §2.3, §2.8).

These matter beyond reporting: GET/DELETE order only see resting orders, so a connector proves that
a clientId never reached the venue (idempotent resubmission) by looking through the order history.
Both list newest first by default (``sortDirection=Desc``), ``limit`` default 100 (max 1000), ``offset``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from venues.simulator.backpack_model import MarketRules
from venues.simulator.backpack_parse import query_enum, query_int

if TYPE_CHECKING:
    from venues.simulator.backpack_engine import BackpackEngine

MARKET_TYPES = ("SPOT", "PERP", "IPERP", "DATED", "PREDICTION", "RFQ")
FILL_TYPES = ("User", "BlockTradeUser", "System", "SystemLiquidation", "SystemAdl", "SystemBackstop",
              "AllLiquidation")
SORT = ("Asc", "Desc")


def _page(rows: list[Any], query: Mapping[str, str]) -> list[Any]:
    """Sort (rows arrive oldest first), then offset and limit."""
    limit = query_int(query, "limit", "integer(uint64)", default=100, low=1, high=1000)
    offset = query_int(query, "offset", "integer(uint64)", default=0)
    direction = query_enum(query, "sortDirection", "SortDirection", SORT) or "Desc"
    ordered = rows[::-1] if direction == "Desc" else rows
    assert limit is not None and offset is not None
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
    """The account's fills (clientId a STRING here, §2.8); ``from``/``to`` are ms."""
    order_id = query.get("orderId")
    start = query_int(query, "from", "integer(int64)")
    end = query_int(query, "to", "integer(int64)")
    fill_type = query_enum(query, "fillType", "FillType", FILL_TYPES)
    query_enum(query, "marketType", "MarketType", MARKET_TYPES)
    if fill_type is not None and fill_type.startswith("System"):
        return []  # the simulator's liquidations move positions without fills
    with engine.exchange.lock:
        rows = [f for f in engine.fills.get(account, [])
                if (rules is None or f.order.rules is rules) and (order_id is None or f.order.id == order_id)
                and (start is None or f.ts_ms >= start) and (end is None or f.ts_ms <= end)]
        return [f.to_json() for f in _page(rows, query)]
