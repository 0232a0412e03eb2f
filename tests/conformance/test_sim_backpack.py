"""The Backpack simulator over real HTTP and WebSocket, signed independently of any connector code.

Signing here follows the venue's signing rules with pynacl directly, so a simulator that verified
something else than the documented string would fail these tests.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from simulators.backpack_auth import ApiError, Authenticator
from simulators.server import SimulatorServer

ETH = "ETH_USDC_PERP"
RFC_SECRET = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC_API_KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
DOC_TS = 1735689600000
DOC_BODY = {"symbol": ETH, "side": "Bid", "orderType": "Market", "quantity": "0.01", "clientId": 12345,
            "reduceOnly": False}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")
# Key sets of the captured shapes in tests/fixtures/backpack.json.
MARKET_ORDER_KEYS = {
    "clientId", "createdAt", "executedQuantity", "executedQuoteQuantity", "id", "orderType", "quantity",
    "quoteQuantity", "reduceOnly", "relatedOrderId", "selfTradePrevention", "side", "status", "stopLossLimitPrice",
    "stopLossTriggerBy", "stopLossTriggerPrice", "strategyId", "symbol", "takeProfitLimitPrice",
    "takeProfitTriggerBy", "takeProfitTriggerPrice", "timeInForce", "triggerBy", "triggerPrice", "triggerQuantity",
    "triggeredAt"}
LIMIT_ORDER_KEYS = MARKET_ORDER_KEYS - {"quoteQuantity"} | {"postOnly", "price"}
HISTORY_LIMIT_KEYS = LIMIT_ORDER_KEYS - {"reduceOnly", "relatedOrderId", "triggeredAt"} | {
    "expiryReason", "quoteQuantity", "systemOrderType"}
POSITION_KEYS = {
    "breakEvenPrice", "cumulativeFundingPayment", "cumulativeInterest", "entryPrice", "estLiquidationPrice", "imf",
    "imfFunction", "markPrice", "mmf", "mmfFunction", "netCost", "netExposureNotional", "netExposureQuantity",
    "netQuantity", "pnlRealized", "pnlUnrealized", "positionId", "subaccountId", "symbol", "userId"}
MARKET_KEYS = {
    "baseSymbol", "createdAt", "filters", "fundingInterval", "fundingRateLowerBound", "fundingRateUpperBound",
    "imfFunction", "marketType", "mmfFunction", "openInterestLimit", "orderBookState", "positionLimitWeight",
    "quoteSymbol", "symbol", "visible"}
WS_POSITION_KEYS = {"B", "E", "M", "P", "Q", "T", "b", "f", "i", "l", "m", "n", "p", "q", "s"}


# ---- independent signing ------------------------------------------------
def render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def signing_string(instruction: str, params: dict[str, Any], ts: int, window: int = 5000) -> str:
    pairs = [f"{k}={render(v)}" for k, v in sorted(params.items())]
    return "&".join([f"instruction={instruction}", *pairs, f"timestamp={ts}", f"window={window}"])


def sign(sk: SigningKey, message: str) -> str:
    return base64.b64encode(sk.sign(message.encode()).signature).decode()


def api_key(sk: SigningKey) -> str:
    return base64.b64encode(bytes(sk.verify_key)).decode()


def now_ms() -> int:
    return int(time.time() * 1000)


class Client:
    """A minimal Backpack client: requests + pynacl, nothing from venues/backpack."""

    def __init__(self, base: str, sk: SigningKey | None = None) -> None:
        self.base = base
        self.sk = sk or SigningKey.generate()
        self.key = api_key(self.sk)
        self.http = requests.Session()

    def headers(self, instruction: str, params: dict[str, Any], ts: int | None = None,
                window: int = 5000) -> dict[str, str]:
        ts = now_ms() if ts is None else ts
        return {"X-API-Key": self.key, "X-Signature": sign(self.sk, signing_string(instruction, params, ts, window)),
                "X-Timestamp": str(ts), "X-Window": str(window)}

    def call(self, method: str, path: str, instruction: str, params: dict[str, Any] | None = None,
             timeout: float = 5.0, **kw: Any) -> requests.Response:
        params = params or {}
        headers = self.headers(instruction, params, **kw)
        if method == "GET":
            return self.http.get(self.base + path, params=params, headers=headers, timeout=timeout)
        return self.http.request(method, self.base + path, json=params, headers=headers, timeout=timeout)

    def order(self, timeout: float = 5.0, ts: int | None = None, window: int = 5000,
              **fields: Any) -> requests.Response:
        body = {"symbol": ETH, "orderType": "Market", **fields}
        return self.call("POST", "/api/v1/order", "orderExecute", body, timeout=timeout, ts=ts, window=window)

    def position(self) -> Decimal:
        rows = self.call("GET", "/api/v1/position", "positionQuery").json()
        return sum((Decimal(r["netQuantity"]) for r in rows if r["symbol"] == ETH), Decimal(0))

    def history(self, **query: Any) -> list[dict[str, Any]]:
        response = self.call("GET", "/wapi/v1/history/orders", "orderHistoryQueryAll", query)
        assert response.status_code == 200, response.text
        return response.json()


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None) as server:
        yield server


@pytest.fixture()
def url(sim: SimulatorServer) -> Iterator[str]:
    base = sim.urls["backpack"]
    yield base
    requests.post(base + "/_sim/faults/clear", timeout=5)
    requests.post(base + "/_sim/latency", json={"ms": 0}, timeout=5)
    requests.post(base + "/_sim/price", json={"base": "ETH", "price": "3000"}, timeout=5)


@pytest.fixture()
def client(url: str) -> Client:
    return Client(url)


def admin(url: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{url}/_sim/{route}", json=body, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def audit(url: str, account: str) -> list[dict[str, Any]]:
    return requests.get(f"{url}/_sim/audit", params={"venue": "backpack", "account": account},
                        timeout=5).json()["entries"]


# ---- signing -----------------------------------------------------------------------------------
def test_worked_example_signature_vectors() -> None:
    sk = SigningKey(base64.b64decode(RFC_SECRET))
    assert api_key(sk) == RFC_API_KEY
    message = signing_string("orderExecute", DOC_BODY, DOC_TS)
    assert message == ("instruction=orderExecute&clientId=12345&orderType=Market&quantity=0.01&reduceOnly=false"
                       "&side=Bid&symbol=ETH_USDC_PERP&timestamp=1735689600000&window=5000")
    assert sign(sk, message) == ("fgfu7KKU2ii9b/70bqGpci6Wy5rz8QyHZJKz9Xk74zlxz8QSf95APMB3y9oZ+rqJCmUJ//Zao+CI90wau"
                                 "zuoDg==")
    assert sign(sk, signing_string("orderCancel", {"clientId": 12345, "symbol": ETH}, DOC_TS)) == (
        "bAXDeoJ9qeWRsA45beBsmKwCF5mIpB4lps5SAPrg4kQB9TgUZesvcXmn2Y8lydGgOR/ZYc0ph/hY9Q6bYnwnAQ==")
    assert sign(sk, signing_string("positionQuery", {}, DOC_TS)) == (
        "LLRTTnQTh0YVCOknIlSHZEDzkYcyGdhOPb+FqqvQSud7ugDyoF7dnpibfe+guFtK7u+vAJz8xzaloAmRyk82BQ==")
    assert sign(sk, signing_string("subscribe", {}, DOC_TS)) == (
        "MfVcQugEnzadqBo8bbC8b3PSPUKtItVtXx4cLzK/9HyLtHv6jyMlaNe4XfBShN8wG8FaMmSXJRZ4Z4PFVAbYCA==")


def test_simulator_verifies_the_worked_example_at_its_own_time() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict({
        "x-api-key": RFC_API_KEY, "X-SIGNATURE": "fgfu7KKU2ii9b/70bqGpci6Wy5rz8QyHZJKz9Xk74zlxz8QSf95APMB3y9oZ+rqJ"
        "CmUJ//Zao+CI90wauzuoDg==", "x-timestamp": str(DOC_TS)}))  # no X-Window: 5000 is still signed
    auth = Authenticator()
    assert auth.authenticate(headers, "orderExecute", DOC_BODY.items(), now_ms=DOC_TS + 1000) == RFC_API_KEY
    with pytest.raises(ApiError, match="Invalid signature"):
        auth.authenticate(headers, "orderExecute", {**DOC_BODY, "quantity": "0.02"}.items(), now_ms=DOC_TS + 1000)


def test_independently_signed_order_is_accepted_and_fills(url: str) -> None:
    client = Client(url, SigningKey(base64.b64decode(RFC_SECRET)))
    before = client.position()
    response = client.order(**{k: v for k, v in DOC_BODY.items() if k != "symbol"})
    assert response.status_code == 200, response.text
    order = response.json()
    assert set(order) == MARKET_ORDER_KEYS
    assert order["status"] == "Filled" and order["clientId"] == 12345 and order["orderType"] == "Market"
    assert Decimal(order["executedQuantity"]) == Decimal("0.01") and isinstance(order["createdAt"], int)
    assert Decimal(order["executedQuoteQuantity"]) > 0 and order["reduceOnly"] is False
    assert order["quoteQuantity"] is None and order["triggerPrice"] is None
    assert client.position() == before + Decimal("0.01")
    entry = [e for e in audit(url, RFC_API_KEY) if e["order_id"] == order["id"]]
    assert entry and entry[0]["client_id"] == 12345 and entry[0]["status"] == "Filled"


def test_new_api_key_opens_an_account_with_starting_collateral(client: Client) -> None:
    response = client.call("GET", "/api/v1/capital/collateral", "collateralQuery")
    body = response.json()
    assert response.status_code == 200
    assert Decimal(body["netEquity"]) == Decimal(10000) and body["marginFraction"] is None
    assert body["collateral"][0]["symbol"] == "USDC" and set(body) >= {"netEquityAvailable", "pnlUnrealized"}
    assert client.call("GET", "/api/v1/capital", "balanceQuery").json()["USDC"]["available"] == "10000"
    assert client.call("GET", "/api/v1/position", "positionQuery").json() == []


def test_tampered_signature_and_tampered_body_are_rejected(client: Client) -> None:
    body = {"symbol": ETH, "side": "Bid", "orderType": "Market", "quantity": "0.01"}
    headers = client.headers("orderExecute", body)
    sig = bytearray(base64.b64decode(headers["X-Signature"]))
    sig[0] ^= 1
    bad = {**headers, "X-Signature": base64.b64encode(bytes(sig)).decode()}
    for h, payload in ((bad, body), (headers, {**body, "quantity": "0.02"})):
        response = client.http.post(client.base + "/api/v1/order", json=payload, headers=h, timeout=5)
        assert response.status_code == 401
        assert response.json() == {"code": "INVALID_CLIENT_REQUEST", "message": "Invalid signature"}
    assert audit(client.base, client.key) == []


def test_expired_window_and_oversized_window(client: Client) -> None:
    response = client.order(side="Bid", quantity="0.01", ts=now_ms() - 6000)
    assert response.status_code == 401
    assert response.json() == {"code": "INVALID_CLIENT_REQUEST", "message": "Request has expired"}
    assert client.order(side="Bid", quantity="0.01", ts=now_ms() - 6000, window=10000).status_code == 200
    assert client.order(side="Bid", quantity="0.01", window=60001).status_code == 400


@pytest.mark.parametrize("client_id", [2**32, -1, "12345", 1.5, True])
def test_bad_client_id_is_a_plain_text_400(client: Client, client_id: Any) -> None:
    response = client.order(side="Bid", quantity="0.01", clientId=client_id)
    assert response.status_code == 400
    assert response.text.startswith("parse request payload error:") and "OrderExecutePayload" in response.text
    assert audit(client.base, client.key) == []


def test_off_step_quantity_and_missing_quantity(client: Client) -> None:
    response = client.order(side="Bid", quantity="0.00001")
    assert (response.status_code, response.json()) == (
        400, {"code": "INVALID_CLIENT_REQUEST", "message": "Quantity decimal too long"})
    response = client.order(side="Bid")
    assert response.json()["message"] == "Market orders must specify a `quantity` or `quoteQuantity`"


def test_reduce_only_that_would_increase_expires(client: Client) -> None:
    # OpenAPI OrderExpiryReason ReduceOnlyNotReduced: accepted, expired, nothing filled (not a 400).
    flat = client.order(side="Ask", quantity="0.01", reduceOnly=True)
    assert (flat.status_code, flat.json()["status"], flat.json()["executedQuantity"]) == (200, "Expired", "0")
    assert client.order(side="Bid", quantity="0.02").status_code == 200
    same_side = client.order(side="Bid", quantity="0.01", reduceOnly=True)
    assert (same_side.status_code, same_side.json()["status"]) == (200, "Expired")
    assert client.position() == Decimal("0.02")
    reduce = client.order(side="Ask", quantity="0.02", reduceOnly=True)
    assert reduce.status_code == 200 and reduce.json()["status"] == "Filled"
    assert client.position() == 0
    assert [e["status"] for e in audit(client.base, client.key)] == ["Expired", "Filled", "Expired", "Filled"]
    reasons = {h["id"]: h["expiryReason"] for h in client.history()}
    assert reasons[flat.json()["id"]] == reasons[same_side.json()["id"]] == "ReduceOnlyNotReduced"


def test_insufficient_liquidity_expires_with_partial_execution(client: Client) -> None:
    response = client.order(side="Bid", quantity="120", clientId=77)  # the book holds 100 ETH a side
    order = response.json()
    assert response.status_code == 200 and order["status"] == "Expired"
    assert Decimal(order["executedQuantity"]) == 100 and Decimal(order["quantity"]) == 120
    assert client.history()[0]["expiryReason"] == "InsufficientLiquidity"


def test_quote_quantity_market_order(client: Client) -> None:
    order = client.order(side="Bid", quoteQuantity="300").json()
    assert order["status"] == "Filled" and order["quoteQuantity"] == "300"
    assert Decimal(order["executedQuoteQuantity"]) <= 300 and Decimal(order["executedQuantity"]) > 0


def test_depth_ordering_and_limit(url: str) -> None:
    body = requests.get(url + "/api/v1/depth", params={"symbol": ETH, "limit": 5}, timeout=5).json()
    asks = [Decimal(p) for p, _ in body["asks"]]
    bids = [Decimal(p) for p, _ in body["bids"]]
    assert len(asks) == len(bids) == 5
    assert asks == sorted(asks) and bids == sorted(bids) and bids[-1] < asks[0]
    assert isinstance(body["lastUpdateId"], str) and body["timestamp"] > 10**15
    full = requests.get(url + "/api/v1/depth", params={"symbol": ETH}, timeout=5).json()
    assert max(Decimal(p) for p, _ in full["bids"]) == Decimal(full["bids"][-1][0]) == bids[-1]
    bad = requests.get(url + "/api/v1/depth", params={"symbol": ETH, "limit": 7}, timeout=5)
    assert bad.status_code == 400 and bad.text == (
        'failed to parse parameter `limit`: failed to parse "DepthLimit": Expect a valid enumeration value.')
    unknown = requests.get(url + "/api/v1/depth", params={"symbol": "DOGE_USDC_PERP"}, timeout=5)
    assert unknown.json() == {"code": "INVALID_CLIENT_REQUEST", "message": "Invalid market symbol"}


def test_public_endpoints(url: str) -> None:
    markets = {m["symbol"]: m for m in requests.get(url + "/api/v1/markets", timeout=5).json()}
    eth, btc = markets[ETH], markets["BTC_USDC_PERP"]
    assert set(eth) == MARKET_KEYS and eth["marketType"] == "PERP"
    assert eth["filters"]["price"]["tickSize"] == "0.01" and eth["filters"]["quantity"]["stepSize"] == "0.0001"
    assert eth["filters"]["quantity"]["minQuantity"] == "0.0001"
    assert btc["filters"]["price"]["tickSize"] == "0.1" and btc["filters"]["quantity"]["stepSize"] == "0.00001"
    assert requests.get(url + "/api/v1/ping", timeout=5).text == "pong"
    assert abs(int(requests.get(url + "/api/v1/time", timeout=5).text) - now_ms()) < 5000
    assert requests.get(url + "/api/v1/status", timeout=5).json() == {"message": None, "status": "Ok"}
    ticker = requests.get(url + "/api/v1/ticker", params={"symbol": ETH}, timeout=5).json()
    assert all(isinstance(v, str) for v in ticker.values()) and ticker["symbol"] == ETH
    marks = requests.get(url + "/api/v1/markPrices", params={"symbol": ETH}, timeout=5).json()
    assert marks[0]["markPrice"] == "3000" and isinstance(marks[0]["nextFundingTimestamp"], int)
    missing = requests.get(url + "/api/v1/nothing", timeout=5)
    assert (missing.status_code, missing.text) == (404, "not found")


def test_resting_limit_query_cancel_and_history(client: Client) -> None:
    market = client.order(side="Bid", quantity="0.01", clientId=501).json()
    limit = client.order(orderType="Limit", side="Bid", quantity="0.01", price="2900", clientId=502).json()
    assert set(limit) == LIMIT_ORDER_KEYS and limit["status"] == "New" and limit["executedQuantity"] == "0"
    query = {"symbol": ETH, "clientId": 501}
    gone = client.call("GET", "/api/v1/order", "orderQuery", query)
    assert (gone.status_code, gone.json()) == (404, {"code": "RESOURCE_NOT_FOUND", "message": "Not Found"})
    resting = client.call("GET", "/api/v1/order", "orderQuery", {"symbol": ETH, "clientId": 502})
    assert resting.status_code == 200 and resting.json()["id"] == limit["id"]
    assert [o["id"] for o in client.call("GET", "/api/v1/orders", "orderQueryAll").json()] == [limit["id"]]
    cancel = client.call("DELETE", "/api/v1/order", "orderCancel", {"symbol": ETH, "orderId": limit["id"]})
    assert cancel.json()["status"] == "Cancelled"
    again = client.call("DELETE", "/api/v1/order", "orderCancel", {"symbol": ETH, "orderId": limit["id"]})
    assert again.json() == {"code": "INVALID_CLIENT_REQUEST", "message": "Order not found"}
    history = client.history()
    assert [(h["id"], h["status"], h["clientId"]) for h in history] == [
        (limit["id"], "Cancelled", 502), (market["id"], "Filled", 501)]
    assert set(history[0]) == HISTORY_LIMIT_KEYS and ISO_MS.match(history[1]["createdAt"])
    assert history[1]["executedQuantity"] == market["executedQuantity"]
    assert history[1]["executedQuoteQuantity"] == market["executedQuoteQuantity"]
    assert [h["id"] for h in client.history(limit=1, offset=1)] == [market["id"]]
    assert client.history(symbol="BTC_USDC_PERP") == []
    fills = client.call("GET", "/wapi/v1/history/fills", "fillHistoryQueryAll").json()
    assert [(f["orderId"], f["clientId"]) for f in fills] == [(market["id"], "501")]
    assert ISO_MS.match(fills[0]["timestamp"])


def test_crossing_post_only_and_crossing_limit(client: Client) -> None:
    post = client.order(orderType="Limit", side="Bid", quantity="0.01", price="3100", postOnly=True)
    assert post.json() == {"code": "INVALID_ORDER", "message": "Order would immediately match and take"}
    taker = client.order(orderType="Limit", side="Bid", quantity="0.01", price="3100").json()
    assert taker["status"] == "Filled" and client.position() == Decimal("0.01")


def test_time_in_force_and_duplicate_open_client_id(client: Client) -> None:
    ioc = client.order(orderType="Limit", side="Bid", quantity="0.01", price="2900", timeInForce="IOC").json()
    assert (ioc["status"], ioc["executedQuantity"]) == ("Expired", "0")
    fok = client.order(orderType="Limit", side="Bid", quantity="50", price="3001", timeInForce="FOK").json()
    assert (fok["status"], fok["executedQuantity"]) == ("Expired", "0")  # only 10 ETH rest at or under 3001
    assert [h["expiryReason"] for h in client.history()] == ["FillOrKill", "ImmediateOrCancel"]
    assert client.order(orderType="Limit", side="Bid", quantity="0.01", price="2900", clientId=31).status_code == 200
    dup = client.order(orderType="Limit", side="Bid", quantity="0.01", price="2901", clientId=31)
    assert dup.json() == {"code": "INVALID_ORDER", "message": "Order with client ID already exists: 31"}
    both = client.call("GET", "/api/v1/order", "orderQuery", {"symbol": ETH, "clientId": 31, "orderId": "1"})
    assert (both.status_code, both.json()["code"]) == (400, "INVALID_CLIENT_REQUEST")
    cancelled = client.call("DELETE", "/api/v1/orders", "orderCancelAll", {"symbol": ETH}).json()
    assert [o["clientId"] for o in cancelled] == [31] and cancelled[0]["status"] == "Cancelled"


def test_limit_ioc_fills_up_to_its_price_and_expires_the_rest(client: Client) -> None:
    # timeInForce IOC: the order ends Expired keeping its executedQuantity, the history adds expiryReason
    # ImmediateOrCancel and the socket reports Expired. The hedge's price-capped orders rely on this to
    # never rest beyond their cap. Asks rest 5 ETH a level at 3000.60, 3000.90, 3001.20, ...
    body = client.order(orderType="Limit", side="Bid", quantity="50", price="3001.20", timeInForce="IOC",
                        clientId=77).json()
    assert set(body) == LIMIT_ORDER_KEYS and (body["status"], body["timeInForce"]) == ("Expired", "IOC")
    assert Decimal(body["executedQuantity"]) == 15 and Decimal(body["quantity"]) == 50
    assert Decimal(body["executedQuoteQuantity"]) == 5 * (Decimal("3000.6") + Decimal("3000.9") + Decimal("3001.2"))
    assert client.position() == 15
    [row] = client.history()
    assert set(row) == HISTORY_LIMIT_KEYS and (row["status"], row["expiryReason"]) == ("Expired", "ImmediateOrCancel")
    # Reduce-only, as the exit sends it: bids rest at 2999.40, 2999.10, ...; only the first is at or above the cap.
    sell = client.order(orderType="Limit", side="Ask", quantity="50", price="2999.40", timeInForce="IOC",
                        reduceOnly=True, clientId=78).json()
    assert (sell["status"], Decimal(sell["executedQuantity"]), sell["reduceOnly"]) == ("Expired", 5, True)
    assert client.position() == 10
    assert [h["expiryReason"] for h in client.history()] == ["ImmediateOrCancel", "ImmediateOrCancel"]


def test_admin_depth_thins_one_venue_book_and_resets(url: str, client: Client) -> None:
    def asks(venue_url: str) -> list[list[str]]:
        return requests.get(venue_url + "/api/v1/depth", params={"symbol": ETH}, timeout=5).json()["asks"]

    try:
        shown = admin(url, "depth", {"venue": "lighter", "levels": 3, "level_size": "0.5"})
        assert shown["depth"]["levels"] == "3" and shown["depth"]["level_size"] == "0.5"
        assert len(asks(url)) == 20  # Backpack's book is untouched
        admin(url, "depth", {"venue": "backpack", "levels": 2, "level_size": "1"})
        assert [Decimal(q) for _, q in asks(url)] == [1, 1]
        ioc = client.order(orderType="Limit", side="Bid", quantity="5", price="3100", timeInForce="IOC").json()
        assert (ioc["status"], Decimal(ioc["executedQuantity"])) == ("Expired", 2)  # the book ends after 2 ETH
        response = requests.post(url + "/_sim/depth", json={"venue": "lighter", "levels": 0}, timeout=5)
        assert response.status_code == 400
    finally:
        admin(url, "depth", {"reset": True})
    assert len(asks(url)) == 20


def test_admin_collateral_limits_margin(url: str, client: Client) -> None:
    admin(url, "collateral", {"venue": "backpack", "account": client.key, "amount": "10"})
    response = client.order(side="Bid", quantity="1")  # 3000 notional on 10 USDC is beyond 50x
    assert (response.status_code, response.json()["code"]) == (400, "INSUFFICIENT_MARGIN")
    assert client.history() == [] and client.position() == 0
    body = client.call("GET", "/api/v1/capital/collateral", "collateralQuery").json()
    assert Decimal(body["netEquity"]) == 10


def test_resting_limit_fills_when_price_crosses(url: str, client: Client) -> None:
    order = client.order(orderType="Limit", side="Ask", quantity="0.01", price="3050", clientId=9).json()
    assert order["status"] == "New"
    admin(url, "price", {"base": "ETH", "price": "3100"})
    deadline = time.monotonic() + 3
    while client.position() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.position() == Decimal("-0.01")
    assert client.history()[0]["status"] == "Filled"


def test_position_shape_and_symbol_filter(client: Client) -> None:
    client.order(side="Ask", quantity="0.05")
    rows = client.call("GET", "/api/v1/position", "positionQuery", {"symbol": ETH}).json()
    assert len(rows) == 1 and set(rows[0]) == POSITION_KEYS
    assert rows[0]["netQuantity"] == "-0.05" and rows[0]["netExposureQuantity"] == "0.05"
    assert isinstance(rows[0]["positionId"], str) and isinstance(rows[0]["userId"], int)
    none = client.call("GET", "/api/v1/position", "positionQuery", {"symbol": "BTC_USDC_PERP"})
    assert none.status_code == 404 and none.json()["code"] == "RESOURCE_NOT_FOUND"


def test_malformed_body_is_plain_text(client: Client) -> None:
    headers = client.headers("orderExecute", {})
    response = client.http.post(client.base + "/api/v1/order", data=b"{not json", headers=headers, timeout=5)
    assert response.status_code == 400 and response.text.startswith("parse request payload error")
    listed = client.http.post(client.base + "/api/v1/order", data=b"[1]", headers=headers, timeout=5)
    assert listed.text == 'parse request payload error: Expected input type "OrderExecutePayload", found [1]'
    symbol = client.order(side="Bid", quantity="0.01", symbol="NOPE")
    assert symbol.text == ('parse request payload error: failed to parse "MarketSymbol": Invalid market symbol '
                           '(occurred while parsing "OrderExecutePayload")')


def test_latency_is_added(url: str, client: Client) -> None:
    admin(url, "latency", {"ms": 80})
    start = time.monotonic()
    assert client.order(side="Bid", quantity="0.01").status_code == 200
    assert time.monotonic() - start >= 0.08


# ---- faults ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "status", "code"), [("http_429", 429, "TOO_MANY_REQUESTS"),
                                                      ("http_500", 500, "SERVER_ERROR")])
def test_http_faults(url: str, client: Client, kind: str, status: int, code: str) -> None:
    other = Client(url)
    admin(url, "fault", {"venue": "backpack", "kind": kind, "op": "order", "account": client.key})
    assert other.order(side="Bid", quantity="0.01").status_code == 200  # scoped to client's account
    response = client.order(side="Bid", quantity="0.01", clientId=1)
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert client.history() == [] and audit(url, client.key) == []
    assert client.order(side="Bid", quantity="0.01", clientId=1).status_code == 200


def test_hang_fault(url: str, client: Client) -> None:
    admin(url, "fault", {"venue": "backpack", "kind": "hang", "op": "position", "params": {"seconds": 0.6}})
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.call("GET", "/api/v1/position", "positionQuery", timeout=0.2)
    assert client.call("GET", "/api/v1/position", "positionQuery").status_code == 200


def test_timeout_after_accept_executes_the_order(url: str, client: Client) -> None:
    admin(url, "fault", {"venue": "backpack", "kind": "timeout_after_accept", "op": "order",
                         "params": {"seconds": 0.6}})
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.order(side="Bid", quantity="0.01", clientId=4242, timeout=0.2)
    history = client.history()
    assert [(h["clientId"], h["status"]) for h in history] == [(4242, "Filled")]
    assert client.position() == Decimal("0.01")


def test_partial_fill_fault(url: str, client: Client) -> None:
    admin(url, "fault", {"venue": "backpack", "kind": "partial_fill", "params": {"fraction": 0.25}})
    order = client.order(side="Bid", quantity="0.04").json()
    assert order["status"] == "Expired" and order["executedQuantity"] == "0.01"
    assert client.position() == Decimal("0.01")
    # A resting Limit order leaves the fault armed; a Limit IOC (it takes at once, like Market) uses it.
    admin(url, "fault", {"venue": "backpack", "kind": "partial_fill", "params": {"fraction": 0.5}})
    resting = client.order(orderType="Limit", side="Bid", quantity="0.02", price="2900").json()
    assert resting["status"] == "New"
    ioc = client.order(orderType="Limit", side="Bid", quantity="0.04", price="3100", timeInForce="IOC").json()
    assert (ioc["status"], ioc["executedQuantity"]) == ("Expired", "0.02")
    assert client.position() == Decimal("0.03")
    client.call("DELETE", "/api/v1/orders", "orderCancelAll", {"symbol": ETH})


def test_stale_position_fault(url: str, client: Client) -> None:
    client.order(side="Bid", quantity="0.01")
    admin(url, "fault", {"venue": "backpack", "kind": "stale_position", "op": "position", "count": 2,
                         "account": client.key})
    client.order(side="Bid", quantity="0.01")
    assert [client.position(), client.position(), client.position()] == [
        Decimal("0.01"), Decimal("0.01"), Decimal("0.02")]


def test_bad_fault_requests_are_400(url: str) -> None:
    for body in ({"venue": "backpack", "kind": "nope"}, {"venue": "kraken", "kind": "hang"},
                 {"venue": "backpack", "kind": "hang", "count": 0}):
        assert requests.post(url + "/_sim/fault", json=body, timeout=5).status_code == 400


# ---- WebSocket ---------------------------------------------------------------------------------
def ws_connect(sim: SimulatorServer) -> websocket.WebSocket:
    return websocket.create_connection(sim.urls["backpack_ws"], timeout=3)


def subscribe(ws: websocket.WebSocket, client: Client | None, streams: list[str], ts: int | None = None) -> None:
    frame: dict[str, Any] = {"method": "SUBSCRIBE", "params": streams}
    if client is not None:
        ts = now_ms() if ts is None else ts
        frame["signature"] = [client.key, sign(client.sk, signing_string("subscribe", {}, ts)), str(ts), "5000"]
    ws.send(json.dumps(frame))


def frames(ws: websocket.WebSocket, count: int) -> list[dict[str, Any]]:
    return [json.loads(ws.recv()) for _ in range(count)]


def test_ws_order_and_position_updates(sim: SimulatorServer, client: Client) -> None:
    client.order(side="Bid", quantity="0.01")
    ws = ws_connect(sim)
    try:
        subscribe(ws, client, [f"account.orderUpdate.{ETH}", "account.positionUpdate"])
        snapshot = frames(ws, 1)[0]
        assert snapshot["stream"] == "account.positionUpdate" and "e" not in snapshot["data"]
        assert set(snapshot["data"]) == WS_POSITION_KEYS and snapshot["data"]["q"] == "0.01"
        order = client.order(side="Bid", quantity="0.02", clientId=88).json()
        got = frames(ws, 3)
        by_stream = [(f["stream"], f["data"].get("e")) for f in got]
        assert by_stream == [(f"account.orderUpdate.{ETH}", "orderAccepted"), (f"account.orderUpdate.{ETH}", "orderFill"),
                             ("account.positionUpdate", "positionAdjusted")]
        accepted, fill, pos = (f["data"] for f in got)
        assert accepted["X"] == "New" and accepted["o"] == "MARKET" and accepted["t"] is None
        assert accepted["c"] == 88 and accepted["i"] == order["id"] and accepted["z"] == "0"
        assert fill["X"] == "Filled" and fill["l"] == fill["z"] == "0.0200" and isinstance(fill["t"], int)
        assert Decimal(fill["Z"]) == Decimal(order["executedQuoteQuantity"]) and Decimal(fill["L"]) > 0
        assert isinstance(fill["E"], int) and fill["m"] is False
        assert pos["q"] == "0.03" and all(isinstance(pos[k], str) for k in "BMPQbflmnpq")
        admin(client.base, "liquidate", {"venue": "backpack", "account": client.key, "base": "ETH"})
        # The liquidation's system order fills first (origin LIQUIDATION_AUTOCLOSE), then the position closes.
        liquidation, closed = (f["data"] for f in frames(ws, 2))
        assert (liquidation["e"], liquidation["O"], liquidation["l"]) == ("orderFill", "LIQUIDATION_AUTOCLOSE", "0.0300")
        assert (closed["e"], closed["q"]) == ("positionClosed", "0")
    finally:
        ws.close()


def test_ws_partial_fill_sends_fill_then_expired(sim: SimulatorServer, url: str, client: Client) -> None:
    ws = ws_connect(sim)
    try:
        subscribe(ws, client, ["account.orderUpdate"])
        time.sleep(0.05)
        admin(url, "fault", {"venue": "backpack", "kind": "partial_fill", "account": client.key})
        client.order(side="Ask", quantity="0.02")
        events = [(f["data"]["e"], f["data"]["X"]) for f in frames(ws, 3)]
        assert events == [("orderAccepted", "New"), ("orderFill", "PartiallyFilled"), ("orderExpired", "Expired")]
    finally:
        ws.close()


def test_ws_errors(sim: SimulatorServer, client: Client) -> None:
    ws = ws_connect(sim)
    try:
        ws.send("not json")
        assert frames(ws, 1)[0] == {"id": None, "error": {"code": 4002, "message": "Parse error"}}
        subscribe(ws, None, ["nonsense.ETH_USDC_PERP"])
        assert frames(ws, 1)[0] == {"id": None, "error": {"code": 4006, "message": "Invalid stream"}}
        subscribe(ws, None, [f"depth.5ms.{ETH}"])
        assert frames(ws, 1)[0]["error"]["code"] == 4008
        subscribe(ws, client, ["account.orderUpdate"], ts=now_ms() - 60_000)
        assert frames(ws, 1)[0]["error"]["message"] == "Request has expired"  # simulator-chosen code
        subscribe(ws, None, ["account.orderUpdate"])
        assert "error" in frames(ws, 1)[0]
    finally:
        ws.close()


def test_ws_depth_deltas_align_with_rest(sim: SimulatorServer, url: str) -> None:
    ws = ws_connect(sim)
    try:
        subscribe(ws, None, [f"depth.{ETH}", f"bookTicker.{ETH}"])
        time.sleep(0.05)
        last = int(requests.get(url + "/api/v1/depth", params={"symbol": ETH}, timeout=5).json()["lastUpdateId"])
        admin(url, "price", {"base": "ETH", "price": "3010"})
        got = {f["stream"]: f["data"] for f in frames(ws, 2)}
        depth, ticker = got[f"depth.{ETH}"], got[f"bookTicker.{ETH}"]
        assert depth["U"] <= last + 1 <= depth["u"] and depth["e"] == "depth"
        assert any(q == "0" for _, q in depth["a"] + depth["b"])  # vanished levels are deleted with size 0
        assert Decimal(ticker["b"]) < 3010 < Decimal(ticker["a"]) and ticker["u"] == depth["u"]
    finally:
        ws.close()


def test_drop_ws_fault_closes_the_accounts_connections(sim: SimulatorServer, url: str, client: Client) -> None:
    mine, other = ws_connect(sim), ws_connect(sim)
    try:
        subscribe(mine, client, ["account.orderUpdate"])
        subscribe(other, Client(url), ["account.orderUpdate"])
        time.sleep(0.05)
        admin(url, "fault", {"venue": "backpack", "kind": "drop_ws", "op": "ws", "account": client.key})
        mine.settimeout(3)
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                if not mine.recv():
                    raise websocket.WebSocketConnectionClosedException("closed")
        other.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            other.recv()  # still open: nothing to read, no close
    finally:
        mine.close()
        other.close()


def test_server_pings_websocket_clients() -> None:
    import asyncio

    from aiohttp import web

    from simulators.backpack import create_backpack_app
    from simulators.market import Exchange

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_backpack_app(Exchange(), ws_ping_secs=0.2))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=3)
        opcode, _ = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PING
        ws.close()
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


# ---- fuzz --------------------------------------------------------------------------------------
PATHS = ["/api/v1/order", "/api/v1/orders", "/api/v1/position", "/api/v1/depth", "/api/v1/markets",
         "/wapi/v1/history/orders", "/wapi/v1/history/fills", "/api/v1/capital/collateral", "/ws", "/_sim/fault"]
printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20)
                           | st.sampled_from(["0.01", "1", "Bid", "Ask", "Market", "Limit", ETH, "GTC", "IOC"]),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                             children, max_size=3),
                           max_leaves=6)
# Scalars only: their signing text is the same in every language, so no request fails on auth.
scalar_values = st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20)
VALID = {"symbol": st.sampled_from([ETH, "BTC_USDC_PERP"]), "side": st.sampled_from(["Bid", "Ask"]),
         "orderType": st.sampled_from(["Market", "Limit"]),
         "quantity": st.sampled_from(["0.01", "0.0001", "0.5", "1", "0.00001", "0", "120"]),
         "quoteQuantity": st.sampled_from(["100", "0.5"]), "price": st.sampled_from(["2900", "3100", "0.001", "1"]),
         "clientId": st.integers(0, 2**32 + 5), "reduceOnly": st.booleans(), "postOnly": st.booleans(),
         "timeInForce": st.sampled_from(["GTC", "IOC", "FOK"]), "junk": scalar_values,
         "selfTradePrevention": st.sampled_from(["RejectTaker", "Allow"])}


@st.composite
def order_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-valid payloads with 0–2 damaged fields, so the fuzz reaches the engine, not just the parser."""
    required = ("symbol", "side", "orderType", "quantity")
    fields = draw(st.fixed_dictionaries({k: VALID[k] for k in required},
                                        optional={k: v for k, v in VALID.items() if k not in required}))
    for name, value in draw(st.lists(st.tuples(st.sampled_from(sorted(VALID)), scalar_values), max_size=2)):
        fields[name] = value
    return fields


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
       path=st.one_of(st.sampled_from(PATHS), printable.map(lambda s: "/" + s)),
       headers=st.dictionaries(st.sampled_from(["X-API-Key", "X-Signature", "X-Timestamp", "X-Window",
                                                "Content-Type", "x-api-key", "X-Broker-Id"]), printable, max_size=5),
       body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_unsigned_requests_never_crash(sim: SimulatorServer, method: str, path: str,
                                            headers: dict[str, str], body: bytes) -> None:
    before = sim.exchange.snapshot()
    response = requests.request(method, sim.urls["backpack"] + path, headers=headers, data=body, timeout=5)
    assert response.status_code < 500, response.text
    after = sim.exchange.snapshot()
    assert after["accounts"] == before["accounts"] and after["audit_size"] == before["audit_size"]


FUZZ_KEY = SigningKey.generate()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=order_fields())
def test_fuzz_signed_order_payloads_keep_state_consistent(sim: SimulatorServer, fields: dict[str, Any]) -> None:
    client = Client(sim.urls["backpack"], FUZZ_KEY)
    response = client.call("POST", "/api/v1/order", "orderExecute", fields)
    assert response.status_code < 500, response.text
    assert response.status_code != 401, response.text  # the fuzz exercises the parser, not the signature
    entries = audit(client.base, client.key)
    signed = sum((Decimal(e["filled"]) * (1 if e["side"] == "buy" else -1) for e in entries if e["base"] == "ETH"),
                 Decimal(0))
    assert sim.exchange.account("backpack", client.key).position("ETH").quantity == signed
    assert len(client.history(limit=1000)) == len(entries)


def test_server_healthy_after_concurrent_abuse(url: str, client: Client) -> None:
    def abuse() -> None:
        with requests.Session() as http:
            for _ in range(20):
                http.post(url + "/api/v1/order", data=b"\xff" * 100, timeout=5)
                http.get(url + "/api/v1/depth", params={"symbol": ETH, "limit": "x"}, timeout=5)

    threads = [threading.Thread(target=abuse) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.order(side="Bid", quantity="0.01").json()["status"] == "Filled"
