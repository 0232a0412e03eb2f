"""Both connectors' ``account_history`` (fills with fees, funding) against the simulators with fees and
funding on, and the parsers against the published shapes: what the cycle report's
realised PnL split rests on.

Sources: Backpack ``GET /wapi/v1/history/fills`` rows ``{tradeId, clientId: string, orderId, symbol,
side, price, quantity, fee, feeSymbol, isMaker, systemOrderType, timestamp}``
and ``GET /wapi/v1/history/funding`` (the OpenAPI FundingPayment, ``quantity`` + received); Lighter
``GET /api/v1/trades`` Trade rows (fee rates in ppm as in the fixtures
``ws_update_account_all_trades_nautilus``, omitted when zero as in ``trades_account_testnet_ccxt``)
and ``GET /api/v1/positionFunding`` (lighter-sdk 1.1.8 ``AccountApi.position_funding``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from simulators.profile import LIGHTER_PREMIUM, SimProfile
from simulators.server import SimulatorServer
from venues.backpack import BackpackConnector
from venues.backpack.credentials import generate_backpack_keys
from venues.backpack.history import parse_fill, parse_funding
from venues.base import Side
from venues.ledger import iso_utc_ms
from venues.lighter.connector import LighterConnector
from venues.lighter.credentials import generate_lighter_keys
from venues.lighter.history import parse_trade, read_history

# Trades as published, copied from tests/fixtures/lighter.json so the suite is self-contained.
# ws_update_account_all_trades_nautilus (account 1234) and trades_account_testnet_ccxt (account 1077).
NAUTILUS_TRADE: dict[str, Any] = json.loads("""{
    "trade_id": 19209006902, "trade_id_str": "19209006902", "tx_hash": "000000128b1ee814", "type": "trade",
    "market_id": 0, "size": "0.1336", "price": "2352.73", "usd_amount": "314.324728",
    "ask_id": 281476929510102, "ask_id_str": "281476929510102", "bid_id": 562947905631053,
    "bid_id_str": "562947905631053", "ask_client_id": 0, "ask_client_id_str": "0",
    "bid_client_id": 7001011966, "bid_client_id_str": "7001011966", "ask_account_id": 91249,
    "bid_account_id": 1234, "is_maker_ask": true, "block_height": 227535535, "timestamp": 1777941384181,
    "taker_fee": 196, "maker_fee": 28, "transaction_time": 1777941384181586
}""")
TESTNET_TRADE: dict[str, Any] = json.loads("""{
    "trade_id": 17609,
    "tx_hash": "99ffeaa3899fbaa51043840ddf762fd18c182a33b5125092105bee57af11fab04edf5fd90e969abd",
    "type": "trade", "market_id": 0, "size": "10.2304", "price": "2958.75", "usd_amount": "30269.196000",
    "ask_id": 281474977339869, "bid_id": 562949952870533, "ask_client_id": 0, "bid_client_id": 0,
    "ask_account_id": 20, "bid_account_id": 1077, "is_maker_ask": true, "block_height": 102070,
    "timestamp": 1766386112741, "taker_position_size_before": "0.0000",
    "taker_entry_quote_before": "0.000000", "taker_position_sign_changed": true,
    "maker_position_size_before": "-1856.8547", "maker_entry_quote_before": "5491685.069325",
    "maker_initial_margin_fraction_before": 500
}""")
KEY_INDEX = 8  # not used by the other conformance modules (the Go signer's clients are per key index)


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    base = SimProfile()
    profile = replace(base, fees=replace(base.fees, enabled=True, lighter=LIGHTER_PREMIUM),
                      funding=replace(base.funding, enabled=True, interval_secs=0.3))
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None,
                         profile=profile) as server:
        yield server


def funded_round_trip(conn: Any, symbol: str, sim: SimulatorServer, venue: str, key: str,
                      base_ids: int) -> tuple[int, int]:
    since = int(time.time() * 1000)
    conn.submit_market_order(symbol, base_ids, Side.BUY, Decimal("1"))
    wait_for(lambda: [p for p in list(sim.exchange.funding_log) if p.venue == venue and p.account == key])
    conn.submit_market_order(symbol, base_ids + 1, Side.SELL, Decimal("1"), reduce_only=True)
    return since, int(time.time() * 1000)


def test_backpack_history_has_the_fills_with_fees_and_the_funding(sim: SimulatorServer, tmp_path: Path) -> None:
    creds = generate_backpack_keys(tmp_path / "bp.txt")
    conn = BackpackConnector("bp-history", sim.urls["backpack"], None, creds)
    try:
        since, until = funded_round_trip(conn, "ETH_USDC_PERP", sim, "backpack", creds.api_key, 501)
        history = conn.account_history("ETH_USDC_PERP", since, until)
        own = [f for f in history.fills if f.client_id in (501, 502)]
        assert [(f.client_id, f.side, f.quantity) for f in own] == [(501, Side.BUY, Decimal(1)),
                                                                    (502, Side.SELL, Decimal(1))]
        for f in own:  # Tier 1 taker, 0.05 % of the notional, in USDC
            assert abs(f.fee - f.quantity * f.price * Decimal("0.0005")) < Decimal("0.000001"), f  # type: ignore[operator]
        assert history.funding and all(p.amount < 0 for p in history.funding)  # a long pays a positive rate
        assert conn.account_history("ETH_USDC_PERP", until + 1, until + 2).fills == ()
    finally:
        conn.close()


def test_lighter_history_has_the_trades_with_fees_and_the_funding(sim: SimulatorServer, tmp_path: Path) -> None:
    creds = generate_lighter_keys(tmp_path / "l.txt", KEY_INDEX)
    conn = LighterConnector("l-history", sim.urls["lighter"], sim.urls["lighter_ws"], 7301, creds, fill_wait=3.0)
    try:
        since, until = funded_round_trip(conn, "ETH", sim, "lighter", "7301", 601)
        history = conn.account_history("ETH", since, until)
        own = [f for f in history.fills if f.client_id in (601, 602)]
        assert [(f.client_id, f.side, f.quantity) for f in own] == [(601, Side.BUY, Decimal(1)),
                                                                    (602, Side.SELL, Decimal(1))]
        for f in own:  # premium taker 0.028 % = 280 ppm of usd_amount
            assert f.notional is not None and f.fee == f.notional * Decimal(280) / Decimal(10**6), f
        assert history.funding and all(p.amount < 0 for p in history.funding)
        # A partial liquidation is the venue's trade of the closed part, with no client id of ours.
        conn.submit_market_order("ETH", 603, Side.BUY, Decimal("0.01"))
        sim.exchange.liquidate("lighter", "7301", "ETH", leave=Decimal("0.003"))
        later = conn.account_history("ETH", until, int(time.time() * 1000) + 1000)
        closed = [f for f in later.fills if f.system]
        assert [(f.side, f.quantity, f.client_id) for f in closed] == [(Side.SELL, Decimal("0.0070"), None)]
        assert sim.exchange.position_quantity("lighter", "7301", "ETH") == Decimal("0.003")
    finally:
        conn.close()


def test_lighter_trade_fixtures_parse_with_the_accounts_own_side_and_fee() -> None:
    trade = NAUTILUS_TRADE
    bid = parse_trade(trade, 1234)  # the bid, and the taker (is_maker_ask): 196 ppm of usd_amount
    assert (bid.side, bid.client_id, bid.quantity, bid.system) == (Side.BUY, 7001011966, Decimal("0.1336"), False)
    assert bid.fee == Decimal("314.324728") * 196 / Decimal(10**6)
    ask = parse_trade(trade, 91249)  # the resting ask: the maker rate, 28 ppm
    assert (ask.side, ask.client_id, ask.fee) == (Side.SELL, None, Decimal("314.324728") * 28 / Decimal(10**6))
    assert parse_trade(TESTNET_TRADE, 1077).fee == 0  # no fee fields: the venue omits a zero rate


def test_backpack_fill_and_funding_rows_parse_as_documented() -> None:
    fill = parse_fill({"tradeId": 7, "clientId": "4294967295", "orderId": "11", "symbol": "ETH_USDC_PERP",
                       "side": "Ask", "price": "3000.5", "quantity": "0.01", "fee": "0.015", "feeSymbol": "USDC",
                       "isMaker": False, "systemOrderType": None, "timestamp": "2025-04-02T12:57:56.809"}, "USDC")
    assert (fill.client_id, fill.side, fill.fee, fill.ts_ms) == (4294967295, Side.SELL, Decimal("0.015"),
                                                                 iso_utc_ms("2025-04-02T12:57:56.809"))
    assert fill.ts_ms == 1743598676809
    other = parse_fill({"clientId": None, "side": "Bid", "price": "1", "quantity": "1", "fee": "0.1",
                        "feeSymbol": "BP", "systemOrderType": "LiquidatePositionOnBook",
                        "timestamp": "2025-04-02T12:57:56"}, "USDC")
    assert other.fee is None and other.system and other.client_id is None  # a fee in another asset is unknown
    payment = parse_funding({"fundingRate": "0.0000125", "intervalEndTimestamp": "2025-07-22T00:00:00",
                             "quantity": "-0.375", "subaccountId": None, "symbol": "ETH_USDC_PERP", "userId": 1})
    assert (payment.amount, payment.ts_ms) == (Decimal("-0.375"), 1753142400000)


def test_lighter_trades_are_paged_newest_first_back_to_the_windows_start() -> None:
    # Trades(next_cursor) pages: follow the cursor until a page reaches past the window's start.
    def trade(n: int) -> dict[str, Any]:
        return {**TESTNET_TRADE, "trade_id": n, "timestamp": 1000 * n, "bid_client_id": n}

    pages = {None: [trade(9), trade(8)], "2": [trade(7), trade(3)], "4": [trade(2), trade(1)]}
    asked: list[Any] = []

    async def get(path: str, params: dict[str, Any]) -> Any:
        asked.append((path, params.get("cursor")))
        if path == "/api/v1/positionFunding":
            return {"code": 200, "position_fundings": []}
        cursor = params.get("cursor")
        return {"code": 200, "trades": pages[cursor], "next_cursor": {None: "2", "2": "4"}.get(cursor)}

    history = asyncio.run(read_history(get, "l1", 1077, 0, "ETH", 4000, 8000))
    assert [f.client_id for f in history.fills] == [7, 8]  # oldest first, inside the window only
    assert ("/api/v1/trades", "4") not in asked  # the page reaching 3 s was the last one asked
