"""Backpack wire shapes: markets, orders, fills and positions.

Serialisers here reproduce the captured shapes in ``tests/fixtures/backpack.json``: REST
decimals as strings, unset optionals as ``null``, ``createdAt`` int ms on order endpoints but
a naive ISO string on the history endpoints, WS order types upper case, position values strings.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

QUOTE = "USDC"
IMF_FUNCTION = {"base": "0.02", "factor": "0.0000935", "type": "sqrt"}
MMF_FUNCTION = {"base": "0.0125", "factor": "0.0000561", "type": "sqrt"}
ORDER_NULLS = ("relatedOrderId", "stopLossLimitPrice", "stopLossTriggerBy", "stopLossTriggerPrice", "strategyId",
               "takeProfitLimitPrice", "takeProfitTriggerBy", "takeProfitTriggerPrice", "triggerBy",
               "triggerPrice", "triggerQuantity")


@dataclass(frozen=True)
class MarketRules:
    symbol: str
    base: str
    tick: Decimal
    step: Decimal
    min_quantity: Decimal

    def to_json(self) -> dict[str, Any]:
        """The market object of GET /api/v1/markets (shape of the SOL_USDC_PERP fixture)."""
        return {
            "baseSymbol": self.base, "createdAt": "2025-01-21T06:34:54.691858",
            "filters": {
                "price": {"borrowEntryFeeMaxMultiplier": None, "borrowEntryFeeMinMultiplier": None,
                          "maxImpactMultiplier": "1.03", "maxMultiplier": "1.25", "maxPrice": "1000000",
                          "meanMarkPriceBand": {"maxMultiplier": "1.1", "minMultiplier": "0.9"},
                          "meanPremiumBand": {"tolerancePct": "0.05"}, "minImpactMultiplier": "0.97",
                          "minMultiplier": "0.75", "minPrice": str(self.tick), "tickSize": str(self.tick)},
                "quantity": {"maxQuantity": None, "minQuantity": str(self.min_quantity),
                             "stepSize": str(self.step)},
            },
            "fundingInterval": 3600000, "fundingRateLowerBound": "-100", "fundingRateUpperBound": "100",
            "imfFunction": dict(IMF_FUNCTION), "marketType": "PERP", "mmfFunction": dict(MMF_FUNCTION),
            "openInterestLimit": "4000000", "orderBookState": "Open", "positionLimitWeight": "1",
            "quoteSymbol": QUOTE, "symbol": self.symbol, "visible": True,
        }


#: base -> (tickSize, stepSize, minQuantity). ETH values were not captured, the BTC step was captured from the venue.
_RULES = {"ETH": ("0.01", "0.0001", "0.0001"), "BTC": ("0.1", "0.00001", "0.00001")}
_DEFAULT_RULES = ("0.01", "0.01", "0.01")


def market_rules(bases: list[str]) -> dict[str, MarketRules]:
    """symbol -> rules for every base the shared exchange prices."""
    out = {}
    for base in bases:
        tick, step, min_qty = _RULES.get(base, _DEFAULT_RULES)
        symbol = f"{base}_{QUOTE}_PERP"
        out[symbol] = MarketRules(symbol, base, Decimal(tick), Decimal(step), Decimal(min_qty))
    return out


def fmt(value: Decimal) -> str:
    """A decimal string without exponent or trailing zeros ("3000", "0.0125")."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def fmt_price(value: Decimal, places: str = "0.00000001") -> str:
    return fmt(value.quantize(Decimal(places)))


def quantize_book(levels: list[tuple[Decimal, Decimal]], tick: Decimal, step: Decimal,
                  bids: bool) -> list[tuple[Decimal, Decimal]]:
    """Snap book levels to the tick (bids down, asks up) and sizes to the step."""
    rounding = ROUND_FLOOR if bids else ROUND_CEILING
    out: dict[Decimal, Decimal] = {}
    for price, size in levels:
        p = (price / tick).to_integral_value(rounding=rounding) * tick
        out[p] = out.get(p, Decimal(0)) + (size / step).to_integral_value(rounding=ROUND_FLOOR) * step
    return sorted(out.items())


def now_us() -> int:
    return time.time_ns() // 1000


def iso_ms(ms: int) -> str:
    """Naive UTC ISO with milliseconds, as the history endpoints write it."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")


def user_id(api_key: str) -> int:
    return 1_000_000 + zlib.crc32(api_key.encode()) % 9_000_000


@dataclass
class BpOrder:
    id: str
    account: str
    rules: MarketRules
    side: str  # "Bid" | "Ask"
    order_type: str  # "Market" | "Limit"
    quantity: Decimal
    quote_quantity: Decimal | None
    price: Decimal | None
    client_id: int | None
    time_in_force: str
    post_only: bool
    reduce_only: bool | None
    self_trade_prevention: str
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    status: str = "New"
    executed: Decimal = Decimal(0)
    executed_quote: Decimal = Decimal(0)
    expiry_reason: str | None = None
    #: Set on orders the venue placed itself: "LiquidatePositionOnBook" for a liquidation (OpenAPI SystemOrderType).
    system_order_type: str | None = None

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.executed

    @property
    def market_side(self) -> str:
        return "buy" if self.side == "Bid" else "sell"

    def fmt_qty(self, value: Decimal) -> str:
        return str(value.quantize(self.rules.step)) if value else "0"

    def _common(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            # REST echoes quantities without step padding ("0.001"), the WS pads them ("0.0010").
            "clientId": self.client_id, "executedQuantity": fmt(self.executed),
            "executedQuoteQuantity": fmt_price(self.executed_quote), "id": self.id,
            "orderType": self.order_type, "quantity": fmt(self.quantity),
            "selfTradePrevention": self.self_trade_prevention, "side": self.side, "status": self.status,
            "symbol": self.rules.symbol, "timeInForce": self.time_in_force,
        }
        body.update(dict.fromkeys(ORDER_NULLS))
        if self.order_type == "Limit":
            body["price"] = fmt(self.price or Decimal(0))
            body["postOnly"] = self.post_only
        return body

    def to_rest(self) -> dict[str, Any]:
        """The order object of execute/cancel/GET order(s)."""
        body = self._common()
        body.update(createdAt=self.created_ms, reduceOnly=self.reduce_only, triggeredAt=None)
        if self.order_type == "Market":
            body["quoteQuantity"] = None if self.quote_quantity is None else fmt(self.quote_quantity)
        return body

    def to_history(self) -> dict[str, Any]:
        """The order object of /wapi/v1/history/orders: ISO createdAt, expiryReason."""
        body = self._common()
        del body["relatedOrderId"]  # absent from the captured history object
        quote = self.quote_quantity
        if quote is None and self.price is not None:
            quote = self.price * self.quantity
        body.update(createdAt=iso_ms(self.created_ms), expiryReason=self.expiry_reason,
                    quoteQuantity=None if quote is None else fmt(quote), systemOrderType=self.system_order_type)
        return body

    def ws_data(self, event: str, fill: Fill | None = None) -> dict[str, Any]:
        """``account.orderUpdate`` payload: upper-case type, ``t`` null except on fills."""
        now = now_us()
        data: dict[str, Any] = {
            "e": event, "E": now, "s": self.rules.symbol, "S": self.side, "o": self.order_type.upper(),
            "f": self.time_in_force, "q": self.fmt_qty(self.quantity), "X": self.status, "i": self.id,
            "z": self.fmt_qty(self.executed), "Z": fmt_price(self.executed_quote), "t": None,
            "r": bool(self.reduce_only), "O": "USER", "V": self.self_trade_prevention, "T": now - 1,
        }
        if self.client_id is not None:
            data["c"] = self.client_id
        if self.quote_quantity is not None:
            data["Q"] = fmt(self.quote_quantity)
        elif self.price is not None:
            data["Q"] = fmt(self.price * self.quantity)
        if self.order_type == "Limit":
            data["p"] = fmt(self.price or Decimal(0))
            data["y"] = self.post_only
        if event == "orderExpired" and self.expiry_reason:
            data["R"] = self.expiry_reason
        if self.system_order_type is not None:
            data["O"] = "LIQUIDATION_AUTOCLOSE"  # the venue's origin of a liquidation's order
        if fill is not None:
            # n/N: the fill's fee and its asset; perps pay fees in the quote, USDC (fee rates in profile.py).
            data.update(t=fill.trade_id, l=self.fmt_qty(fill.quantity), L=fmt_price(fill.price, "0.01"),
                        m=fill.is_maker, n=fmt_price(fill.fee), N=QUOTE)
        return data


@dataclass(frozen=True)
class Fill:
    trade_id: int
    order: BpOrder
    quantity: Decimal
    price: Decimal
    ts_ms: int
    is_maker: bool
    #: Charged in USDC at the profile's maker/taker rate (profile.FeeProfile).
    fee: Decimal = Decimal(0)

    def to_json(self) -> dict[str, Any]:
        """A /wapi/v1/history/fills row: clientId as a STRING there; ``fee`` in ``feeSymbol``."""
        cid = self.order.client_id
        return {"clientId": None if cid is None else str(cid), "fee": fmt_price(self.fee), "feeSymbol": QUOTE,
                "isMaker": self.is_maker, "orderId": self.order.id, "price": fmt_price(self.price),
                "quantity": fmt(self.quantity), "side": self.order.side,
                "symbol": self.order.rules.symbol, "systemOrderType": self.order.system_order_type,
                "timestamp": iso_ms(self.ts_ms), "tradeId": self.trade_id}


def margin_fraction(function: dict[str, str], quantity: Decimal) -> Decimal:
    """IMF/MMF of a position: ``max(base, factor × √|q|)`` for the venue's ``sqrt`` margin functions."""
    return max(Decimal(function["base"]), Decimal(function["factor"]) * abs(quantity).sqrt())
