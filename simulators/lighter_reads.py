"""Read routes of the Lighter simulator (the endpoints the SDK calls), registered by ``lighter.py``.

Fault ops: ``position`` for /account, ``orders`` for order/trade/tx lookups of an account,
``apikeys`` for /apikeys, ``market`` for public market data (only faults armed without an
account match those). Resting orders are swept against the book before any order or position
read, so a price move is visible on the very next request.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from simulators.lighter_http import FaultGate, bad_param, qchoice, qint, qreq, require_auth
from simulators.lighter_model import MAX_48, MAX_I64, VENUE, LighterError, LighterMarket, LighterOrder
from simulators.lighter_state import LighterState
from simulators.lighter_views import (
    account_json,
    order_book_detail_json,
    order_book_json,
    order_book_orders_json,
)
from simulators.market import FaultKind

ACCOUNT_NOT_FOUND = 21100
TX_NOT_FOUND = 21500
INVALID_MARKET = 21602
#: ``market_id=255`` means "all markets" on the order endpoints (SDK's NIL_MARKET_INDEX).
ALL_MARKETS = 255
MAX_CLIENT_IDS = 20


class LighterReads:
    def __init__(self, state: LighterState, gate: FaultGate) -> None:
        self.state = state
        self.gate = gate

    def register(self, app: web.Application) -> None:
        for path, handler in (
            ("/", self.root), ("/api/v1/apikeys", self.apikeys), ("/api/v1/account", self.account),
            ("/api/v1/orderBookDetails", self.order_book_details), ("/api/v1/orderBooks", self.order_books),
            ("/api/v1/orderBookOrders", self.order_book_orders),
            ("/api/v1/accountActiveOrders", self.active_orders),
            ("/api/v1/accountInactiveOrders", self.inactive_orders),
            ("/api/v1/accountOrders", self.account_orders), ("/api/v1/trades", self.trades),
            ("/api/v1/recentTrades", self.recent_trades), ("/api/v1/tx", self.tx),
        ):
            app.router.add_get(path, handler)

    def _market(self, request: web.Request) -> LighterMarket:
        """The required ``market_id``: one listed market."""
        return self._known(qreq(request, "market_id", 0, 65535))

    def _market_filter(self, request: web.Request) -> LighterMarket | None:
        """An optional ``market_id``; absent or ``ALL_MARKETS`` filters nothing (None)."""
        market_id = qint(request, "market_id", 0, 65535)
        return None if market_id is None or market_id == ALL_MARKETS else self._known(market_id)

    def _known(self, market_id: int) -> LighterMarket:
        market = self.state.markets.get(market_id)
        if market is None:
            raise LighterError(400, INVALID_MARKET, "invalid market index")
        return market

    # ---- public -----------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        return web.json_response({"status": 200, "network_id": 1, "timestamp": int(time.time())})

    def _listed(self, request: web.Request) -> list[LighterMarket]:
        market_id = qint(request, "market_id", 0, 65535)
        spot_only = qchoice(request, "filter", ("all", "perp", "spot"), "all") == "spot"
        return [m for m in self.state.markets.values()
                if not spot_only and market_id in (None, ALL_MARKETS, m.market_id)]

    async def order_book_details(self, request: web.Request) -> web.Response:
        markets = self._listed(request)
        return await self.gate.read("market", None, lambda: {
            "code": 200, "order_book_details": [order_book_detail_json(self.state, m) for m in markets],
            "spot_order_book_details": []})

    async def order_books(self, request: web.Request) -> web.Response:
        markets = self._listed(request)
        return await self.gate.read("market", None, lambda: {
            "code": 200, "order_books": [order_book_json(m) for m in markets]})

    async def order_book_orders(self, request: web.Request) -> web.Response:
        market = self._market(request)
        limit = qreq(request, "limit", 1, 250)
        return await self.gate.read("market", None, lambda: order_book_orders_json(self.state, market, limit))

    async def recent_trades(self, request: web.Request) -> web.Response:
        market = self._market(request)
        limit = qreq(request, "limit", 1, 100)

        def build() -> dict[str, Any]:
            hits = [t for t in reversed(self.state.trades) if t["market_id"] == market.market_id]
            return {"code": 200, "trades": hits[:limit]}

        return await self.gate.read("market", None, build)

    # ---- accounts ---------------------------------------------------------------------------
    async def apikeys(self, request: web.Request) -> web.Response:
        account = qreq(request, "account_index", 0, MAX_48)
        api_key = qint(request, "api_key_index", 0, 255)
        return await self.gate.read("apikeys", account, lambda: {
            "code": 200, "api_keys": self.state.api_keys_for(account, api_key)})

    async def account(self, request: web.Request) -> web.Response:
        by = qchoice(request, "by", ("index", "l1_address"))
        value = request.query.get("value", "")
        if by is None or not value:
            raise bad_param("by" if by is None else "value")
        if by == "index":
            account: int | None = qreq(request, "value", 0, MAX_48)
        else:
            account = self.state.account_by_l1(value)
        if account is None:  # captured: HTTP 200 with code 21100 (tests/fixtures/README.md)
            return web.json_response({"code": ACCOUNT_NOT_FOUND, "message": "account not found"})
        found = account

        def build() -> dict[str, Any]:
            self.state.sweep()
            body = {"code": 200, "total": 1, "accounts": [account_json(self.state, found)]}
            # A stale read counts against the fault only once it has been served.
            self.state.exchange.take_fault(VENUE, "position", account=str(found),
                                           kinds=(FaultKind.STALE_POSITION,))
            return body

        return await self.gate.read("position", found, build)

    # ---- orders -----------------------------------------------------------------------------
    def _orders(self, orders: list[LighterOrder]) -> list[dict[str, Any]]:
        return [o.to_json() for o in orders]

    async def active_orders(self, request: web.Request) -> web.Response:
        account = qreq(request, "account_index", 0, MAX_48)
        market = self._market_filter(request)
        require_auth(request, account)

        def build() -> dict[str, Any]:
            self.state.sweep()
            mid = market.market_id if market else None
            return {"code": 200, "orders": self._orders(self.state.active_orders(account, mid))}

        return await self.gate.read("orders", account, build)

    async def inactive_orders(self, request: web.Request) -> web.Response:
        account = qreq(request, "account_index", 0, MAX_48)
        limit = qreq(request, "limit", 1, 100)
        market = self._market_filter(request)
        ask = qint(request, "ask_filter", -1, 1, default=-1)
        start, end = _between(request.query.get("between_timestamps"))
        cursor = qint(request, "cursor", 0, MAX_I64, default=0) or 0
        require_auth(request, account)

        def build() -> dict[str, Any]:
            self.state.sweep()
            hits = [o for o in reversed(self.state.inactive_orders(account))
                    if (market is None or o.market is market) and ask in (-1, int(o.is_ask))
                    and start <= (o.updated_ms or o.created_ms) <= end]
            page = hits[cursor:cursor + limit]
            body: dict[str, Any] = {"code": 200, "orders": self._orders(page)}
            if cursor + limit < len(hits):
                body["next_cursor"] = str(cursor + limit)
            return body

        return await self.gate.read("orders", account, build)

    async def account_orders(self, request: web.Request) -> web.Response:
        account = qreq(request, "account_index", 0, MAX_48)
        ids = _client_ids(request.query.get("client_order_indexes"))
        require_auth(request, account)

        def build() -> dict[str, Any]:
            self.state.sweep()
            # Only ids inside the history window (lighter_rules.py): an older one looks absent.
            found = [self.state.listed_by_client_id(account, i) for i in ids]
            return {"code": 200, "orders": self._orders([o for o in found if o is not None])}

        return await self.gate.read("orders", account, build)

    async def trades(self, request: web.Request) -> web.Response:
        qchoice(request, "sort_by", ("block_height", "timestamp", "trade_id"))
        if not request.query.get("sort_by"):
            raise bad_param("sort_by")
        limit = qreq(request, "limit", 1, 100)
        market = self._market_filter(request)
        account = qint(request, "account_index", -1, MAX_48)
        account = None if account == -1 else account
        order_index = qint(request, "order_index", 0, MAX_I64)
        descending = qchoice(request, "sort_dir", ("asc", "desc"), "desc") == "desc"
        cursor = qint(request, "cursor", 0, MAX_I64, default=0) or 0
        since = qint(request, "from", 0, MAX_I64, default=0) or 0
        role = qchoice(request, "role", ("all", "maker", "taker"), "all")
        if request.headers.get("authorization") and account is not None:
            require_auth(request, account)

        def keep(t: dict[str, Any]) -> bool:
            return ((market is None or t["market_id"] == market.market_id) and t["timestamp"] >= since
                    and (account is None or account in (t["ask_account_id"], t["bid_account_id"]))
                    and (order_index is None or order_index in (t["ask_id"], t["bid_id"]))
                    and (role == "all" or account is None or _role(t, account) == role))

        def build() -> dict[str, Any]:
            self.state.sweep()
            hits = [t for t in (reversed(self.state.trades) if descending else self.state.trades) if keep(t)]
            body: dict[str, Any] = {"code": 200, "trades": hits[cursor:cursor + limit]}
            if cursor + limit < len(hits):
                body["next_cursor"] = str(cursor + limit)
            return body

        return await self.gate.read("orders" if account is not None else "market", account, build)

    async def tx(self, request: web.Request) -> web.Response:
        qchoice(request, "by", ("hash",))
        value = request.query.get("value", "")
        if request.query.get("by") != "hash" or not value:
            raise bad_param("by" if request.query.get("by") != "hash" else "value")
        record = self.state.txs.get(value)
        if record is None:
            return web.json_response({"code": TX_NOT_FOUND, "message": "transaction not found"})
        return await self.gate.read("orders", record["account_index"], lambda: {
            **record, "event_info": json.dumps(record["event_info"])})


def _role(trade: dict[str, Any], account: int) -> str:
    user_is_ask = trade["ask_account_id"] == account
    return "maker" if user_is_ask == trade["is_maker_ask"] else "taker"


def _between(raw: str | None) -> tuple[int, int]:
    """``between_timestamps=<from>-<to>`` in ms; absent means everything."""
    if not raw:
        return 0, MAX_I64
    lo, sep, hi = raw.partition("-")
    if not (sep and lo.isascii() and lo.isdigit() and hi.isascii() and hi.isdigit() and len(lo + hi) <= 40):
        raise bad_param("between_timestamps")
    return int(lo), int(hi)


def _client_ids(raw: str | None) -> list[int]:
    parts = [p.strip() for p in (raw or "").split(",") if p.strip()]
    if not 1 <= len(parts) <= MAX_CLIENT_IDS or not all(p.isascii() and p.isdigit() and len(p) <= 15 for p in parts):
        raise bad_param("client_order_indexes")
    return [int(p) for p in parts]
