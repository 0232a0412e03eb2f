"""The common connector interface and its value types.

Everything above the venues (Celery tasks, the orchestrator, diagnostics) talks to a
:class:`VenueConnector` and these types only. Amounts are ``Decimal`` quantized to the
venue's step and tick; integers exist only at the wire. A position that could not be read
fresh is *unknown* (``quantity is None``), never zero. Nothing in ``venues/`` imports Celery.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from venues.ledger import AccountHistory

from venues.margin import InitialMargin

log = logging.getLogger(__name__)


class Side(str, Enum):
    """Order side, venue-neutral."""

    #: Buy (Backpack ``Bid``, Lighter ``is_ask=False``).
    BUY = "buy"
    #: Sell (Backpack ``Ask``, Lighter ``is_ask=True``).
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @classmethod
    def to_reduce(cls, position: Decimal) -> Side:
        """The side that reduces a signed position toward zero."""
        return cls.SELL if position > 0 else cls.BUY


class ReasonCode(str, Enum):
    """Why a venue call failed; carried by :class:`VenueError`."""

    #: Transport failure, timeout or 5xx: the outcome is unknown, look the order up before retrying.
    UNAVAILABLE = "unavailable"
    #: HTTP 429 or a venue quota.
    RATE_LIMITED = "rate_limited"
    #: Lighter 21104 / "invalid nonce".
    INVALID_NONCE = "invalid_nonce"
    #: Signature, key or window rejected.
    AUTH = "auth"
    #: The venue refused the order (margin, reduce-only, size, price band...).
    REJECTED = "rejected"
    #: The client id is already used at the venue (Lighter 21728).
    DUPLICATE_CLIENT_ID = "duplicate_client_id"
    #: Unknown symbol or market.
    UNKNOWN_MARKET = "unknown_market"
    #: The venue answered something we cannot parse.
    BAD_RESPONSE = "bad_response"
    #: Wrong arguments from our side (quantity below minimum, id out of range...).
    INVALID_REQUEST = "invalid_request"


class VenueError(Exception):
    """A venue call failed. ``reason`` is a :class:`ReasonCode`; the message never holds secrets."""

    def __init__(self, reason: ReasonCode, message: str, *, status: int | None = None, code: Any = None) -> None:
        self.reason = reason
        self.status = status
        self.code = code
        super().__init__(f"{reason.value}: {message}")

    @property
    def outcome_unknown(self) -> bool:
        """True when the request may have reached the venue (look the order up before retrying)."""
        return self.reason in (ReasonCode.UNAVAILABLE, ReasonCode.BAD_RESPONSE)


@dataclass(frozen=True)
class ClientOrderId:
    """A client order id: Backpack ``clientId`` (1..2^32-1) or Lighter ``client_order_index`` (1..2^48-1)."""

    value: int

    BACKPACK_MAX = 2**32 - 1
    LIGHTER_MAX = 2**48 - 1

    def __post_init__(self) -> None:
        if not 1 <= self.value <= self.LIGHTER_MAX:
            raise ValueError(f"client order id out of range: {self.value}")

    def __int__(self) -> int:
        return self.value

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class MarketRules:
    """Trading rules of one market, from the venue's metadata."""

    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_quantity: Decimal
    min_notional: Decimal = Decimal(0)
    #: Venue market id (Lighter ``market_id``); None on Backpack.
    market_id: int | None = None
    #: The market's initial-margin rule; None when the venue did not publish one (unknown, not zero).
    initial_margin: InitialMargin | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field, amounts as strings: the one shape rules cross processes and the cycle record in."""
        return {"symbol": self.symbol, "tick_size": str(self.tick_size), "step_size": str(self.step_size),
                "min_quantity": str(self.min_quantity), "min_notional": str(self.min_notional),
                "market_id": self.market_id,
                "initial_margin": None if self.initial_margin is None else self.initial_margin.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MarketRules:
        """The inverse of :meth:`to_json` (a missing field raises ``KeyError``)."""
        market_id = data["market_id"]
        return cls(symbol=str(data["symbol"]), tick_size=Decimal(str(data["tick_size"])),
                   step_size=Decimal(str(data["step_size"])), min_quantity=Decimal(str(data["min_quantity"])),
                   min_notional=Decimal(str(data["min_notional"])),
                   market_id=None if market_id is None else int(market_id),
                   initial_margin=InitialMargin.from_json(data["initial_margin"]))

    @property
    def price_decimals(self) -> int:
        return max(0, -self.tick_size.normalize().as_tuple().exponent)  # type: ignore[operator]

    @property
    def size_decimals(self) -> int:
        return max(0, -self.step_size.normalize().as_tuple().exponent)  # type: ignore[operator]

    def quantize_size(self, quantity: Decimal, rounding: str = ROUND_DOWN) -> Decimal:
        steps = (quantity / self.step_size).to_integral_value(rounding=rounding)
        return (steps * self.step_size).quantize(self.step_size)

    def quantize_price(self, price: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
        ticks = (price / self.tick_size).to_integral_value(rounding=rounding)
        return (ticks * self.tick_size).quantize(self.tick_size)

    def size_to_int(self, quantity: Decimal) -> int:
        return int((quantity / self.step_size).to_integral_value(rounding=ROUND_DOWN))

    def price_to_int(self, price: Decimal) -> int:
        return int((price / self.tick_size).to_integral_value(rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class TopOfBook:
    """Best bid and ask; a side is None when the book is empty on it."""

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    read_at: float = field(default_factory=time.time)

    def price_for(self, side: Side) -> Decimal | None:
        """The price a market order on ``side`` would take first."""
        return self.ask if side is Side.BUY else self.bid


@dataclass(frozen=True)
class PositionReading:
    """A signed position (``+`` long, ``-`` short) read from the venue, or *unknown*.

    ``quantity is None`` means the read failed or was stale; it must never be treated as zero.
    """

    account: str
    symbol: str
    quantity: Decimal | None
    read_at: float
    source: str = "rest"
    error: str | None = None
    entry_price: Decimal | None = None
    mark_price: Decimal | None = None

    @property
    def known(self) -> bool:
        return self.quantity is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "symbol": self.symbol,
            "quantity": None if self.quantity is None else str(self.quantity),
            "read_at": self.read_at,
            "source": self.source,
            "error": self.error,
            "entry_price": None if self.entry_price is None else str(self.entry_price),
            "mark_price": None if self.mark_price is None else str(self.mark_price),
        }


@dataclass(frozen=True)
class Balance:
    """Account collateral and equity in quote currency (USDC); None when the venue did not say."""

    account: str
    collateral: Decimal | None
    equity: Decimal | None
    available: Decimal | None
    read_at: float

    def to_json(self) -> dict[str, Any]:
        def s(x: Decimal | None) -> str | None:
            return None if x is None else str(x)

        return {"account": self.account, "collateral": s(self.collateral), "equity": s(self.equity),
                "available": s(self.available), "read_at": self.read_at}


@dataclass(frozen=True)
class AccountReading:
    """What cycle planning reads from one account: top of book, balance and position."""

    top: TopOfBook
    balance: Balance
    position: PositionReading
    #: The account's own initial-margin fraction on the market where the venue reports one (Lighter's
    #: per-market leverage setting, ``positions[].initial_margin_fraction``); None: the market's default.
    initial_margin_fraction: Decimal | None = None


class OrderState(str, Enum):
    """Order lifecycle; final states never change (see :mod:`venues.orders`)."""

    #: Created locally, not yet sent.
    NEW = "new"
    #: Sent, no answer yet.
    SUBMITTING = "submitting"
    #: Accepted by the venue, nothing filled.
    OPEN = "open"
    #: Some quantity filled, the rest may still fill.
    PARTIALLY_FILLED = "partially_filled"
    #: Fully filled (final).
    FILLED = "filled"
    #: Cancelled or expired, possibly after a partial fill (final; see ``filled``).
    CANCELLED = "cancelled"
    #: Rejected or failed without any fill (final).
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (OrderState.FILLED, OrderState.CANCELLED, OrderState.FAILED)


def average_price_text(price: Decimal | None) -> str | None:
    """An average fill price as JSON text: a quotient, so 8 decimals (beyond every venue's tick)."""
    return None if price is None else f"{price.quantize(Decimal('1e-8')):f}"


@dataclass(frozen=True)
class OrderReport:
    """What the venue says about one order, looked up or returned by a submit."""

    client_id: int
    symbol: str
    side: Side
    requested: Decimal
    filled: Decimal
    state: OrderState
    venue_order_id: str | None = None
    avg_price: Decimal | None = None
    reduce_only: bool = False
    reason: str | None = None
    #: True when the venue already had this client id (an idempotent re-run found it).
    existing: bool = False

    @property
    def final(self) -> bool:
        return self.state.final

    @property
    def signed_fill(self) -> Decimal:
        return self.filled * self.side.sign

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "symbol": self.symbol,
            "side": self.side.value,
            "requested": str(self.requested),
            "filled": str(self.filled),
            "state": self.state.value,
            "venue_order_id": self.venue_order_id,
            "avg_price": average_price_text(self.avg_price),
            "reduce_only": self.reduce_only,
            "reason": self.reason,
            "existing": self.existing,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderReport:
        return cls(
            client_id=int(data["client_id"]),
            symbol=data["symbol"],
            side=Side(data["side"]),
            requested=Decimal(data["requested"]),
            filled=Decimal(data["filled"]),
            state=OrderState(data["state"]),
            venue_order_id=data.get("venue_order_id"),
            avg_price=None if data.get("avg_price") is None else Decimal(data["avg_price"]),
            reduce_only=bool(data.get("reduce_only", False)),
            reason=data.get("reason"),
            existing=bool(data.get("existing", False)),
        )


@dataclass(frozen=True)
class FlattenReport:
    """Outcome of :meth:`VenueConnector.flatten`: flat only if a fresh read after the orders says zero."""

    account: str
    symbol: str
    flat: bool
    orders: tuple[OrderReport, ...]
    final_position: PositionReading

    def to_json(self) -> dict[str, Any]:
        return {"account": self.account, "symbol": self.symbol, "flat": self.flat,
                "orders": [o.to_json() for o in self.orders], "final_position": self.final_position.to_json()}


class PendingReport:
    """A market order that may already be on its way; :meth:`result` waits for its report and
    raises what :meth:`VenueConnector.submit_market_order` would."""

    def __init__(self, wait: Callable[[], OrderReport]) -> None:
        self._wait = wait

    @classmethod
    def failed(cls, error: VenueError) -> PendingReport:
        """An order that never left: waiting for it raises ``error``."""
        def refuse() -> OrderReport:
            raise error

        return cls(refuse)

    def result(self) -> OrderReport:
        return self._wait()


class VenueConnector(abc.ABC):
    """One account on one venue. Implementations: Backpack and Lighter connectors.

    Submissions are not serialised here; the caller holds the account lease. Every call raises
    :class:`VenueError` on failure; reads that fail return unknown readings only where the type
    allows it (:meth:`get_position`).
    """

    #: Account name (also the Celery queue name).
    account: str
    #: ``"backpack"`` or ``"lighter"``.
    venue: str
    #: Largest client id this venue accepts.
    max_client_id: int
    #: Whether a reduce-only order below the venue's minimum size is sent (Backpack: the venue decides);
    #: otherwise :meth:`flatten` stops at such a leftover and reports it (dust).
    closes_below_minimum: bool = False

    @abc.abstractmethod
    def market_rules(self, symbol: str) -> MarketRules: ...

    @abc.abstractmethod
    def top_of_book(self, symbol: str) -> TopOfBook: ...

    @abc.abstractmethod
    def get_position(self, symbol: str) -> PositionReading:
        """A fresh signed position from the venue; unknown (not zero) when the read fails."""

    @abc.abstractmethod
    def get_balance(self) -> Balance: ...

    def begin_market_order(self, symbol: str, client_id: int, side: Side, quantity: Decimal,
                           *, reduce_only: bool = False, max_slippage: float | None = None) -> PendingReport:
        """:meth:`submit_market_order`, started now where the venue can send without blocking the
        caller (Lighter's event loop), so the caller can record it while it travels. This default
        sends when the report is waited for."""
        return PendingReport(lambda: self.submit_market_order(symbol, client_id, side, quantity,
                                                              reduce_only=reduce_only, max_slippage=max_slippage))

    def read_account(self, symbol: str) -> AccountReading:
        """Book, balance and position for planning. Raises like :meth:`get_balance`; the position
        is unknown, not raised, when only its read fails. Venues override it to read concurrently."""
        return AccountReading(self.top_of_book(symbol), self.get_balance(), self.get_position(symbol))

    def set_initial_margin_fraction(self, symbol: str, fraction_bp: int) -> Decimal:
        """Set the account's own initial-margin fraction on ``symbol`` (basis points; Lighter's
        UpdateLeverage) and return it as the venue then reports it. Only venues whose rules publish
        a lowest settable fraction (``InitialMargin.lowest``) have the setting."""
        raise VenueError(ReasonCode.INVALID_REQUEST, f"{self.venue} has no per-market leverage setting")

    def prime_market_order(self, symbol: str, *, client_id: int | None = None, side: Side | None = None,
                           quantity: Decimal | None = None, reduce_only: bool = False,
                           max_slippage: float | None = None) -> None:
        """Prepare the market order that will probably follow (rules, book, even its signature).

        An armed hedge calls it while it waits for the entry's fill, with the order it expects to
        send; :meth:`submit_market_order` within a short while may use what was prepared when the
        order it is given matches. Best effort: a failed read is left to the order itself. This
        default warms the market rules.
        """
        try:
            self.market_rules(symbol)
        except VenueError as exc:
            log.warning("account=%s priming %s failed (the order will read again): %s", self.account, symbol, exc)

    @abc.abstractmethod
    def submit_market_order(
        self,
        symbol: str,
        client_id: int,
        side: Side,
        quantity: Decimal,
        *,
        reduce_only: bool = False,
        max_slippage: float | None = None,
    ) -> OrderReport:
        """Send one market (IOC) order and return its fill as the venue reports it.

        Does not look the client id up first; the caller does (:meth:`find_order`) when a
        previous attempt may have reached the venue.
        """

    @abc.abstractmethod
    def find_order(self, symbol: str, client_id: int) -> OrderReport | None:
        """The venue's record of ``client_id``; None only when the venue confirms it has none.

        Raises :class:`VenueError` when the venue cannot be asked (unknown is not absent).
        """

    @abc.abstractmethod
    def cancel_order(self, symbol: str, client_id: int) -> OrderReport | None: ...

    @abc.abstractmethod
    def cancel_all(self, symbol: str) -> int:
        """Cancel every open order on ``symbol``; returns how many were cancelled."""

    def flatten(self, symbol: str, client_ids: Iterator[int], *, max_attempts: int = 3) -> FlattenReport:
        """Reduce-only market orders until a fresh read says flat (at most ``max_attempts``)."""
        rules = self.market_rules(symbol)
        orders: list[OrderReport] = []
        reading = self.get_position(symbol)
        for _ in range(max_attempts):
            if reading.quantity is None:
                reading = self.get_position(symbol)
                if reading.quantity is None:
                    continue
            size = rules.quantize_size(abs(reading.quantity))
            if size < rules.step_size:
                return FlattenReport(self.account, symbol, True, tuple(orders), reading)
            if size < rules.min_quantity and not self.closes_below_minimum:
                # Dust: the venue refuses an order this small, so nothing can close it. Report the
                # read instead of raising; the exit's report calls it dust.
                return FlattenReport(self.account, symbol, False, tuple(orders), reading)
            side = Side.to_reduce(reading.quantity)
            orders.append(self.submit_market_order(symbol, next(client_ids), side, size, reduce_only=True))
            reading = self.get_position(symbol)
        flat = reading.quantity is not None and rules.quantize_size(abs(reading.quantity)) < rules.step_size
        return FlattenReport(self.account, symbol, flat, tuple(orders), reading)

    def account_history(self, symbol: str, since_ms: int, until_ms: int) -> AccountHistory:
        """Every fill of ``symbol`` (own and the venue's system orders) and every funding payment on it
        between the two times, from the venue's history endpoints (``venues.ledger``). Raises
        :class:`VenueError` when they cannot be read in full (a partial history would be wrong PnL)."""
        raise VenueError(ReasonCode.INVALID_REQUEST, f"{self.venue} connector has no fill/funding history reader")

    def stream_version(self) -> int | None:
        """A counter the account's live stream bumps on every push; None when no stream is live
        (the default: reads go to REST)."""
        return None

    def wait_stream_change(self, since: int, timeout: float) -> int | None:
        """Block until :meth:`stream_version` passes ``since`` or ``timeout`` passes; the counter
        then, or None when no stream is live."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook; connectors without resources keep it
        """Release sessions, sockets and event loops."""
