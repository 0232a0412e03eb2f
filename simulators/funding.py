"""Periodic funding payments on open positions (profile.FundingProfile).

Each interval every open position pays or receives ``rate × |q| × mark``: longs pay a positive rate,
shorts receive it (the perpetual-swap convention both venues use; Backpack publishes the payments at
``GET /wapi/v1/history/funding``, positive received and negative paid; Lighter at
``GET /api/v1/positionFunding``, lighter-sdk 1.1.8 ``AccountApi.position_funding``). The amount moves
the account's collateral at once, so equity shows it, and adds to the position's cumulative funding.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.market import Exchange


@dataclass(frozen=True)
class FundingPayment:
    """One settlement of one position."""

    funding_id: int
    venue: str
    account: str
    base: str
    #: Signed position size at the settlement.
    position: Decimal
    rate: Decimal
    mark: Decimal
    #: Signed payment: positive received, negative paid.
    amount: Decimal
    ts_ms: int


def settle(exchange: Exchange, now_ms: int, first_id: int) -> list[FundingPayment]:
    """Pay one interval's funding on every open position (call under ``exchange.lock``)."""
    paid: list[FundingPayment] = []
    for acct in exchange.accounts.values():
        rate = exchange.profile.funding.rate(acct.venue)
        for base, pos in acct.positions.items():
            if not pos.quantity:
                continue
            mark = exchange.mark(acct.venue, base)
            amount = -pos.quantity * mark * rate
            acct.collateral += amount
            pos.cumulative_funding += amount
            paid.append(FundingPayment(first_id + len(paid), acct.venue, acct.key, base, pos.quantity, rate,
                                       mark, amount, now_ms))
    return paid
