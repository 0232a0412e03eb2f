"""After the first two legs: top the Lighter1 hedge up, or bring Backpack down to it (issue 16 item 6).

A thin Lighter book fills an IOC hedge in part. Accepting a 30 % fill as the hedge left the group
naked by the rest during the random wait, and Lighter2, sized from the Backpack fill, ended
unequal to Lighter1. The rule: the hedge is done at 99 % of the Backpack fill, or after one
top-up of the remainder sent at once; whatever Lighter1 still lacks is taken off Backpack
(reduce-only), so the net during the wait is within one Backpack step; Lighter2 then mirrors
Lighter1's actual fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_DOWN, ROUND_HALF_UP, Decimal

from venues.base import MarketRules

#: A hedge leg filled to this fraction of its target is done (no top-up for the last percent).
FULL_FILL = Decimal("0.99")


def mirror_quantity(rules: MarketRules, filled: Decimal) -> Decimal:
    """The hedge size for a fill: the fill on this venue's grid, never below its minimum."""
    return max(rules.quantize_size(filled, rounding=ROUND_HALF_UP), rules.min_quantity)


@dataclass(frozen=True)
class EntryBalance:
    """The next order of the entry's balance, at most one of them; neither when balanced.

    Fields:
      topup       Lighter1 quantity still to hedge (sent once, at once)
      bp_reduce   Backpack reduce-only quantity that brings it to Lighter1's fill
    """

    topup: Decimal | None = None
    bp_reduce: Decimal | None = None


def balance_entry(bp_filled: Decimal, l1_filled: Decimal, l_rules: MarketRules, bp_rules: MarketRules, *,
                  topped_up: bool) -> EntryBalance:
    """What to send next, from the two legs' recorded fills (unsigned quantities)."""
    target = mirror_quantity(l_rules, bp_filled)  # what the armed hedge was sized to
    remainder = l_rules.quantize_size(target - l1_filled, rounding=ROUND_DOWN)
    if (not topped_up and l1_filled < target * FULL_FILL and remainder >= l_rules.min_quantity
            and remainder >= l_rules.step_size):
        return EntryBalance(topup=remainder)
    # Backpack holds more than Lighter1 hedges: take the difference off, to the Backpack grid point
    # nearest Lighter1 (a tie staying put), and only when that strictly reduces the gap.
    excess = bp_filled - l1_filled
    quantity = bp_rules.quantize_size(max(excess, Decimal(0)), rounding=ROUND_HALF_DOWN)
    if quantity >= bp_rules.step_size and quantity >= bp_rules.min_quantity and abs(excess - quantity) < abs(excess):
        return EntryBalance(bp_reduce=quantity)
    return EntryBalance()
