"""Parsing of Backpack request payloads and query parameters.

The real server is built on poem-openapi: a payload that does not deserialise is answered with a
**plain-text** 400 (e.g. ``parse request payload error: failed to parse "MarketSymbol": Invalid
market symbol (occurred while parsing "OrderExecutePayload")``) before any business rule runs. The
texts below follow that pattern; wording not captured from the wire is a simulator choice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, overload

from simulators.backpack_auth import PlainError
from simulators.backpack_model import MarketRules

UINT32_MAX = 4_294_967_295
_DECIMAL_RE = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,20})?$")
SIDES = ("Bid", "Ask")
ORDER_TYPES = ("Market", "Limit")
TIME_IN_FORCE = ("GTC", "IOC", "FOK")
STP = ("RejectTaker", "RejectMaker", "RejectBoth", "Allow")
PAYLOAD = "OrderExecutePayload"


def payload_error(detail: str, outer: str = PAYLOAD) -> PlainError:
    return PlainError(f"parse request payload error: {detail} (occurred while parsing \"{outer}\")")


def param_error(name: str, type_name: str, detail: str) -> PlainError:
    """The query-parameter flavour, as captured for ``/depth?limit=``."""
    return PlainError(f"failed to parse parameter `{name}`: failed to parse \"{type_name}\": {detail}")


def _found(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:80]


def parse_json_object(raw: bytes, type_name: str, *, allow_empty: bool = False) -> dict[str, Any]:
    """Decode a JSON object body; anything else is the real plain-text 400."""
    if not raw.strip() and allow_empty:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise PlainError(f"parse request payload error: failed to parse \"{type_name}\": "
                         "invalid JSON") from None
    if not isinstance(data, dict):
        raise PlainError(f"parse request payload error: Expected input type \"{type_name}\", found {_found(data)}")
    return data


def decimal_field(data: Mapping[str, Any], name: str, outer: str = PAYLOAD) -> Decimal | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _DECIMAL_RE.match(value):
        raise payload_error(f"failed to parse \"Decimal\": Expected input type \"string\", found {_found(value)}.",
                            outer)
    return Decimal(value)


def enum_field(data: Mapping[str, Any], name: str, type_name: str, allowed: tuple[str, ...],
               outer: str = PAYLOAD) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if value not in allowed:
        raise payload_error(f"failed to parse \"{type_name}\": Expect a valid enumeration value.", outer)
    return str(value)


def bool_field(data: Mapping[str, Any], name: str, outer: str = PAYLOAD) -> bool | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise payload_error(f"failed to parse \"boolean\": Expected input type \"boolean\", found {_found(value)}.",
                            outer)
    return value


def client_id_field(data: Mapping[str, Any], outer: str = PAYLOAD) -> int | None:
    """clientId is a uint32 JSON number; a string or an out-of-range number is a parse error."""
    value = data.get("clientId")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise payload_error("failed to parse \"integer(uint32)\": Expected input type \"integer(uint32)\", "
                            f"found {_found(value)}.", outer)
    if not 0 <= value <= UINT32_MAX:
        raise payload_error(f"failed to parse \"integer(uint32)\": Only integers from 0 to {UINT32_MAX} "
                            "are accepted.", outer)
    return value


def symbol_field(data: Mapping[str, Any], markets: Mapping[str, MarketRules], outer: str = PAYLOAD) -> MarketRules:
    """The required ``symbol`` of a body; absent or unknown is a plain-text parse error."""
    value = data.get("symbol")
    if value is None:
        raise PlainError(f"parse request payload error: failed to parse \"{outer}\": field `symbol` is required")
    rules = markets.get(value) if isinstance(value, str) else None
    if rules is None:
        raise payload_error("failed to parse \"MarketSymbol\": Invalid market symbol", outer)
    return rules


@dataclass(frozen=True)
class OrderRequest:
    rules: MarketRules
    side: str
    order_type: str
    quantity: Decimal | None
    quote_quantity: Decimal | None
    price: Decimal | None
    client_id: int | None
    time_in_force: str
    post_only: bool
    reduce_only: bool | None
    self_trade_prevention: str


def parse_order(data: Mapping[str, Any], markets: Mapping[str, MarketRules]) -> OrderRequest:
    """Deserialise an ``OrderExecutePayload``; business rules are checked later."""
    rules = symbol_field(data, markets)
    side = enum_field(data, "side", "Side", SIDES)
    order_type = enum_field(data, "orderType", "OrderType", ORDER_TYPES)
    for name, value in (("side", side), ("orderType", order_type)):
        if value is None:
            raise PlainError(f"parse request payload error: failed to parse \"{PAYLOAD}\": field `{name}` is required")
    assert side is not None and order_type is not None
    return OrderRequest(
        rules=rules, side=side, order_type=order_type,
        quantity=decimal_field(data, "quantity"), quote_quantity=decimal_field(data, "quoteQuantity"),
        price=decimal_field(data, "price"), client_id=client_id_field(data),
        time_in_force=enum_field(data, "timeInForce", "TimeInForce", TIME_IN_FORCE) or "GTC",
        post_only=bool(bool_field(data, "postOnly")), reduce_only=bool_field(data, "reduceOnly"),
        self_trade_prevention=enum_field(data, "selfTradePrevention", "SelfTradePrevention", STP) or "RejectTaker",
    )


@overload
def query_int(query: Mapping[str, str], name: str, type_name: str, *, default: int,
              low: int = ..., high: int = ...) -> int: ...
@overload
def query_int(query: Mapping[str, str], name: str, type_name: str, *, default: None = None,
              low: int = ..., high: int = ...) -> int | None: ...
def query_int(query: Mapping[str, str], name: str, type_name: str, *, default: int | None = None,
              low: int = 0, high: int = 2**63 - 1) -> int | None:
    """An integer query parameter; malformed values are the plain-text parameter error."""
    text = query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not low <= int(text) <= high:
        raise param_error(name, type_name, f"Only integers from {low} to {high} are accepted.")
    return int(text)


def query_enum(query: Mapping[str, str], name: str, type_name: str, allowed: tuple[str, ...]) -> str | None:
    text = query.get(name)
    if text is None:
        return None
    if text not in allowed:
        raise param_error(name, type_name, "Expect a valid enumeration value.")
    return text


def id_selector(params: Mapping[str, Any], outer: str) -> tuple[str | None, int | None]:
    """(orderId, clientId) of GET/DELETE /api/v1/order; the caller enforces exactly one."""
    order_id = params.get("orderId")
    if order_id is not None and not isinstance(order_id, str):
        raise payload_error(f"failed to parse \"string\": Expected input type \"string\", found {_found(order_id)}.",
                            outer)
    client_id = params.get("clientId")
    if isinstance(client_id, str):  # GET: query strings; bpx-py also sends str(clientId) in bodies
        if not client_id.isascii() or not client_id.isdigit() or len(client_id) > 10:
            raise param_error("clientId", "integer(uint32)", f"Only integers from 0 to {UINT32_MAX} are accepted.")
        client_id = int(client_id)
    return order_id, client_id_field({"clientId": client_id}, outer)
