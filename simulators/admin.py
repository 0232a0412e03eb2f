"""Admin API of the simulators, mounted under ``/_sim/`` on the Backpack and Lighter servers.

Both servers share one :class:`market.Exchange`, so a route answers the same on either port.
JSON in, JSON out; a bad request gets HTTP 400 ``{"error": "<text>"}``. Admin routes are never
delayed by the simulated latency and never consume faults.

Routes
------
``GET /_sim/state``
    ``exchange.snapshot()``: prices, accounts (collateral, equity, positions), armed faults.
``GET /_sim/audit?venue=&account=``
    ``{"entries": [AuditEntry.to_json(), ...]}`` oldest first, optionally filtered. ``account`` is
    the Backpack API key (base64) or the Lighter account index as a string.
``GET /_sim/requests?venue=``
    ``{"requests": [{"venue", "who", "endpoint", "count", "limited"}, ...]}``: every venue REST request
    (Lighter so far) counted as its rate limit counts it: ``who`` is ``account:<index>`` for an
    authenticated request or a signed tx, else ``ip:<address>``; ``limited`` of them answered 429.
    ``POST /_sim/requests/reset`` clears the counts (answers ``{"cleared": n}``).
``POST /_sim/price``
    ``{"base": "ETH", "price": "3100"}`` sets the mid; ``{"base": "ETH", "move_pct": -2}`` moves it by
    a percentage. Answers ``{"base", "price"}``.
``POST /_sim/latency``
    ``{"ms": 5}``: extra delay added to every venue response. Answers ``{"latency_ms"}``.
``POST /_sim/liquidate``
    ``{"venue": "lighter", "account": "102", "base": "ETH"}`` forces the position to zero at the mark,
    with the venue's liquidation records (as the engine of ``margin.py`` writes them when the mark
    breaches maintenance); ``"leave": "0.003"`` liquidates partially, down to that size on the same
    side (a leftover below the venue minimum is dust). Answers ``{"liquidated": "<signed quantity before>"}``.
``POST /_sim/fault``
    ``{"venue": "backpack"|"lighter", "kind": <FaultKind value>, "count": 1, "op": "any",
    "account": null, "params": {}}`` arms a fault for the next ``count`` matching requests.
    ``op`` names are per venue; Backpack uses ``order`` (POST/DELETE order, DELETE orders),
    ``query`` (GET order/orders), ``position``, ``collateral`` (capital, collateral), ``history``,
    ``public`` and ``ws`` (``drop_ws``; Lighter also ``miss_push``: the next account push is lost).
    ``params``: ``seconds`` for ``hang`` and
    ``timeout_after_accept``, ``fraction`` for ``partial_fill``. Answers ``{"armed": {...}}``.
``POST /_sim/faults/clear``
    Disarms every fault (and unfreezes stale positions). Answers ``{"cleared": n}``.
``POST /_sim/depth``
    ``{"venue": "lighter", "levels": 3, "level_size": "0.5", ...}`` replaces that venue's order book
    shape (``profile.DepthProfile`` fields; those not given keep the profile's value); without
    ``venue`` both books change; ``{"venue": "lighter", "reset": true}`` restores the profile's book.
    Answers ``{"venue", "depth": {...}}``.
``POST /_sim/collateral``
    ``{"venue", "account", "amount"}`` sets an account's collateral (creating the account).
    Answers ``{"venue", "account", "collateral"}``.

``POST /_sim/backpack/apikey`` (Backpack server)
    ``{"api_key": <b64 public key>, "account": <the account's first API key>}`` lets a second API key
    sign REST requests for an existing account; ``GET`` answers ``{"keys": {key: {"account", "uses":
    {instruction: n}}}}``, what each second key signed.

A venue app may register ``app[POSITION_HOOK]``, a callable ``(venue, account, base) -> None``;
the runner passes every registered hook to :func:`mount_admin`, and ``/_sim/liquidate`` calls them
all after changing a position, so each venue can push its own position events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from simulators.market import Exchange, Fault, FaultKind

logger = logging.getLogger(__name__)

PREFIX = "/_sim/"
VENUES = ("backpack", "lighter")
PositionHook = Callable[[str, str, str], None]
POSITION_HOOK: web.AppKey[PositionHook] = web.AppKey("sim_position_hook")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminError(Exception):
    """A bad admin request: answered 400 with the message."""


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdminError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AdminError("body must be a JSON object")
    return data


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise AdminError(f"{name} must be a number")
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise AdminError(f"{name} must be a number") from exc
    if not result.is_finite():
        raise AdminError(f"{name} must be finite")
    return result


def _venue(data: dict[str, Any]) -> str:
    venue = data.get("venue")
    if venue not in VENUES:
        raise AdminError(f"venue must be one of {VENUES}")
    return str(venue)


def _account(data: dict[str, Any]) -> str:
    account = data.get("account")
    if account is None or isinstance(account, bool) or not isinstance(account, (str, int)):
        raise AdminError("account must be a string (Backpack API key or Lighter account index)")
    return str(account)


def _base(exchange: Exchange, data: dict[str, Any]) -> str:
    base = data.get("base")
    if base not in exchange.prices:
        raise AdminError(f"base must be one of {sorted(exchange.prices)}")
    return str(base)


def _parse_fault(data: dict[str, Any]) -> Fault:
    try:
        kind = FaultKind(data.get("kind"))
    except ValueError as exc:
        raise AdminError(f"kind must be one of {[k.value for k in FaultKind]}") from exc
    count = data.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AdminError("count must be a positive integer")
    op = data.get("op", "any")
    if not isinstance(op, str) or not op:
        raise AdminError("op must be a non-empty string")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise AdminError("params must be an object")
    for name in ("seconds", "fraction"):
        if name in params:
            value = _decimal(params[name], f"params.{name}")
            if value < 0 or (name == "fraction" and value > 1):
                raise AdminError(f"params.{name} is out of range")
    account = None if data.get("account") is None else _account(data)
    venue = _venue(data)
    if kind is FaultKind.INVALID_NONCE and venue != "lighter":
        raise AdminError("invalid_nonce is a Lighter fault")  # Backpack has no nonces: it would never fire
    return Fault(kind=kind, venue=venue, remaining=count, op=op, account=account, params=params)


class AdminApi:
    """The ``/_sim/`` handlers bound to one exchange; ``hooks`` run after a liquidation."""

    def __init__(self, exchange: Exchange, hooks: list[PositionHook]) -> None:
        self.exchange = exchange
        self.hooks = hooks

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.exchange.snapshot())

    async def audit(self, request: web.Request) -> web.Response:
        venue = request.query.get("venue")
        account = request.query.get("account")
        with self.exchange.lock:
            entries = [e.to_json() for e in self.exchange.audit
                       if (not venue or e.venue == venue) and (not account or e.account == account)]
        return web.json_response({"entries": entries})

    async def requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.exchange.request_log(request.query.get("venue") or None)})

    async def requests_reset(self, request: web.Request) -> web.Response:
        with self.exchange.lock:
            cleared = sum(c for c, _ in self.exchange.requests.values())
            self.exchange.requests.clear()
        return web.json_response({"cleared": cleared})

    async def price(self, request: web.Request) -> web.Response:
        data = await _body(request)
        base = _base(self.exchange, data)
        with self.exchange.lock:
            if "price" in data:
                new = _decimal(data["price"], "price")
            elif "move_pct" in data:
                new = self.exchange.prices[base].mid * (1 + _decimal(data["move_pct"], "move_pct") / 100)
            else:
                raise AdminError("give price or move_pct")
            if new <= 0:
                raise AdminError("price must be positive")
            self.exchange.set_price(base, new)
        logger.info("sim price %s -> %s", base, new)
        return web.json_response({"base": base, "price": str(new)})

    async def latency(self, request: web.Request) -> web.Response:
        ms = _decimal((await _body(request)).get("ms"), "ms")
        if ms < 0 or ms > 600_000:
            raise AdminError("ms must be between 0 and 600000")
        self.exchange.latency_ms = float(ms)
        return web.json_response({"latency_ms": self.exchange.latency_ms})

    async def liquidate(self, request: web.Request) -> web.Response:
        data = await _body(request)
        venue, account, base = _venue(data), _account(data), _base(self.exchange, data)
        leave = _decimal(data["leave"], "leave") if "leave" in data else Decimal(0)
        before = self.exchange.liquidate(venue, account, base, leave=leave)
        logger.info("sim liquidate %s/%s %s (was %s)", venue, account, base, before)
        for hook in self.hooks:
            hook(venue, account, base)
        return web.json_response({"liquidated": str(before)})

    async def fault(self, request: web.Request) -> web.Response:
        armed = _parse_fault(await _body(request))
        self.exchange.arm_fault(armed)
        logger.info("sim fault armed: %s", armed)
        return web.json_response({"armed": {"kind": armed.kind.value, "venue": armed.venue, "op": armed.op,
                                            "count": armed.remaining, "account": armed.account,
                                            "params": armed.params}})

    async def clear(self, request: web.Request) -> web.Response:
        with self.exchange.lock:
            n = len(self.exchange.faults)
            self.exchange.clear_faults()
        return web.json_response({"cleared": n})

    async def depth(self, request: web.Request) -> web.Response:
        data = await _body(request)
        venue = data.get("venue")
        if venue is not None and venue not in VENUES:
            raise AdminError(f"venue must be one of {', '.join(VENUES)}")
        base = self.exchange.profile.depth
        changes: dict[str, Any] = {}
        for name in ("levels", "seed"):
            if name in data:
                changes[name] = int(_decimal(data[name], name))
        for name in ("level_size", "size_growth", "size_jitter", "level_step", "half_spread"):
            if name in data:
                changes[name] = _decimal(data[name], name)
        try:
            depth = replace(base, **changes)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        with self.exchange.lock:
            for model in self.exchange.prices.values():
                for name in ((venue,) if venue else VENUES):
                    if data.get("reset"):
                        model.venue_depth.pop(name, None)
                    else:
                        model.venue_depth[name] = depth
        logger.info("sim depth %s -> %s", venue or "both", depth)
        shown = {k: str(v) for k, v in asdict(depth).items()}
        return web.json_response({"venue": venue, "depth": shown})

    async def collateral(self, request: web.Request) -> web.Response:
        data = await _body(request)
        venue, account = _venue(data), _account(data)
        amount = _decimal(data.get("amount"), "amount")
        with self.exchange.lock:
            self.exchange.account(venue, account).collateral = amount
        return web.json_response({"venue": venue, "account": account, "collateral": str(amount)})


def admin_routes(exchange: Exchange, hooks: list[PositionHook] | None = None) -> list[web.RouteDef]:
    """The ``/_sim/`` routes bound to ``exchange``; ``hooks`` run after a liquidation."""
    api = AdminApi(exchange, hooks if hooks is not None else [])
    return [
        web.get(PREFIX + "state", _guard(api.state)),
        web.get(PREFIX + "audit", _guard(api.audit)),
        web.get(PREFIX + "requests", _guard(api.requests)),
        web.post(PREFIX + "requests/reset", _guard(api.requests_reset)),
        web.post(PREFIX + "price", _guard(api.price)),
        web.post(PREFIX + "latency", _guard(api.latency)),
        web.post(PREFIX + "liquidate", _guard(api.liquidate)),
        web.post(PREFIX + "fault", _guard(api.fault)),
        web.post(PREFIX + "faults/clear", _guard(api.clear)),
        web.post(PREFIX + "collateral", _guard(api.collateral)),
        web.post(PREFIX + "depth", _guard(api.depth)),
    ]


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except AdminError as exc:
            return _bad(str(exc))

    return wrapped


def mount_admin(app: web.Application, exchange: Exchange, hooks: list[PositionHook] | None = None) -> None:
    """Add the ``/_sim/`` routes to a venue app (before it starts).

    Pass the same ``hooks`` list to every app of one process: a liquidation posted to the Lighter
    port must still let the Backpack app push its WebSocket position event.
    """
    app.router.add_routes(admin_routes(exchange, hooks))


def is_admin_path(path: str) -> bool:
    return path.startswith(PREFIX)
