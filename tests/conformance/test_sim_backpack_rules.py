"""Backpack-only rules of the simulator (profile.BackpackProfile) over real HTTP, one test per rule,
and the connector's reading of the flat-position answers."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import requests

from simulators.backpack_limits import RateLimiter
from simulators.profile import BackpackProfile, SimProfile
from tests.conformance.test_sim_backpack import ETH, Client, admin, frames, subscribe, ws_connect
from tests.conformance.test_sim_market_rules import bp_call, server
from venues.backpack import BackpackConnector
from venues.backpack.credentials import generate_backpack_keys
from venues.base import Side


def with_backpack(**rules: Any) -> SimProfile:
    return replace(SimProfile(), backpack=replace(BackpackProfile(), **rules))


def test_rate_limit_answers_429_past_the_budget() -> None:
    # Backpack's support FAQ: 2000 requests/min per subaccount, then HTTP 429 TOO_MANY_REQUESTS, no
    # Retry-After. A budget of 5 here; another key and the public endpoints have their own.
    with server(with_backpack(rate_limit=True, requests_per_minute=5)) as sim:
        client, other = Client(sim.urls["backpack"]), Client(sim.urls["backpack"])
        codes = [client.call("GET", "/api/v1/capital", "balanceQuery").status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        refused = client.call("GET", "/api/v1/position", "positionQuery")
        assert (refused.status_code, refused.json()["code"]) == (429, "TOO_MANY_REQUESTS")
        assert "Retry-After" not in refused.headers
        assert other.call("GET", "/api/v1/capital", "balanceQuery").status_code == 200
        public = [requests.get(sim.urls["backpack"] + "/api/v1/depth", params={"symbol": ETH}, timeout=5).status_code
                  for _ in range(6)]
        assert public == [200] * 5 + [429]
    assert SimProfile().backpack.rate_limit and SimProfile().backpack.requests_per_minute == 2000  # on by default
    with server(SimProfile.easy()) as sim:  # off in the easy profile
        client = Client(sim.urls["backpack"])
        assert {client.call("GET", "/api/v1/capital", "balanceQuery").status_code for _ in range(30)} == {200}


def test_rate_limit_window_slides() -> None:
    clock = [0.0]
    limiter = RateLimiter(2, clock=lambda: clock[0])
    assert [limiter.allow("k") for _ in range(3)] == [True, True, False]
    clock[0] = 60.5  # the window is 60 s
    assert limiter.allow("k")


def test_reduce_only_that_would_not_reduce_expires() -> None:
    # OpenAPI OrderExpiryReason ReduceOnlyNotReduced: accepted, expired unfilled,
    # orderAccepted then orderExpired with R on the socket, expiryReason in the history.
    with server(SimProfile()) as sim:
        client = Client(sim.urls["backpack"])
        ws = ws_connect(sim)
        try:
            subscribe(ws, client, [f"account.orderUpdate.{ETH}"])
            response = client.order(side="Ask", quantity="0.1", reduceOnly=True)
            accepted, expired = (f["data"] for f in frames(ws, 2))
        finally:
            ws.close()
        order = response.json()
        assert response.status_code == 200 and (order["status"], order["executedQuantity"]) == ("Expired", "0")
        assert (accepted["e"], expired["e"], expired["X"], expired["R"]) == (
            "orderAccepted", "orderExpired", "Expired", "ReduceOnlyNotReduced")
        assert client.history()[0]["expiryReason"] == "ReduceOnlyNotReduced" and client.position() == 0
    with server(with_backpack(reduce_only_expires=False)) as sim:  # the old 400, kept behind the switch
        refused = Client(sim.urls["backpack"]).order(side="Ask", quantity="0.1", reduceOnly=True)
        assert (refused.status_code, refused.json()["code"]) == (400, "INVALID_ORDER")


def test_flat_position_answers_and_the_connector_reads_both(tmp_path: Any) -> None:
    # The venue's spec: a flat account probably gets [] and ?symbol= with no position is 404 "Position not found";
    # no capture settles the list case, so the simulator can answer either and the connector reads both
    # as flat (venues/backpack/errors.is_no_position).
    for flat_404 in (False, True):
        with server(with_backpack(flat_position_404=flat_404)) as sim:
            client = Client(sim.urls["backpack"])
            listed = client.call("GET", "/api/v1/position", "positionQuery")
            assert (listed.status_code, listed.json()) == ((404, {"code": "RESOURCE_NOT_FOUND",
                                                                  "message": "Position not found"})
                                                           if flat_404 else (200, []))
            one = client.call("GET", "/api/v1/position", "positionQuery", {"symbol": ETH})
            assert (one.status_code, one.json()["code"]) == (404, "RESOURCE_NOT_FOUND")
            creds = generate_backpack_keys(tmp_path / f"bp-{flat_404}.txt")
            conn = BackpackConnector("bp", sim.urls["backpack"], sim.urls["backpack_ws"], creds, timeout=5.0)
            try:
                reading = conn.get_position(ETH)
                assert (reading.quantity, reading.error) == (Decimal(0), None)
                conn.submit_market_order(ETH, 7, Side.BUY, Decimal("0.01"))
                assert conn.get_position(ETH).quantity == Decimal("0.01")
            finally:
                conn.close()


def test_admin_liquidation_writes_the_venue_records() -> None:
    # The admin liquidation (kept for tests) goes through the same records as the engine's: a system order
    # (systemOrderType LiquidatePositionOnBook, OpenAPI SystemOrderType) in the order and fill histories.
    with server(SimProfile()) as sim:
        client = Client(sim.urls["backpack"])
        client.order(side="Ask", quantity="0.5")
        admin(client.base, "liquidate", {"venue": "backpack", "account": client.key, "base": "ETH"})
        assert client.position() == 0
        latest = client.history()[0]
        assert (latest["systemOrderType"], latest["side"], latest["executedQuantity"]) == (
            "LiquidatePositionOnBook", "Bid", "0.5")
        fills = bp_call(client, "/wapi/v1/history/fills", "fillHistoryQueryAll")
        assert [f["systemOrderType"] for f in fills] == ["LiquidatePositionOnBook", None]
        assert bp_call(client, "/wapi/v1/history/fills", "fillHistoryQueryAll", fillType="AllLiquidation")[0][
            "fee"] == "0"
