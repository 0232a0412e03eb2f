"""Pure parsers: Lighter JSON (or the SDK's model objects) → :mod:`venues.base` types.

Every body in ``tests/fixtures/lighter.json`` must parse. Lighter mixes JSON numbers and
strings for amounts, so every amount goes through ``Decimal(str(x))``. Unknown order statuses
raise instead of mapping to OPEN, so a status we do not know cannot hide a fill.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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
from venues.margin import LIGHTER_FRACTION_UNITS, InitialMargin

CODE_OK = 200
CODE_ACCOUNT_NOT_FOUND = 21100
CODE_INVALID_NONCE = 21104
CODE_DUPLICATE_CLIENT_ORDER_INDEX = 21728
CODE_INVALID_AUTH = 20013
CODE_INVALID_MARKET = 21602
#: "invalid PublicKey, please run changePubKey" (apidocs.lighter.xyz/docs/troubleshooting): the key at that
#: index is not registered for the account (or the index is one of the venue's reserved 0-3).
CODE_INVALID_PUBKEY = 21108
# 23000-23003 are rate limits; 21506 "too many pending txs" is a back-off too.
_RATE_LIMIT_CODES = frozenset({23000, 23001, 23002, 23003, 21506})

_OPEN_STATUSES = frozenset({"open", "pending", "in-progress"})
# Terminal statuses other than "filled": canceled and every canceled-* status of the venue's Order.
CANCEL_PREFIXES = ("canceled", "cancelled", "expired", "rejected", "failed")
# Offline validation errors from the Go signer carry no code.
_SIGNER_VALIDATION = re.compile(r"should not be|is not valid|is invalid", re.IGNORECASE)


# ---- primitives ------------------------------------------------------------------------------

def as_dict(obj: Any) -> dict[str, Any]:
    """A JSON object as a dict, whether the API sent it raw or the SDK wrapped it in a model."""
    if isinstance(obj, Mapping):
        return dict(obj)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
        if isinstance(data, Mapping):
            return dict(data)
    raise VenueError(ReasonCode.BAD_RESPONSE, f"expected a JSON object, got {type(obj).__name__}")


def to_decimal(value: Any, what: str) -> Decimal:
    """``Decimal(str(x))`` for numbers and numeric strings; BAD_RESPONSE otherwise."""
    if value is None or isinstance(value, bool) or value == "":
        raise VenueError(ReasonCode.BAD_RESPONSE, f"missing number for {what}")
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise VenueError(ReasonCode.BAD_RESPONSE, f"not a number for {what}: {value!r}") from None
    if not result.is_finite():
        raise VenueError(ReasonCode.BAD_RESPONSE, f"not a finite number for {what}: {value!r}")
    return result


def opt_decimal(value: Any, what: str) -> Decimal | None:
    return None if value is None or value == "" else to_decimal(value, what)


def _int(value: Any, what: str) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        raise VenueError(ReasonCode.BAD_RESPONSE, f"not an integer for {what}: {value!r}") from None


# ---- errors ----------------------------------------------------------------------------------

def reason_for(code: int | None, message: str, status: int | None) -> ReasonCode:
    """Classify a Lighter failure. Invalid nonce is recognised by text too (fixtures show code 400)."""
    text = message.lower()
    if code == CODE_INVALID_NONCE or "invalid nonce" in text:
        return ReasonCode.INVALID_NONCE
    if code == CODE_DUPLICATE_CLIENT_ORDER_INDEX or "client order index already exists" in text:
        return ReasonCode.DUPLICATE_CLIENT_ID
    if status == 429 or code in _RATE_LIMIT_CODES or "too many requests" in text or "rate limit" in text:
        return ReasonCode.RATE_LIMITED
    if status is not None and (status == 0 or status >= 500):
        return ReasonCode.UNAVAILABLE
    if status in (401, 403) or code in (CODE_INVALID_AUTH, CODE_INVALID_PUBKEY) or "auth" in text or "signature" in text:
        return ReasonCode.AUTH
    if "client is not created" in text or "api key" in text:
        return ReasonCode.AUTH
    if code == CODE_INVALID_MARKET or "marketindex is not valid" in text.replace(" ", ""):
        return ReasonCode.UNKNOWN_MARKET
    if code == CODE_ACCOUNT_NOT_FOUND or _SIGNER_VALIDATION.search(message):
        return ReasonCode.INVALID_REQUEST
    return ReasonCode.REJECTED


def error_from_body(body: Any, status: int | None = None, what: str = "lighter") -> VenueError:
    """A :class:`VenueError` from a ``{"code", "message"}`` body (or an unparseable one)."""
    if isinstance(body, Mapping) or hasattr(body, "to_dict"):
        data = as_dict(body)
        code = data.get("code")
        message = str(data.get("message") or "")
    else:
        code, message = None, str(body or "")
    try:
        code_int: int | None = int(code) if code is not None else None
    except (TypeError, ValueError):
        code_int = None
    reason = reason_for(code_int, message, status)
    shown = message[:200] or "no message"
    return VenueError(reason, f"{what} code={code} http={status}: {shown}", status=status, code=code_int)


_ERR_CODE = re.compile(r"""["']?code["']?\s*[=:]\s*(-?\d+)""")
_ERR_MESSAGE = re.compile(r"""["']?message["']?\s*[=:]\s*(?:'([^']*)'|"((?:[^"\\]|\\.)*)")""")
_ERR_STATUS = re.compile(r"^\((\d{3})\)")


def error_from_text(text: str, status: int | None = None) -> VenueError:
    """A :class:`VenueError` from the SDK's ``err`` string or exception text.

    The SDK flattens a 400 body into ``"HTTP response body: code=21104 message='invalid nonce' ..."``;
    signer validation errors are plain sentences.
    """
    code_match = _ERR_CODE.search(text)
    msg_match = _ERR_MESSAGE.search(text)
    status_match = _ERR_STATUS.search(text.strip())
    if status is None and status_match:
        status = int(status_match.group(1))
    code = int(code_match.group(1)) if code_match else None
    if msg_match:
        message = msg_match.group(1) if msg_match.group(1) is not None else msg_match.group(2)
    else:
        lines = text.strip().splitlines()
        message = lines[-1] if lines else ""
    return error_from_body({"code": code, "message": message}, status)


def check_ok(body: Any, what: str) -> dict[str, Any]:
    """The body as a dict if its ``code`` is 200 (or absent); else the venue's error.

    Lighter answers some failures with HTTP 200 and a business code (21100 account not found).
    """
    data = as_dict(body)
    code = data.get("code")
    if code is not None and str(code) != str(CODE_OK):
        raise error_from_body(data, 200, what)
    return data


def send_tx_error(resp: Any, err: str | None) -> VenueError | None:
    """None when a ``sendTx`` was accepted; else why not. ``code != 200`` is a business reject."""
    if err:
        return error_from_text(err)
    if resp is None:
        return VenueError(ReasonCode.BAD_RESPONSE, "sendTx returned neither a response nor an error")
    data = as_dict(resp)
    if str(data.get("code")) != str(CODE_OK):
        return error_from_body(data, 200, "sendTx")
    return None


# ---- market data -----------------------------------------------------------------------------

def _details(body: Any) -> list[dict[str, Any]]:
    data = check_ok(body, "orderBookDetails")
    rows = data.get("order_book_details")
    if rows is None:
        rows = data.get("order_books")  # orderBooks has the same identity fields (no *_decimals)
    if not isinstance(rows, list):
        raise VenueError(ReasonCode.BAD_RESPONSE, "orderBookDetails without order_book_details")
    return [as_dict(r) for r in rows]


def parse_market_rules(body: Any, symbol: str) -> MarketRules:
    """Rules of ``symbol`` from ``orderBookDetails`` (or ``orderBooks``) — tick/step from decimals."""
    for row in _details(body):
        if str(row.get("symbol", "")).upper() != symbol.upper():
            continue
        size_dec = row.get("size_decimals", row.get("supported_size_decimals"))
        price_dec = row.get("price_decimals", row.get("supported_price_decimals"))
        if size_dec is None or price_dec is None:
            raise VenueError(ReasonCode.BAD_RESPONSE, f"{symbol}: no size/price decimals")
        step = Decimal(1).scaleb(-_int(size_dec, "size_decimals"))
        tick = Decimal(1).scaleb(-_int(price_dec, "price_decimals"))
        min_base = opt_decimal(row.get("min_base_amount"), "min_base_amount") or step
        min_quote = opt_decimal(row.get("min_quote_amount"), "min_quote_amount") or Decimal(0)
        return MarketRules(symbol=symbol, tick_size=tick, step_size=step, min_quantity=min_base,
                           min_notional=min_quote, market_id=_int(row.get("market_id"), "market_id"),
                           initial_margin=_initial_margin(row))
    raise VenueError(ReasonCode.UNKNOWN_MARKET, f"no Lighter perp market {symbol!r}")


def market_index(rules: MarketRules) -> int:
    """The Lighter market index of ``rules`` (always set by ``parse_market_rules``)."""
    if rules.market_id is None:
        raise VenueError(ReasonCode.UNKNOWN_MARKET, f"{rules.symbol}: no Lighter market index")
    return int(rules.market_id)


def _initial_margin(row: Mapping[str, Any]) -> InitialMargin | None:
    # Basis points of notional; orderBooks (the fallback body) carries none: unknown, not zero.
    default = opt_decimal(row.get("default_initial_margin_fraction"), "default_initial_margin_fraction")
    if default is None or default <= 0:
        return None
    lowest = opt_decimal(row.get("min_initial_margin_fraction"), "min_initial_margin_fraction")
    return InitialMargin(base=default / LIGHTER_FRACTION_UNITS,
                         lowest=None if lowest is None else lowest / LIGHTER_FRACTION_UNITS)


def _best(levels: Any, what: str) -> Decimal | None:
    if not levels:
        return None
    return to_decimal(as_dict(levels[0]).get("price"), what)


def parse_top_of_book(body: Any, symbol: str, read_at: float) -> TopOfBook:
    """Best bid/ask from ``orderBookOrders`` (levels best-first, as the venue sends them)."""
    data = check_ok(body, "orderBookOrders")
    bid, ask = _best(data.get("bids"), "best bid"), _best(data.get("asks"), "best ask")
    return TopOfBook(symbol, bid, ask, read_at)


# ---- account ---------------------------------------------------------------------------------

def find_account(body: Any, account_index: int) -> dict[str, Any]:
    """Our account in ``GET /api/v1/account``; a body may list sub-accounts too (ccxt fixture)."""
    data = check_ok(body, "account")
    accounts = [as_dict(a) for a in data.get("accounts") or []]
    for acct in accounts:
        if str(acct.get("index", acct.get("account_index"))) == str(account_index):
            return acct
    raise VenueError(ReasonCode.INVALID_REQUEST, f"account {account_index} not in the venue's answer",
                     code=CODE_ACCOUNT_NOT_FOUND)


def _positions(acct: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    raw = acct.get("positions") or []
    # REST sends a list; the WebSocket sends {"<market_id>": {...}}.
    rows = raw.values() if isinstance(raw, Mapping) else raw
    return [as_dict(p) for p in rows]


def signed_position(entry: Mapping[str, Any]) -> Decimal:
    """``sign × position``: Lighter reports the size unsigned with ``sign`` ±1."""
    size = to_decimal(entry.get("position"), "position")
    if size == 0:
        return Decimal(0)
    sign = entry.get("sign")
    if sign is None or _int(sign, "sign") not in (1, -1):
        raise VenueError(ReasonCode.BAD_RESPONSE, f"position {size} with sign {sign!r}")
    return size * _int(sign, "sign")


def parse_position(acct: Mapping[str, Any], market_id: int) -> tuple[Decimal, Decimal | None]:
    """(signed quantity, entry price) of ``market_id``; no entry in a successful read means flat."""
    for entry in _positions(acct):
        if _int(entry.get("market_id"), "market_id") == market_id:
            qty = signed_position(entry)
            entry_price = opt_decimal(entry.get("avg_entry_price"), "avg_entry_price")
            return qty, (entry_price if qty else None)
    return Decimal(0), None


def parse_initial_margin_fraction(acct: Mapping[str, Any], market_id: int) -> Decimal | None:
    """The account's own initial-margin fraction on ``market_id``: REST ``AccountPosition``
    ``initial_margin_fraction`` is in percent ("5.00" at the default 20x, "10.00" at 10x; captured
    accounts list it even at position 0). None when the account has no entry for the market: it
    trades at the market's ``default_initial_margin_fraction``."""
    for entry in _positions(acct):
        if _int(entry.get("market_id"), "market_id") == market_id:
            percent = opt_decimal(entry.get("initial_margin_fraction"), "initial_margin_fraction")
            return None if percent is None or percent <= 0 else percent / 100
    return None


def parse_balance(acct: Mapping[str, Any], account: str, read_at: float) -> Balance:
    """Equity is ``total_asset_value`` (collateral + unrealised PnL), not collateral."""
    return Balance(
        account=account,
        collateral=opt_decimal(acct.get("collateral"), "collateral"),
        equity=opt_decimal(acct.get("total_asset_value"), "total_asset_value"),
        available=opt_decimal(acct.get("available_balance"), "available_balance"),
        read_at=read_at,
    )


# ---- orders ----------------------------------------------------------------------------------

def map_status(status: str, filled: Decimal) -> OrderState:
    """Lighter order status → :class:`OrderState`; unknown statuses raise (never OPEN)."""
    s = (status or "").strip().lower()
    if s == "filled":
        return OrderState.FILLED
    if s in _OPEN_STATUSES:
        return OrderState.PARTIALLY_FILLED if filled > 0 else OrderState.OPEN
    if s.startswith(CANCEL_PREFIXES):
        return OrderState.CANCELLED if filled > 0 else OrderState.FAILED
    raise VenueError(ReasonCode.BAD_RESPONSE, f"unknown Lighter order status {status!r}")


def _order_side(order: Mapping[str, Any]) -> Side:
    is_ask = order.get("is_ask")
    if is_ask is not None and is_ask != "":
        return Side.SELL if str(is_ask).lower() in ("true", "1") else Side.BUY
    side = str(order.get("side") or "").lower()
    if side in ("buy", "sell"):
        return Side(side)
    raise VenueError(ReasonCode.BAD_RESPONSE, "order without is_ask/side")


def _filled(order: Mapping[str, Any], requested: Decimal, status: str) -> Decimal:
    filled = opt_decimal(order.get("filled_base_amount"), "filled_base_amount")
    if filled is not None:
        return filled
    remaining = opt_decimal(order.get("remaining_base_amount"), "remaining_base_amount")
    if remaining is not None and not status.startswith(CANCEL_PREFIXES):
        return requested - remaining
    if status == "filled":
        return requested
    raise VenueError(ReasonCode.BAD_RESPONSE, "order without filled_base_amount")


def parse_order(order: Any, symbol: str) -> OrderReport:
    """An ``Order`` (REST ``orders[]`` or WS ``orders{market: [...]}`` element) → :class:`OrderReport`."""
    data = as_dict(order)
    status = str(data.get("status") or "").strip().lower()
    requested = to_decimal(data.get("initial_base_amount"), "initial_base_amount")
    filled = _filled(data, requested, status)
    state = map_status(status, filled)
    quote = opt_decimal(data.get("filled_quote_amount"), "filled_quote_amount")
    avg = (quote / filled) if quote and filled > 0 else None
    venue_id = data.get("order_id") or data.get("order_index")
    return OrderReport(
        client_id=_int(data.get("client_order_index"), "client_order_index"),
        symbol=symbol, side=_order_side(data), requested=requested, filled=filled, state=state,
        venue_order_id=None if venue_id is None else str(venue_id), avg_price=avg,
        reduce_only=str(data.get("reduce_only")).lower() in ("true", "1"),
        reason=status if state in (OrderState.CANCELLED, OrderState.FAILED) else None,
    )


def parse_orders(body: Any) -> list[dict[str, Any]]:
    """The ``orders`` list of an ``Orders`` body (accountOrders / accountActiveOrders / ...Inactive...)."""
    data = check_ok(body, "orders")
    orders = data.get("orders") or []
    if isinstance(orders, Mapping):  # WS shape {"<market>": [...]}
        orders = [o for rows in orders.values() for o in rows]
    return [as_dict(o) for o in orders]


def order_index(order: Mapping[str, Any]) -> int:
    """The venue's ``order_index`` (what a CancelOrder tx's ``Index`` names)."""
    return _int(order.get("order_index", order.get("order_id")), "order_index")
