"""A venue's initial-margin rule for one market, as the venue publishes it (no Celery, no I/O).

Backpack publishes ``imfFunction`` ``{"base", "factor", "type": "sqrt"}`` per market: the fraction
of a position of ``q`` base units is ``max(base, factor × √|q|)`` (backpack-api.md §2.4, the rule
the simulator applies). Lighter publishes ``default_initial_margin_fraction`` in basis points per
market (captured ETH: 500 = 5 %, i.e. 20x); an account trades at that fraction until its leverage
is updated (tx type 20 UpdateLeverage), down to ``min_initial_margin_fraction`` (200 = 50x).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class InitialMargin:
    """Initial-margin fraction of a position: ``max(base, factor × √|quantity|)``."""

    base: Decimal
    factor: Decimal = Decimal(0)
    #: The lowest fraction the account could set (Lighter's ``min_initial_margin_fraction``); None if unpublished.
    lowest: Decimal | None = None

    def fraction(self, quantity: Decimal) -> Decimal:
        return max(self.base, self.factor * abs(quantity).sqrt()) if self.factor else self.base

    def requirement(self, quantity: Decimal, price: Decimal) -> Decimal:
        """The initial margin a position of ``quantity`` at ``price`` needs, in quote currency."""
        return abs(quantity) * price * self.fraction(quantity)

    def to_json(self) -> dict[str, Any]:
        return {"base": str(self.base), "factor": str(self.factor),
                "lowest": None if self.lowest is None else str(self.lowest)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> InitialMargin | None:
        if not data:
            return None
        lowest = data.get("lowest")
        return cls(base=Decimal(str(data["base"])), factor=Decimal(str(data.get("factor") or 0)),
                   lowest=None if lowest in (None, "") else Decimal(str(lowest)))


#: Lighter publishes margin fractions in basis points of notional.
LIGHTER_FRACTION_UNITS = Decimal(10000)
