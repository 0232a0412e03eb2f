"""An account's fill and funding records over a time window, venue-neutral: the input of
a cycle's realised PnL split into trading, fees and funding.

What :meth:`venues.base.VenueConnector.account_history` returns: every fill of one symbol (the
account's own orders, with their client ids, and the venue's system orders such as liquidations)
and every funding payment, as the venue's history endpoints publish them. Which of them belong to a
hedge cycle, and the PnL they add up to, is decided above (``orchestrator.pnl_split``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from venues.base import Side


@dataclass(frozen=True)
class FillRecord:
    """One fill. ``fee`` is what the account paid, in the quote asset (a rebate is negative); None when
    the venue charged it in another asset (no price to convert it here: unknown, not zero).
    ``system``: a fill of the venue's own order (liquidation, deleverage), which has no client id."""

    client_id: int | None
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal | None
    ts_ms: int
    system: bool = False
    #: The quote amount when the venue states it (Lighter ``usd_amount``): exact where ``price`` is
    #: rounded to the tick.
    notional: Decimal | None = None

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity * self.side.sign

    @property
    def signed_notional(self) -> Decimal:
        """Quote paid (+, a buy) or received (−, a sell)."""
        amount = self.notional if self.notional is not None else self.quantity * self.price
        return amount * self.side.sign

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "side": self.side.value, "quantity": str(self.quantity),
                "price": str(self.price), "fee": None if self.fee is None else str(self.fee), "ts_ms": self.ts_ms,
                "system": self.system, "notional": None if self.notional is None else str(self.notional)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FillRecord:
        cid, fee, notional = data.get("client_id"), data.get("fee"), data.get("notional")
        return cls(client_id=None if cid is None else int(cid), side=Side(data["side"]),
                   quantity=Decimal(str(data["quantity"])), price=Decimal(str(data["price"])),
                   fee=None if fee is None else Decimal(str(fee)), ts_ms=int(data["ts_ms"]),
                   system=bool(data.get("system")), notional=None if notional is None else Decimal(str(notional)))


@dataclass(frozen=True)
class FundingRecord:
    """One funding payment on the symbol's position: ``amount`` in the quote asset, + received, − paid."""

    amount: Decimal
    ts_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"amount": str(self.amount), "ts_ms": self.ts_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FundingRecord:
        return cls(Decimal(str(data["amount"])), int(data["ts_ms"]))


@dataclass(frozen=True)
class AccountHistory:
    """Fills and funding of ``symbol`` on one account between ``since_ms`` and ``until_ms`` (inclusive)."""

    account: str
    symbol: str
    since_ms: int
    until_ms: int
    fills: tuple[FillRecord, ...]
    funding: tuple[FundingRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {"account": self.account, "symbol": self.symbol, "since_ms": self.since_ms, "until_ms": self.until_ms,
                "fills": [f.to_json() for f in self.fills], "funding": [f.to_json() for f in self.funding]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AccountHistory:
        return cls(account=str(data["account"]), symbol=str(data["symbol"]), since_ms=int(data["since_ms"]),
                   until_ms=int(data["until_ms"]),
                   fills=tuple(FillRecord.from_json(f) for f in data.get("fills") or []),
                   funding=tuple(FundingRecord.from_json(f) for f in data.get("funding") or []))


def iso_utc_ms(text: str) -> int:
    """Milliseconds of a naive UTC ISO time as Backpack writes them (``2025-04-02T12:57:56.809``)."""
    parsed = datetime.fromisoformat(text.rstrip("Z"))
    return int(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp() * 1000)
