"""A venue's initial-margin rule for one market, as the venue publishes it (no Celery, no I/O).

Backpack publishes ``imfFunction`` ``{"base", "factor", "type": "sqrt"}`` per market: the fraction
of a position of ``q`` base units is ``max(base, factor × √|q|)`` (the rule the simulator applies).
Lighter publishes ``default_initial_margin_fraction`` in basis points per market (captured ETH:
500 = 5 %, i.e. 20x); an account trades at that fraction until its leverage is updated (tx type 20
UpdateLeverage), down to ``min_initial_margin_fraction`` (200 = 50x).
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


def leverage_fraction(leverage: Decimal) -> int:
    """The initial-margin fraction, in basis points, lighter-sdk's ``update_leverage`` sends for
    ``leverage``: ``int(10000 / leverage)`` (truncated, so 3x is 3333, slightly above 1/3)."""
    return int(LIGHTER_FRACTION_UNITS / leverage)


def leverage_update(rule: InitialMargin | None, account_fraction: Decimal | None, leverage: Decimal) -> int | None:
    """The fraction (basis points) to set so an account can trade at ``leverage``, or None when it
    already can or the venue has no per-account setting.

    Only venues that publish a lowest settable fraction (Lighter's ``min_initial_margin_fraction``)
    have one. The account trades at its own fraction where it reports one, else at the market's
    default (``rule.base``). The bot only ever lowers the fraction (raises the leverage), never below
    the market's lowest: a leverage the venue does not offer is set to its highest, and planning's
    margin check then refuses what that cannot carry.
    """
    if rule is None or rule.lowest is None:
        return None
    current = rule.base if account_fraction is None else account_fraction
    wanted = max(leverage_fraction(leverage), int(rule.lowest * LIGHTER_FRACTION_UNITS))
    return wanted if wanted < current * LIGHTER_FRACTION_UNITS else None
