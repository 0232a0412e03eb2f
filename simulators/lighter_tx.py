"""Parse and validate Lighter tx_info payloads (sendTx / sendTxBatch form fields).

Anything malformed is a :class:`LighterError` with HTTP 400 and a code from the venue's table
(as ccxt's ``lighter.ts`` carries it); nothing here touches state, so
garbage is refused before it can consume a nonce or an armed fault.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from simulators.lighter_model import (
    MAX_48,
    MAX_I64,
    MAX_U32,
    ORDER_TYPE_LIMIT,
    ORDER_TYPE_MARKET,
    TIF_GTT,
    TIF_IOC,
    TIF_POST_ONLY,
    CancelAllTx,
    CancelOrderTx,
    CreateOrderTx,
    LighterError,
    LighterMarket,
    ParsedTx,
    UpdateLeverageTx,
)

TX_CREATE_ORDER = 14
TX_CANCEL_ORDER = 15
TX_CANCEL_ALL = 16
TX_UPDATE_LEVERAGE = 20
SUPPORTED_TX_TYPES = (TX_CREATE_ORDER, TX_CANCEL_ORDER, TX_CANCEL_ALL, TX_UPDATE_LEVERAGE)
#: SignerClient.CROSS_MARGIN_MODE; isolated margin (1) is not simulated.
CROSS_MARGIN_MODE = 0
#: CANCEL_ALL time-in-force values (SignerClient.CANCEL_ALL_TIF_*).
CANCEL_ALL_IMMEDIATE = 0
CANCEL_ALL_SCHEDULED = 1
CANCEL_ALL_ABORT = 2
#: The 1.1.8 signer puts ``cancel_all_market_index`` into ``L2TxAttributes`` under key "5"
#: (observed: sign_cancel_all_orders(0, 0, 3) → ``"L2TxAttributes":{"5":3}``).
CANCEL_ALL_MARKET_ATTR = "5"
MAX_BATCH = 50

INVALID_TX_INFO = 21501
UNSUPPORTED_TX_TYPE = 21505
INVALID_MARKET = 21602
INVALID_ORDER_INDEX = 21700
INVALID_BASE_AMOUNT = 21701
INVALID_PRICE = 21702
INVALID_TIF = 21705
INVALID_AMOUNTS = 21706
INVALID_EXPIRY = 21711
INVALID_CLIENT_ORDER_INDEX = 21727
INVALID_REDUCE_ONLY = 21740


def _bad(code: int, what: str) -> LighterError:
    return LighterError(400, code, f"invalid tx info: {what}")


def _int(info: Mapping[str, Any], name: str, lo: int, hi: int, code: int = INVALID_TX_INFO) -> int:
    value = info.get(name)
    # bool is an int subclass in Python; JSON true/false are not valid tx integers.
    if type(value) is not int or not lo <= value <= hi:
        raise _bad(code, name)
    return value


def _market(markets: Mapping[int, LighterMarket], index: int) -> LighterMarket:
    market = markets.get(index)
    if market is None:
        raise LighterError(400, INVALID_MARKET, "invalid market index")
    return market


def _common(info: Mapping[str, Any], now_ms: int) -> tuple[int, int, int, int]:
    account = _int(info, "AccountIndex", 0, MAX_48)
    # 255 is the SDK's "let the nonce manager pick" sentinel, never a real key.
    api_key = _int(info, "ApiKeyIndex", 0, 254)
    nonce = _int(info, "Nonce", 0, MAX_I64)
    expired_at = _int(info, "ExpiredAt", 0, MAX_I64)
    if expired_at < now_ms:
        raise LighterError(400, INVALID_TX_INFO, "invalid tx info: transaction expired")
    return account, api_key, nonce, expired_at


def decode_info(raw: object) -> dict[str, Any]:
    """tx_info as a dict: a JSON object string (the SDK's form) or an already-decoded object."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise _bad(INVALID_TX_INFO, "tx_info")
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):
        raise _bad(INVALID_TX_INFO, "tx_info is not JSON") from None
    if not isinstance(info, dict):
        raise _bad(INVALID_TX_INFO, "tx_info is not an object")
    return info


def parse_tx_type(raw: object) -> int:
    text = raw.strip() if isinstance(raw, str) else ""
    if text.isascii() and text.isdigit() and len(text) < 6:
        raw = int(text)
    if type(raw) is not int:
        raise LighterError(400, INVALID_TX_INFO, "invalid tx info: tx_type")
    if raw not in SUPPORTED_TX_TYPES:
        raise LighterError(400, UNSUPPORTED_TX_TYPE, "unsupported tx type")
    return raw


def parse_tx(tx_type: object, tx_info: object, markets: Mapping[int, LighterMarket],
             now_ms: int | None = None) -> ParsedTx:
    """Validate one tx; raises :class:`LighterError` (HTTP 400) on anything malformed."""
    kind = parse_tx_type(tx_type)
    info = decode_info(tx_info)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if kind == TX_CREATE_ORDER:
        return _parse_create(info, markets, now)
    if kind == TX_UPDATE_LEVERAGE:
        return _parse_update_leverage(info, markets, now)
    if kind == TX_CANCEL_ORDER:
        account, api_key, nonce, expired_at = _common(info, now)
        market = _market(markets, _int(info, "MarketIndex", 0, 65535, INVALID_MARKET))
        index = _int(info, "Index", 0, MAX_I64, INVALID_ORDER_INDEX)
        return CancelOrderTx(account, api_key, nonce, expired_at, market, index)
    return _parse_cancel_all(info, markets, now)


def _parse_create(info: Mapping[str, Any], markets: Mapping[int, LighterMarket], now: int) -> CreateOrderTx:
    account, api_key, nonce, expired_at = _common(info, now)
    market = _market(markets, _int(info, "MarketIndex", 0, 65535, INVALID_MARKET))
    client_order_index = _int(info, "ClientOrderIndex", 0, MAX_48, INVALID_CLIENT_ORDER_INDEX)
    base_int = _int(info, "BaseAmount", 1, MAX_48, INVALID_BASE_AMOUNT)
    price_int = _int(info, "Price", 1, MAX_U32, INVALID_PRICE)
    is_ask = _int(info, "IsAsk", 0, 1) == 1
    order_type = _int(info, "Type", 0, 6)
    tif = _int(info, "TimeInForce", 0, 2, INVALID_TIF)
    reduce_only = _int(info, "ReduceOnly", 0, 1, INVALID_REDUCE_ONLY) == 1
    _int(info, "TriggerPrice", 0, MAX_U32, INVALID_PRICE)
    expiry = _int(info, "OrderExpiry", -1, MAX_I64, INVALID_EXPIRY)
    if order_type not in (ORDER_TYPE_LIMIT, ORDER_TYPE_MARKET):
        # Trigger orders (stop-loss, take-profit, TWAP) are not simulated.
        raise _bad(INVALID_TX_INFO, "unsupported order type")
    if order_type == ORDER_TYPE_MARKET and tif != TIF_IOC:
        raise LighterError(400, INVALID_TIF, "invalid order time in force")
    # IOC orders carry OrderExpiry 0; resting ones a future expiry.
    if (tif == TIF_IOC and expiry != 0) or (tif in (TIF_GTT, TIF_POST_ONLY) and expiry <= now):
        raise LighterError(400, INVALID_EXPIRY, "invalid order expiry")
    base = market.base_from_int(base_int)
    price = market.price_from_int(price_int)
    if base < market.min_base_amount or base * price < market.min_quote_amount:
        raise LighterError(400, INVALID_AMOUNTS, "invalid order base or quote amount")
    return CreateOrderTx(account, api_key, nonce, expired_at, market, client_order_index, base, price,
                         price_int, is_ask, order_type, tif, reduce_only, expiry)


def _parse_update_leverage(info: Mapping[str, Any], markets: Mapping[int, LighterMarket],
                           now: int) -> UpdateLeverageTx:
    account, api_key, nonce, expired_at = _common(info, now)
    market = _market(markets, _int(info, "MarketIndex", 0, 65535, INVALID_MARKET))
    # The Go signer bounds the fraction to 0..10000 ("InitialMarginFraction should not be larger than
    # 10000", run); the venue further holds it at or above the market's min_initial_margin_fraction
    # (orderBookDetails: "min_initial_margin_fraction": 200, the 50x the app offers on ETH). No capture
    # shows the venue's code for a fraction below it, so it answers 21501 like other bad fields.
    fraction = _int(info, "InitialMarginFraction", 0, 10000)
    if fraction < market.min_imf:
        raise _bad(INVALID_TX_INFO, f"InitialMarginFraction {fraction} is below the market's minimum "
                                    f"{market.min_imf}")
    mode = _int(info, "MarginMode", 0, 1)
    if mode != CROSS_MARGIN_MODE:
        raise _bad(INVALID_TX_INFO, "isolated margin is not simulated")
    return UpdateLeverageTx(account, api_key, nonce, expired_at, market, fraction, mode)


def _parse_cancel_all(info: Mapping[str, Any], markets: Mapping[int, LighterMarket], now: int) -> CancelAllTx:
    account, api_key, nonce, expired_at = _common(info, now)
    tif = _int(info, "TimeInForce", 0, 2, INVALID_TIF)
    at = _int(info, "Time", 0, MAX_I64, INVALID_EXPIRY)
    if tif == CANCEL_ALL_SCHEDULED and at <= now:
        raise LighterError(400, INVALID_EXPIRY, "invalid cancel all time")
    attrs = info.get("L2TxAttributes")
    market = None
    if attrs is not None:
        if not isinstance(attrs, dict):
            raise _bad(INVALID_TX_INFO, "L2TxAttributes")
        if CANCEL_ALL_MARKET_ATTR in attrs:
            market = _market(markets, _int(attrs, CANCEL_ALL_MARKET_ATTR, 0, 65535, INVALID_MARKET))
    return CancelAllTx(account, api_key, nonce, expired_at, tif, at, market)


def info_text(raw: object) -> str:
    """The tx_info as stored for ``/api/v1/tx`` (the client's own string when it sent one)."""
    return raw if isinstance(raw, str) else json.dumps(raw)


def parse_batch(tx_types: object, tx_infos: object,
                markets: Mapping[int, LighterMarket]) -> list[tuple[ParsedTx, int, str]]:
    """sendTxBatch: ``tx_types`` is a JSON int array, ``tx_infos`` a JSON array of tx_info strings."""
    try:
        types = json.loads(tx_types) if isinstance(tx_types, str) else None
        infos = json.loads(tx_infos) if isinstance(tx_infos, str) else None
    except (ValueError, RecursionError):
        raise _bad(INVALID_TX_INFO, "batch is not JSON") from None
    if not isinstance(types, list) or not isinstance(infos, list) or len(types) != len(infos):
        raise _bad(INVALID_TX_INFO, "tx_types and tx_infos must be arrays of the same length")
    if not 1 <= len(types) <= MAX_BATCH:
        raise _bad(INVALID_TX_INFO, f"batch size must be 1..{MAX_BATCH}")
    now = int(time.time() * 1000)
    return [(parse_tx(t, i, markets, now), parse_tx_type(t), info_text(i)) for t, i in zip(types, infos, strict=True)]
