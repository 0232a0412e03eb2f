"""Backpack Exchange simulator: Backpack's REST API and WebSocket over the shared market.

``create_backpack_app(exchange)`` serves public market data (``/api/v1/markets``, ``depth``,
``ticker``, ``tickers``, ``markPrices``, ``status``, ``ping``, ``time``, ``market``), the ED25519-
signed account API (order execute/query/cancel, orders, position, capital, collateral, order and
fill history) and the WebSocket at ``/ws``. A request signed with a new API key opens an account
with ``exchange.starting_collateral``. Anything unknown is the real plain-text 404 ``not found``.

Faults (``/_sim/fault`` with ``venue: "backpack"``) are consumed per request by op: ``order``
(POST/DELETE order, DELETE orders), ``query`` (GET order/orders), ``position``, ``collateral``
(capital, collateral), ``history`` (the history endpoints), ``public`` and ``ws``.

Market rules come from ``exchange.profile`` (profile.py): fees in fills, the funding history
(``GET /wapi/v1/history/funding``), liquidation records, the optional rate limit (backpack_limits.py)
and reduce-only orders that expire with ``ReduceOnlyNotReduced``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from simulators import backpack_views as views
from simulators.admin import POSITION_HOOK, is_admin_path
from simulators.backpack_auth import INSTRUCTIONS, ApiError, Authenticator, PlainError
from simulators.backpack_engine import BackpackEngine
from simulators.backpack_history import fill_history, funding_history, order_history
from simulators.backpack_limits import RateLimiter
from simulators.backpack_model import BpOrder, MarketRules
from simulators.backpack_parse import id_selector, param_error, parse_json_object, parse_order, query_enum
from simulators.backpack_ws import WsHub
from simulators.market import Exchange, Fault, FaultKind

logger = logging.getLogger(__name__)

VENUE = "backpack"
ENGINE: web.AppKey[BackpackEngine] = web.AppKey("backpack_engine")
HUB: web.AppKey[WsHub] = web.AppKey("backpack_ws_hub")
MARKET_TYPES = ("SPOT", "PERP", "IPERP", "DATED", "PREDICTION", "RFQ")
HTTP_FAULTS = (FaultKind.HTTP_429, FaultKind.HTTP_500, FaultKind.HANG)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map errors to the real shapes; nothing a client sends may escape as a crash."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"code": exc.code, "message": exc.message}, status=exc.status)
    except PlainError as exc:
        return web.Response(text=exc.text, status=exc.status)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        return web.Response(text="not found", status=404)  # the real server's answer to an unknown path
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("backpack simulator bug on %s %s", request.method, request.path_qs)
        return web.json_response({"code": "SERVER_ERROR", "message": "Internal server error"}, status=500)


def _latency(exchange: Exchange) -> Middleware:
    @web.middleware
    async def latency(request: web.Request, handler: Handler) -> web.StreamResponse:
        if exchange.latency_ms > 0 and not is_admin_path(request.path):
            await asyncio.sleep(exchange.latency_ms / 1000)
        return await handler(request)

    return latency


def _fault_seconds(fault: Fault, default: float = 30.0) -> float:
    return float(Decimal(str(fault.params.get("seconds", default))))


class BackpackApi:
    """The route handlers, bound to one engine."""

    def __init__(self, exchange: Exchange, engine: BackpackEngine, auth: Authenticator) -> None:
        self.exchange = exchange
        self.engine = engine
        self.auth = auth
        rules = exchange.profile.backpack
        self.limiter = RateLimiter(rules.requests_per_minute) if rules.rate_limit else None

    # ---- helpers ------------------------------------------------------------------------------
    def _limit(self, key: str) -> None:
        """The documented 429 past the per-minute budget (backpack_limits.py)."""
        if self.limiter is not None and not self.limiter.allow(key):
            raise ApiError(429, "TOO_MANY_REQUESTS", "Too many requests")

    async def _public(self, request: web.Request) -> None:
        """Rate limit (per client address) then armed faults of an unsigned request."""
        self._limit(f"ip:{request.remote}")
        await self._faults("public", "")

    async def _faults(self, op: str, account: str) -> None:
        """429/500/hang armed for this op (``account`` "" for public requests: unscoped faults only)."""
        fault = self.exchange.take_fault(VENUE, op, account, kinds=HTTP_FAULTS)
        if fault is None:
            return
        if fault.kind is FaultKind.HTTP_429:
            # 429 with code TOO_MANY_REQUESTS; message UNCONFIRMED (simulator choice).
            raise ApiError(429, "TOO_MANY_REQUESTS", "Too many requests")
        if fault.kind is FaultKind.HTTP_500:
            raise ApiError(500, "SERVER_ERROR", "Internal server error")
        await asyncio.sleep(_fault_seconds(fault))

    async def _signed(self, request: web.Request, op: str, payload: str = "") -> tuple[str, dict[str, Any]]:
        """Authenticate: params are the query for GET, the JSON body otherwise."""
        instruction = INSTRUCTIONS[(request.method, request.path)]
        if request.method == "GET":
            items: list[tuple[str, Any]] = list(request.query.items())
            params: dict[str, Any] = dict(request.query)
        else:
            params = parse_json_object(await request.read(), payload, allow_empty=True)
            items = list(params.items())
        account = self.auth.authenticate(request.headers, instruction, items)
        self._limit(account)
        self.exchange.account(VENUE, account)  # a new API key opens an account with the starting collateral
        await self._faults(op, account)
        return account, params

    def _symbol(self, params: dict[str, Any]) -> MarketRules:
        """A required ``symbol`` parameter: absent is a parse error, unknown as in :meth:`_symbol_filter`."""
        rules = self._symbol_filter(params)
        if rules is None:
            raise param_error("symbol", "MarketSymbol", "field `symbol` is required")
        return rules

    def _symbol_filter(self, params: dict[str, Any]) -> MarketRules | None:
        """An optional ``symbol`` parameter (None: absent); an unknown symbol is answered 400
        "Invalid market symbol", as the venue does."""
        symbol = params.get("symbol")
        if symbol is None:
            return None
        rules = self.engine.markets.get(symbol) if isinstance(symbol, str) else None
        if rules is None:
            raise ApiError(400, "INVALID_CLIENT_REQUEST", "Invalid market symbol")
        return rules

    # ---- public -------------------------------------------------------------------------------
    async def markets(self, request: web.Request) -> web.Response:
        await self._public(request)
        market_type = query_enum(request.query, "marketType", "MarketType", MARKET_TYPES)
        rows = [] if market_type not in (None, "PERP") else [r.to_json() for r in self.engine.markets.values()]
        return web.json_response(rows)

    async def market(self, request: web.Request) -> web.Response:
        await self._public(request)
        rules = self._symbol(dict(request.query))
        return web.json_response(rules.to_json())

    async def depth(self, request: web.Request) -> web.Response:
        await self._public(request)
        rules = self._symbol(dict(request.query))
        limit = request.query.get("limit", "1000")  # default 1000 per side
        if limit not in {str(n) for n in views.DEPTH_LIMITS}:
            raise param_error("limit", "DepthLimit", "Expect a valid enumeration value.")
        return web.json_response(views.depth(self.engine, rules, int(limit)))

    async def ticker(self, request: web.Request) -> web.Response:
        await self._public(request)
        rules = self._symbol(dict(request.query))
        query_enum(request.query, "interval", "TickerInterval", ("1d", "1w"))
        return web.json_response(views.ticker(self.engine, rules))

    async def tickers(self, request: web.Request) -> web.Response:
        await self._public(request)
        return web.json_response([views.ticker(self.engine, r) for r in self.engine.markets.values()])

    async def mark_prices(self, request: web.Request) -> web.Response:
        await self._public(request)
        rules = self._symbol_filter(dict(request.query))
        chosen = [rules] if rules is not None else list(self.engine.markets.values())
        return web.json_response([views.mark_price(self.engine, r) for r in chosen])

    async def status(self, request: web.Request) -> web.Response:
        self._limit(f"ip:{request.remote}")
        return web.json_response({"message": None, "status": "Ok"})

    async def ping(self, request: web.Request) -> web.Response:
        self._limit(f"ip:{request.remote}")
        return web.Response(text="pong")

    async def time(self, request: web.Request) -> web.Response:
        self._limit(f"ip:{request.remote}")
        return web.Response(text=str(int(time.time() * 1000)))

    # ---- orders -------------------------------------------------------------------------------
    async def order_execute(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "order", "OrderExecutePayload")
        req = parse_order(params, self.engine.markets)
        # partial_fill is a fault of orders that take at once (Market, Limit IOC: the hedge's price-capped
        # orders), as on the Lighter simulator; a resting Limit order must not use it up.
        taker = req.order_type == "Market" or req.time_in_force == "IOC"
        kinds = (FaultKind.TIMEOUT_AFTER_ACCEPT,) + ((FaultKind.PARTIAL_FILL,) if taker else ())
        fault = self.exchange.take_fault(VENUE, "order", account, kinds=kinds)
        fraction = None
        if fault is not None and fault.kind is FaultKind.PARTIAL_FILL:
            fraction = Decimal(str(fault.params.get("fraction", "0.5")))
        order = self.engine.execute(account, req, fraction)
        body = order.to_rest()
        if fault is not None and fault.kind is FaultKind.TIMEOUT_AFTER_ACCEPT:
            await asyncio.sleep(_fault_seconds(fault))  # executed already: the client times out
        return web.json_response(body)

    def _selected(self, account: str, params: dict[str, Any], outer: str) -> BpOrder | None:
        rules = self._symbol(params)
        order_id, client_id = id_selector(params, outer)
        if (order_id is None) == (client_id is None):
            message = "Must specify either `clientId` or `orderId`" if order_id is None else \
                "Must specify only one of `clientId` or `orderId`"  # the second wording is a simulator choice
            raise ApiError(400, "INVALID_CLIENT_REQUEST", message)
        return self.engine.find_open(account, rules, order_id, client_id)

    async def order_query(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "query")
        order = self._selected(account, params, "OrderQuery")
        if order is None:  # only resting orders are visible here
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Not Found")
        return web.json_response(order.to_rest())

    async def order_cancel(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "order", "OrderCancelPayload")
        order = self._selected(account, params, "OrderCancelPayload")
        if order is None:
            raise ApiError(400, "INVALID_CLIENT_REQUEST", "Order not found")  # the venue's answer
        return web.json_response(self.engine.cancel(account, order).to_rest())

    async def orders_query(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "query")
        rules = self._symbol_filter(params)
        market_type = query_enum(request.query, "marketType", "MarketType", MARKET_TYPES)
        rows = [o.to_rest() for o in self.engine.open.get(account, {}).values()
                if (rules is None or o.rules is rules) and market_type in (None, "PERP")]
        return web.json_response(rows)

    async def orders_cancel(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "order", "OrderCancelAllPayload")
        rules = self._symbol(params)
        order_type = params.get("orderType")
        if order_type not in (None, "RestingLimitOrder", "ConditionalOrder"):
            raise PlainError("parse request payload error: failed to parse \"CancelOrderTypeEnum\": Expect a "
                             "valid enumeration value. (occurred while parsing \"OrderCancelAllPayload\")")
        doomed = [] if order_type == "ConditionalOrder" else \
            [o for o in self.engine.open.get(account, {}).values() if o.rules is rules]
        return web.json_response([self.engine.cancel(account, o).to_rest() for o in doomed])

    # ---- account --------------------------------------------------------------------------------
    async def position(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "position")
        rules = self._symbol_filter(params)
        query_enum(request.query, "marketType", "MarketType", MARKET_TYPES)
        with self.exchange.lock:
            rows = [views.position_rest(self.engine, account, r, q) for r, q in views.open_positions(self.engine, account)
                    if rules is None or r is rules]
        # Counted after the read: the last stale read must still see the frozen quantity.
        self.exchange.take_fault(VENUE, "position", account, kinds=(FaultKind.STALE_POSITION,))
        if not rows and (rules is not None or self.exchange.profile.backpack.flat_position_404):
            raise ApiError(404, "RESOURCE_NOT_FOUND", "Position not found")  # the spec's status; body UNCONFIRMED
        return web.json_response(rows)

    async def collateral(self, request: web.Request) -> web.Response:
        account, _ = await self._signed(request, "collateral")
        return web.json_response(views.collateral(self.engine, account))

    async def capital(self, request: web.Request) -> web.Response:
        account, _ = await self._signed(request, "collateral")
        return web.json_response(views.capital(self.engine, account))

    async def order_history(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "history")
        return web.json_response(order_history(self.engine, account, params, self._symbol_filter(params)))

    async def fill_history(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "history")
        return web.json_response(fill_history(self.engine, account, params, self._symbol_filter(params)))

    async def funding_history(self, request: web.Request) -> web.Response:
        account, params = await self._signed(request, "history")
        return web.json_response(funding_history(self.engine, account, params, self._symbol_filter(params)))

    def routes(self, hub: WsHub) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/markets", self.markets), web.get("/api/v1/market", self.market),
            web.get("/api/v1/depth", self.depth), web.get("/api/v1/ticker", self.ticker),
            web.get("/api/v1/tickers", self.tickers), web.get("/api/v1/markPrices", self.mark_prices),
            web.get("/api/v1/status", self.status), web.get("/api/v1/ping", self.ping),
            web.get("/api/v1/time", self.time),
            web.post("/api/v1/order", self.order_execute), web.get("/api/v1/order", self.order_query),
            web.delete("/api/v1/order", self.order_cancel), web.get("/api/v1/orders", self.orders_query),
            web.delete("/api/v1/orders", self.orders_cancel), web.get("/api/v1/position", self.position),
            web.get("/api/v1/capital", self.capital), web.get("/api/v1/capital/collateral", self.collateral),
            web.get("/wapi/v1/history/orders", self.order_history),
            web.get("/wapi/v1/history/fills", self.fill_history),
            web.get("/wapi/v1/history/funding", self.funding_history),
            web.get("/ws", hub.handle),
        ]


def _alias_routes(auth: Authenticator) -> list[web.RouteDef]:
    async def add_api_key(request: web.Request) -> web.Response:
        """Admin: ``{"api_key": <new key>, "account": <the account's first key>}`` lets a second API key
        act on an existing account (REST only), as a venue account holding several keys does."""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("api_key", "account")):
            return web.json_response({"error": 'expected {"api_key": str, "account": str}'}, status=400)
        if auth.verify_key(body["api_key"]) is None:
            return web.json_response({"error": "api_key is not a base64 ED25519 public key"}, status=400)
        auth.aliases[body["api_key"]] = body["account"]
        return web.json_response({"api_key": body["api_key"], "account": body["account"]})

    async def list_api_keys(request: web.Request) -> web.Response:
        """Admin: every second key, its account and its signed requests per instruction."""
        keys = {key: {"account": account, "uses": {instr: n for (k, instr), n in auth.alias_uses.items() if k == key}}
                for key, account in auth.aliases.items()}
        return web.json_response({"keys": keys})

    return [web.post("/_sim/backpack/apikey", add_api_key), web.get("/_sim/backpack/apikey", list_api_keys)]


def create_backpack_app(exchange: Exchange, *, ws_ping_secs: float = 60.0, pump_secs: float = 0.1) -> web.Application:
    """The Backpack simulator app over ``exchange`` (the runner adds the ``/_sim/`` admin routes)."""
    engine = BackpackEngine(exchange)
    auth = Authenticator()
    hub = WsHub(engine, auth, ping_secs=ws_ping_secs, pump_secs=pump_secs)
    app = web.Application(middlewares=[_errors, _latency(exchange)], client_max_size=1 << 20)
    app[ENGINE] = engine
    app[HUB] = hub
    app.router.add_routes(BackpackApi(exchange, engine, auth).routes(hub))
    app.router.add_routes(_alias_routes(auth))

    def on_position(venue: str, account: str, base: str) -> None:
        if venue == VENUE and base in engine.by_base:
            with exchange.lock:
                engine.position_changed(account, base)

    app[POSITION_HOOK] = on_position
    exchange.listeners.append(engine.on_market)  # liquidations get the venue's records and events
    app.on_startup.append(hub.start)
    app.on_shutdown.append(lambda _app: hub.close_all())
    app.on_cleanup.append(hub.stop)
    return app
