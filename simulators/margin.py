"""Initial and maintenance margin of simulated accounts, and who the liquidation engine closes.

Backpack fractions come from the market's ``imfFunction``/``mmfFunction`` (``max(base, factor × √|q|)``,
captured position fixtures: imf 0.02, mmf 0.0125); Lighter's from the profile
(captured orderBookDetails ETH: default IMF 500 bp, maintenance 120 bp). An account is cross-margined
per venue: the requirement is the sum over its positions of ``|q| × mark × fraction``, and equity is
collateral (fees and funding already taken) plus unrealised PnL at the mark.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from simulators.backpack_model import IMF_FUNCTION, MMF_FUNCTION, margin_fraction
from simulators.profile import MarginProfile

if TYPE_CHECKING:
    from simulators.market import Exchange, SimAccount

#: The simulator's old rule when initial margin is not enforced: at most 50x the equity on the mark.
LEGACY_MAX_LEVERAGE = 50


@dataclass(frozen=True)
class Liquidation:
    """A position the venue closed: by the engine (mark below maintenance) or the admin API."""

    venue: str
    account: str
    base: str
    #: Signed quantity taken away (the whole position, or the closed part of a partial liquidation).
    quantity: Decimal
    price: Decimal
    ts_ms: int
    #: "engine" (maintenance breached) or "admin" (``/_sim/liquidate``).
    cause: str


def initial_fraction(rules: MarginProfile, acct: SimAccount, base: str, quantity: Decimal) -> Decimal:
    if acct.venue == "lighter":
        return acct.initial_fractions.get(base, rules.lighter_imf)
    return margin_fraction(IMF_FUNCTION, quantity)


def maintenance_fraction(rules: MarginProfile, acct: SimAccount, base: str, quantity: Decimal) -> Decimal:
    return rules.lighter_mmf if acct.venue == "lighter" else margin_fraction(MMF_FUNCTION, quantity)


def _requirement(exchange: Exchange, acct: SimAccount, initial: bool,
                 override: tuple[str, Decimal] | None = None) -> Decimal:
    rules = exchange.profile.margin
    fraction = initial_fraction if initial else maintenance_fraction
    sizes = {base: pos.quantity for base, pos in acct.positions.items()}
    if override is not None:
        sizes[override[0]] = override[1]
    return sum((abs(q) * exchange.mark(acct.venue, b) * fraction(rules, acct, b, q)
                for b, q in sizes.items() if q), Decimal(0))


def order_allowed(exchange: Exchange, acct: SimAccount, base: str, new_quantity: Decimal, fee: Decimal) -> bool:
    """Whether the account may hold ``new_quantity`` of ``base`` after this fill (and its fee)."""
    equity = exchange.equity(acct) - fee
    if not exchange.profile.margin.enforce_initial:
        return abs(new_quantity) * exchange.mark(acct.venue, base) <= exchange.equity(acct) * LEGACY_MAX_LEVERAGE
    return _requirement(exchange, acct, True, (base, new_quantity)) <= equity


def leverage_allowed(exchange: Exchange, acct: SimAccount, base: str, fraction: Decimal) -> bool:
    """Whether the account's open positions still meet initial margin at ``fraction`` on ``base``
    (lowering the leverage of a held position must not leave it under-margined)."""
    if not exchange.profile.margin.enforce_initial:
        return True
    rules = exchange.profile.margin
    needed = sum((abs(pos.quantity) * exchange.mark(acct.venue, b)
                  * (fraction if b == base else initial_fraction(rules, acct, b, pos.quantity))
                  for b, pos in acct.positions.items() if pos.quantity), Decimal(0))
    return needed <= exchange.equity(acct)


def below_maintenance(exchange: Exchange, acct: SimAccount) -> bool:
    """Equity under the maintenance requirement of the account's open positions."""
    needed = _requirement(exchange, acct, False)
    return needed > 0 and exchange.equity(acct) < needed
