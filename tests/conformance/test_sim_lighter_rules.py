"""The Lighter simulator's venue rules (simulators/lighter_rules.py), one test per rule, over
real HTTP. Each test builds its own server with the rules it needs (``SimulatorServer(lighter_rules=…)``).

The simulator does not verify signatures, so txs here are tx_info JSON written
by hand with the fields the 1.1.8 signer produces.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from simulators.lighter_rules import LighterRules, Tier
from simulators.server import SimulatorServer

KEY = 4
ETH = 0
#: The documented 429, with ccxt lighter.ts's '23000': "Too Many Requests!".
RATE_LIMITED = {"code": 23000, "message": "Too Many Requests!"}
_accounts = itertools.count(5001)
_cois = itertools.count(1)


@contextmanager
def serve(rules: LighterRules) -> Iterator[str]:
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None,
                         lighter_rules=rules) as sim:
        yield sim.urls["lighter"]


def auth(account: int, key: int = KEY) -> dict[str, str]:
    """A token shaped as create_auth_token_with_expiry makes it (the simulator checks the shape only)."""
    return {"authorization": f"{int(time.time()) + 600}:{account}:{key}:{'ab' * 32}"}


def get(url: str, path: str, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
    return requests.get(url + path, params=params, headers=headers, timeout=10)


def order_info(account: int, nonce: int, *, coi: int | None = None, key: int = KEY, market: bool = True) -> str:
    """A CreateOrder tx_info: a MARKET/IOC buy of 0.1 ETH up to $10000, or a GTT bid at $1000."""
    now = int(time.time() * 1000)
    return json.dumps({
        "AccountIndex": account, "ApiKeyIndex": key, "MarketIndex": ETH,
        "ClientOrderIndex": next(_cois) if coi is None else coi, "BaseAmount": 1000,
        "Price": 1_000_000 if market else 100_000, "IsAsk": 0, "Type": 1 if market else 0,
        "TimeInForce": 0 if market else 1, "ReduceOnly": 0, "TriggerPrice": 0,
        "OrderExpiry": 0 if market else now + 3_600_000, "ExpiredAt": now + 599_000, "Nonce": nonce,
        "Sig": "c2ln", "L2TxAttributes": None})


def send(url: str, info: str) -> requests.Response:
    return requests.post(url + "/api/v1/sendTx", data={"tx_type": "14", "tx_info": info}, timeout=10)


def nonce(url: str, account: int, key: int = KEY) -> int:
    return int(get(url, "/api/v1/nextNonce", account_index=account, api_key_index=key).json()["nonce"])


# ---- rate limits ---------------------------------------------------------------------------------
def test_standard_61st_request_in_a_minute_is_429_with_the_venue_body() -> None:
    # "Standard accounts: 60 requests per rolling minute" (unweighted); past it "HTTP 429".
    with serve(LighterRules(rate_limit=True)) as url:
        for _ in range(60):
            assert get(url, "/api/v1/orderBookDetails").status_code == 200
        refused = get(url, "/api/v1/orderBookDetails")
        assert (refused.status_code, refused.json()) == (429, RATE_LIMITED)
        assert get(url, "/api/v1/account", by="index", value="1").status_code == 429  # the same IP budget


def test_standard_heavy_endpoint_gets_the_premium_derived_cap() -> None:
    # "whenever {premium_weighted_requests}/{endpoint_weight} < {standard_requests}, the former limit is
    # going to be applied": trades weighs 600, so 24000/600 = 40 a minute even on Standard.
    with serve(LighterRules(rate_limit=True)) as url:
        for _ in range(40):
            assert get(url, "/api/v1/recentTrades", market_id=ETH, limit=1).status_code == 200
        assert get(url, "/api/v1/recentTrades", market_id=ETH, limit=1).status_code == 429
        assert get(url, "/api/v1/orderBookDetails").status_code == 200  # 41 of the 60 are spent


def test_premium_weights_against_24000_a_minute() -> None:
    # Premium: "24,000 weighted requests per rolling minute"; account (an "other endpoint") weighs 300,
    # nextNonce 6: 79 × 300 + 50 × 6 = 24,000, then nothing more fits.
    account = next(_accounts)
    with serve(LighterRules(rate_limit=True, tiers={account: Tier.PREMIUM})) as url:
        for _ in range(79):
            assert get(url, "/api/v1/account", auth(account), by="index", value=account).status_code == 200
        for _ in range(50):
            assert get(url, "/api/v1/nextNonce", auth(account), account_index=account,
                       api_key_index=KEY).status_code == 200
        refused = get(url, "/api/v1/nextNonce", auth(account), account_index=account, api_key_index=KEY)
        assert (refused.status_code, refused.json()) == (429, RATE_LIMITED)
        # orderBookOrders, accountOrders and orderBookDetails weigh 300 too: none fits in what is left.
        assert get(url, "/api/v1/orderBookOrders", auth(account), market_id=ETH, limit=1).status_code == 429


def test_ip_and_l1_address_are_separate_buckets() -> None:
    # "These limits apply to both IP address and L1 address": an IP whose budget is spent still lets an
    # authenticated account through, and one L1 address spending its budget leaves another's whole.
    one, two = next(_accounts), next(_accounts)
    with serve(LighterRules(rate_limit=True)) as url:
        for _ in range(60):
            assert get(url, "/api/v1/orderBookDetails").status_code == 200
        assert get(url, "/api/v1/orderBookDetails").status_code == 429
        for _ in range(60):
            assert get(url, "/api/v1/account", auth(one), by="index", value=one).status_code == 200
        assert get(url, "/api/v1/account", auth(one), by="index", value=one).status_code == 429
        assert get(url, "/api/v1/account", auth(two), by="index", value=two).status_code == 200


def test_authenticated_requests_count_only_against_the_l1_address() -> None:
    # "To bypass IP-based rate limits, clients can authenticate each request so that only L1-based rate
    # limits apply": 60 authenticated requests leave the IP's budget untouched.
    account = next(_accounts)
    with serve(LighterRules(rate_limit=True)) as url:
        for _ in range(60):
            assert get(url, "/api/v1/orderBookDetails", auth(account)).status_code == 200
        assert get(url, "/api/v1/orderBookDetails", auth(account)).status_code == 429
        for _ in range(60):
            assert get(url, "/api/v1/orderBookDetails").status_code == 200


def test_default_tx_type_limit_is_40_a_minute() -> None:
    # "Transaction Type Limits (per user)… Default 40 requests / minute" (every account type); a Premium
    # account's sendTx bucket (4000/min) is not what stops it.
    account = next(_accounts)
    with serve(LighterRules(tiers={account: Tier.PREMIUM}, nonce_lag_ms=0)) as url:
        for n in range(40):
            assert send(url, order_info(account, n)).json()["code"] == 200
        refused = send(url, order_info(account, 40))
        assert (refused.status_code, refused.json()) == (429, RATE_LIMITED)
        assert nonce(url, account) == 40  # the refused tx used no nonce


def test_rate_limit_is_on_by_default_and_the_easy_lighter_has_none() -> None:
    # On as the venue behaves (Standard, 60 a minute per IP); LighterRules.easy() for REST-only tests.
    with serve(LighterRules()) as url:
        assert [get(url, "/api/v1/orderBookDetails").status_code for _ in range(61)][-2:] == [200, 429]
        # The admin's fresh minute (each system test starts with one) empties the windows.
        assert requests.post(url + "/_sim/lighter/limits/reset", timeout=5).json() == {"ok": True, "buckets": 1}
        assert get(url, "/api/v1/orderBookDetails").status_code == 200
    with serve(LighterRules.easy()) as url:
        assert all(get(url, "/api/v1/orderBookDetails").status_code == 200 for _ in range(70))


# ---- order history limits ----------------------------------------------------------------------
def test_an_order_older_than_the_history_window_looks_absent() -> None:
    # accountOrders lists only the last 10K active and 1K inactive orders of the last 24 h (a second-hand
    # reading of the venue's accountOrders reference; UNCONFIRMED, see lighter_rules.py).
    account = next(_accounts)
    with serve(LighterRules()) as url:
        coi = next(_cois)
        assert send(url, order_info(account, 0, coi=coi)).json()["code"] == 200
        found = get(url, "/api/v1/accountOrders", auth(account), account_index=account, client_order_indexes=coi)
        assert [o["client_order_index"] for o in found.json()["orders"]] == [coi]
        assert requests.post(url + "/_sim/lighter/clock", json={"advance_secs": 24 * 3600 + 1}, timeout=5).ok
        gone = get(url, "/api/v1/accountOrders", auth(account), account_index=account, client_order_indexes=coi)
        assert gone.json() == {"code": 200, "orders": []}
        inactive = get(url, "/api/v1/accountInactiveOrders", auth(account), account_index=account, limit=100)
        assert inactive.json()["orders"] == []


def test_only_the_last_1000_inactive_orders_are_listed() -> None:
    account = next(_accounts)
    with serve(LighterRules(inactive_history=5)) as url:  # the 1K bound, scaled down for the test
        cois = [next(_cois) for _ in range(6)]
        for n, coi in enumerate(cois):
            assert send(url, order_info(account, n, coi=coi)).json()["code"] == 200
        found = get(url, "/api/v1/accountOrders", auth(account), account_index=account,
                    client_order_indexes=",".join(map(str, cois))).json()["orders"]
        assert sorted(o["client_order_index"] for o in found) == cois[1:]


# ---- nonces --------------------------------------------------------------------------------------
def test_next_nonce_lags_an_accepted_tx() -> None:
    # "you can increase the nonce manually (nonce will NOT update right away on the server side)".
    account = next(_accounts)
    with serve(LighterRules(nonce_lag_ms=400)) as url:
        assert send(url, order_info(account, 0)).json()["code"] == 200
        assert nonce(url, account) == 0
        assert send(url, order_info(account, 1)).json()["code"] == 200  # the venue itself knows 0 is used
        time.sleep(0.6)
        assert nonce(url, account) == 2


def test_16_out_of_order_nonces_are_accepted_and_the_17th_refused() -> None:
    # Up to 16 out-of-order nonces per (account, api key) (nautilus_trader
    # crates/adapters/lighter/src/signing/nonce.rs DEFAULT_SKIP_WINDOW: "The venue accepts up to 16
    # out-of-order nonces per (account, api_key)"; UNCONFIRMED by the venue's own docs).
    account = next(_accounts)
    with serve(LighterRules(nonce_lag_ms=0)) as url:  # nextNonce read at once (the lag has its own test)
        for n in range(1, 17):
            assert send(url, order_info(account, n)).json()["code"] == 200
        refused = send(url, order_info(account, 17))
        assert (refused.status_code, refused.json()) == (400, {"code": 21104, "message": "invalid nonce"})
        assert send(url, order_info(account, 5)).status_code == 400  # a used nonce stays used
        assert nonce(url, account) == 0  # nextNonce is the lowest unused one
        assert send(url, order_info(account, 0)).json()["code"] == 200
        assert nonce(url, account) == 17


# ---- shapes (fixtures/lighter.json) -------------------------------------------------------------
def test_order_times_are_in_seconds() -> None:
    # Captured accountInactiveOrders: "timestamp": 1766387932, "created_at"/"updated_at" alike (seconds).
    account = next(_accounts)
    with serve(LighterRules()) as url:
        coi = next(_cois)
        send(url, order_info(account, 0, coi=coi))
        [order] = get(url, "/api/v1/accountOrders", auth(account), account_index=account,
                      client_order_indexes=coi).json()["orders"]
        for name in ("timestamp", "created_at", "updated_at"):
            assert abs(order[name] - time.time()) < 60, (name, order[name])


def test_order_book_orders_are_individual_orders_as_captured() -> None:
    # fixtures lighter.json orderBookOrders_ETH_mainnet_capture_nautilus: asks/bids are single orders.
    captured = {"order_index", "order_id", "owner_account_index", "initial_base_amount",
                "remaining_base_amount", "price", "order_expiry", "transaction_time"}
    with serve(LighterRules()) as url:
        body = get(url, "/api/v1/orderBookOrders", market_id=ETH, limit=5).json()
    assert body["total_asks"] == len(body["asks"]) == 5 and body["total_bids"] == len(body["bids"]) == 5
    for order in body["asks"] + body["bids"]:
        assert set(order) == captured
        assert type(order["order_index"]) is int and order["order_id"] == str(order["order_index"])
        assert type(order["owner_account_index"]) is int and isinstance(order["price"], str)
    assert len({o["order_index"] for o in body["asks"] + body["bids"]}) == 10


# ---- API key indexes -----------------------------------------------------------------------------
@pytest.mark.parametrize("key", [0, 1, 2, 3])
def test_reserved_api_key_indexes_are_refused(key: int) -> None:
    # "indexes {0,1,2,3} are reserved for desktop and mobile interfaces"; the venue's code for a key
    # not registered at an index is 21108 (the venue's documented code; for a reserved index UNCONFIRMED).
    account = next(_accounts)
    with serve(LighterRules()) as url:
        refused = send(url, order_info(account, 0, key=key))
        assert (refused.status_code, refused.json()) == (
            400, {"code": 21108, "message": "invalid PublicKey, please run changePubKey"})
        register = requests.post(url + "/_sim/lighter/apikey", timeout=5, json={
            "account_index": account, "api_key_index": key, "public_key": "ab" * 40})
        assert register.status_code == 400
        # Reading a reserved index's nonce is fine (captured nextNonce for api_key_index=2).
        assert get(url, "/api/v1/nextNonce", account_index=account, api_key_index=key).json() == {
            "code": 200, "nonce": 0}
        assert send(url, order_info(account, 0, key=KEY)).json()["code"] == 200


# ---- switches ------------------------------------------------------------------------------------
def test_xtb_sim_help_lists_the_lighter_tiers_and_options() -> None:
    from click.testing import CliRunner

    from simulators.cli import sim

    text = CliRunner().invoke(sim, ["--help"], terminal_width=200).output
    for needle in ("--lighter-rate-limit", "--lighter-tier [standard|premium]", "--lighter-account-tier",
                   "--lighter-nonce-lag-ms", "--lighter-no-history-limit", "premium (24,000 weight/min)"):
        assert needle in text, needle


def test_xtb_sim_options_build_the_lighter_rules() -> None:
    from simulators.cli import build_lighter_rules

    opts: dict[str, Any] = {"lighter_rate_limit": True, "lighter_tier": "standard",
                            "lighter_account_tier": ("101=premium",), "lighter_nonce_lag_ms": 250.0,
                            "lighter_no_history_limit": False}
    rules = build_lighter_rules(opts)
    assert (rules.rate_limit, rules.tier(101), rules.tier(102), rules.nonce_lag_ms, rules.history) == (
        True, Tier.PREMIUM, Tier.STANDARD, 250.0, True)
    # The venue as it behaves is the default; the easy Lighter is asked for by name.
    assert LighterRules() == LighterRules(rate_limit=True, nonce_window=16, nonce_lag_ms=200, history=True)
    assert (LighterRules.easy().rate_limit, LighterRules.easy().nonce_lag_ms) == (False, 0)
    with pytest.raises(ValueError, match="ACCOUNT_INDEX"):
        build_lighter_rules({**opts, "lighter_account_tier": ("101=gold",)})
