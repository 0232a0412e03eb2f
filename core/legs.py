"""A hedge leg as the cycle record holds it (``leg:<name>``): one order of the cycle and where it is.

The entry, the hedges and each rebalance order are legs. A leg is written when its intent is
recorded (``submitting``, or ``armed`` for a presigned hedge), and again with the venue's answer,
which sets ``filled_at``. Every reader (the hand-off, the exit's fill ledger, ``xtb cycle``,
the demo) goes through :class:`Leg`, so a state one module forgets cannot creep back in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any

from venues.base import OrderReport, OrderState, Side, average_price_text


class LegState(str, Enum):
    """Where a leg's order is; the last three are final (the venue will not change them)."""

    #: An armed hedge signed its order before the entry filled and may send it with no further write.
    ARMED = "armed"
    #: The intent is recorded and the order is on its way, or about to be: the venue decides.
    SUBMITTING = "submitting"
    #: The venue accepted it and nothing has filled yet.
    OPEN = "open"
    #: Some of it filled and the rest may still fill.
    PARTIALLY_FILLED = "partially_filled"
    #: Fully filled.
    FILLED = "filled"
    #: Cancelled or expired, possibly after a partial fill (see ``filled``).
    CANCELLED = "cancelled"
    #: Rejected, or never sent (an armed hedge whose entry failed); nothing filled.
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (LegState.FILLED, LegState.CANCELLED, LegState.FAILED)

    @classmethod
    def of_order(cls, state: OrderState) -> LegState:
        # An order not yet sent is, for the cycle, one whose intent is recorded.
        return cls.SUBMITTING if state is OrderState.NEW else cls(state.value)


@dataclass(frozen=True)
class Leg:
    """One leg's order: what was asked, what filled, and when the venue's answer was recorded.

    ``account``, ``symbol``, ``side``, ``client_id``: the order. ``requested``, ``filled``: sizes in
    the venue's units. ``state``: see :class:`LegState`. ``avg_price``, ``venue_order_id``,
    ``reason``, ``existing`` (the venue already had this client id): from the venue's report.
    ``filled_at``: when the venue's answer for the leg was recorded; None while the leg is in
    flight and after an attempt that was refused (the next client id may still follow).
    """

    account: str
    symbol: str
    side: Side
    client_id: int
    requested: Decimal
    filled: Decimal = Decimal(0)
    state: LegState = LegState.SUBMITTING
    avg_price: Decimal | None = None
    venue_order_id: str | None = None
    reduce_only: bool = False
    reason: str | None = None
    existing: bool = False
    filled_at: float | None = None

    @property
    def settled(self) -> bool:
        """The venue's answer is on record: the leg's fill is what it is."""
        return self.filled_at is not None

    @property
    def signed_fill(self) -> Decimal:
        return self.filled * self.side.sign

    @classmethod
    def in_flight(cls, account: str, symbol: str, side: Side, client_id: int, requested: Decimal,
                  state: LegState = LegState.SUBMITTING, reason: str | None = None) -> Leg:
        """A leg whose outcome the venue has not given (``armed``, ``submitting``, or ``failed``
        with nothing sent): an exit's fill ledger leaves it to the venue's read unless final."""
        return cls(account, symbol, side, client_id, requested, state=state, reason=reason)

    @classmethod
    def from_report(cls, account: str, report: OrderReport, *, settled: bool = True) -> Leg:
        """The leg of a venue's report; ``settled`` False for a refused attempt with more ids to try."""
        return cls(account, report.symbol, report.side, report.client_id, report.requested, report.filled,
                   LegState.of_order(report.state), report.avg_price, report.venue_order_id,
                   report.reduce_only, report.reason, report.existing, time.time() if settled else None)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "account": self.account, "symbol": self.symbol, "side": self.side.value, "client_id": self.client_id,
            "requested": str(self.requested), "filled": str(self.filled), "state": self.state.value,
            "avg_price": average_price_text(self.avg_price),
            "venue_order_id": self.venue_order_id, "reduce_only": self.reduce_only, "reason": self.reason,
            "existing": self.existing,
        }
        if self.filled_at is not None:
            data["filled_at"] = self.filled_at
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Leg:
        """Raises ``KeyError``/``ValueError`` on a record that is not a leg (callers treat it as unknown)."""
        return cls(
            account=str(data["account"]), symbol=str(data["symbol"]), side=Side(data["side"]),
            client_id=int(data["client_id"]), requested=Decimal(str(data["requested"])),
            filled=Decimal(str(data.get("filled") or "0")), state=LegState(data["state"]),
            avg_price=None if data.get("avg_price") is None else Decimal(str(data["avg_price"])),
            venue_order_id=data.get("venue_order_id"), reduce_only=bool(data.get("reduce_only", False)),
            reason=data.get("reason"), existing=bool(data.get("existing", False)),
            filled_at=None if data.get("filled_at") is None else float(data["filled_at"]),
        )


def parse_leg(data: Any) -> Leg | None:
    """The leg in a stored value, or None when it is missing or not a leg record."""
    if not isinstance(data, dict):
        return None
    try:
        return Leg.from_json(data)
    except (KeyError, ValueError, TypeError, ArithmeticError):
        return None
