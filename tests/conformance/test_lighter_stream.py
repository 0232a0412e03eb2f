"""The Lighter connector's stream (``/stream``) against the simulator: what it answers without REST,
how it falls back when the socket drops, and how REST reconciles a lost push."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from simulators.market import Fault, FaultKind
from venues.base import OrderState, Side
from venues.lighter.connector import LighterConnector
from venues.lighter.credentials import LighterCredentials, generate_lighter_keys

SYMBOL = "ETH"
_accounts = itertools.count(7601)
_client_ids = itertools.count(3_000_001)

Factory = Callable[..., LighterConnector]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> LighterCredentials:
    return generate_lighter_keys(Path(tmp_path_factory.mktemp("lighter-stream-keys")) / "k4.txt", 4)


@pytest.fixture
def make(simulator: Any, key: LighterCredentials) -> Iterator[Factory]:
    made: list[LighterConnector] = []

    def factory(**kwargs: Any) -> LighterConnector:
        index = next(_accounts)
        kwargs.setdefault("fill_wait", 3.0)
        conn = LighterConnector(f"lighter-{index}", simulator.urls["lighter"], simulator.urls["lighter_ws"],
                                index, key, **kwargs)
        made.append(conn)
        conn.market_rules(SYMBOL)  # subscribes to the market's book
        wait_for(lambda: conn.live is not None and conn.live.stream.live and conn.top_of_book(SYMBOL).ask is not None)
        return conn

    yield factory
    for conn in made:
        conn.close()
    simulator.exchange.clear_faults()


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def request_counts(simulator: Any) -> dict[tuple[str, str], int]:
    return {(row["who"], row["endpoint"]): row["count"] for row in simulator.exchange.request_log("lighter")}


def buy(conn: LighterConnector, quantity: str) -> Any:
    return conn.submit_market_order(SYMBOL, next(_client_ids), Side.BUY, Decimal(quantity))


def test_fills_positions_and_the_book_come_from_the_stream(make: Factory, simulator: Any) -> None:
    conn = make()
    assert conn.get_position(SYMBOL).source == "rest"  # the first read reconciles the cache
    before = request_counts(simulator)
    report = buy(conn, "0.02")
    assert (report.state, report.filled) == (OrderState.FILLED, Decimal("0.0200"))
    reading = conn.get_position(SYMBOL)
    assert (reading.source, reading.quantity) == ("ws", Decimal("0.0200"))
    assert conn.top_of_book(SYMBOL).ask is not None
    after = request_counts(simulator)
    # The tx and the first nonce fetch, both the account's (every request is authenticated, so none
    # counts against the IP both Lighter workers share): no order lookup, account read or book read.
    assert {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)} == {
        (f"account:{conn.account_index}", "sendTx"): 1, (f"account:{conn.account_index}", "nextNonce"): 1}


def test_a_push_wakes_a_waiter_at_once(make: Factory) -> None:
    conn = make()
    since = conn.stream_version()
    assert since is not None
    woke: list[tuple[int | None, float]] = []
    waiter = threading.Thread(target=lambda: woke.append((conn.wait_stream_change(since, 5.0), time.monotonic())))
    waiter.start()
    buy(conn, "0.02")
    waiter.join(6)
    assert woke and woke[0][0] is not None and woke[0][0] > since


def test_a_dropped_stream_falls_back_to_rest_and_comes_back(make: Factory, simulator: Any) -> None:
    conn = make()
    assert conn.live is not None
    buy(conn, "0.02")
    simulator.exchange.arm_fault(Fault(kind=FaultKind.DROP_WS, venue="lighter", remaining=1, op="ws",
                                       account=str(conn.account_index)))
    wait_for(lambda: not conn.live.stream.live)  # type: ignore[union-attr]
    reading = conn.get_position(SYMBOL)
    assert (reading.source, reading.quantity) == ("rest", Decimal("0.0200"))
    assert conn.stream_version() is None  # a confirmation polls REST meanwhile
    wait_for(lambda: conn.live.stream.live and conn.live.stream.connects == 2)  # type: ignore[union-attr]
    # The new snapshot holds what happened while it was down.
    buy(conn, "0.03")
    assert conn.get_position(SYMBOL).quantity == Decimal("0.0500")


def miss_next_push(simulator: Any, conn: LighterConnector) -> None:
    simulator.exchange.arm_fault(Fault(kind=FaultKind.MISS_PUSH, venue="lighter", remaining=1, op="ws",
                                       account=str(conn.account_index)))


def test_a_lost_fill_push_is_looked_up_and_the_rest_reading_corrects_the_cache(make: Factory,
                                                                                 simulator: Any) -> None:
    said: list[str] = []
    conn = make(fill_wait=1.0, on_disagreement=said.append)
    assert conn.get_position(SYMBOL).quantity == Decimal(0)
    miss_next_push(simulator, conn)
    report = buy(conn, "0.02")  # never pushed final: found by a REST lookup once fill_wait passed
    assert (report.state, report.filled) == (OrderState.FILLED, Decimal("0.0200"))
    reading = conn.get_position(SYMBOL)  # the order is unseen on the stream: REST answers
    assert (reading.source, reading.quantity) == ("rest", Decimal("0.0200"))
    assert len(said) == 1 and "REST says 0.0200" in said[0]
    reading = conn.get_position(SYMBOL)
    assert (reading.source, reading.quantity) == ("ws", Decimal("0.0200"))


def test_a_lost_liquidation_push_is_found_within_the_reconciliation_interval(make: Factory,
                                                                             simulator: Any) -> None:
    said: list[str] = []
    conn = make(reconcile_secs=0.3, on_disagreement=said.append)
    buy(conn, "0.02")
    assert conn.get_position(SYMBOL).quantity == Decimal("0.0200")
    miss_next_push(simulator, conn)
    simulator.exchange.liquidate("lighter", str(conn.account_index), SYMBOL)
    time.sleep(0.35)
    reading = conn.get_position(SYMBOL)
    assert (reading.source, reading.quantity) == ("rest", Decimal(0))
    assert len(said) == 1 and "REST says 0" in said[0]
