"""The simulators' market rules (simulators/profile.py) over real HTTP, one test per rule.

Each test builds a SimulatorServer with the SimProfile it needs, so a rule that is off by default
is switched on only there. Backpack requests are signed with pynacl by the independent client of
test_sim_backpack; Lighter txs are raw ``sendTx`` forms (the simulator cannot check Poseidon
signatures) and private reads carry a well-formed auth token.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal
from typing import Any

import requests

from simulators.market import Exchange
from simulators.profile import LIGHTER_PREMIUM, DepthProfile, PricePath, SimProfile
from simulators.server import SimulatorServer
from tests.conformance.test_sim_backpack import ETH, Client, frames, subscribe, ws_connect

KEY = 4  # 0-3 are reserved for the venue's own apps (lighter_rules.py)
_accounts = itertools.count(7001)
_cois = itertools.count(1)


@contextmanager
def server(profile: SimProfile, *, collateral: Decimal = Decimal(10000),
           tick: float | None = None) -> Iterator[SimulatorServer]:
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=tick,
                         starting_collateral=collateral, profile=profile) as sim:
        yield sim


def wait_for(cond: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# ---- a raw Lighter client ----------------------------------------------------------------------
class Lighter:
    """One fresh Lighter account: market orders by raw sendTx, private reads with an auth token."""

    def __init__(self, sim: SimulatorServer) -> None:
        self.url = sim.urls["lighter"]
        self.account = next(_accounts)
        self.nonce = 0

    @property
    def auth(self) -> str:
        return f"{int(time.time()) + 600}:{self.account}:{KEY}:{'ab' * 40}"

    def market(self, size: str, is_ask: bool, worst: str, reduce_only: bool = False) -> dict[str, Any]:
        """A market IOC order of ``size`` ETH; returns the venue's order record."""
        coi = next(_cois)
        now = int(time.time() * 1000)
        info = {"AccountIndex": self.account, "ApiKeyIndex": KEY, "MarketIndex": 0, "ClientOrderIndex": coi,
                "BaseAmount": int(Decimal(size) * 10**4), "Price": int(Decimal(worst) * 100), "IsAsk": int(is_ask),
                "Type": 1, "TimeInForce": 0, "ReduceOnly": int(reduce_only), "TriggerPrice": 0, "OrderExpiry": 0,
                "ExpiredAt": now + 600_000, "Nonce": self.nonce, "Sig": "AA=="}
        sent = requests.post(self.url + "/api/v1/sendTx", data={"tx_type": "14", "tx_info": json.dumps(info)},
                             timeout=5)
        assert sent.status_code == 200 and sent.json()["code"] == 200, sent.text
        self.nonce += 1
        orders = self.get("/api/v1/accountOrders", client_order_indexes=str(coi))["orders"]
        assert len(orders) == 1
        return dict(orders[0])

    def leverage(self, fraction_bp: int) -> None:
        """UpdateLeverage (tx type 20) on ETH, cross margin: the account's own initial-margin fraction."""
        info = {"AccountIndex": self.account, "ApiKeyIndex": KEY, "MarketIndex": 0, "InitialMarginFraction": fraction_bp,
                "MarginMode": 0, "ExpiredAt": int(time.time() * 1000) + 600_000, "Nonce": self.nonce, "Sig": "AA=="}
        sent = requests.post(self.url + "/api/v1/sendTx", data={"tx_type": "20", "tx_info": json.dumps(info)},
                             timeout=5)
        assert sent.status_code == 200 and sent.json()["code"] == 200, sent.text
        self.nonce += 1

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = requests.get(self.url + path, params={"account_index": self.account, **params},
                                headers={"authorization": self.auth}, timeout=5)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def account_json(self) -> dict[str, Any]:
        body = requests.get(self.url + "/api/v1/account", params={"by": "index", "value": str(self.account)},
                            timeout=5).json()
        return dict(body["accounts"][0])

    def eth(self) -> Decimal:
        for pos in self.account_json()["positions"]:
            if pos["market_id"] == 0:
                return Decimal(pos["position"]) * pos["sign"]
        return Decimal(0)

    def trades(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/trades", sort_by="trade_id", limit=100)["trades"])


def bp_call(client: Client, path: str, instruction: str, **params: Any) -> Any:
    response = client.call("GET", path, instruction, params)
    assert response.status_code == 200, response.text
    return response.json()


def with_fees(**schedules: Any) -> SimProfile:
    return replace(SimProfile(), fees=replace(SimProfile().fees, enabled=True, **schedules))


def thin() -> SimProfile:
    return replace(SimProfile(), depth=DepthProfile(levels=3, level_size=Decimal("0.5")))


# ---- depth ---------------------------------------------------------------------------------------
def test_thin_book_leaves_an_ioc_remainder_on_backpack() -> None:
    # A market order walks the levels and the rest expires (expiryReason
    # InsufficientLiquidity; the socket reports Expired).
    with server(thin()) as sim:
        client = Client(sim.urls["backpack"])
        depth = requests.get(sim.urls["backpack"] + "/api/v1/depth", params={"symbol": ETH}, timeout=5).json()
        assert [q for _, q in depth["asks"]] == ["0.5"] * 3
        asks = [Decimal(p) for p, _ in depth["asks"]]
        order = client.order(side="Bid", quantity="2").json()
        assert (order["status"], Decimal(order["executedQuantity"])) == ("Expired", Decimal("1.5"))
        avg = Decimal(order["executedQuoteQuantity"]) / Decimal("1.5")
        assert asks[0] < avg < asks[-1] + Decimal("0.01")  # worse levels were taken
        (row,) = client.history()
        assert row["expiryReason"] == "InsufficientLiquidity"
        assert client.position() == Decimal("1.5")


def test_thin_book_leaves_an_ioc_remainder_on_lighter() -> None:
    # Lighter's market orders are IOC: the unfilled rest is canceled-not-enough-liquidity
    # (a status of the venue's Order.status enum).
    with server(thin()) as sim:
        trader = Lighter(sim)
        order = trader.market("2", is_ask=False, worst="3300.00")
        assert (order["status"], order["filled_base_amount"]) == ("canceled-not-enough-liquidity", "1.5000")
        assert trader.eth() == Decimal("1.5")


def test_default_book_carries_the_demo_size() -> None:
    # The default 20 × 5 ETH book holds the demo's ~10 ETH legs with two levels of slippage, no remainder.
    with server(SimProfile()) as sim:
        client, trader = Client(sim.urls["backpack"]), Lighter(sim)
        order = client.order(side="Ask", quantity="10").json()
        assert (order["status"], order["executedQuantity"]) == ("Filled", "10")
        lighter = trader.market("10", is_ask=False, worst="3300.00")
        assert (lighter["status"], lighter["filled_base_amount"]) == ("filled", "10.0000")
        avg = Decimal(lighter["filled_quote_amount"]) / 10
        assert avg < Decimal("3000.9") * Decimal("1.0004")  # within 4 bp of the mid


def test_seeded_depth_jitter_repeats() -> None:
    # Same seed, same book; the jitter makes levels differ (profile.DepthProfile).
    depth = DepthProfile(size_jitter=Decimal("0.5"), size_growth=Decimal("0.1"))
    books = [Exchange(profile=replace(SimProfile(), depth=depth)).book("backpack", "ETH") for _ in range(2)]
    assert books[0] == books[1]
    sizes = [size for _, size in books[0][1]]
    assert len(set(sizes)) == len(sizes) == 20


# ---- fees ----------------------------------------------------------------------------------------
def test_backpack_taker_fee_in_fills_ws_and_collateral() -> None:
    # Backpack futures Tier 1 taker 0.05 % (support.backpack.exchange VIP program fee schedule);
    # fills carry fee/feeSymbol, the WS orderFill n/N. Off by default (profile.py says why).
    with server(with_fees()) as sim:
        client = Client(sim.urls["backpack"])
        ws = ws_connect(sim)
        try:
            subscribe(ws, client, [f"account.orderUpdate.{ETH}"])
            order = client.order(side="Bid", quantity="1").json()
            fee = Decimal(order["executedQuoteQuantity"]) * Decimal("0.0005")
            fill_frame = frames(ws, 2)[1]["data"]
        finally:
            ws.close()
        assert fill_frame["e"] == "orderFill" and fill_frame["N"] == "USDC"
        assert abs(Decimal(fill_frame["n"]) - fee) < Decimal("0.00000001")
        (fill,) = bp_call(client, "/wapi/v1/history/fills", "fillHistoryQueryAll")
        assert fill["feeSymbol"] == "USDC" and abs(Decimal(fill["fee"]) - fee) < Decimal("0.00000001")
        collateral = bp_call(client, "/api/v1/capital/collateral", "collateralQuery")
        assert abs(Decimal(collateral["assetsValue"]) - (Decimal(10000) - fee)) < Decimal("0.00000001")


def test_lighter_fees_in_trades_and_collateral() -> None:
    # Lighter premium (0 LIT staked) 0.0040 % maker / 0.0280 % taker (apidocs.lighter.xyz/docs/account-types);
    # trades carry the rates in parts per million (captured taker_fee 196 / maker_fee 28, fixtures lighter.json).
    with server(with_fees(lighter=LIGHTER_PREMIUM)) as sim:
        trader = Lighter(sim)
        order = trader.market("1", is_ask=False, worst="3300.00")
        (trade,) = trader.trades()
        assert (trade["taker_fee"], trade["maker_fee"]) == (280, 40)
        fee = Decimal(order["filled_quote_amount"]) * Decimal("0.00028")
        assert abs(Decimal(trader.account_json()["collateral"]) - (Decimal(10000) - fee)) < Decimal("0.000001")
    with server(with_fees()) as sim:  # the default standard account pays nothing
        trader = Lighter(sim)
        trader.market("1", is_ask=False, worst="3300.00")
        assert (trader.trades()[0]["taker_fee"], trader.account_json()["collateral"]) == (0, "10000.000000")


def test_fees_are_on_by_default_and_off_in_the_easy_profile() -> None:
    for profile, charged in ((SimProfile(), True), (SimProfile.easy(), False)):
        with server(profile) as sim:
            client = Client(sim.urls["backpack"])
            client.order(side="Bid", quantity="1")
            (fill,) = bp_call(client, "/wapi/v1/history/fills", "fillHistoryQueryAll")
            assert (Decimal(fill["fee"]) > 0) is charged, fill
            value = Decimal(bp_call(client, "/api/v1/capital/collateral", "collateralQuery")["assetsValue"])
            assert (value < 10000) is charged, value


# ---- funding -------------------------------------------------------------------------------------
def test_funding_payments_after_an_interval_on_both_venues() -> None:
    # Funding every interval (Backpack fundingInterval): longs pay a positive rate, shorts receive it;
    # Backpack lists it at GET /wapi/v1/history/funding, Lighter at GET /api/v1/positionFunding (lighter-sdk
    # AccountApi.position_funding); both move the collateral.
    funding = replace(SimProfile().funding, enabled=True, interval_secs=0.3)
    with server(replace(SimProfile(), funding=funding)) as sim:
        client, trader = Client(sim.urls["backpack"]), Lighter(sim)
        client.order(side="Bid", quantity="1")
        trader.market("1", is_ask=True, worst="2700.00")
        rows = wait_for(lambda: bp_call(client, "/wapi/v1/history/funding", "fundingHistoryQueryAll"))
        row = rows[0]
        assert set(row) == {"fundingRate", "intervalEndTimestamp", "quantity", "subaccountId", "symbol", "userId"}
        assert (row["symbol"], row["fundingRate"]) == (ETH, "0.0000125") and Decimal(row["quantity"]) < 0
        (position,) = bp_call(client, "/api/v1/position", "positionQuery")
        assert Decimal(position["cumulativeFundingPayment"]) < 0
        paid = wait_for(lambda: trader.get("/api/v1/positionFunding", limit=10)["position_fundings"])
        assert set(paid[0]) == {"timestamp", "market_id", "funding_id", "change", "discount", "rate",
                                "position_size", "position_side"}
        assert (paid[0]["position_side"], paid[0]["position_size"]) == ("short", "1.0000")
        assert Decimal(paid[0]["change"]) > 0
        received = sum(Decimal(p["change"]) for p in trader.get("/api/v1/positionFunding", limit=100)[
            "position_fundings"])
        assert Decimal(trader.account_json()["positions"][0]["total_funding_paid_out"]) <= -received + Decimal(
            "0.000001")


def test_funding_is_hourly_by_default_and_off_in_the_easy_profile() -> None:
    for profile, paid in ((SimProfile(), True), (SimProfile.easy(), False)):
        with server(profile) as sim:
            client = Client(sim.urls["backpack"])
            client.order(side="Bid", quantity="1")
            sim.exchange.clock()  # the first interval starts now
            sim.exchange.clock(time.time() + 1800)
            assert bp_call(client, "/wapi/v1/history/funding", "fundingHistoryQueryAll") == []  # not yet due
            sim.exchange.clock(time.time() + 3601)
            rows = bp_call(client, "/wapi/v1/history/funding", "fundingHistoryQueryAll")
            assert (len(rows) == 1) is paid, rows


# ---- margin --------------------------------------------------------------------------------------
def test_orders_beyond_initial_margin_are_refused_with_the_venue_error() -> None:
    # Backpack IMF max(0.02, 0.0000935·√q): 400 INSUFFICIENT_MARGIN (a venue error code). Lighter IMF 5 %
    # (captured default_initial_margin_fraction 500): canceled-margin-not-allowed (captured status).
    margin = replace(SimProfile().margin, enforce_initial=True)
    with server(replace(SimProfile(), margin=margin), collateral=Decimal(1000)) as sim:
        client, trader = Client(sim.urls["backpack"]), Lighter(sim)
        assert client.order(side="Bid", quantity="10").json()["status"] == "Filled"  # 600 of 1000 needed
        refused = client.order(side="Bid", quantity="10")
        assert (refused.status_code, refused.json()["code"]) == (400, "INSUFFICIENT_MARGIN")
        assert trader.market("10", is_ask=False, worst="3300.00")["status"] == "canceled-margin-not-allowed"
        assert trader.market("5", is_ask=False, worst="3300.00")["status"] == "filled"  # 750 of 1000
    with server(SimProfile(), collateral=Decimal(1000)) as sim:  # on by default
        assert Lighter(sim).market("10", is_ask=False, worst="3300.00")["status"] == "canceled-margin-not-allowed"
    with server(SimProfile.easy(), collateral=Decimal(1000)) as sim:  # the old rule: up to 50x passes
        assert Lighter(sim).market("10", is_ask=False, worst="3300.00")["status"] == "filled"


# ---- price path and liquidation -------------------------------------------------------------------
def test_price_path_is_seeded_with_jumps() -> None:
    # PricePath: Gaussian walk plus jumps, reproducible from its seed.
    path = PricePath(volatility=Decimal("0.001"), jump_probability=Decimal("0.2"), jump_size=Decimal("0.05"), seed=3)
    runs = []
    for _ in range(2):
        exchange = Exchange(profile=replace(SimProfile(), price_path=path))
        mids = []
        for _ in range(50):
            exchange.step_prices()
            mids.append(exchange.prices["ETH"].mid)
        runs.append(mids)
    assert runs[0] == runs[1]
    moves = [abs(b / a - 1) for a, b in itertools.pairwise(runs[0])]
    assert any(m > Decimal("0.03") for m in moves) and any(m < Decimal("0.01") for m in moves)


def test_price_path_liquidates_50x_legs_on_both_venues() -> None:
    # Maintenance: Lighter 1.2 % (captured maintenance_margin_fraction 120), Backpack mmf 0.0125.
    # A seeded path of downward jumps drives both 48x longs below it; the venues close them at the mark
    # with their records: Lighter a Trade of type "liquidation" (the venue's Trade.type enum);
    # Backpack a system fill LiquidatePositionOnBook (fills include system orders since 2025-04-22).
    path = PricePath(volatility=Decimal("0.0002"), jump_probability=Decimal("0.1"), jump_size=Decimal("0.03"),
                     jump_direction=-1, seed=11)
    profile = replace(SimProfile(), price_path=path)
    with server(profile, collateral=Decimal(1000), tick=0.05) as sim:
        client, trader, safe = Client(sim.urls["backpack"]), Lighter(sim), Lighter(sim)
        assert client.order(side="Bid", quantity="15").json()["status"] == "Filled"
        trader.leverage(200)  # 50x: the default 5 % (20x) refuses 16 ETH on $1000 (initial margin is on)
        assert trader.market("16", is_ask=False, worst="3300.00")["status"] == "filled"
        assert safe.market("0.1", is_ask=False, worst="3300.00")["status"] == "filled"  # 0.3x: survives
        wait_for(lambda: trader.eth() == 0 and client.position() == 0, timeout=20)
        liquidation = [t for t in trader.trades() if t["type"] == "liquidation"]
        assert len(liquidation) == 1 and liquidation[0]["size"] == "16.0000"
        assert liquidation[0]["ask_account_id"] == trader.account and safe.eth() == Decimal("0.1")
        system = bp_call(client, "/wapi/v1/history/fills", "fillHistoryQueryAll", fillType="SystemLiquidation")
        assert [(f["systemOrderType"], f["quantity"], f["side"]) for f in system] == [
            ("LiquidatePositionOnBook", "15", "Ask")]
        assert len(bp_call(client, "/wapi/v1/history/fills", "fillHistoryQueryAll", fillType="User")) == 1
        assert bp_call(client, "/api/v1/position", "positionQuery") == []


def test_liquidation_is_on_by_default_and_off_in_the_easy_profile() -> None:
    for profile, closed in ((SimProfile(), True), (SimProfile.easy(), False)):
        with server(profile, collateral=Decimal(1000)) as sim:
            trader = Lighter(sim)
            trader.market("6", is_ask=False, worst="3300.00")  # 900 of 1000 at 5 %
            sim.exchange.set_price("ETH", Decimal(2000))
            sim.exchange.clock()
            assert trader.eth() == (0 if closed else Decimal(6))  # deep under water: the engine closes it


def test_xtb_sim_starts_with_every_market_rule_on_and_each_switches_off() -> None:
    from click.testing import CliRunner

    from simulators.cli import build_profile, sim

    text = CliRunner().invoke(sim, ["--help"], terminal_width=200).output
    for needle in ("--fees / --no-fees", "--margin / --no-margin", "--liquidations / --no-liquidations",
                   "--rate-limit / --no-rate-limit", "--funding-secs", "--depth-levels", "--volatility"):
        assert needle in text, needle
    opts: dict[str, Any] = {"depth_levels": 20, "depth_size": Decimal(5), "depth_jitter": Decimal(0),
                            "lighter_fee_tier": "standard", "fees": True, "funding_secs": None, "margin": True,
                            "liquidations": True, "volatility": Decimal("0.0005"), "jump_prob": Decimal(0),
                            "jump_size": Decimal("0.05"), "path_seed": None, "rate_limit": True}
    assert build_profile(opts) == SimProfile()
    off = build_profile({**opts, "fees": False, "funding_secs": 0.0, "margin": False, "liquidations": False,
                         "rate_limit": False})
    assert off == SimProfile.easy()
