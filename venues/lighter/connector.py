"""Lighter (zkLighter) connector: lighter-sdk's Go signer and our REST session on one long-lived loop.

* Sync interface methods submit coroutines to the connector's own loop (:mod:`.loop`) and wait.
* Market orders are MARKET/IOC with a worst acceptable price from the top of book; an accepted
  ``sendTx`` is not a fill: the order is looked up by client order index until
  the venue reports it final, and the report carries the venue's ``filled_base_amount``.
* Invalid nonce → resync, retry once with the same client order index. Transport failure after
  sending → resync, look the order up; found → its report, else ``VenueError(UNAVAILABLE)``: never a
  blind resend (:mod:`.signer`).
* With a ``ws_url``, positions, order outcomes and the top of book come from the account's stream
  while it is live (:mod:`.stream`, :mod:`.live_state`); REST answers otherwise and reconciles the
  cache every ``reconcile_secs``. A failed read is unknown, never zero.

One OS process per Lighter account: the Go signer's clients are process-global per api key index
(two accounts in one process would share, and overwrite, one client). Nothing here imports the
``lighter`` package itself (it costs a worker tens of MB); :mod:`.native` loads only its signer library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any, TypeVar

from venues.base import (
    AccountReading,
    Balance,
    ClientOrderId,
    MarketRules,
    OrderReport,
    OrderState,
    PendingReport,
    PositionReading,
    ReasonCode,
    Side,
    TopOfBook,
    VenueConnector,
    VenueError,
)
from venues.budget import RequestPriority
from venues.ledger import AccountHistory
from venues.lighter.budget import LighterBudget
from venues.lighter.credentials import LighterCredentials
from venues.lighter.history import read_history
from venues.lighter.leverage import update_fraction
from venues.lighter.live_state import Disagreement, LiveState
from venues.lighter.loop import LoopThread
from venues.lighter.parsing import (
    find_account,
    market_index,
    order_index,
    parse_balance,
    parse_initial_margin_fraction,
    parse_market_rules,
    parse_order,
    parse_orders,
    parse_position,
    parse_top_of_book,
)
from venues.lighter.priming import Primed, PrimedOrder
from venues.lighter.reconcile import DEFAULT_RECONCILE_SECS
from venues.lighter.rest import REQUEST_PRIORITY, LighterRest
from venues.lighter.signer import LighterSigner
from venues.lighter.stream import LighterStream, StateSink
from venues.orders import OrderBook, OrderTracker

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PRICE_INT = 2**32 - 1  # Lighter prices are uint32 at the wire
MAX_BASE_INT = 2**48 - 1
MAX_POLL_INTERVAL = 1.0


def worst_price(best: Decimal, side: Side, max_slippage: float | None, rules: MarketRules) -> Decimal:
    """The limit a market order may fill up to: ``best × (1 ± slippage)`` on the tick.

    Rounded toward the best price so the limit never exceeds ``max_slippage``; 0/None → the best
    price itself (an IOC at the best level).
    """
    if not max_slippage:
        return rules.quantize_price(best)
    slip = Decimal(str(max_slippage))
    if side is Side.BUY:
        return max(rules.quantize_price(best * (1 + slip), ROUND_DOWN), rules.quantize_price(best))
    return min(rules.quantize_price(best * (1 - slip), ROUND_UP), rules.quantize_price(best))


class LighterConnector(VenueConnector):
    """One Lighter account (``account_index``) signing with one API key."""

    venue = "lighter"
    max_client_id = ClientOrderId.LIGHTER_MAX

    def __init__(self, account: str, base_url: str, ws_url: str | None, account_index: int,
                 credentials: LighterCredentials, *, timeout: float = 10.0, fill_wait: float = 5.0,
                 poll_interval: float = 0.1, stream: bool = True, reconcile_secs: float = DEFAULT_RECONCILE_SECS,
                 on_disagreement: Disagreement | None = None, on_stream_state: StateSink | None = None,
                 budget: LighterBudget | None = None) -> None:
        self.account = account
        self.base_url = base_url.rstrip("/")
        self.ws_url = ws_url
        self.account_index = int(account_index)
        self.api_key_index = credentials.api_key_index
        self.timeout = timeout
        self.fill_wait = fill_wait
        self.poll_interval = poll_interval
        self.orders = OrderBook(account)
        self._rules: dict[str, MarketRules] = {}
        self._rest = LighterRest(self.base_url, timeout, account, budget)
        self._signer = LighterSigner(self.base_url, self.account_index, credentials, timeout, account, self._rest)
        self._rest.auth = self._signer.auth_token
        self._loop = LoopThread(f"lighter-{account}")
        self._primed = Primed()
        self.live: LiveState | None = None
        if stream and ws_url:
            live = LiveState(LighterStream(account, ws_url, self.account_index, on_state=on_stream_state),
                             reconcile_secs=reconcile_secs, on_disagreement=on_disagreement)
            self.live = live
            self._loop.run(self._start_stream(live.stream), self.timeout)

    def __repr__(self) -> str:
        return (f"LighterConnector(account={self.account!r}, account_index={self.account_index}, "
                f"api_key_index={self.api_key_index}, base_url={self.base_url!r})")

    def nonce_state(self) -> str:
        """The signer's nonce bookkeeping for diagnostics ("unfetched" or "next=N"); never the key."""
        return self._signer.nonce_state()

    # ---- loop plumbing -----------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], calls: float = 2) -> T:
        """Wait for ``coro`` on the connector loop: ``calls`` request timeouts plus slack."""
        return self._loop.run(coro, self.timeout * calls + 1.0)

    def close(self) -> None:
        if not self._loop.alive:
            return
        try:
            self._run(self._aclose())
        except VenueError as exc:
            log.warning("account=%s close: %s", self.account, exc)
        self._loop.stop()

    @staticmethod
    async def _start_stream(stream: LighterStream) -> None:
        stream.start()  # run on the connector's loop: the stream's tasks belong to it

    async def _aclose(self) -> None:
        if self.live is not None:
            await self.live.stream.stop()
        await self._signer.close()
        await self._rest.close()

    # ---- reads -------------------------------------------------------------------------------
    async def _market_rules(self, symbol: str) -> MarketRules:
        rules = self._rules.get(symbol)
        if rules is None:
            rules = parse_market_rules(await self._rest.get("/api/v1/orderBookDetails"), symbol)
            self._rules[symbol] = rules
            if self.live is not None:
                self.live.stream.watch_market(market_index(rules))
        return rules

    async def _top_of_book(self, symbol: str) -> TopOfBook:
        rules = await self._market_rules(symbol)
        streamed = self.live.stream.top(market_index(rules)) if self.live is not None else None
        if streamed is not None and streamed.bid is not None and streamed.ask is not None:
            return TopOfBook(symbol, streamed.bid, streamed.ask, streamed.received_at)
        body = await self._rest.get("/api/v1/orderBookOrders", {"market_id": rules.market_id, "limit": 1})
        return parse_top_of_book(body, symbol, time.time())

    async def _account(self) -> dict[str, Any]:
        body = await self._rest.get("/api/v1/account", {"by": "index", "value": self.account_index})
        return find_account(body, self.account_index)

    def market_rules(self, symbol: str) -> MarketRules:
        cached = self._rules.get(symbol)  # no hop to the loop thread: this is on the hand-off path
        return cached if cached is not None else self._run(self._market_rules(symbol))

    def top_of_book(self, symbol: str) -> TopOfBook:
        return self._run(self._top_of_book(symbol), calls=3)

    def get_balance(self) -> Balance:
        acct = self._run(self._account())
        return parse_balance(acct, self.account, time.time())

    def get_position(self, symbol: str) -> PositionReading:
        try:
            reading = self._run(self._position(symbol), calls=3)
        except VenueError as exc:
            log.warning("account=%s position %s unknown: %s", self.account, symbol, exc)
            return PositionReading(self.account, symbol, None, time.time(), error=str(exc))
        return reading

    async def _position(self, symbol: str) -> PositionReading:
        rules = await self._market_rules(symbol)
        cached = self.live.position(market_index(rules)) if self.live is not None else None
        if cached is not None:
            return PositionReading(self.account, symbol, cached.quantity, cached.received_at, "ws",
                                   entry_price=cached.entry_price)
        started = time.monotonic()
        reading = self._position_in(await self._account(), symbol, rules, time.time())
        await self._reconcile(rules, reading, started)
        return reading

    def _position_in(self, acct: dict[str, Any], symbol: str, rules: MarketRules, read_at: float) -> PositionReading:
        quantity, entry = parse_position(acct, market_index(rules))
        return PositionReading(self.account, symbol, quantity, read_at, entry_price=entry)

    async def _reconcile(self, rules: MarketRules, reading: PositionReading, started: float) -> None:
        if self.live is not None and reading.quantity is not None:
            await self.live.reconcile(market_index(rules), reading.quantity, reading.entry_price, started)

    def read_account(self, symbol: str) -> AccountReading:
        # One account read answers both balance and position; the book is read alongside it.
        top, acct, reading = self._run(self._book_and_account(symbol), calls=3)
        return AccountReading(top, parse_balance(acct, self.account, reading.read_at), reading,
                              self._own_fraction(acct, symbol))

    def _own_fraction(self, acct: dict[str, Any], symbol: str) -> Decimal | None:
        # A malformed entry leaves the market's default in force; the position read reports the error.
        try:
            return parse_initial_margin_fraction(acct, market_index(self._rules[symbol]))
        except VenueError:
            return None

    async def _book_and_account(self, symbol: str) -> tuple[TopOfBook, dict[str, Any], PositionReading]:
        rules = await self._market_rules(symbol)
        started = time.monotonic()
        top, acct = await asyncio.gather(self._top_of_book(symbol), self._account())
        read_at = time.time()
        try:
            reading = self._position_in(acct, symbol, rules, read_at)
        except VenueError as exc:
            log.warning("account=%s position %s unknown: %s", self.account, symbol, exc)
            return top, acct, PositionReading(self.account, symbol, None, read_at, error=str(exc))
        await self._reconcile(rules, reading, started)
        return top, acct, reading

    def account_history(self, symbol: str, since_ms: int, until_ms: int) -> AccountHistory:
        return self._run(self._history(symbol, since_ms, until_ms), calls=6)

    async def _history(self, symbol: str, since_ms: int, until_ms: int) -> AccountHistory:
        rules = await self._market_rules(symbol)

        return await read_history(self._rest.get, self.account, self.account_index, market_index(rules), symbol,
                                  since_ms, until_ms)

    def stream_version(self) -> int | None:
        return self.live.stream.version if self.live is not None and self.live.stream.live else None

    def wait_stream_change(self, since: int, timeout: float) -> int | None:
        if self.live is None or not self.live.stream.live:
            return None
        return self._loop.run(self.live.stream.wait_change(since, timeout), timeout + 1.0)

    # ---- order lookups -----------------------------------------------------------------------
    async def _lookup(self, client_id: int) -> dict[str, Any] | None:
        """The venue's order for ``client_id`` (accountOrders), or None when it has none."""
        params = {"account_index": self.account_index, "client_order_indexes": client_id}
        body = await self._rest.get("/api/v1/accountOrders", params)
        for order in parse_orders(body):
            if str(order.get("client_order_index")) == str(client_id):
                return order
        return None

    def _record(self, report: OrderReport) -> OrderReport:
        """Apply a venue report to the local tracker (monotonic) and return the tracker's report."""
        tracker = self.orders.get(report.client_id)
        if tracker is None:
            tracker = self.orders.track(OrderTracker(report.client_id, report.symbol, report.side,
                                                     report.requested, report.reduce_only))
        if report.venue_order_id and not tracker.venue_order_id:
            tracker.venue_order_id = report.venue_order_id
        quote = report.avg_price * report.filled if report.avg_price is not None else None
        tracker.apply_cumulative(report.filled, quote)
        tracker.transition(report.state, report.reason)
        return tracker.report()

    async def _find(self, symbol: str, client_id: int) -> OrderReport | None:
        order = await self._lookup(client_id)
        return None if order is None else self._record(parse_order(order, symbol))

    def find_order(self, symbol: str, client_id: int) -> OrderReport | None:
        return self._run(self._find(symbol, client_id))

    async def _poll_final(self, symbol: str, client_id: int, wait: float) -> OrderReport | None:
        """The order once final, or the last report seen when ``wait`` passes (None: never seen).

        The stream's push answers while it is live; REST lookups cover the rest of ``wait`` (at
        least one), for a stream that is down or never showed the order.
        """
        deadline = time.monotonic() + wait
        if self.live is not None:
            pushed = await self.live.final_order(client_id, deadline)
            if pushed is not None:
                return self._record(parse_order(pushed, symbol))
        last: OrderReport | None = None
        delay = self.poll_interval
        while True:
            try:
                last = await self._find(symbol, client_id) or last
            except VenueError as exc:
                log.warning("account=%s lookup client_id=%d: %s", self.account, client_id, exc)
            if (last is not None and last.final) or time.monotonic() >= deadline:
                return last
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            # Back off: a Standard account has 60 requests/min for reads and txs together.
            delay = min(delay * 2, MAX_POLL_INTERVAL)

    # ---- account settings --------------------------------------------------------------------
    def set_initial_margin_fraction(self, symbol: str, fraction_bp: int) -> Decimal:
        async def update() -> Decimal:
            REQUEST_PRIORITY.set(RequestPriority.ORDER)
            return await update_fraction(self._signer, self._account, await self._market_rules(symbol), int(fraction_bp),
                                         wait=self.fill_wait, poll_interval=self.poll_interval, account=self.account)

        # the send (one nonce retry), then the confirmation reads within fill_wait.
        return self._loop.run(update(), self.timeout * 4 + self.fill_wait + 1.0)


    # ---- market orders -----------------------------------------------------------------------
    def submit_market_order(self, symbol: str, client_id: int, side: Side, quantity: Decimal, *,
                            reduce_only: bool = False, max_slippage: float | None = None) -> OrderReport:
        return self.begin_market_order(symbol, client_id, side, quantity, reduce_only=reduce_only,
                                       max_slippage=max_slippage).result()

    def begin_market_order(self, symbol: str, client_id: int, side: Side, quantity: Decimal, *,
                           reduce_only: bool = False, max_slippage: float | None = None) -> PendingReport:
        if not 1 <= int(client_id) <= self.max_client_id:
            return PendingReport.failed(VenueError(ReasonCode.INVALID_REQUEST,
                                                   f"client id {client_id} out of 1..{self.max_client_id}"))
        coro = self._submit(symbol, int(client_id), Side(side), Decimal(quantity), reduce_only, max_slippage)
        try:
            # book + send + nonce retry + resync + lookups, each bounded by `timeout`, plus the fill wait.
            return PendingReport(self._loop.start(coro, self.timeout * 8 + self.fill_wait + 2.0))
        except VenueError as exc:  # the connector is closed
            return PendingReport.failed(exc)

    async def _submit(self, symbol: str, client_id: int, side: Side, quantity: Decimal,
                      reduce_only: bool, max_slippage: float | None) -> OrderReport:
        REQUEST_PRIORITY.set(RequestPriority.ORDER)  # this task's requests, lookups included
        rules = await self._market_rules(symbol)
        size, price = await self._order_terms(symbol, rules, side, quantity, reduce_only, max_slippage,
                                              book=self._primed.take_book(symbol))
        presigned = self._primed.take_order(client_id, symbol, side, size, price, reduce_only)
        # A tracker that already exists for this id (a retried task) keeps its history.
        tracker = self.orders.get(client_id) or self.orders.track(
            OrderTracker(client_id, symbol, side, size, reduce_only))
        self.orders.update_state(client_id, OrderState.SUBMITTING)
        nonce = self._signer.nonce_state()
        mid = market_index(rules)
        try:
            # MARKET/IOC with no order expiry; the price is the worst acceptable one.
            await self._signer.send_create_order(market_index(rules), client_id, rules.size_to_int(size),
                                                 rules.price_to_int(price), side is Side.SELL,
                                                 reduce_only=reduce_only, what=f"order client_id={client_id}",
                                                 presigned=presigned)
        except VenueError as exc:
            if exc.outcome_unknown:
                self._sent(mid, client_id)
                return await self._recover(symbol, client_id, exc)
            if exc.reason is not ReasonCode.DUPLICATE_CLIENT_ID:  # that id's order lives on at the venue
                self.orders.update_state(client_id, OrderState.FAILED, reason=str(exc))
            raise
        finally:
            # Logged once the order has left: formatting and writing a line is not on its way out.
            log.info("account=%s submit client_id=%d %s %s %s worst_price=%s reduce_only=%s api_key_index=%d "
                     "nonce %s presigned=%s", self.account, client_id, symbol, side.value, size, price,
                     reduce_only, self.api_key_index, nonce, presigned is not None)
        self._sent(mid, client_id)
        report = await self._poll_final(symbol, client_id, self.fill_wait)
        if report is None:
            # Accepted but not visible yet: say so rather than guess a fill.
            log.warning("account=%s client_id=%d accepted but not visible after %.1fs",
                        self.account, client_id, self.fill_wait)
            return tracker.report()
        log.info("account=%s client_id=%d %s filled=%s/%s avg=%s", self.account, client_id,
                 report.state.value, report.filled, report.requested, report.avg_price)
        return report

    def _sent(self, market_id: int, client_id: int) -> None:
        if self.live is not None:
            self.live.sent(market_id, client_id)

    def prime_market_order(self, symbol: str, *, client_id: int | None = None, side: Side | None = None,
                           quantity: Decimal | None = None, reduce_only: bool = False,
                           max_slippage: float | None = None) -> None:
        try:
            self._run(self._prime(symbol, client_id, side, quantity, reduce_only, max_slippage), calls=3)
        except VenueError as exc:
            log.warning("account=%s priming %s client_id=%s failed (the order will read and sign itself): %s",
                        self.account, symbol, client_id, exc)

    async def _prime(self, symbol: str, client_id: int | None, side: Side | None, quantity: Decimal | None,
                     reduce_only: bool, max_slippage: float | None) -> None:
        REQUEST_PRIORITY.set(RequestPriority.ORDER)
        rules = await self._market_rules(symbol)
        book = await self._top_of_book(symbol)
        self._primed.put_book(symbol, book)
        if client_id is None or side is None or quantity is None:
            return
        size, price = await self._order_terms(symbol, rules, side, quantity, reduce_only, max_slippage, book=book)
        presigned = await self._signer.presign_create_order(market_index(rules), client_id, rules.size_to_int(size),
                                                            rules.price_to_int(price), side is Side.SELL,
                                                            reduce_only=reduce_only)
        # One armed order at a time: one left by a hedge whose entry failed is dropped here.
        self._primed.orders = {client_id: PrimedOrder(symbol, side, size, price, reduce_only, presigned)}
        log.info("account=%s primed client_id=%d %s %s %s worst_price=%s nonce=%d", self.account, client_id,
                 symbol, side.value, size, price, presigned.nonce)

    async def _order_terms(self, symbol: str, rules: MarketRules, side: Side, quantity: Decimal,
                           reduce_only: bool, max_slippage: float | None,
                           book: TopOfBook | None = None) -> tuple[Decimal, Decimal]:
        """(size on the step, worst acceptable price on the tick), checked against the venue limits."""
        size = rules.quantize_size(quantity)
        if size <= 0 or size < rules.min_quantity:
            raise VenueError(ReasonCode.INVALID_REQUEST,
                             f"{symbol} size {quantity} below the minimum {rules.min_quantity}")
        best = (book or await self._top_of_book(symbol)).price_for(side)
        if best is None:
            raise VenueError(ReasonCode.REJECTED, f"{symbol}: no {'asks' if side is Side.BUY else 'bids'} to take")
        price = worst_price(best, side, max_slippage, rules)
        if not reduce_only and size * best < rules.min_notional:
            raise VenueError(ReasonCode.INVALID_REQUEST,
                             f"{symbol} notional {size * best} below the minimum {rules.min_notional}")
        if not 1 <= rules.price_to_int(price) <= MAX_PRICE_INT or rules.size_to_int(size) > MAX_BASE_INT:
            raise VenueError(ReasonCode.INVALID_REQUEST, f"{symbol} price {price} or size {size} out of range")
        return size, price

    async def _recover(self, symbol: str, client_id: int, cause: VenueError) -> OrderReport:
        """After an unknown outcome (nonce already resynced): the venue's record, or UNAVAILABLE."""
        log.warning("account=%s client_id=%d outcome unknown (%s); looking it up", self.account, client_id, cause)
        report = await self._poll_final(symbol, client_id, self.fill_wait)
        if report is not None:
            log.info("account=%s client_id=%d found after %s: %s filled=%s", self.account, client_id,
                     cause.reason.value, report.state.value, report.filled)
            return report
        raise VenueError(ReasonCode.UNAVAILABLE,
                         f"client_id={client_id}: outcome unknown and not found at the venue ({cause})",
                         status=cause.status, code=cause.code)

    # ---- cancels -----------------------------------------------------------------------------
    def cancel_order(self, symbol: str, client_id: int) -> OrderReport | None:
        return self._run(self._cancel(symbol, int(client_id)), calls=6)

    async def _cancel(self, symbol: str, client_id: int) -> OrderReport | None:
        REQUEST_PRIORITY.set(RequestPriority.ORDER)
        rules = await self._market_rules(symbol)
        order = await self._lookup(client_id)
        if order is None:
            return None
        report = self._record(parse_order(order, symbol))
        if report.final:
            return report
        # Cancel by the venue's order_index, which we just read, rather than trusting that Index
        # also matches a client order index (the SDK documents no such guarantee).
        index = order_index(order)
        await self._signer.send_cancel_order(market_index(rules), index,
                                             what=f"cancel client_id={client_id} order_index={index}")
        return await self._poll_final(symbol, client_id, self.fill_wait) or report

    def cancel_all(self, symbol: str) -> int:
        return self._run(self._cancel_all(symbol), calls=5)

    async def _cancel_all(self, symbol: str) -> int:
        REQUEST_PRIORITY.set(RequestPriority.ORDER)
        rules = await self._market_rules(symbol)
        params = {"account_index": self.account_index, "market_id": rules.market_id}
        active = parse_orders(await self._rest.get("/api/v1/accountActiveOrders", params))
        # Sent even when the read shows nothing: an order may be in flight and cancel-all is cheap.
        # The market index rides in L2TxAttributes (SDK 1.1.8); without it the tx is account-wide.
        await self._signer.send_cancel_all(market_index(rules), what=f"cancel_all {symbol} ({len(active)} open)")
        return len(active)
