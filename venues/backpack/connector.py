"""The Backpack perpetuals connector (one account): REST calls plus optional private streams.

Fills come from the venue's ``executedQuantity`` (an accepted order is not a filled one), the
position is ``netQuantity`` of ``/api/v1/position`` with a failed read reported as unknown (never
flat), WS ``l`` is the size of that fill, order states never move backwards, sizes are Decimals
quantized to the market's step, and ``cancel_all`` takes a symbol.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from venues.backpack.credentials import BackpackCredentials
from venues.backpack.errors import is_no_position, is_not_found
from venues.backpack.events import StreamState
from venues.backpack.history import read_history
from venues.backpack.parsing import (
    SIDE_TO_WIRE,
    ParsedOrder,
    arr,
    bad,
    parse_client_id,
    parse_collateral,
    parse_depth,
    parse_markets,
    parse_order,
    parse_position_list,
)
from venues.backpack.rest import BackpackRest
from venues.backpack.signing import MAX_WINDOW_MS, Signer
from venues.backpack.ws import BackpackStream
from venues.base import (
    AccountReading,
    Balance,
    ClientOrderId,
    MarketRules,
    OrderReport,
    OrderState,
    PositionReading,
    ReasonCode,
    Side,
    TopOfBook,
    VenueConnector,
    VenueError,
)
from venues.ledger import AccountHistory
from venues.orders import OrderBook, OrderTracker

log = logging.getLogger(__name__)

# Errors after which the venue certainly holds no order for the request.
_NOT_PLACED = (ReasonCode.REJECTED, ReasonCode.INVALID_REQUEST, ReasonCode.UNKNOWN_MARKET,
               ReasonCode.AUTH, ReasonCode.RATE_LIMITED)


class BackpackConnector(VenueConnector):
    """One Backpack account. Not thread-safe for submissions (the caller holds the account lease);
    the WebSocket thread only feeds the order book and the position cache."""

    venue = "backpack"
    max_client_id = ClientOrderId.BACKPACK_MAX
    closes_below_minimum = True  # reduce-only orders may close dust (see _order_size)
    #: A WS position this young (s), received after our last order on the symbol, stands in for REST.
    ws_position_max_age = 2.0
    #: Order history scan for :meth:`find_order`: page size (the venue's maximum, 1000) and pages.
    history_page_size = 1000
    history_max_pages = 5
    #: Pause before a second history scan for an id we sent without an answer.
    history_recheck_secs = 0.5
    #: A non-final market order answer is re-read this many times, this far apart (s).
    settle_polls = 3
    settle_interval = 0.25

    def __init__(self, account: str, base_url: str, ws_url: str | None, credentials: BackpackCredentials,
                 *, window_ms: int = 5000, timeout: float = 10.0, broker_id: str | None = None) -> None:
        if not 0 < window_ms <= MAX_WINDOW_MS:
            raise ValueError(f"window_ms must be in 1..{MAX_WINDOW_MS}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.account = account
        self.ws_url = ws_url
        self.window_ms = window_ms
        self._signer = Signer(credentials)
        self._rest = BackpackRest(account, base_url, self._signer, window_ms=window_ms, timeout=timeout,
                                  broker_id=broker_id)
        self.orders = OrderBook(account)
        self._lock = threading.RLock()
        self._readers: ThreadPoolExecutor | None = None
        self._stream_state = StreamState(account, self.orders, self._lock)
        self._stream: BackpackStream | None = None
        self._rules: dict[str, MarketRules] = {}
        #: symbol -> (monotonic time of our last order's answer, its venue createdAt in µs).
        self._last_order: dict[str, tuple[float, int | None]] = {}

    def __repr__(self) -> str:
        return f"BackpackConnector(account={self.account!r}, api_key={self._signer.api_key!r})"

    # ---- streams -------------------------------------------------------------------------------
    def start_streams(self, symbols: Iterable[str]) -> None:
        """Subscribe to the account's order and position streams of ``symbols``."""
        if not self.ws_url:
            raise VenueError(ReasonCode.INVALID_REQUEST, "no WebSocket URL configured")
        with self._lock:
            if self._stream is None:
                self._stream = BackpackStream(self.account, self.ws_url, self._signer, self.window_ms,
                                              self._stream_state.on_frame, self._stream_state.on_state)
            stream = self._stream
        stream.start(symbols)

    @property
    def stream(self) -> BackpackStream | None:
        return self._stream

    @property
    def last_latency_ms(self) -> float | None:
        return self._rest.last_latency_ms

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
            readers, self._readers = self._readers, None
        if stream is not None:
            stream.close()
        if readers is not None:
            readers.shutdown(wait=False, cancel_futures=True)
        self._rest.close()

    # ---- market data ----------------------------------------------------------------------------
    def market_rules(self, symbol: str) -> MarketRules:
        """Rules from GET /api/v1/markets, cached; one refresh for an unknown symbol."""
        rules = self._rules.get(symbol)
        if rules is None:
            fetched = parse_markets(self._rest.public_get("/api/v1/markets"))
            with self._lock:
                self._rules.update(fetched)
            rules = fetched.get(symbol)
        if rules is None:
            raise VenueError(ReasonCode.UNKNOWN_MARKET, f"no Backpack market {symbol!r}")
        return rules

    def top_of_book(self, symbol: str) -> TopOfBook:
        read_at = time.time()
        body = self._rest.public_get("/api/v1/depth", {"symbol": symbol, "limit": 5})
        return parse_depth(symbol, body, read_at)

    def account_history(self, symbol: str, since_ms: int, until_ms: int) -> AccountHistory:
        return read_history(self._rest, self.account, symbol, since_ms, until_ms)

    # ---- account state --------------------------------------------------------------------------
    def get_position(self, symbol: str) -> PositionReading:
        """Signed ``netQuantity``. Unknown (None, with ``error``) when the read fails;
        flat only when the venue answered and the symbol is absent from its list."""
        after_mono, after_venue_us = self._last_order.get(symbol, (None, None))
        fresh = self._stream_state.fresh_position(symbol, self.ws_position_max_age, after_mono, after_venue_us)
        if fresh is not None:
            return fresh
        read_at = time.time()
        try:
            # No ``symbol`` filter: with one, a flat market answers 404, which we could not
            # tell apart from a wrong path.
            body = self._rest.signed("GET", "/api/v1/position", "positionQuery")
            fields = parse_position_list(body, symbol)
        except VenueError as exc:
            if is_no_position(exc):  # flat either way: [] or a JSON 404 (errors.is_no_position)
                return PositionReading(self.account, symbol, Decimal(0), read_at, "rest")
            log.warning("account=%s position read for %s failed: %s", self.account, symbol, exc)
            return PositionReading(self.account, symbol, None, read_at, "rest", error=str(exc))
        return PositionReading(self.account, symbol, fields.quantity, read_at, "rest",
                               entry_price=fields.entry_price, mark_price=fields.mark_price)

    def get_balance(self) -> Balance:
        read_at = time.time()
        body = self._rest.signed("GET", "/api/v1/capital/collateral", "collateralQuery")
        return parse_collateral(self.account, body, read_at)

    def read_account(self, symbol: str) -> AccountReading:
        # Three independent reads sent at once: planning waits for one venue round trip, not three.
        with self._lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(2, thread_name_prefix=f"xtb-{self.account}-read")
            readers = self._readers
        balance = readers.submit(self.get_balance)
        position = readers.submit(self.get_position, symbol)
        top = self.top_of_book(symbol)
        return AccountReading(top, balance.result(), position.result())

    # ---- orders ---------------------------------------------------------------------------------
    def submit_market_order(self, symbol: str, client_id: int, side: Side, quantity: Decimal, *,
                            reduce_only: bool = False, max_slippage: float | None = None) -> OrderReport:
        """One market order; the fill is the venue's ``executedQuantity``.

        With ``max_slippage`` the order becomes a Limit IOC at the best price moved by that
        fraction: the documented ``timeInForce`` semantics, where ``slippageTolerance``'s units
        are not confirmed. Transport failures raise UNAVAILABLE: look the id up first.
        """
        self._check_client_id(client_id)
        rules = self.market_rules(symbol)
        size = self._order_size(rules, quantity, reduce_only)
        body: dict[str, Any] = {"symbol": symbol, "side": SIDE_TO_WIRE[side], "orderType": "Market",
                                "quantity": size, "clientId": client_id}
        if reduce_only:
            body["reduceOnly"] = True  # optional key: omitted when false, so the signed string matches the body
        if max_slippage is not None:
            body.update(self._slippage_fields(rules, side, max_slippage))
        self.orders.track(OrderTracker(client_id, symbol, side, size, reduce_only, state=OrderState.SUBMITTING))
        log.info("account=%s submit %s %s %s cid=%s reduce_only=%s slippage=%s", self.account, symbol,
                 side.value, size, client_id, reduce_only, max_slippage)
        try:
            answer = self._rest.signed("POST", "/api/v1/order", "orderExecute", body)
        except VenueError as exc:
            if exc.reason in _NOT_PLACED:
                self.orders.update_state(client_id, OrderState.FAILED, reason=str(exc))
            raise
        finally:
            self._last_order[symbol] = (time.monotonic(), None)
        parsed = parse_order(answer)
        if parsed.created_at_ms is not None:
            # Fills happen at or after createdAt; a position frame stamped before the next ms is older.
            self._last_order[symbol] = (self._last_order[symbol][0], (parsed.created_at_ms + 1) * 1000)
        report = self._absorb(parsed, client_id, size)
        if not report.final:
            report = self._settle(symbol, client_id, report)
        log.info("account=%s order cid=%s %s filled %s/%s avg=%s", self.account, client_id,
                 report.state.value, report.filled, report.requested, report.avg_price)
        return report

    def _check_client_id(self, client_id: int) -> None:
        if isinstance(client_id, bool) or not isinstance(client_id, int) or \
                not 1 <= client_id <= self.max_client_id:
            raise VenueError(ReasonCode.INVALID_REQUEST, f"clientId must be an int in 1..{self.max_client_id}")

    def _order_size(self, rules: MarketRules, quantity: Decimal, reduce_only: bool) -> Decimal:
        if not isinstance(quantity, Decimal) or not quantity.is_finite() or quantity <= 0:
            raise VenueError(ReasonCode.INVALID_REQUEST, f"quantity must be a positive Decimal, got {quantity!r}")
        size = rules.quantize_size(quantity)
        # Reduce-only orders may close dust below minQuantity; the venue decides (UNCONFIRMED).
        floor = rules.step_size if reduce_only else max(rules.min_quantity, rules.step_size)
        if size < floor:
            raise VenueError(ReasonCode.INVALID_REQUEST,
                             f"quantity {quantity} is below the minimum {floor} of {rules.symbol}")
        return size

    def _slippage_fields(self, rules: MarketRules, side: Side, max_slippage: float) -> dict[str, Any]:
        if not 0 <= max_slippage < 1:
            raise VenueError(ReasonCode.INVALID_REQUEST, "max_slippage is a fraction in [0, 1)")
        best = self.top_of_book(rules.symbol).price_for(side)
        if best is None:
            raise VenueError(ReasonCode.REJECTED, f"empty book on {rules.symbol}")
        slip = Decimal(str(max_slippage))
        if side is Side.BUY:
            limit = rules.quantize_price(best * (1 + slip), ROUND_FLOOR)
        else:
            limit = rules.quantize_price(best * (1 - slip), ROUND_CEILING)
        return {"orderType": "Limit", "price": limit, "timeInForce": "IOC"}

    def _absorb(self, parsed: ParsedOrder, client_id: int, requested: Decimal | None = None,
                *, existing: bool = False) -> OrderReport:
        """Fold a REST order object into the local tracker (if any) and report it."""
        report = parsed.report(client_id=client_id, requested=requested, existing=existing)
        if report.client_id != client_id:
            raise bad(f"venue answered clientId {report.client_id} for {client_id}")
        with self._lock:
            tracker = self.orders.get(client_id)
            if tracker is not None and tracker.symbol == parsed.symbol:
                tracker.venue_order_id = tracker.venue_order_id or parsed.order_id
                tracker.apply_cumulative(parsed.executed, parsed.executed_quote)
                tracker.transition(parsed.state, report.reason)
        return report

    def _settle(self, symbol: str, client_id: int, report: OrderReport) -> OrderReport:
        """A market order answered before it finished (market orders should finish synchronously): re-read briefly."""
        for _ in range(self.settle_polls):
            time.sleep(self.settle_interval)
            found = self.find_order(symbol, client_id)
            if found is not None:
                report = replace(found, existing=False)
                if report.final:
                    break
        return report

    def find_order(self, symbol: str, client_id: int) -> OrderReport | None:
        """The venue's record of ``client_id`` on ``symbol``; None only when the venue answered
        and has no such order. GET /api/v1/order sees resting orders only, so a 404 there is
        followed by the order history."""
        self._check_client_id(client_id)
        try:
            body = self._rest.signed("GET", "/api/v1/order", "orderQuery",
                                     {"symbol": symbol, "clientId": client_id})
        except VenueError as exc:
            if not is_not_found(exc):
                raise
        else:
            return self._absorb(parse_order(body), client_id, existing=True)
        parsed = self._history_lookup(symbol, client_id)
        tracker = self.orders.get(client_id)
        if parsed is None and tracker is not None and tracker.symbol == symbol and \
                tracker.state is OrderState.SUBMITTING:
            # We sent this id and never heard back. Whether history can lag the matching engine is
            # not documented; one short second look is cheap next to a duplicate order.
            time.sleep(self.history_recheck_secs)
            parsed = self._history_lookup(symbol, client_id)
        return None if parsed is None else self._absorb(parsed, client_id, existing=True)

    def _history_lookup(self, symbol: str, client_id: int) -> ParsedOrder | None:
        """Scan /wapi/v1/history/orders (the endpoint has no clientId filter) newest first."""
        size = self.history_page_size
        for page in range(self.history_max_pages):
            params = {"symbol": symbol, "limit": size, "offset": page * size, "sortDirection": "Desc"}
            items = arr(self._rest.signed("GET", "/wapi/v1/history/orders", "orderHistoryQueryAll", params),
                        "order history")
            for item in items:
                if isinstance(item, dict) and item.get("symbol") == symbol and \
                        parse_client_id(item.get("clientId")) == client_id:
                    return parse_order(item)
            if len(items) < size:
                return None
        raise VenueError(ReasonCode.UNAVAILABLE, f"clientId {client_id} not among the newest "
                         f"{size * self.history_max_pages} orders of {symbol}; absence not confirmed")

    def cancel_order(self, symbol: str, client_id: int) -> OrderReport | None:
        """Cancel by venue order id when known (the venue's preferred key), else by clientId; an order no
        longer open is looked up instead (its final state, or None if the venue has none)."""
        self._check_client_id(client_id)
        tracker = self.orders.get(client_id)
        params: dict[str, Any] = {"symbol": symbol}
        if tracker is not None and tracker.symbol == symbol and tracker.venue_order_id:
            params["orderId"] = tracker.venue_order_id
        else:
            params["clientId"] = client_id
        try:
            body = self._rest.signed("DELETE", "/api/v1/order", "orderCancel", params)
        except VenueError as exc:
            if not is_not_found(exc):
                raise
            return self.find_order(symbol, client_id)
        if body is None:  # 202: accepted, not yet executed
            return self.find_order(symbol, client_id)
        return self._absorb(parse_order(body), client_id)

    def cancel_all(self, symbol: str) -> int:
        """DELETE /api/v1/orders {symbol}; returns how many orders the venue cancelled."""
        if not isinstance(symbol, str) or not symbol:
            # A number here would be a quantity passed by mistake: refuse anything but a symbol.
            raise VenueError(ReasonCode.INVALID_REQUEST, f"cancel_all needs a symbol, got {symbol!r}")
        body = self._rest.signed("DELETE", "/api/v1/orders", "orderCancelAll", {"symbol": symbol})
        if body is None:
            log.info("account=%s cancel_all %s accepted (202), count unknown", self.account, symbol)
            return 0
        cancelled = arr(body, "cancelled orders")
        for item in cancelled:
            parsed = parse_order(item)
            if parsed.client_id is not None and self.orders.get(parsed.client_id) is not None:
                self._absorb(parsed, parsed.client_id)
        log.info("account=%s cancel_all %s cancelled %d", self.account, symbol, len(cancelled))
        return len(cancelled)
