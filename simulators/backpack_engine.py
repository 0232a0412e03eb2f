"""Backpack order handling on top of the shared market model.

Orders, order history and fills are Backpack-only state kept here; positions and collateral live in
the shared :class:`market.Exchange`. Every method runs under ``exchange.lock`` and validates before
it mutates, so a rejected request leaves no trace. Events for the WebSocket streams go through
``publish(account, stream_kind, symbol, data)``, set by the WebSocket hub.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from simulators.backpack_auth import ApiError
from simulators.backpack_model import (
    BpOrder,
    Fill,
    MarketRules,
    fmt_price,
    market_rules,
    now_us,
    quantize_book,
)
from simulators.backpack_parse import OrderRequest
from simulators.backpack_views import position_ws
from simulators.margin import Liquidation
from simulators.market import AuditEntry, Exchange, MarketEvent

logger = logging.getLogger(__name__)

VENUE = "backpack"
Publish = Callable[[str, str, str, dict[str, Any]], None]
Book = tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]


def _reject(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, code, message)


class BackpackEngine:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.markets: dict[str, MarketRules] = market_rules(list(exchange.prices))
        self.by_base = {r.base: r for r in self.markets.values()}
        self.open: dict[str, dict[str, BpOrder]] = {}
        self.history: dict[str, list[BpOrder]] = {}
        self.fills: dict[str, list[Fill]] = {}
        self.position_ids: dict[tuple[str, str], int] = {}
        self.publish: Publish = lambda account, kind, symbol, data: None
        #: Whether anyone listens to an account / a public stream: frames cost time on the hot path
        #: (the signed market order must stay under 2 ms), so nobody listening means none are built.
        self.listening: Callable[[str], bool] = lambda account: False
        self.public_listening: Callable[[str], bool] = lambda stream: False
        self._trade_seq = 2_888_000
        self._position_seq = 5_411_399_000
        self._book_ids: dict[str, int] = {}
        self._book_mids: dict[str, Decimal] = {}
        self.volume: dict[str, tuple[Decimal, Decimal, int]] = {}
        self._stats = {b: [m.mid, m.mid, m.mid] for b, m in exchange.prices.items()}
        #: Public trades (``trade.<symbol>`` stream): (symbol, data); set by the WebSocket hub.
        self.publish_public: Callable[[str, dict[str, Any]], None] = lambda stream, data: None

    # ---- book ---------------------------------------------------------------------------------
    def book(self, rules: MarketRules) -> tuple[int, Book]:
        """(lastUpdateId, (bids ascending, asks ascending)) snapped to tick and step."""
        with self.exchange.lock:
            mid = self.exchange.prices[rules.base].mid
            if self._book_mids.get(rules.base) != mid:
                self._book_mids[rules.base] = mid
                self._book_ids[rules.base] = self._book_ids.get(rules.base, 1_504_999_000) + 1
            bids, asks = self.exchange.book(VENUE, rules.base)
        return self._book_ids[rules.base], (quantize_book(bids, rules.tick, rules.step, True),
                                            quantize_book(asks, rules.tick, rules.step, False))

    def stats(self, base: str) -> tuple[Decimal, Decimal, Decimal]:
        """(first, high, low) mid since start, for the ticker."""
        with self.exchange.lock:
            mid = self.exchange.prices[base].mid
            first, high, low = self._stats[base]
            self._stats[base] = [first, max(high, mid), min(low, mid)]
            return first, max(high, mid), min(low, mid)

    def _liquidity(self, rules: MarketRules, side: str, limit: Decimal | None) -> Decimal:
        """Size available to a taker up to ``limit`` (for FOK)."""
        bids, asks = self.exchange.book(VENUE, rules.base)
        levels = asks if side == "Bid" else bids
        total = Decimal(0)
        for price, size in levels:
            if limit is not None and ((side == "Bid" and price > limit) or (side == "Ask" and price < limit)):
                break
            total += size
        return total

    def _quantity_for_quote(self, rules: MarketRules, side: str, quote: Decimal) -> Decimal:
        """Walk the book to spend at most ``quote`` (Market orders with quoteQuantity)."""
        bids, asks = self.exchange.book(VENUE, rules.base)
        qty, left = Decimal(0), quote
        for price, size in asks if side == "Bid" else bids:
            take = min(size, left / price)
            qty, left = qty + take, left - take * price
            if left <= 0:
                break
        return (qty / rules.step).to_integral_value(rounding=ROUND_FLOOR) * rules.step

    # ---- validation -----------------------------------------------------------------------------
    def _validate(self, account: str, req: OrderRequest) -> Decimal:
        """Business rules of an order; returns the quantity to trade."""
        rules = req.rules
        if req.order_type == "Market":
            if (req.quantity is None) == (req.quote_quantity is None):
                raise _reject("INVALID_CLIENT_REQUEST", "Market orders must specify a `quantity` or `quoteQuantity`")
            if req.price is not None or req.post_only:
                raise _reject("INVALID_ORDER", "Invalid order")  # simulator choice for limit fields on Market
            qty = req.quantity if req.quantity is not None else \
                self._quantity_for_quote(rules, req.side, req.quote_quantity or Decimal(0))
        else:
            if req.quantity is None or req.price is None:
                raise _reject("INVALID_CLIENT_REQUEST", "Limit orders must specify a `quantity` and a `price`")
            if req.quote_quantity is not None:
                raise _reject("INVALID_ORDER", "Invalid order")
            if req.price <= 0:
                raise _reject("INVALID_PRICE", "Price must be positive")  # simulator choice
            if req.price % rules.tick:
                raise _reject("INVALID_CLIENT_REQUEST", "Price decimal too long")
            qty = req.quantity
        if qty % rules.step:
            raise _reject("INVALID_CLIENT_REQUEST", "Quantity decimal too long")
        if qty < rules.min_quantity:
            # Simulator choice: wording not captured; INVALID_QUANTITY is one of the venue's error codes.
            raise _reject("INVALID_QUANTITY", "Quantity is below the minimum allowed value")
        if req.client_id is not None and any(o.client_id == req.client_id
                                             for o in self.open.get(account, {}).values()):
            # Captured error (fixtures: error_invalid_order_duplicate_client_id_ccxt); applied to OPEN
            # orders only: reuse after an order is closed is accepted (the venue's duplicate rule is UNCONFIRMED).
            raise _reject("INVALID_ORDER", f"Order with client ID already exists: {req.client_id}")
        if req.reduce_only and not self._reduces(account, rules.base, req.side) and \
                not self.exchange.profile.backpack.reduce_only_expires:
            # The old simulator answer, kept behind BackpackProfile.reduce_only_expires=False: code per
            # Message after the expiryReason. The venue itself expires the order (see execute).
            raise _reject("INVALID_ORDER", "Reduce only order not reduced")
        return qty

    def _reduces(self, account: str, base: str, side: str) -> bool:
        held = self.exchange.account(VENUE, account).position(base).quantity
        return held != 0 and (held > 0) == (side == "Ask")

    def _crosses(self, rules: MarketRules, side: str, price: Decimal) -> bool:
        bids, asks = self.exchange.book(VENUE, rules.base)
        if side == "Bid":
            return bool(asks) and price >= asks[0][0]
        return bool(bids) and price <= bids[0][0]

    # ---- execution ------------------------------------------------------------------------------
    def execute(self, account: str, req: OrderRequest, fill_fraction: Decimal | None = None) -> BpOrder:
        """orderExecute: validate, fill against the shared book, record, publish."""
        with self.exchange.lock:
            self.exchange.account(VENUE, account)  # a new API key opens an account
            qty = self._validate(account, req)
            crosses = req.order_type == "Market" or self._crosses(req.rules, req.side, req.price or Decimal(0))
            if req.order_type == "Limit" and req.post_only and crosses:
                raise _reject("INVALID_ORDER", "Order would immediately match and take")  # wording as hummingbot captured it
            order = BpOrder(id=self.exchange.next_order_id(), account=account, rules=req.rules, side=req.side,
                            order_type=req.order_type, quantity=qty, quote_quantity=req.quote_quantity,
                            price=req.price, client_id=req.client_id, time_in_force=req.time_in_force,
                            post_only=req.post_only, reduce_only=req.reduce_only,
                            self_trade_prevention=req.self_trade_prevention)
            fill: tuple[Decimal, Decimal | None] = (Decimal(0), None)
            fok_short = req.time_in_force == "FOK" and self._liquidity(req.rules, req.side, req.price) < qty
            # A reduce-only order that would not reduce is accepted and expires unfilled with
            # ReduceOnlyNotReduced (OpenAPI OrderExpiryReason), not refused.
            not_reducing = bool(req.reduce_only) and not self._reduces(account, req.rules.base, req.side)
            if crosses and not fok_short and not not_reducing:
                fill = self._take(order, order.quantity, req.price, fill_fraction)
            self._finish_taker(order, crosses, fok_short)
            if not_reducing:
                order.status, order.expiry_reason = "Expired", "ReduceOnlyNotReduced"
            self._accept(order, fill)
            return order

    def _take(self, order: BpOrder, quantity: Decimal, limit: Decimal | None,
              fill_fraction: Decimal | None, maker: bool = False) -> tuple[Decimal, Decimal | None]:
        filled, avg, reason = self.exchange.execute_market(
            VENUE, order.account, order.rules.base, order.market_side, quantity, step=order.rules.step,
            worst_price=limit, reduce_only=bool(order.reduce_only), fill_fraction=fill_fraction, maker=maker)
        if reason == "margin":
            # The venue's code; message UNCONFIRMED (simulator choice).
            raise _reject("INSUFFICIENT_MARGIN", "Insufficient margin")
        if reason == "reduce_only":
            raise _reject("INVALID_ORDER", "Reduce only order not reduced")
        if filled and avg is not None:
            order.executed += filled
            order.executed_quote += filled * avg
        return filled, avg

    @staticmethod
    def _finish_taker(order: BpOrder, crossed: bool, fok_short: bool) -> None:
        """Final status of the taking part: Market orders never rest: the venue executes them synchronously."""
        if order.executed == order.quantity:
            order.status = "Filled"
            return
        resting = order.order_type == "Limit" and order.time_in_force == "GTC"
        if resting:
            order.status = "PartiallyFilled" if order.executed else "New"
            return
        order.status = "Expired"
        if fok_short:
            order.expiry_reason = "FillOrKill"
        elif order.order_type == "Limit" and order.time_in_force == "IOC":
            order.expiry_reason = "ImmediateOrCancel"
        elif order.reduce_only:
            order.expiry_reason = "ReduceOnlyNotReduced"
        else:
            order.expiry_reason = "InsufficientLiquidity"

    def _accept(self, order: BpOrder, fill: tuple[Decimal, Decimal | None]) -> None:
        """Record an accepted order (history, audit, fills) and emit its WS events in order."""
        account = order.account
        self.history.setdefault(account, []).append(order)
        if order.status in ("New", "PartiallyFilled"):
            self.open.setdefault(account, {})[order.id] = order
        self._audit(order)
        # orderAccepted shows the order as it entered the book: New, nothing executed.
        final = (order.executed, order.executed_quote, order.status)
        order.executed, order.executed_quote, order.status = Decimal(0), Decimal(0), "New"
        self._emit(order, "orderAccepted")
        order.executed, order.executed_quote = final[0], final[1]
        if fill[0] and fill[1] is not None:
            # The fill frame carries the status right after that fill, before any expiry.
            order.status = "Filled" if order.executed == order.quantity else "PartiallyFilled"
            self._record_fill(order, fill[0], fill[1], is_maker=False)
        order.status = final[2]
        if order.status == "Expired":
            self._emit(order, "orderExpired")

    def _record_fill(self, order: BpOrder, quantity: Decimal, price: Decimal, is_maker: bool) -> None:
        self._trade_seq += 1
        fee = self.exchange.fee(VENUE, quantity * price, is_maker)  # what execute_market charged
        fill = Fill(self._trade_seq, order, quantity, price, int(time.time() * 1000), is_maker, fee)
        self.fills.setdefault(order.account, []).append(fill)
        vol, quote, trades = self.volume.get(order.rules.base, (Decimal(0), Decimal(0), 0))
        self.volume[order.rules.base] = (vol + quantity, quote + quantity * price, trades + 1)
        self._emit(order, "orderFill", fill)
        self._publish_trade(order, fill)
        self.position_changed(order.account, order.rules.base)

    def _publish_trade(self, order: BpOrder, fill: Fill) -> None:
        """``trade.<symbol>``: ``m`` is "buyer was maker"; the other side is a book order."""
        if not self.public_listening(f"trade.{order.rules.symbol}"):
            return
        now = now_us()
        other = self.exchange.next_order_id()
        buyer, seller = (order.id, other) if order.side == "Bid" else (other, order.id)
        self.publish_public(f"trade.{order.rules.symbol}", {
            "e": "trade", "E": now, "s": order.rules.symbol, "p": fmt_price(fill.price, "0.01"),
            "q": order.fmt_qty(fill.quantity), "b": buyer, "a": seller, "t": fill.trade_id,
            "m": (order.side == "Bid") == fill.is_maker, "T": now - 1})

    def _audit(self, order: BpOrder) -> None:
        avg = order.executed_quote / order.executed if order.executed else None
        self.exchange.record(AuditEntry(
            ts=time.time(), venue=VENUE, account=order.account, client_id=order.client_id, order_id=order.id,
            base=order.rules.base, side=order.market_side, quantity=str(order.quantity),
            filled=str(order.executed), avg_price=None if avg is None else str(avg),
            reduce_only=bool(order.reduce_only), status=order.status))

    def _emit(self, order: BpOrder, event: str, fill: Fill | None = None) -> None:
        if not self.listening(order.account):
            return
        self.publish(order.account, "orderUpdate", order.rules.symbol, order.ws_data(event, fill))

    # ---- resting orders -------------------------------------------------------------------------
    def find_open(self, account: str, rules: MarketRules, order_id: str | None,
                  client_id: int | None) -> BpOrder | None:
        """Newest open order matching the id (GET/DELETE order only see resting orders)."""
        for order in reversed(list(self.open.get(account, {}).values())):
            if order.rules is rules and (order.id == order_id if order_id is not None else
                                         order.client_id == client_id):
                return order
        return None

    def cancel(self, account: str, order: BpOrder) -> BpOrder:
        with self.exchange.lock:
            self.open.get(account, {}).pop(order.id, None)
            order.status = "Cancelled"
            self._emit(order, "orderCancelled")
            return order

    def match_resting(self) -> None:
        """Fill resting limit orders the moving book now crosses (called by the market-data pump)."""
        with self.exchange.lock:
            for orders in list(self.open.values()):
                for order in list(orders.values()):
                    if order.price is not None and self._crosses(order.rules, order.side, order.price):
                        self._fill_resting(order)

    def _fill_resting(self, order: BpOrder) -> None:
        try:
            filled, avg = self._take(order, order.remaining, order.price, None, maker=True)
        except ApiError as exc:
            # A resting reduce-only order whose position is gone expires (the venue would shrink or
            # cancel it); a margin failure leaves it resting.
            if exc.message.startswith("Reduce only"):
                self.open.get(order.account, {}).pop(order.id, None)
                order.status, order.expiry_reason = "Expired", "ReduceOnlyNotReduced"
                self._emit(order, "orderExpired")
            return
        if not filled or avg is None:
            return
        order.status = "Filled" if order.remaining == 0 else "PartiallyFilled"
        if order.status == "Filled":
            self.open.get(order.account, {}).pop(order.id, None)
        self._record_fill(order, filled, avg, is_maker=True)

    # ---- liquidations ---------------------------------------------------------------------------
    def on_market(self, event: MarketEvent) -> None:
        """Exchange listener: a Backpack position the market (or the admin API) closed gets the venue's
        records: a system order with ``systemOrderType`` LiquidatePositionOnBook in the order history,
        its fill in the fill history (the venue lists system fills since 2025-04-22), an
        ``orderFill`` with origin ``LIQUIDATION_AUTOCLOSE`` and ``positionClosed``."""
        if not isinstance(event, Liquidation) or event.venue != VENUE or event.base not in self.by_base:
            return
        with self.exchange.lock:
            qty = abs(event.quantity)
            order = BpOrder(id=self.exchange.next_order_id(), account=event.account, rules=self.by_base[event.base],
                            side="Ask" if event.quantity > 0 else "Bid", order_type="Market", quantity=qty,
                            quote_quantity=None, price=None, client_id=None, time_in_force="IOC", post_only=False,
                            reduce_only=True, self_trade_prevention="RejectTaker", status="Filled",
                            system_order_type="LiquidatePositionOnBook")
            order.executed, order.executed_quote = qty, qty * event.price
            self.history.setdefault(event.account, []).append(order)
            self._trade_seq += 1
            fill = Fill(self._trade_seq, order, qty, event.price, event.ts_ms, is_maker=False)
            self.fills.setdefault(event.account, []).append(fill)
            self._emit(order, "orderFill", fill)
            self.position_changed(event.account, event.base)

    # ---- positions ------------------------------------------------------------------------------
    def position_changed(self, account: str, base: str) -> None:
        """Push ``account.positionUpdate`` after a fill or liquidation."""
        key = (account, base)
        qty = self.exchange.account(VENUE, account).position(base).quantity
        if key not in self.position_ids:
            if qty == 0:
                return
            self._position_seq += 1
            self.position_ids[key] = self._position_seq
            event = "positionOpened"
        else:
            event = "positionClosed" if qty == 0 else "positionAdjusted"
        if self.listening(account):
            data = position_ws(self, account, self.by_base[base], qty, event)
            self.publish(account, "positionUpdate", self.by_base[base].symbol, data)
        if qty == 0:
            del self.position_ids[key]

    def position_id(self, account: str, base: str) -> int:
        key = (account, base)
        if key not in self.position_ids:
            self._position_seq += 1
            self.position_ids[key] = self._position_seq
        return self.position_ids[key]
