"""LighterConnector against the Lighter simulator over real HTTP, through lighter-sdk's real Go signer.

Each test uses fresh account indexes (the simulator creates accounts on first use), so tests do not
share positions or nonces. Connectors alive at the same time use different api key indexes: the Go
signer keeps process-global clients per api key index; production runs one
process per Lighter account.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from simulators.market import Fault, FaultKind
from tests.helpers.support import wait_until
from venues.base import OrderState, ReasonCode, Side, VenueError
from venues.lighter import native
from venues.lighter.connector import LighterConnector
from venues.lighter.credentials import LighterCredentials, generate_lighter_keys

SYMBOL = "ETH"
_accounts = itertools.count(7001)
_client_ids = itertools.count(1_000_001)

Factory = Callable[..., LighterConnector]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[int, LighterCredentials]:
    base: Path = tmp_path_factory.mktemp("lighter-keys")
    # 0-3 are the venue's own apps'; 6 is test_lighter_native's.
    return {idx: generate_lighter_keys(base / f"k{idx}.txt", idx) for idx in (4, 5, 7)}


@pytest.fixture
def make(simulator: Any, keys: dict[int, LighterCredentials]) -> Iterator[Factory]:
    made: list[LighterConnector] = []

    def factory(account_index: int | None = None, api_key_index: int = 4, **kwargs: Any) -> LighterConnector:
        index = next(_accounts) if account_index is None else account_index
        kwargs.setdefault("fill_wait", 3.0)
        conn = LighterConnector(f"lighter-{index}", simulator.urls["lighter"], simulator.urls["lighter_ws"],
                                index, keys[api_key_index], **kwargs)
        made.append(conn)
        return conn

    yield factory
    for conn in made:
        conn.close()
    simulator.exchange.clear_faults()


def arm(simulator: Any, conn: LighterConnector, kind: FaultKind, op: str, **params: Any) -> None:
    simulator.exchange.arm_fault(Fault(kind=kind, venue="lighter", remaining=1, op=op,
                                       account=str(conn.account_index), params=params))


def audit_for(simulator: Any, conn: LighterConnector, client_id: int | None = None) -> list[dict[str, Any]]:
    return [e.to_json() for e in list(simulator.exchange.audit)
            if e.venue == "lighter" and e.account == str(conn.account_index)
            and (client_id is None or e.client_id == client_id)]


def buy(conn: LighterConnector, quantity: str, **kwargs: Any) -> tuple[int, Any]:
    cid = next(_client_ids)
    return cid, conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal(quantity), **kwargs)


def test_market_rules_carry_the_initial_margin_fractions(make: Factory, simulator: Any) -> None:
    # orderBookDetails' default 500 bp (what an account trades at until its leverage is raised) and min 200 bp.
    imf = make().market_rules(SYMBOL).initial_margin
    assert imf is not None and (imf.base, imf.lowest) == (Decimal("0.05"), Decimal("0.02"))


def test_the_account_leverage_is_set_and_confirmed_by_the_accounts_own_report(make: Factory,
                                                                             simulator: Any) -> None:
    conn = make(fill_wait=1.0)
    assert conn.read_account(SYMBOL).initial_margin_fraction is None  # untouched: the market's default
    assert conn.set_initial_margin_fraction(SYMBOL, 200) == Decimal("0.02")
    assert conn.read_account(SYMBOL).initial_margin_fraction == Decimal("0.02")  # listed while flat
    # A 5xx on the send leaves the outcome open: the reads settle it (here: not executed), and the
    # venue's error is what the caller sees.
    arm(simulator, conn, FaultKind.HTTP_500, "order")
    with pytest.raises(VenueError) as failed:
        conn.set_initial_margin_fraction(SYMBOL, 300)
    assert "500" in str(failed.value)
    assert conn.read_account(SYMBOL).initial_margin_fraction == Decimal("0.02")
    assert conn.set_initial_margin_fraction(SYMBOL, 300) == Decimal("0.03")  # the nonce was resynced
    # Below the market's min_initial_margin_fraction (200 bp, 50x) nothing is signed or sent.
    nonce = conn.nonce_state()
    with pytest.raises(VenueError) as refused:
        conn.set_initial_margin_fraction(SYMBOL, 100)
    assert refused.value.reason is ReasonCode.INVALID_REQUEST and "200..10000" in str(refused.value)
    assert conn.nonce_state() == nonce


def test_market_order_reports_the_venue_fill(make: Factory, simulator: Any) -> None:
    conn = make()
    book = conn.top_of_book(SYMBOL)
    assert book.bid is not None and book.ask is not None and book.bid < book.ask
    cid, report = buy(conn, "0.05", max_slippage=0.001)
    assert (report.state, report.filled, report.requested) == (OrderState.FILLED, Decimal("0.05"), Decimal("0.05"))
    # The simulator fills at its unrounded level prices, so allow one tick below the shown ask.
    tick = conn.market_rules(SYMBOL).tick_size
    assert report.avg_price is not None and book.ask - tick <= report.avg_price <= book.ask * Decimal("1.001")
    [entry] = audit_for(simulator, conn, cid)
    assert Decimal(entry["filled"]) == report.filled and entry["side"] == "buy"
    assert conn.find_order(SYMBOL, cid) == report
    assert conn.get_position(SYMBOL).quantity == Decimal("0.05")
    assert conn.get_balance().equity is not None
    tracker = conn.orders.get(cid)
    assert tracker is not None and (tracker.state, tracker.filled) == (OrderState.FILLED, report.filled)


def test_one_loop_one_signer_one_nonce_fetch(make: Factory, simulator: Any) -> None:
    conn = make()
    assert conn.nonce_state() == "unfetched"
    buy(conn, "0.01")
    first = conn.nonce_state()
    signer = conn._signer
    for _ in range(3):
        buy(conn, "0.01")
    # Same signer, optimistic nonce counting locally: +1 per order, in step with the venue once its
    # nextNonce has caught up (it lags an accepted tx at the venue).
    assert conn._signer is signer
    assert first == "next=1" and conn.nonce_state() == "next=4"
    wait_until(lambda: venue_next_nonce(simulator, conn) == 4, timeout=5, what="the venue's nextNonce")
    assert sum(t.name == f"lighter-{conn.account}" for t in threading.enumerate()) == 1


def test_accepted_but_unconfirmed_is_not_a_fill(make: Factory, simulator: Any) -> None:
    conn = make(fill_wait=0.5, stream=False)  # the REST lookups are what this is about
    simulator.exchange.arm_fault(Fault(kind=FaultKind.HTTP_500, venue="lighter", remaining=1000, op="orders",
                                       account=str(conn.account_index)))
    cid, report = buy(conn, "0.02")
    # sendTx was accepted but no lookup succeeded: the report says so instead of claiming a fill.
    assert (report.state, report.filled) == (OrderState.SUBMITTING, Decimal(0))
    simulator.exchange.clear_faults()
    found = conn.find_order(SYMBOL, cid)
    assert found is not None and (found.state, found.filled) == (OrderState.FILLED, Decimal("0.02"))


def test_partial_fill_is_reported_as_partial(make: Factory, simulator: Any) -> None:
    conn = make()
    arm(simulator, conn, FaultKind.PARTIAL_FILL, "order", fraction="0.5")
    _, report = buy(conn, "0.1", max_slippage=0.001)
    assert (report.state, report.filled, report.requested) == (OrderState.CANCELLED, Decimal("0.05"), Decimal("0.1"))
    assert report.reason and report.reason.startswith("canceled")
    assert conn.get_position(SYMBOL).quantity == Decimal("0.05")


def test_invalid_nonce_fault_recovers_with_exactly_one_order(make: Factory, simulator: Any) -> None:
    conn = make()
    buy(conn, "0.01")
    arm(simulator, conn, FaultKind.INVALID_NONCE, "order")
    cid, report = buy(conn, "0.02")
    assert report.state is OrderState.FILLED
    assert len(audit_for(simulator, conn, cid)) == 1


def test_nonce_used_by_another_writer_resyncs_once(make: Factory, simulator: Any) -> None:
    first = make()
    second = make(first.account_index)  # same account and key: a second process on the same key
    buy(first, "0.01")
    buy(second, "0.01")  # consumes the nonce `first` expects next
    cid, report = buy(first, "0.01")
    assert report.state is OrderState.FILLED
    assert len(audit_for(simulator, first, cid)) == 1
    assert len(audit_for(simulator, first)) == 3


def test_timeout_after_accept_finds_the_order_without_resending(make: Factory, simulator: Any) -> None:
    conn = make(timeout=1.0)
    arm(simulator, conn, FaultKind.TIMEOUT_AFTER_ACCEPT, "order", seconds=2.5)
    cid, report = buy(conn, "0.03")
    assert (report.state, report.filled) == (OrderState.FILLED, Decimal("0.03"))
    assert len(audit_for(simulator, conn, cid)) == 1
    assert conn.find_order(SYMBOL, cid) == report
    # The consumed nonce was resynced: the next order goes through without an invalid nonce.
    cid2, report2 = buy(conn, "0.01")
    assert report2.state is OrderState.FILLED and len(audit_for(simulator, conn, cid2)) == 1
    assert conn.get_position(SYMBOL).quantity == Decimal("0.04")


def test_a_nonce_read_inside_the_venues_lag_does_not_reuse_an_accepted_nonce(make: Factory, simulator: Any) -> None:
    # The default simulator's nextNonce lags an accepted tx by 200 ms, as the venue's "will NOT update
    # right away". A signer that lost its count (a resync, a fresh loop) reads it inside the lag.
    conn = make()
    buy(conn, "0.01")
    lagging = venue_next_nonce(simulator, conn)
    conn._signer.forget_nonce()
    _, report = buy(conn, "0.01")
    assert report.state is OrderState.FILLED and conn.nonce_state() == "next=2"
    assert lagging == 0, "the simulator's nextNonce did not lag: the test proves nothing"
    # Two orders, two sendTx: no invalid-nonce refusal and retry.
    sends = sum(row["count"] for row in simulator.exchange.request_log("lighter")
                if row["who"] == f"account:{conn.account_index}" and row["endpoint"] == "sendTx")
    assert sends == 2 and len(audit_for(simulator, conn)) == 2


def venue_next_nonce(simulator: Any, conn: LighterConnector) -> int:
    url = f"{simulator.urls['lighter']}/api/v1/nextNonce"
    params = {"account_index": conn.account_index, "api_key_index": conn.api_key_index}
    return int(requests.get(url, params=params, timeout=5).json()["nonce"])


def test_server_error_on_send_is_unavailable_and_never_resent(make: Factory, simulator: Any) -> None:
    conn = make(fill_wait=0.5)
    buy(conn, "0.01")
    arm(simulator, conn, FaultKind.HTTP_500, "order")
    cid = next(_client_ids)
    with pytest.raises(VenueError) as err:
        conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.02"))
    assert err.value.reason is ReasonCode.UNAVAILABLE and err.value.outcome_unknown
    assert audit_for(simulator, conn, cid) == []
    # The SDK consumed a nonce the venue never saw; the connector resynced it right away.
    assert conn.nonce_state() == f"next={venue_next_nonce(simulator, conn)}"
    assert conn.find_order(SYMBOL, cid) is None  # the venue confirms it never saw it
    report = conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.02"))  # caller's retry
    assert report.state is OrderState.FILLED and len(audit_for(simulator, conn, cid)) == 1


def test_rate_limited_send_is_not_an_unknown_outcome(make: Factory, simulator: Any) -> None:
    conn = make()
    arm(simulator, conn, FaultKind.HTTP_429, "order")
    cid = next(_client_ids)
    with pytest.raises(VenueError) as err:
        conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.02"))
    assert err.value.reason is ReasonCode.RATE_LIMITED and not err.value.outcome_unknown
    assert conn.orders.get(cid).state is OrderState.FAILED
    _, report = buy(conn, "0.01")  # nonce resynced after the exception
    assert report.state is OrderState.FILLED


def test_duplicate_client_id_is_refused_once_at_the_venue(make: Factory, simulator: Any) -> None:
    conn = make()
    cid, first = buy(conn, "0.01")
    with pytest.raises(VenueError) as err:
        conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.01"))
    assert err.value.reason is ReasonCode.DUPLICATE_CLIENT_ID and err.value.code == 21728
    assert len(audit_for(simulator, conn, cid)) == 1
    assert conn.find_order(SYMBOL, cid) == first


def test_reduce_only_without_position_fails_with_nothing_filled(make: Factory) -> None:
    conn = make()
    report = conn.submit_market_order(SYMBOL, next(_client_ids), Side.SELL, Decimal("0.01"), reduce_only=True)
    assert (report.state, report.filled, report.reason) == (OrderState.FAILED, Decimal(0), "canceled-reduce-only")


def test_failed_position_read_is_unknown_not_zero(make: Factory, simulator: Any) -> None:
    conn = make()
    buy(conn, "0.02")
    arm(simulator, conn, FaultKind.HTTP_500, "position")
    reading = conn.get_position(SYMBOL)
    assert reading.quantity is None and not reading.known and "unavailable" in (reading.error or "")
    assert conn.get_position(SYMBOL).quantity == Decimal("0.02")


def test_planning_read_takes_balance_and_position_from_one_account_read(make: Factory, simulator: Any) -> None:
    conn = make()
    buy(conn, "0.03")
    read = conn.read_account(SYMBOL)
    assert read.position.quantity == conn.get_position(SYMBOL).quantity == Decimal("0.03")
    assert read.balance.collateral == conn.get_balance().collateral is not None
    assert read.top.ask == conn.top_of_book(SYMBOL).ask is not None
    # The account's own fraction on the market, in percent on the wire ("5.00": the default 20x).
    assert read.initial_margin_fraction == Decimal("0.05")
    arm(simulator, conn, FaultKind.HTTP_500, "position")
    with pytest.raises(VenueError):  # balance and position share the read: no balance, no plan
        conn.read_account(SYMBOL)


def test_failed_lookup_is_an_error_not_absent(make: Factory, simulator: Any) -> None:
    conn = make()
    cid, _ = buy(conn, "0.01")
    arm(simulator, conn, FaultKind.HTTP_500, "orders")
    with pytest.raises(VenueError) as err:
        conn.find_order(SYMBOL, cid)
    assert err.value.reason is ReasonCode.UNAVAILABLE
    assert conn.find_order(SYMBOL, next(_client_ids)) is None


def test_two_accounts_never_cross(make: Factory, simulator: Any) -> None:
    one, two = make(api_key_index=5), make(api_key_index=7)
    cid = next(_client_ids)  # the same client id in both accounts: ids are per account
    r1 = one.submit_market_order(SYMBOL, cid, Side.BUY, Decimal("0.05"))
    r2 = two.submit_market_order(SYMBOL, cid, Side.SELL, Decimal("0.03"))
    assert (r1.side, r1.filled, r2.side, r2.filled) == (Side.BUY, Decimal("0.05"), Side.SELL, Decimal("0.03"))
    assert one.get_position(SYMBOL).quantity == Decimal("0.05")
    assert two.get_position(SYMBOL).quantity == Decimal("-0.03")
    assert [e["side"] for e in audit_for(simulator, one)] == ["buy"]
    assert [e["side"] for e in audit_for(simulator, two)] == ["sell"]
    assert one.find_order(SYMBOL, cid).side is Side.BUY and two.find_order(SYMBOL, cid).side is Side.SELL


def test_flatten_ends_flat(make: Factory, simulator: Any) -> None:
    conn = make()
    buy(conn, "0.07")
    conn.submit_market_order(SYMBOL, next(_client_ids), Side.SELL, Decimal("0.12"))
    assert conn.get_position(SYMBOL).quantity == Decimal("-0.05")
    result = conn.flatten(SYMBOL, iter(_client_ids))
    assert result.flat and result.final_position.quantity == 0
    assert [o.side for o in result.orders] == [Side.BUY] and result.orders[0].reduce_only
    assert simulator.exchange.position_quantity("lighter", str(conn.account_index), SYMBOL) == 0


def _rest_limit_order(conn: LighterConnector, cid: int) -> None:
    """A resting GTT bid far below the market (28-day expiry), sent with the connector's own signer."""
    rules = conn.market_rules(SYMBOL)
    price = conn.top_of_book(SYMBOL).bid * Decimal("0.8")
    send = conn._signer.send_create_order(
        rules.market_id, cid, rules.size_to_int(Decimal("0.01")), rules.price_to_int(price), False,
        order_type=native.ORDER_TYPE_LIMIT, time_in_force=native.ORDER_TIME_IN_FORCE_GOOD_TILL_TIME,
        order_expiry=native.DEFAULT_28_DAY_ORDER_EXPIRY)
    assert conn._loop.run(send, 10)  # the venue's tx hash


def test_cancel_order_and_cancel_all(make: Factory) -> None:
    conn = make()
    first, second, third = (next(_client_ids) for _ in range(3))
    for cid in (first, second, third):
        _rest_limit_order(conn, cid)
    assert conn.find_order(SYMBOL, first).state is OrderState.OPEN
    cancelled = conn.cancel_order(SYMBOL, first)
    assert cancelled is not None and cancelled.final and cancelled.filled == 0
    assert conn.cancel_order(SYMBOL, next(_client_ids)) is None
    assert conn.cancel_all(SYMBOL) == 2
    assert all(conn.find_order(SYMBOL, cid).final for cid in (second, third))
    assert conn.cancel_all(SYMBOL) == 0


def test_bad_requests_are_refused_before_sending(make: Factory, simulator: Any) -> None:
    conn = make()
    for cid, qty, reason in [(0, "0.01", ReasonCode.INVALID_REQUEST), (2**48, "0.01", ReasonCode.INVALID_REQUEST),
                             (next(_client_ids), "0.001", ReasonCode.INVALID_REQUEST)]:
        with pytest.raises(VenueError) as err:
            conn.submit_market_order(SYMBOL, cid, Side.BUY, Decimal(qty))
        assert err.value.reason is reason
    with pytest.raises(VenueError) as err:
        conn.market_rules("DOGE")
    assert err.value.reason is ReasonCode.UNKNOWN_MARKET
    assert audit_for(simulator, conn) == []


def test_unreachable_venue(keys: dict[int, LighterCredentials]) -> None:
    conn = LighterConnector("nowhere", "http://127.0.0.1:9", None, 1, keys[4], timeout=0.5)
    try:
        assert conn.get_position(SYMBOL).quantity is None
        with pytest.raises(VenueError) as err:
            conn.get_balance()
        assert err.value.reason is ReasonCode.UNAVAILABLE
        assert "ab" * 8 not in repr(conn) and keys[4].private_key not in repr(conn)
    finally:
        conn.close()
    with pytest.raises(VenueError):
        conn.get_balance()  # closed


_CHILD = """
import json, sys
from decimal import Decimal
from pathlib import Path
from venues.base import Side
from venues.lighter.connector import LighterConnector
from venues.lighter.credentials import load_lighter_credentials
url, index, keys_file, cid = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
conn = LighterConnector("child", url, None, index, load_lighter_credentials(keys_file))
try:
    report = conn.submit_market_order("ETH", cid, Side.SELL, Decimal("0.02"))
    print(json.dumps({"report": report.to_json(), "position": str(conn.get_position("ETH").quantity)}))
finally:
    conn.close()
"""


def test_same_api_key_index_in_two_processes(make: Factory, simulator: Any, tmp_path: Path) -> None:
    """Production layout: one process per Lighter account, even when both use api key index 4."""
    here = make(api_key_index=4)
    other_index, cid = next(_accounts), next(_client_ids)
    keys_file = tmp_path / "other.txt"
    generate_lighter_keys(keys_file, 4)
    buy(here, "0.05")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _CHILD, simulator.urls["lighter"], str(other_index),
         str(keys_file), str(cid)], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["report"]["state"] == "filled" and Decimal(result["position"]) == Decimal("-0.02")
    _, report = buy(here, "0.01")  # this process still signs for its own account
    assert report.state is OrderState.FILLED
    assert here.get_position(SYMBOL).quantity == Decimal("0.06")
    assert [e.account for e in simulator.exchange.audit if e.client_id == cid] == [str(other_index)]

