"""Lighter-specific simulator types: markets, errors, orders and their wire formatting.

Amounts are ``Decimal``; the wire integers of a tx (``BaseAmount``, ``Price``) are scaled by the
market's ``size_decimals`` / ``price_decimals``. Every amount string carries
*exactly* the market's decimals because the SDK turns book prices into integers with
``.replace(".", "")`` in its slippage helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from typing import Any

VENUE = "lighter"
#: Client order indexes, accounts and base amounts are capped at 2^48-1.
MAX_48 = 2**48 - 1
#: Prices are uint32 on the wire.
MAX_U32 = 2**32 - 1
MAX_I64 = 2**63 - 1
#: USDC amounts are quoted with 6 decimals (orderBookDetails ``supported_quote_decimals``).
QUOTE_DECIMALS = 6
#: Real order indexes encode the side: asks start at 2^48, bids at 2^49 (captured
#: orderBookOrders fixtures). Keeping that layout also means an order index can never
#: collide with a client order index (≤ 2^48-1), so a cancel's ``Index`` is unambiguous.
ASK_ORDER_BASE = 2**48
BID_ORDER_BASE = 2**49
#: Owner of the synthetic book, hence the counterparty of every simulated fill.
MAKER_ACCOUNT = 281474976700000

ORDER_TYPE_LIMIT = 0
ORDER_TYPE_MARKET = 1
TIF_IOC = 0
TIF_GTT = 1
TIF_POST_ONLY = 2
ORDER_TYPE_NAMES = {ORDER_TYPE_LIMIT: "limit", ORDER_TYPE_MARKET: "market"}
TIF_NAMES = {TIF_IOC: "immediate-or-cancel", TIF_GTT: "good-till-time", TIF_POST_ONLY: "post-only"}


class LighterError(Exception):
    """A rejection in Lighter's ``{"code", "message"}`` shape, with the HTTP status to send."""

    def __init__(self, http_status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


_EXPONENTS = {places: Decimal(1).scaleb(-places) for places in range(10)}


def fmt(value: Decimal, places: int, rounding: str = ROUND_HALF_EVEN) -> str:
    """``value`` with exactly ``places`` decimals, never in exponent notation."""
    exponent = _EXPONENTS.get(places) or Decimal(1).scaleb(-places)
    try:  # the default 28-digit context covers every realistic amount (this is the sendTx hot path)
        return format(value.quantize(exponent, rounding=rounding), "f")
    except InvalidOperation:
        with localcontext() as ctx:
            ctx.prec = 80  # wire values reach ~1e20 with 6 decimals; never let quantize overflow
            return format(value.quantize(exponent, rounding=rounding), "f")


@dataclass(frozen=True)
class LighterMarket:
    """One perp market as orderBookDetails describes it."""

    market_id: int
    base: str
    size_decimals: int
    price_decimals: int
    min_base_amount: Decimal
    min_quote_amount: Decimal
    #: Margin fractions in basis points of notional, as orderBookDetails sends them (500 = 5%).
    default_imf: int = 500
    min_imf: int = 200
    maintenance_mf: int = 120
    closeout_mf: int = 80

    @property
    def step(self) -> Decimal:
        return Decimal(1).scaleb(-self.size_decimals)

    def size_str(self, quantity: Decimal) -> str:
        return fmt(quantity, self.size_decimals)

    def price_str(self, price: Decimal, rounding: str = ROUND_HALF_EVEN) -> str:
        return fmt(price, self.price_decimals, rounding)

    def base_from_int(self, amount: int) -> Decimal:
        return Decimal(amount).scaleb(-self.size_decimals)

    def price_from_int(self, price: int) -> Decimal:
        return Decimal(price).scaleb(-self.price_decimals)

    def size_int(self, quantity: Decimal) -> int:
        return int(quantity.scaleb(self.size_decimals))

    def min_base_str(self) -> str:
        return self.size_str(self.min_base_amount)


#: The markets the simulator lists: ETH (0) and BTC (1) as on mainnet (captured orderBookDetails).
MARKETS: tuple[LighterMarket, ...] = (
    LighterMarket(0, "ETH", 4, 2, Decimal("0.0050"), Decimal("10.000000")),
    LighterMarket(1, "BTC", 5, 1, Decimal("0.00020"), Decimal("10.000000")),
)


@dataclass
class LighterOrder:
    """An order as the venue keeps it; ``to_json`` is the SDK's ``Order`` model."""

    order_index: int
    client_order_index: int
    account: int
    market: LighterMarket
    is_ask: bool
    order_type: int
    time_in_force: int
    reduce_only: bool
    price: Decimal
    price_int: int
    initial: Decimal
    nonce: int
    order_expiry: int
    created_ms: int
    block_height: int
    filled: Decimal = Decimal(0)
    filled_quote: Decimal = Decimal(0)
    status: str = "open"
    updated_ms: int = 0

    @property
    def active(self) -> bool:
        return self.status == "open"

    @property
    def remaining(self) -> Decimal:
        # Inactive orders report 0 remaining (captured accountInactiveOrders fixture).
        return self.initial - self.filled if self.active else Decimal(0)

    @property
    def side(self) -> str:
        return "sell" if self.is_ask else "buy"

    def to_json(self) -> dict[str, Any]:
        m = self.market
        return {
            "order_index": self.order_index, "client_order_index": self.client_order_index,
            "order_id": str(self.order_index), "client_order_id": str(self.client_order_index),
            "market_index": m.market_id, "owner_account_index": self.account,
            "initial_base_amount": m.size_str(self.initial), "price": m.price_str(self.price),
            "nonce": self.nonce, "remaining_base_amount": m.size_str(self.remaining),
            "is_ask": self.is_ask, "base_size": m.size_int(self.remaining), "base_price": self.price_int,
            "filled_base_amount": m.size_str(self.filled),
            "filled_quote_amount": fmt(self.filled_quote, QUOTE_DECIMALS),
            "side": self.side, "type": ORDER_TYPE_NAMES[self.order_type],
            "time_in_force": TIF_NAMES[self.time_in_force], "reduce_only": self.reduce_only,
            "trigger_price": m.price_str(Decimal(0)), "order_expiry": self.order_expiry,
            "status": self.status, "trigger_status": "na", "trigger_time": 0,
            "parent_order_index": 0, "parent_order_id": "0", "to_trigger_order_id_0": "0",
            "to_trigger_order_id_1": "0", "to_cancel_order_id_0": "0",
            "integrator_fee_collector_index": "0", "integrator_taker_fee": "0", "integrator_maker_fee": "0",
            # Order times are unix SECONDS (captured accountInactiveOrders: "timestamp": 1766387932,
            # "created_at"/"updated_at" alike), unlike trades (ms) and transaction_time (µs).
            "block_height": self.block_height, "timestamp": self.created_ms // 1000,
            "created_at": self.created_ms // 1000, "updated_at": (self.updated_ms or self.created_ms) // 1000,
            "transaction_time": self.created_ms * 1000,
            "market_symbol": m.base,
        }


@dataclass(frozen=True)
class CreateOrderTx:
    """A validated CREATE_ORDER (tx_type 14) tx_info."""

    account: int
    api_key: int
    nonce: int
    expired_at: int
    market: LighterMarket
    client_order_index: int
    base: Decimal
    price: Decimal
    price_int: int
    is_ask: bool
    order_type: int
    time_in_force: int
    reduce_only: bool
    order_expiry: int


@dataclass(frozen=True)
class CancelOrderTx:
    """A validated CANCEL_ORDER (tx_type 15): ``index`` is an order_index or a client_order_index."""

    account: int
    api_key: int
    nonce: int
    expired_at: int
    market: LighterMarket
    index: int


@dataclass(frozen=True)
class CancelAllTx:
    """A validated CANCEL_ALL_ORDERS (tx_type 16); ``market`` None means every market."""

    account: int
    api_key: int
    nonce: int
    expired_at: int
    time_in_force: int
    time: int
    market: LighterMarket | None


@dataclass(frozen=True)
class UpdateLeverageTx:
    """A validated UPDATE_LEVERAGE (tx_type 20): the account's initial-margin fraction on one market,
    in basis points (``InitialMarginFraction = int(10000 / leverage)``, as the SDK computes it)."""

    account: int
    api_key: int
    nonce: int
    expired_at: int
    market: LighterMarket
    fraction_bp: int
    margin_mode: int


ParsedTx = CreateOrderTx | CancelOrderTx | CancelAllTx | UpdateLeverageTx


def auth_token_valid(token: str | None, account: int, now_s: int) -> bool:
    """Shape check of ``create_auth_token_with_expiry`` output: ``<deadline>:<account>:<key>:<hex>``.

    The signature itself cannot be verified, so a well-formed, unexpired token
    for the right account is accepted.
    """
    if not isinstance(token, str):
        return False
    parts = token.split(":")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts[:3]):
        return False
    deadline, owner, key = (int(p) for p in parts[:3])
    sig = parts[3]
    hex_ok = bool(sig) and sig.isascii() and all(c in "0123456789abcdefABCDEF" for c in sig)
    return deadline >= now_s and owner == account and key <= 254 and hex_ok
