"""Pure parsers from Backpack JSON to :mod:`venues.base` types.

Every number goes through ``Decimal(str)`` (bodies are decoded with ``parse_float=Decimal``),
ids stay strings (WebSocket order ids have 18 digits, more than a float holds), and a field
we cannot read raises ``VenueError(BAD_RESPONSE)`` instead of defaulting to zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from venues.base import (
    Balance,
    MarketRules,
    OrderReport,
    OrderState,
    ReasonCode,
    Side,
    TopOfBook,
    VenueError,
)
from venues.margin import InitialMargin

_SIDES = {"Bid": Side.BUY, "Ask": Side.SELL}
SIDE_TO_WIRE = {Side.BUY: "Bid", Side.SELL: "Ask"}

# The venue's OrderStatus values, plus the Rust SDK's ``Triggered``. Expired/Cancelled keep their fill:
# see :func:`order_state`.
_OPEN_STATUSES = {"New", "TriggerPending", "Triggered"}


def bad(message: str) -> VenueError:
    return VenueError(ReasonCode.BAD_RESPONSE, message)


def loads(text: str) -> Any:
    """Decode a body keeping every JSON float exact (``Decimal``, never ``float``)."""
    return json.loads(text, parse_float=Decimal)


def dec(value: Any, name: str) -> Decimal:
    """A decimal field; accepts strings, ints and Decimals, refuses bools and nulls."""
    if isinstance(value, bool) or value is None:
        raise bad(f"field {name} is {value!r}, expected a decimal")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise bad(f"field {name} is not a decimal: {str(value)[:40]!r}") from None
    if not result.is_finite():
        raise bad(f"field {name} is not finite")
    return result


def opt_dec(value: Any, name: str) -> Decimal | None:
    return None if value is None else dec(value, name)


def obj(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad(f"{what}: expected an object, got {type(body).__name__}")
    return body


def arr(body: Any, what: str) -> list[Any]:
    if not isinstance(body, list):
        raise bad(f"{what}: expected an array, got {type(body).__name__}")
    return body


def side(value: Any) -> Side:
    try:
        return _SIDES[value]
    except (KeyError, TypeError):
        raise bad(f"unknown side {value!r}") from None


def id_str(value: Any, name: str) -> str:
    """An id as text. JSON integers arrive as Python ints (exact); floats would be lossy."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad(f"field {name} is {type(value).__name__}, expected an id")
    return str(value)


def parse_client_id(value: Any) -> int | None:
    """``clientId``: a number on orders and WS ``c``, a string in fills history."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise bad("clientId is a boolean")
    try:
        return int(str(value))
    except ValueError:
        raise bad(f"clientId is not an integer: {str(value)[:20]!r}") from None


def micros(value: Any, name: str) -> int | None:
    """``E``/``T`` in µs: an int or a string of digits on the wire."""
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError:
        raise bad(f"field {name} is not an integer timestamp") from None


# ---- markets and books ---------------------------------------------------------------------
def parse_market(body: Any) -> MarketRules:
    """One market object. Tick and step come from the filters as Decimals, never as
    digit counts of the strings."""
    market = obj(body, "market")
    filters = obj(market.get("filters"), "market.filters")
    price = obj(filters.get("price"), "filters.price")
    quantity = obj(filters.get("quantity"), "filters.quantity")
    symbol = market.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise bad("market without a symbol")
    tick, step = dec(price.get("tickSize"), "tickSize"), dec(quantity.get("stepSize"), "stepSize")
    if tick <= 0 or step <= 0:
        raise bad(f"market {symbol}: non-positive tick or step")
    min_qty = dec(quantity.get("minQuantity", step), "minQuantity")
    return MarketRules(symbol=symbol, tick_size=tick, step_size=step, min_quantity=min_qty,
                       initial_margin=_imf_function(market.get("imfFunction"), symbol))


def _imf_function(raw: Any, symbol: str) -> InitialMargin | None:
    # A perp's is ``{"base", "factor", "type": "sqrt"}``; none (spot) or another type is unknown, not zero:
    # planning refuses rather than guess.
    if raw is None:
        return None
    function = obj(raw, f"market {symbol} imfFunction")
    if function.get("type") != "sqrt":
        return None
    rule = InitialMargin(base=dec(function.get("base"), "imfFunction.base"),
                         factor=dec(function.get("factor", 0), "imfFunction.factor"))
    return rule if rule.base > 0 else None


def parse_markets(body: Any) -> dict[str, MarketRules]:
    """GET /api/v1/markets: rules by symbol."""
    rules = (parse_market(m) for m in arr(body, "markets"))
    return {r.symbol: r for r in rules}


def _levels(body: dict[str, Any], name: str) -> list[Decimal]:
    prices = []
    for level in arr(body.get(name, []), f"depth.{name}"):
        if not isinstance(level, list) or len(level) < 2:
            raise bad(f"depth.{name}: malformed level")
        if dec(level[1], f"{name} size") > 0:
            prices.append(dec(level[0], f"{name} price"))
    return prices


def parse_depth(symbol: str, body: Any, read_at: float) -> TopOfBook:
    """GET /api/v1/depth. Both sides come ascending: best ask ``asks[0]``, best bid
    ``bids[-1]``. Taking min/max gives exactly those and stays right if the order changes.
    Zero-size levels (seen in a REST snapshot) are not liquidity and are skipped."""
    depth = obj(body, "depth")
    bids, asks = _levels(depth, "bids"), _levels(depth, "asks")
    return TopOfBook(symbol, max(bids) if bids else None, min(asks) if asks else None, read_at)


# ---- positions and collateral --------------------------------------------------------------
@dataclass(frozen=True)
class PositionFields:
    quantity: Decimal
    entry_price: Decimal | None = None
    mark_price: Decimal | None = None


def parse_position_list(body: Any, symbol: str) -> PositionFields:
    """GET /api/v1/position: an array of open positions. Call only with the body of a
    *successful* request: then a symbol absent from the list is flat."""
    for item in arr(body, "positions"):
        entry = obj(item, "position")
        if entry.get("symbol") == symbol:
            return PositionFields(dec(entry.get("netQuantity"), "netQuantity"),
                                  opt_dec(entry.get("entryPrice"), "entryPrice"),
                                  opt_dec(entry.get("markPrice"), "markPrice"))
    return PositionFields(Decimal(0))


def parse_collateral(account: str, body: Any, read_at: float) -> Balance:
    """GET /api/v1/capital/collateral. ``collateral`` is a list of assets, not a number;
    we sum their ``collateralValue``, falling back to the
    venue's ``assetsValue`` when the list is absent."""
    data = obj(body, "collateral")
    assets = data.get("collateral")
    total: Decimal | None
    if isinstance(assets, list):
        total = sum((dec(obj(a, "collateral asset").get("collateralValue"), "collateralValue")
                     for a in assets), Decimal(0))
    else:
        total = opt_dec(data.get("assetsValue"), "assetsValue")
    return Balance(account=account, collateral=total,
                   equity=opt_dec(data.get("netEquity"), "netEquity"),
                   available=opt_dec(data.get("netEquityAvailable"), "netEquityAvailable"),
                   read_at=read_at)


# ---- orders --------------------------------------------------------------------------------
def order_state(status: Any, filled: Decimal) -> OrderState:
    """Venue status → :class:`OrderState`. Unknown statuses are errors, not OPEN, so
    a status we do not know cannot hide a fill. ``Expired``/``Cancelled`` are CANCELLED whatever the fill: an IOC
    market order that expired after a partial fill is a partial, not FILLED."""
    if status == "Filled":
        return OrderState.FILLED
    if status == "PartiallyFilled":
        return OrderState.PARTIALLY_FILLED
    if status in ("Cancelled", "Expired"):
        return OrderState.CANCELLED
    if status == "TriggerFailed":
        return OrderState.CANCELLED if filled > 0 else OrderState.FAILED
    if status in _OPEN_STATUSES:
        return OrderState.PARTIALLY_FILLED if filled > 0 else OrderState.OPEN
    raise bad(f"unknown order status {status!r}")


@dataclass(frozen=True)
class ParsedOrder:
    """A REST order object: execute/cancel/GET responses and history entries."""

    order_id: str
    client_id: int | None
    symbol: str
    side: Side
    order_type: str
    status: str
    state: OrderState
    quantity: Decimal | None
    executed: Decimal
    executed_quote: Decimal | None
    reduce_only: bool
    expiry_reason: str | None
    #: ``createdAt`` in ms on the order endpoints; None on history (naive ISO text there).
    created_at_ms: int | None = None

    @property
    def avg_price(self) -> Decimal | None:
        if self.executed > 0 and self.executed_quote:
            return self.executed_quote / self.executed
        return None

    def report(self, *, client_id: int | None = None, requested: Decimal | None = None,
               existing: bool = False) -> OrderReport:
        """As an :class:`OrderReport`; ``client_id``/``requested`` fill in what the body lacks."""
        cid = self.client_id if self.client_id is not None else client_id
        if cid is None:
            raise bad(f"order {self.order_id} has no clientId")
        wanted = self.quantity if self.quantity is not None else requested
        reason = self.expiry_reason or (self.status if self.state is not OrderState.FILLED else None)
        return OrderReport(
            client_id=cid, symbol=self.symbol, side=self.side,
            requested=wanted if wanted is not None else self.executed, filled=self.executed,
            state=self.state, venue_order_id=self.order_id, avg_price=self.avg_price,
            reduce_only=self.reduce_only, reason=reason if self.state.final else None, existing=existing,
        )


def parse_order(body: Any) -> ParsedOrder:
    """One order object. ``executedQuantity`` is the fill (never assumed from the status)."""
    order = obj(body, "order")
    executed = dec(order.get("executedQuantity", "0"), "executedQuantity")
    status = order.get("status")
    symbol = order.get("symbol")
    if not isinstance(symbol, str):
        raise bad("order without a symbol")
    return ParsedOrder(
        order_id=id_str(order.get("id"), "id"),
        client_id=parse_client_id(order.get("clientId")),
        symbol=symbol,
        side=side(order.get("side")),
        order_type=str(order.get("orderType")),
        status=str(status),
        state=order_state(status, executed),
        quantity=opt_dec(order.get("quantity"), "quantity"),
        executed=executed,
        executed_quote=opt_dec(order.get("executedQuoteQuantity"), "executedQuoteQuantity"),
        reduce_only=bool(order.get("reduceOnly")),
        expiry_reason=order.get("expiryReason") or None,
        created_at_ms=created if isinstance(created := order.get("createdAt"), int) else None,
    )


# ---- WebSocket -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WsFrame:
    stream: str | None
    data: Any
    error: str | None = None


def parse_ws_frame(text: str | bytes) -> WsFrame:
    """``{"stream","data"}`` envelopes and ``{"id","error":{code,message}}`` error frames."""
    try:
        frame = loads(text.decode() if isinstance(text, bytes) else text)
    except ValueError:
        raise bad("WebSocket frame is not JSON") from None
    frame = obj(frame, "ws frame")
    if frame.get("error") is not None:
        err = frame["error"]
        detail = f"{err.get('code')} {err.get('message')}" if isinstance(err, dict) else str(err)
        return WsFrame(None, None, error=detail)
    stream = frame.get("stream")
    return WsFrame(stream if isinstance(stream, str) else None, frame.get("data"))


@dataclass(frozen=True)
class WsOrderEvent:
    """``account.orderUpdate`` data. ``fill_quantity`` is ``l``, the quantity of *this*
    fill, not the remainder; ``cumulative`` is ``z``."""

    event: str
    symbol: str
    client_id: int | None
    side: Side
    order_id: str
    order_type: str
    status: str
    state: OrderState
    quantity: Decimal | None
    cumulative: Decimal
    cumulative_quote: Decimal | None
    trade_id: str | None
    fill_quantity: Decimal | None
    fill_price: Decimal | None
    event_time_us: int | None
    engine_time_us: int | None
    reduce_only: bool
    expiry_reason: str | None
    origin: str | None


def parse_ws_order(data: Any) -> WsOrderEvent:
    d = obj(data, "orderUpdate")
    cumulative = dec(d.get("z", "0"), "z")
    is_fill = d.get("t") is not None
    order_type = str(d.get("o") or "")
    return WsOrderEvent(
        event=str(d.get("e")), symbol=str(d.get("s")), client_id=parse_client_id(d.get("c")),
        side=side(d.get("S")), order_id=id_str(d.get("i"), "i"),
        # Upper case on the socket, title case over REST.
        order_type=order_type[:1].upper() + order_type[1:].lower(),
        status=str(d.get("X")), state=order_state(d.get("X"), cumulative),
        quantity=opt_dec(d.get("q"), "q"), cumulative=cumulative,
        cumulative_quote=opt_dec(d.get("Z"), "Z"),
        trade_id=id_str(d["t"], "t") if is_fill else None,
        fill_quantity=dec(d.get("l"), "l") if is_fill else None,
        fill_price=dec(d.get("L"), "L") if is_fill else None,
        event_time_us=micros(d.get("E"), "E"), engine_time_us=micros(d.get("T"), "T"),
        reduce_only=bool(d.get("r")), expiry_reason=d.get("R") or None, origin=d.get("O"),
    )


@dataclass(frozen=True)
class WsPosition:
    """``account.positionUpdate`` data; ``event`` is None for the subscribe snapshot."""

    symbol: str
    quantity: Decimal
    entry_price: Decimal | None
    mark_price: Decimal | None
    event: str | None
    event_time_us: int | None
    position_id: str | None


def parse_ws_position(data: Any) -> WsPosition:
    d = obj(data, "positionUpdate")
    symbol = d.get("s")
    if not isinstance(symbol, str):
        raise bad("position update without a symbol")
    return WsPosition(
        symbol=symbol, quantity=dec(d.get("q"), "q"), entry_price=opt_dec(d.get("B"), "B"),
        mark_price=opt_dec(d.get("M"), "M"), event=d.get("e"),
        event_time_us=micros(d.get("E"), "E"),
        position_id=None if d.get("i") is None else id_str(d.get("i"), "i"),
    )
