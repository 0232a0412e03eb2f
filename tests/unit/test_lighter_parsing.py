"""Pure parts of the Lighter connector: parsers (every captured body), credentials, quantization."""

from __future__ import annotations

import json
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.fixtures import fixture_path
from venues.base import MarketRules, OrderState, ReasonCode, Side, VenueError
from venues.lighter import parsing as p
from venues.lighter.credentials import (
    LighterCredentials,
    generate_lighter_keys,
    load_lighter_credentials,
    parse_key_file,
)
from venues.lighter.rest import decode_json

PRIV = "ab" * 40
PRIV2 = "cd" * 40


@pytest.fixture(scope="module")
def fx() -> dict[str, Any]:
    # Parse as the connector does (decimals kept as written).
    return {k: v["body"] for k, v in decode_json(fixture_path("lighter.json").read_text()).items()}


def _eth_rules() -> MarketRules:
    return MarketRules("ETH", Decimal("0.01"), Decimal("0.0001"), Decimal("0.0050"), Decimal(10), market_id=0)


# ---- every fixture body goes through the parser that consumes its endpoint ------------------

def _consume(name: str, body: Any) -> None:
    if name.startswith(("orderBookDetails", "orderBooks_")):
        assert p.parse_market_rules(body, "ETH").market_id == 0
    elif name.startswith("orderBookOrders"):
        assert p.parse_top_of_book(body, "ETH", 0.0).bid is not None
    elif name.startswith("account_by_index"):
        acct = p.find_account(body, body["accounts"][0]["index"])
        p.parse_position(acct, 0)
        p.parse_balance(acct, "l1", 0.0)
    elif name.startswith(("accountInactiveOrders", "ws_update_account_orders")):
        for order in p.parse_orders(body):
            p.parse_order(order, "ETH")
    elif name.startswith(("sendTx", "changeAccountTier", "accountsByL1Address")):
        err = p.send_tx_error(body, None)
        assert err is None if body["code"] == 200 else isinstance(err, VenueError)
    elif name == "nextNonce_live_probe":
        assert p.check_ok(body, "nextNonce")["nonce"] == 0
    elif name == "ws_update_account_all_positions_nautilus":
        assert p.parse_position(body, 0)[0] == Decimal("1.5000")
    else:
        raise AssertionError(f"fixture {name} is not consumed by any parser")


# Bodies of endpoints/channels the connector does not read (trades, funding, stats, WS market data).
NOT_CONSUMED = {
    "recentTrades_ETH_mainnet_capture_nautilus", "fundingRates_ccxt_static", "root_status_ccxt_static",
    "trades_account_testnet_ccxt", "ws_connected_ccxt", "ws_update_order_book_ccxt",
    "ws_update_order_book_official_docs", "ws_subscribed_order_book_nautilus", "ws_subscribed_trade_ccxt",
    "ws_update_trade_official_docs", "ws_update_market_stats_ccxt", "ws_update_market_stats_all_ccxt",
    "ws_update_account_all_trades_nautilus", "ws_update_account_all_assets_official_docs",
    "ws_update_user_stats_official_docs", "ws_subscribed_user_stats_nautilus", "ws_jsonapi_sendtx_ack_ccxt",
    "ws_jsonapi_sendtxbatch_ack_ccxt", "ws_error_invalid_channel_ccxt",
}


def test_every_fixture_is_consumed_or_listed(fx: dict[str, Any]) -> None:
    for name, body in fx.items():
        if name in NOT_CONSUMED:
            continue
        _consume(name, body)
    assert set(fx) >= NOT_CONSUMED, "a listed fixture disappeared; update NOT_CONSUMED"


def test_market_rules_from_details_and_order_books(fx: dict[str, Any]) -> None:
    for name in ("orderBookDetails_ETH_mainnet_capture_nautilus", "orderBookDetails_ETH_ccxt_static",
                 "orderBooks_ETH_mainnet_capture_nautilus"):
        rules = p.parse_market_rules(fx[name], "eth")
        assert (rules.tick_size, rules.step_size) == (Decimal("0.01"), Decimal("0.0001"))
        assert (rules.min_quantity, rules.min_notional, rules.market_id) == (Decimal("0.0050"), Decimal(10), 0)
        assert (rules.price_decimals, rules.size_decimals) == (2, 4)
    with pytest.raises(VenueError) as err:
        p.parse_market_rules(fx["orderBookDetails_ETH_ccxt_static"], "BTC")
    assert err.value.reason is ReasonCode.UNKNOWN_MARKET


def test_market_rules_carry_the_initial_margin_fraction_in_basis_points(fx: dict[str, Any]) -> None:
    # default_initial_margin_fraction 500 (5 %, 20x) and min_initial_margin_fraction 200 (2 %, 50x).
    rules = p.parse_market_rules(fx["orderBookDetails_ETH_mainnet_capture_nautilus"], "ETH")
    assert rules.initial_margin is not None
    assert (rules.initial_margin.base, rules.initial_margin.lowest) == (Decimal("0.05"), Decimal("0.02"))
    assert rules.initial_margin.requirement(Decimal("2"), Decimal("3000")) == Decimal("300")
    # orderBooks carries no margin fractions: unknown, not zero.
    assert p.parse_market_rules(fx["orderBooks_ETH_mainnet_capture_nautilus"], "ETH").initial_margin is None
    body = fx["orderBookDetails_ETH_mainnet_capture_nautilus"]
    zero = {**body, "order_book_details": [{**body["order_book_details"][0], "default_initial_margin_fraction": 0}]}
    assert p.parse_market_rules(zero, "ETH").initial_margin is None


def test_the_accounts_own_initial_margin_fraction_is_read_in_percent(fx: dict[str, Any]) -> None:
    # "5.00" on an 18 ETH position (the default 20x); "10.00" listed at position 0 on market 1 (10x).
    assert p.parse_initial_margin_fraction(
        p.find_account(fx["account_by_index_long_position_testnet_ccxt_static"], 1077), 0) == Decimal("0.05")
    newer = p.find_account(fx["account_by_index_newer_fields_nautilus"], 123456)
    assert p.parse_initial_margin_fraction(newer, 1) == Decimal("0.1")
    assert p.parse_initial_margin_fraction(newer, 0) is None  # no entry: the market's default applies


def test_top_of_book(fx: dict[str, Any]) -> None:
    tob = p.parse_top_of_book(fx["orderBookOrders_ETH_mainnet_capture_nautilus"], "ETH", 1.0)
    assert (tob.bid, tob.ask, tob.read_at) == (Decimal("2361.17"), Decimal("2361.32"), 1.0)
    tob = p.parse_top_of_book(fx["orderBookOrders_ETH_ccxt_static"], "ETH", 1.0)
    assert (tob.bid, tob.ask) == (Decimal("3429.80"), Decimal("3430.00"))
    empty = p.parse_top_of_book({"code": 200, "asks": [], "bids": [{"price": 3000.5}]}, "ETH", 1.0)
    assert (empty.bid, empty.ask) == (Decimal("3000.5"), None)


def test_long_position_and_equity_is_total_asset_value(fx: dict[str, Any]) -> None:
    acct = p.find_account(fx["account_by_index_long_position_testnet_ccxt_static"], 1077)
    assert p.parse_position(acct, 0) == (Decimal("18.0193"), Decimal("2669.84"))
    assert p.parse_position(acct, 1) == (Decimal(0), None)  # no entry for the market in a good read
    bal = p.parse_balance(acct, "lighter1", 5.0)
    assert bal.equity == Decimal("15298.072264000002")  # not collateral: it adds the unrealised PnL
    assert (bal.collateral, bal.available) == (Decimal("9100.242706"), Decimal("12582.743947"))


def test_sub_accounts_are_told_apart(fx: dict[str, Any]) -> None:
    body = fx["account_by_index_assets_and_subaccount_testnet_ccxt_static"]
    assert p.parse_balance(p.find_account(body, 1077), "a", 0).collateral == Decimal("9100.242706")
    assert p.parse_balance(p.find_account(body, 281474976710608), "b", 0).equity == Decimal(30)
    with pytest.raises(VenueError) as err:
        p.find_account(body, 1078)
    assert err.value.reason is ReasonCode.INVALID_REQUEST


def test_zero_sized_entry_and_short_position(fx: dict[str, Any]) -> None:
    acct = p.find_account(fx["account_by_index_newer_fields_nautilus"], 123456)
    assert p.parse_position(acct, 1) == (Decimal(0), None)
    short = {"positions": [{"market_id": 0, "sign": -1, "position": 0.25, "avg_entry_price": "3000.10"}]}
    assert p.parse_position(short, 0) == (Decimal("-0.25"), Decimal("3000.10"))
    with pytest.raises(VenueError):  # a size without a sign cannot be signed
        p.parse_position({"positions": [{"market_id": 0, "position": "1.0"}]}, 0)


def test_account_not_found_comes_with_http_200(fx: dict[str, Any]) -> None:
    with pytest.raises(VenueError) as err:
        p.check_ok(fx["accountsByL1Address_not_found_live_probe"], "account")
    assert (err.value.reason, err.value.code, err.value.status) == (ReasonCode.INVALID_REQUEST, 21100, 200)


def test_canceled_market_order_without_fill_is_failed(fx: dict[str, Any]) -> None:
    [order] = p.parse_orders(fx["accountInactiveOrders_canceled_margin_not_allowed_ccxt"])
    report = p.parse_order(order, "ETH")
    assert (report.state, report.filled, report.side) == (OrderState.FAILED, Decimal(0), Side.SELL)
    assert report.requested == Decimal("36.0386")
    assert report.reason == "canceled-margin-not-allowed"
    assert report.venue_order_id == "281474977354074"
    assert p.order_index(order) == 281474977354074


def test_open_partially_filled_ws_order(fx: dict[str, Any]) -> None:
    [order] = p.parse_orders(fx["ws_update_account_orders_nautilus"])
    report = p.parse_order(order, "ETH")
    assert (report.client_id, report.state) == (42, OrderState.PARTIALLY_FILLED)
    assert (report.filled, report.avg_price) == (Decimal("0.0020"), Decimal("2352.74"))


@pytest.mark.parametrize(("status", "filled", "state"), [
    ("open", "0", OrderState.OPEN), ("pending", "0", OrderState.OPEN), ("in-progress", "0", OrderState.OPEN),
    ("open", "0.1", OrderState.PARTIALLY_FILLED), ("filled", "1", OrderState.FILLED),
    ("canceled", "0", OrderState.FAILED), ("canceled", "0.4", OrderState.CANCELLED),
    ("canceled-too-much-slippage", "0", OrderState.FAILED),
    ("canceled-not-enough-liquidity", "0.2", OrderState.CANCELLED),
    ("canceled-reduce-only", "0", OrderState.FAILED), ("canceled-expired", "0", OrderState.FAILED),
    ("canceled-self-trade", "0", OrderState.FAILED), ("canceled-post-only", "0", OrderState.FAILED),
])
def test_status_mapping(status: str, filled: str, state: OrderState) -> None:
    assert p.map_status(status, Decimal(filled)) is state


@pytest.mark.parametrize("status", ["", "working", "new", "triggered"])
def test_unknown_status_is_never_open(status: str) -> None:
    with pytest.raises(VenueError) as err:
        p.map_status(status, Decimal(0))
    assert err.value.reason is ReasonCode.BAD_RESPONSE


def test_send_tx_results(fx: dict[str, Any]) -> None:
    assert p.send_tx_error(fx["sendTx_success_ccxt"], None) is None
    for name in ("sendTx_error_invalid_nonce_code400_user_report", "sendTx_error_invalid_nonce_21104"):
        assert p.error_from_body(fx[name], 400).reason is ReasonCode.INVALID_NONCE
        assert p.send_tx_error(fx[name], None).reason is ReasonCode.INVALID_NONCE  # HTTP 200 variant
    assert p.send_tx_error({"code": 21728, "message": "x"}, None).reason is ReasonCode.DUPLICATE_CLIENT_ID
    assert p.send_tx_error({"code": 21739, "message": "not enough margin"}, None).reason is ReasonCode.REJECTED
    assert p.send_tx_error(fx["changeAccountTier_invalid_auth_live_probe"], None).reason is ReasonCode.AUTH


@pytest.mark.parametrize(("text", "reason", "code"), [
    ("HTTP response body: code=21104 message='invalid nonce' additional_properties={}",
     ReasonCode.INVALID_NONCE, 21104),
    ("(400)\nReason: Bad Request\nHTTP response body: code=400 message='invalid nonce'", ReasonCode.INVALID_NONCE, 400),
    ("HTTP response body: code=21728 message='client order index already exists' additional_properties={}",
     ReasonCode.DUPLICATE_CLIENT_ID, 21728),
    ('HTTP response body: {"code":23000,"message":"too many requests"}', ReasonCode.RATE_LIMITED, 23000),
    ("ClientOrderIndex should not be larger than 281474976710655", ReasonCode.INVALID_REQUEST, None),
    ("OrderExpiry is invalid", ReasonCode.INVALID_REQUEST, None),
    ("client is not created for apiKeyIndex: 3 accountIndex: 1", ReasonCode.AUTH, None),
    ("HTTP response body: code=21732 message='reduce only increases position'", ReasonCode.REJECTED, 21732),
])
def test_sdk_error_strings(text: str, reason: ReasonCode, code: int | None) -> None:
    err = p.error_from_text(text)
    assert (err.reason, err.code) == (reason, code)


@pytest.mark.parametrize(("status", "body", "reason"), [
    (429, {"code": 429, "message": "Too Many Requests"}, ReasonCode.RATE_LIMITED),
    (500, "internal error", ReasonCode.UNAVAILABLE), (503, {"code": 503}, ReasonCode.UNAVAILABLE),
    (401, {"code": 20013, "message": "invalid auth"}, ReasonCode.AUTH),
    # The simulator's rate limit: HTTP 429 with ccxt's 23000 "Too Many Requests!" (lighter_rules.py).
    (429, {"code": 23000, "message": "Too Many Requests!"}, ReasonCode.RATE_LIMITED),
    # A reserved (0-3) or unregistered key index: 21108 (apidocs.lighter.xyz/docs/troubleshooting).
    (400, {"code": 21108, "message": "invalid PublicKey, please run changePubKey"}, ReasonCode.AUTH),
])
def test_http_errors(status: int, body: Any, reason: ReasonCode) -> None:
    assert p.error_from_body(body, status).reason is reason


def test_numbers_as_json_numbers_or_strings_are_exact() -> None:
    body = decode_json('{"x": 2361.31, "y": "2361.31", "z": 0.00009599999999999999, "w": 2398}')
    assert {p.to_decimal(v, k) for k, v in body.items() if k in "xy"} == {Decimal("2361.31")}
    assert p.to_decimal(body["z"], "z") == Decimal("0.00009599999999999999")
    assert p.to_decimal(2361.31, "float") == Decimal("2361.31")  # str(float), not the binary expansion
    for bad in (None, "", "abc", True, "NaN"):
        with pytest.raises(VenueError):
            p.to_decimal(bad, "bad")


def test_sdk_model_objects_parse_like_dicts(fx: dict[str, Any]) -> None:
    from lighter.models import DetailedAccounts, OrderBookDetails, Orders, RespSendTx

    raw = json.loads(fixture_path("lighter.json").read_text())  # the SDK gets floats from its own json parser
    acct = p.find_account(DetailedAccounts.from_dict(raw["account_by_index_long_position_testnet_ccxt_static"]["body"]),
                          1077)
    assert p.parse_position(acct, 0)[0] == Decimal("18.0193")
    rules = p.parse_market_rules(OrderBookDetails.from_dict(raw["orderBookDetails_ETH_ccxt_static"]["body"]), "ETH")
    assert rules.tick_size == Decimal("0.01")
    [order] = p.parse_orders(Orders.from_dict(raw["accountInactiveOrders_canceled_margin_not_allowed_ccxt"]["body"]))
    assert p.parse_order(order, "ETH").state is OrderState.FAILED
    assert p.send_tx_error(RespSendTx.from_dict(raw["sendTx_success_ccxt"]["body"]), None) is None
    assert p.send_tx_error(RespSendTx.from_dict({"code": 21104, "message": "invalid nonce"}), None).reason \
        is ReasonCode.INVALID_NONCE


# ---- price/size quantization -----------------------------------------------------------------

def test_worst_price_examples() -> None:
    from venues.lighter.connector import worst_price

    rules = _eth_rules()
    assert worst_price(Decimal("3000.00"), Side.BUY, 0.001, rules) == Decimal("3003.00")
    assert worst_price(Decimal("3000.00"), Side.SELL, 0.001, rules) == Decimal("2997.00")
    assert worst_price(Decimal("3000.01"), Side.BUY, 0.0001, rules) == Decimal("3000.31")  # 3000.310001 down
    assert worst_price(Decimal("3000.01"), Side.SELL, 0.0001, rules) == Decimal("2999.71")  # 2999.709999 up
    for slip in (None, 0, 0.0):
        assert worst_price(Decimal("3000.01"), Side.BUY, slip, rules) == Decimal("3000.01")
    assert rules.price_to_int(Decimal("3003.00")) == 300300 and rules.size_to_int(Decimal("0.1")) == 1000


@given(ticks=st.integers(1, 10**7), slip=st.decimals("0", "0.5", places=5), buy=st.booleans())
def test_worst_price_property(ticks: int, slip: Decimal, buy: bool) -> None:
    from venues.lighter.connector import worst_price

    rules, side = _eth_rules(), Side.BUY if buy else Side.SELL
    best = Decimal(ticks) * rules.tick_size
    price = worst_price(best, side, float(slip), rules)
    assert price == rules.quantize_price(price)  # on the tick
    limit = best * (1 + Decimal(str(float(slip)))) if buy else best * (1 - Decimal(str(float(slip))))
    assert (best <= price <= limit) if buy else (limit <= price <= best)


# ---- credentials -----------------------------------------------------------------------------

def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Lighter_key.txt"
    path.write_text(text)
    return path


def test_key_file_format(tmp_path: Path) -> None:
    path = _write(tmp_path, f"API Key Index: 7\n  public key : 'PUB'\nPrivate Key:\"{PRIV}\"\n"
                            f"eth private key: 0x{'11' * 32}\n")
    creds = load_lighter_credentials(path)
    assert creds == LighterCredentials(7, PRIV, "PUB")
    assert parse_key_file("a: b: c")["a"] == "b: c"  # split on the first ':'


def test_config_index_and_env_key_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, f"api key index: 7\nprivate key: 0x{PRIV}\n")
    monkeypatch.setenv("XTB_TEST_LIGHTER_KEY", PRIV2)
    creds = load_lighter_credentials(path, "XTB_TEST_LIGHTER_KEY", api_key_index=4)
    assert (creds.api_key_index, creds.private_key) == (4, PRIV2)
    monkeypatch.setenv("XTB_TEST_LIGHTER_KEY", "")  # named but empty: the file's key
    assert load_lighter_credentials(path, "XTB_TEST_LIGHTER_KEY").private_key == PRIV
    monkeypatch.setenv("XTB_TEST_LIGHTER_KEY", f"0x{PRIV2}")  # no file at all: env + config suffice
    assert load_lighter_credentials(None, "XTB_TEST_LIGHTER_KEY", 5) == LighterCredentials(5, PRIV2)


@pytest.mark.parametrize(("text", "env", "index", "needle"), [
    ("api key index: 3\n", None, None, "Lighter_key.txt"),
    (f"private key: {PRIV}\n", None, None, "api key index"),
    (f"api key index: 300\nprivate key: {PRIV}\n", None, None, "out of range"),
    (f"api key index: x\nprivate key: {PRIV}\n", None, None, "not an integer"),
    (f"api key index: 3\nprivate key: {'ab' * 32}\n", None, None, "80 hex"),
    ("api key index: 3\n", "XTB_TEST_BAD_KEY", None, "XTB_TEST_BAD_KEY"),
])
def test_credential_errors_name_the_source_not_the_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: str | None, index: int | None,
        needle: str) -> None:
    if env:
        monkeypatch.setenv(env, "zz" + "ab" * 39)
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_lighter_credentials(path, env, index)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert "ab" * 8 not in message


def test_missing_file_without_env(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.txt"):
        load_lighter_credentials(tmp_path / "nope.txt", api_key_index=3)


def test_repr_never_shows_the_private_key() -> None:
    creds = LighterCredentials(3, PRIV, "0a1b2c3d4e5f")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert PRIV not in text and PRIV[:16] not in text and "api_key_index=3" in text


def test_generate_keys_writes_the_original_format(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "l1.txt"
    creds = generate_lighter_keys(path, 3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(creds.private_key) == 80 and creds.public_key and len(creds.public_key) == 80
    assert load_lighter_credentials(path) == creds
    assert path.read_text().splitlines()[0] == "api key index: 3"
    assert generate_lighter_keys(path, 4).private_key != creds.private_key  # fresh pair, file replaced
    assert load_lighter_credentials(path).api_key_index == 4
