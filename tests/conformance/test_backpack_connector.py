"""BackpackConnector against the Backpack simulator over real HTTP and WebSocket.

Every test uses fresh API keys (a fresh simulated account) and scopes its faults to that key,
so tests never see each other's orders, positions or faults on the shared session simulator.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from simulators.market import Fault, FaultKind
from tests.helpers.support import wait_until
from venues.backpack import BackpackConnector, BackpackCredentials
from venues.backpack.credentials import generate_backpack_keys
from venues.backpack.events import StreamState
from venues.backpack.parsing import parse_ws_order, parse_ws_position
from venues.base import OrderState, ReasonCode, Side, VenueError
from venues.orders import OrderBook, OrderTracker

SYMBOL = "ETH_USDC_PERP"
_ids = itertools.count(int(time.time()) % 1_000_000 * 1000 + 1)

Factory = Callable[..., BackpackConnector]


def next_id() -> int:
    return next(_ids)


@pytest.fixture
def connector(simulator: Any, tmp_path: Any) -> Iterator[Factory]:
    """Factory of connectors, each with a fresh key pair; all closed at teardown."""
    made: list[BackpackConnector] = []

    def make(name: str = "bp", timeout: float = 5.0) -> BackpackConnector:
        creds = generate_backpack_keys(tmp_path / f"{name}-{len(made)}.txt")
        conn = BackpackConnector(name, simulator.urls["backpack"], simulator.urls["backpack_ws"], creds,
                                 timeout=timeout, broker_id="1500")
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def arm(simulator: Any, conn: BackpackConnector, kind: FaultKind, op: str, count: int = 1,
        **params: Any) -> None:
    simulator.exchange.arm_fault(Fault(kind=kind, venue="backpack", remaining=count, op=op,
                                       account=conn._signer.api_key, params=params))


def audit(simulator: Any, conn: BackpackConnector, client_id: int | None = None) -> list[Any]:
    with simulator.exchange.lock:
        return [e for e in simulator.exchange.audit if e.venue == "backpack" and e.account ==
                conn._signer.api_key and (client_id is None or e.client_id == client_id)]


def ws_quantity(conn: BackpackConnector) -> Decimal | None:
    """The position the account stream last pushed for SYMBOL (None: none since connecting)."""
    reading = conn._stream_state.fresh_position(SYMBOL, max_age=60.0)
    return None if reading is None else reading.quantity


def test_market_rules_carry_the_markets_imf_function(connector: Factory, simulator: Any) -> None:
    # What planning checks Backpack's margin with (the simulator serves the captured ETH function).
    imf = connector().market_rules(SYMBOL).initial_margin
    assert imf is not None and (imf.base, imf.factor) == (Decimal("0.02"), Decimal("0.0000935"))


# ---- orders ---------------------------------------------------------------------------------
def test_market_order_fills_with_executed_quantity(connector: Factory, simulator: Any) -> None:
    conn = connector()
    rules = conn.market_rules(SYMBOL)
    book = conn.top_of_book(SYMBOL)
    assert book.bid is not None and book.ask is not None and book.bid < book.ask
    cid = next_id()
    report = conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.05009"))
    assert report.state is OrderState.FILLED and report.filled == Decimal("0.0500") == report.requested
    assert report.venue_order_id and report.avg_price is not None and report.avg_price >= book.ask
    assert report.client_id == cid and not report.existing
    (entry,) = audit(simulator, conn, cid)
    assert Decimal(entry.quantity) == Decimal("0.05")  # quantized to the 0.0001 step before sending
    position = conn.get_position(SYMBOL)
    assert position.quantity == Decimal("0.05") and position.source == "rest" and position.error is None
    assert rules.step_size == Decimal("0.0001")
    balance = conn.get_balance()
    # Any taker fee (profile.FeeProfile; off by default) is paid from the collateral.
    fee = report.filled * report.avg_price * simulator.exchange.profile.fees.rate("backpack", False)
    assert balance.equity is not None and abs(balance.collateral - (Decimal(10000) - fee)) < Decimal("0.000001")
    found = conn.find_order(SYMBOL, cid)  # filled market orders are only in the history
    assert found is not None and found.existing and found.state is OrderState.FILLED
    assert found.filled == report.filled and found.venue_order_id == report.venue_order_id


def test_partial_fill_is_reported_as_partial(connector: Factory, simulator: Any) -> None:
    conn = connector()
    arm(simulator, conn, FaultKind.PARTIAL_FILL, "order", fraction="0.5")
    report = conn.submit_market_order(SYMBOL, next_id(), Side.SELL, Decimal("0.04"))
    assert report.state is OrderState.CANCELLED and report.filled == Decimal("0.02") < report.requested
    assert report.reason  # the venue's expiry reason travels with the report
    assert conn.get_position(SYMBOL).quantity == Decimal("-0.02")


def test_below_min_quantity_is_refused_locally(connector: Factory, simulator: Any) -> None:
    conn = connector()
    cid = next_id()
    with pytest.raises(VenueError) as info:
        conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.00009"))
    assert info.value.reason is ReasonCode.INVALID_REQUEST
    with pytest.raises(VenueError) as info:
        conn.submit_market_order(SYMBOL, 2**32, Side.BUY, Decimal("1"))
    assert info.value.reason is ReasonCode.INVALID_REQUEST
    assert audit(simulator, conn) == []


def test_venue_rejection_raises_rejected(connector: Factory, simulator: Any) -> None:
    conn = connector()
    cid = next_id()
    conn.get_balance()  # opens the simulated account, whose collateral is then cut to 10 USDC
    with simulator.exchange.lock:
        simulator.exchange.account("backpack", conn._signer.api_key).collateral = Decimal(10)
    with pytest.raises(VenueError) as info:  # 1500 USDC of ETH on 10 USDC: 400 INSUFFICIENT_MARGIN
        conn.submit_market_order(SYMBOL, cid, Side.SELL, Decimal("0.5"))
    assert info.value.reason is ReasonCode.REJECTED and info.value.status == 400
    tracker = conn.orders.get(cid)
    assert tracker is not None and tracker.state is OrderState.FAILED
    assert conn.find_order(SYMBOL, cid) is None


def test_reduce_only_that_would_not_reduce_comes_back_expired(connector: Factory, simulator: Any) -> None:
    # OpenAPI OrderExpiryReason ReduceOnlyNotReduced: the venue expires the order, nothing fills.
    conn = connector()
    cid = next_id()
    report = conn.submit_market_order(SYMBOL, cid, Side.SELL, Decimal("0.01"), reduce_only=True)
    assert report.state is OrderState.CANCELLED and report.filled == 0 and report.reason == "Expired"
    found = conn.find_order(SYMBOL, cid)  # the history carries the expiry reason
    assert found is not None and found.filled == 0 and found.reason == "ReduceOnlyNotReduced"
    assert conn.get_position(SYMBOL).quantity == 0


def test_timeout_after_accept_then_find_order_finds_exactly_one(connector: Factory, simulator: Any) -> None:
    conn = connector(timeout=0.5)
    cid = next_id()
    arm(simulator, conn, FaultKind.TIMEOUT_AFTER_ACCEPT, "order", seconds=1.5)
    with pytest.raises(VenueError) as info:
        conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.03"))
    assert info.value.reason is ReasonCode.UNAVAILABLE and info.value.outcome_unknown
    found = conn.find_order(SYMBOL, cid)
    assert found is not None and found.existing and found.client_id == cid
    assert found.state is OrderState.FILLED and found.filled == Decimal("0.03")
    assert len(audit(simulator, conn, cid)) == 1


def test_order_landing_after_the_timeout_is_found_by_the_second_look(connector: Factory,
                                                                     simulator: Any) -> None:
    conn = connector(timeout=0.3)
    cid = next_id()
    arm(simulator, conn, FaultKind.HANG, "order", seconds=0.6)  # held, then executed
    with pytest.raises(VenueError) as info:
        conn.submit_market_order(SYMBOL, cid, Side.SELL, Decimal("0.01"))
    assert info.value.reason is ReasonCode.UNAVAILABLE
    found = conn.find_order(SYMBOL, cid)
    assert found is not None and found.filled == Decimal("0.01")
    assert len(audit(simulator, conn, cid)) == 1


def test_find_order_on_unused_id_is_none_and_failure_raises(connector: Factory, simulator: Any) -> None:
    conn = connector()
    conn.submit_market_order(SYMBOL, next_id(), Side.BUY, Decimal("0.01"))  # history is not empty
    assert conn.find_order(SYMBOL, next_id()) is None
    arm(simulator, conn, FaultKind.HTTP_500, "history")
    with pytest.raises(VenueError) as info:  # unknown is not absent
        conn.find_order(SYMBOL, next_id())
    assert info.value.reason is ReasonCode.UNAVAILABLE


def test_rate_limit_is_rate_limited_and_nothing_is_placed(connector: Factory, simulator: Any) -> None:
    conn = connector()
    cid = next_id()
    arm(simulator, conn, FaultKind.HTTP_429, "order")
    with pytest.raises(VenueError) as info:
        conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.01"))
    assert info.value.reason is ReasonCode.RATE_LIMITED and info.value.status == 429
    assert audit(simulator, conn, cid) == [] and conn.find_order(SYMBOL, cid) is None


def test_max_slippage_sends_a_bounded_ioc(connector: Factory, simulator: Any) -> None:
    conn = connector()
    report = conn.submit_market_order(SYMBOL, next_id(), Side.BUY, Decimal("2"), max_slippage=0.001)
    book = conn.top_of_book(SYMBOL)
    assert book.ask is not None and report.avg_price is not None
    assert report.avg_price <= book.ask * Decimal("1.001")
    assert Decimal(0) < report.filled <= Decimal(2) and report.state in (OrderState.FILLED, OrderState.CANCELLED)


def test_cancels(connector: Factory, simulator: Any) -> None:
    conn = connector()
    cid = next_id()
    conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.01"))
    assert conn.cancel_all(SYMBOL) == 0
    with pytest.raises(VenueError) as info:
        conn.cancel_all(10.0)  # type: ignore[arg-type]  # a number is refused, not read as a symbol
    assert info.value.reason is ReasonCode.INVALID_REQUEST
    done = conn.cancel_order(SYMBOL, cid)  # no longer open: its final record
    assert done is not None and done.state is OrderState.FILLED
    assert conn.cancel_order(SYMBOL, next_id()) is None


# ---- positions ------------------------------------------------------------------------------
def test_failed_position_read_is_unknown_not_zero(connector: Factory, simulator: Any) -> None:
    conn = connector()
    arm(simulator, conn, FaultKind.HTTP_500, "position")
    reading = conn.get_position(SYMBOL)
    assert reading.quantity is None and not reading.known and reading.error
    assert "unavailable" in reading.error
    assert conn.get_position(SYMBOL).quantity == Decimal(0)  # the next, successful read: flat


def test_planning_read_matches_the_single_reads_and_keeps_unknown(connector: Factory, simulator: Any) -> None:
    conn = connector()
    conn.submit_market_order(SYMBOL, next_id(), Side.SELL, Decimal("0.04"))
    read = conn.read_account(SYMBOL)
    assert read.position.quantity == conn.get_position(SYMBOL).quantity == Decimal("-0.04")
    assert (read.top.bid, read.top.ask) == (conn.top_of_book(SYMBOL).bid, conn.top_of_book(SYMBOL).ask)
    assert read.balance.equity is not None and read.balance.account == conn.account
    arm(simulator, conn, FaultKind.HTTP_500, "position")
    failed = conn.read_account(SYMBOL)
    assert failed.position.quantity is None and failed.balance.equity is not None  # unknown, not zero


def test_hung_position_read_is_unknown(connector: Factory, simulator: Any) -> None:
    conn = connector(timeout=0.3)
    arm(simulator, conn, FaultKind.HANG, "position", seconds=1)
    started = time.monotonic()
    reading = conn.get_position(SYMBOL)
    assert reading.quantity is None and time.monotonic() - started < 1.0


def test_stale_position_is_observed_then_recovers(connector: Factory, simulator: Any) -> None:
    conn = connector()
    conn.submit_market_order(SYMBOL, next_id(), Side.BUY, Decimal("0.02"))
    arm(simulator, conn, FaultKind.STALE_POSITION, "position")
    conn.submit_market_order(SYMBOL, next_id(), Side.BUY, Decimal("0.03"))
    assert conn.get_position(SYMBOL).quantity == Decimal("0.02")  # the venue's stale answer, as given
    assert conn.get_position(SYMBOL).quantity == Decimal("0.05")


def test_flatten_ends_flat_with_a_fresh_read(connector: Factory, simulator: Any) -> None:
    conn = connector()
    conn.submit_market_order(SYMBOL, next_id(), Side.SELL, Decimal("0.07"))
    before = time.time()
    report = conn.flatten(SYMBOL, iter([next_id(), next_id(), next_id()]))
    assert report.flat and report.final_position.quantity == Decimal(0)
    assert report.final_position.source == "rest" and report.final_position.read_at >= before
    (order,) = report.orders
    assert order.side is Side.BUY and order.reduce_only and order.filled == Decimal("0.07")
    assert conn.flatten(SYMBOL, iter([])).orders == ()  # already flat: no order needed


def test_two_accounts_never_see_each_other(connector: Factory, simulator: Any) -> None:
    a, b = connector("bp-a"), connector("bp-b")
    b.start_streams([SYMBOL])
    wait_until(lambda: b.stream is not None and b.stream.connected, timeout=5, what="b connected")
    cid = next_id()
    a.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.04"))
    assert a.get_position(SYMBOL).quantity == Decimal("0.04")
    assert b.get_position(SYMBOL).quantity == Decimal(0)
    assert b.find_order(SYMBOL, cid) is None
    time.sleep(0.3)
    assert b.orders.get(cid) is None and ws_quantity(b) is None  # nothing of a's reached b's stream


# ---- streams --------------------------------------------------------------------------------
def test_streams_feed_fills_and_positions_and_survive_a_drop(connector: Factory, simulator: Any) -> None:
    conn = connector()
    conn.start_streams([SYMBOL])
    stream = conn.stream
    assert stream is not None
    wait_until(lambda: stream.connected, timeout=5, what="stream connected")
    time.sleep(0.1)  # the venue acknowledges no subscribe, so give it a moment before ordering
    first = next_id()
    report = conn.submit_market_order(SYMBOL, first, Side.BUY, Decimal("0.02"))
    tracker = conn.orders.get(first)
    assert tracker is not None
    wait_until(lambda: tracker.trade_ids, timeout=5, what="first fill on the stream")
    wait_until(lambda: ws_quantity(conn) == Decimal("0.02"), timeout=5, what="position on the stream")
    assert tracker.filled == report.filled and len(tracker.trade_ids) == 1  # REST and WS counted once

    arm(simulator, conn, FaultKind.DROP_WS, "ws")
    wait_until(lambda: stream.connects >= 2 and stream.connected, timeout=10, what="reconnect")
    time.sleep(0.1)
    second = next_id()
    conn.submit_market_order(SYMBOL, second, Side.BUY, Decimal("0.01"))
    again = conn.orders.get(second)
    assert again is not None
    wait_until(lambda: again.trade_ids, timeout=5, what="fill on the stream after reconnect")
    wait_until(lambda: ws_quantity(conn) == Decimal("0.03"), timeout=5, what="position 0.03 on the stream")


def test_fresh_ws_position_is_used_only_after_our_last_order(connector: Factory, simulator: Any) -> None:
    conn = connector()
    conn.start_streams([SYMBOL])
    stream = conn.stream
    assert stream is not None
    wait_until(lambda: stream.connected, timeout=5, what="stream connected")
    time.sleep(0.1)
    conn.submit_market_order(SYMBOL, next_id(), Side.BUY, Decimal("0.02"))
    wait_until(lambda: ws_quantity(conn) == Decimal("0.02"), timeout=5, what="position on the stream")
    assert conn.get_position(SYMBOL).quantity == Decimal("0.02")  # REST or WS: both must agree
    requests.post(simulator.urls["backpack"] + "/_sim/liquidate", timeout=5,
                  json={"venue": "backpack", "account": conn._signer.api_key, "base": "ETH"})
    wait_until(lambda: ws_quantity(conn) == Decimal(0), timeout=5, what="positionClosed")
    reading = conn.get_position(SYMBOL)
    assert reading.source == "ws" and reading.quantity == Decimal(0)
    time.sleep(conn.ws_position_max_age + 0.1)
    assert conn.get_position(SYMBOL).source == "rest"


def test_connector_repr_and_errors_hold_no_secret(connector: Factory, simulator: Any, tmp_path: Any) -> None:
    conn = connector()
    secret = (tmp_path / "bp-0.txt").read_text().split("api secret:")[1].strip()
    assert secret not in repr(conn)
    bad = BackpackConnector("bad", simulator.urls["backpack"], None,
                            BackpackCredentials(conn._signer.api_key, generate_backpack_keys(
                                tmp_path / "other.txt").api_secret), timeout=2)
    try:
        with pytest.raises(VenueError) as info:
            bad.get_balance()
        assert info.value.reason is ReasonCode.AUTH and secret not in str(info.value)
        assert bad.get_position(SYMBOL).quantity is None
    finally:
        bad.close()


# ---- stream state rules (real StreamState and OrderBook, fed parsed frames) -----------------
def _order_frame(trade: int | None, last: str, cumulative: str, status: str, cid: int = 7) -> Any:
    data = {"e": "orderFill" if trade else "orderAccepted", "E": 1, "s": SYMBOL, "c": cid, "S": "Bid",
            "o": "MARKET", "q": "1", "X": status, "i": "114575842681290753", "z": cumulative,
            "Z": str(Decimal(cumulative) * 100), "t": trade, "T": 1}
    if trade:
        data.update(l=last, L="100")
    return parse_ws_order(data)


def test_ws_fills_count_once_alongside_the_rest_cumulative() -> None:
    book = OrderBook("bp")
    state = StreamState("bp", book, threading.RLock())
    tracker = book.track(OrderTracker(7, SYMBOL, Side.BUY, Decimal(1), state=OrderState.SUBMITTING))
    state.apply_order(_order_frame(None, "0", "0", "New"))
    state.apply_order(_order_frame(11, "0.4", "0.4", "PartiallyFilled"))
    state.apply_order(_order_frame(11, "0.4", "0.4", "PartiallyFilled"))  # duplicate frame
    assert tracker.filled == Decimal("0.4") and tracker.state is OrderState.PARTIALLY_FILLED
    tracker.apply_cumulative(Decimal(1), Decimal(100))  # the REST answer: everything filled
    state.apply_order(_order_frame(12, "0.6", "1", "Filled"))  # already inside that cumulative
    assert tracker.filled == Decimal(1) and tracker.state is OrderState.FILLED
    assert tracker.trade_ids == {"11", "12"}
    state.apply_order(_order_frame(None, "0", "1", "New"))  # a late status never moves it back
    assert tracker.state is OrderState.FILLED
    state.apply_order(_order_frame(13, "0.5", "0.5", "Expired", cid=8))  # not ours: logged, not tracked
    assert book.get(8) is None


def test_ws_position_freshness_rules() -> None:
    state = StreamState("bp", OrderBook("bp"), threading.RLock())
    frame = {"e": "positionAdjusted", "E": 5_000_000, "s": SYMBOL, "q": "-0.5", "i": 1}
    state.apply_position(parse_ws_position(frame))
    assert state.fresh_position(SYMBOL, 5.0) is None  # socket not up
    state.on_state(True)
    state.apply_position(parse_ws_position(frame))
    reading = state.fresh_position(SYMBOL, 5.0)
    assert reading is not None and reading.quantity == Decimal("-0.5") and reading.source == "ws"
    assert state.fresh_position(SYMBOL, 0.0) is None  # too old
    assert state.fresh_position(SYMBOL, 5.0, after_mono=time.monotonic()) is None  # before our order
    assert state.fresh_position(SYMBOL, 5.0, after_venue_us=5_000_000) is None  # stamped before it
    assert state.fresh_position(SYMBOL, 5.0, after_venue_us=4_999_999) is not None
    state.on_state(False)
    state.on_state(True)
    assert state.fresh_position(SYMBOL, 5.0) is None  # a gap forgets what was pushed before it
