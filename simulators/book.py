"""The seeded price and multi-level book of one base asset, shared by both simulated venues.

One mid per asset; Lighter quotes ``lighter_offset`` above Backpack (a spread between the venues).
The book's shape comes from :class:`profile.DepthProfile`: ``levels`` per side, ``level_step`` apart,
sizes ``level_size × (1 + size_growth)^i`` with an optional seeded jitter, so the same seed always
gives the same book. A market order walks it level by level; past the last level there is nothing,
which is how a thin book leaves an IOC remainder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal

from simulators.profile import DepthProfile

Level = tuple[Decimal, Decimal]


def level_sizes(depth: DepthProfile, base: str) -> tuple[Decimal, ...]:
    """Size of each level, best first (seeded per asset, so BTC and ETH books differ but repeat)."""
    rng = random.Random(f"{depth.seed}:{base}")
    sizes = []
    for i in range(depth.levels):
        size = depth.level_size * (1 + depth.size_growth) ** i
        if depth.size_jitter:
            size *= 1 + Decimal(str(rng.uniform(-1, 1))) * depth.size_jitter
        sizes.append(size)
    return tuple(sizes)


@dataclass
class PriceModel:
    base: str
    mid: Decimal
    depth: DepthProfile = field(default_factory=DepthProfile)
    #: Lighter quotes at ``mid × (1 + lighter_offset)``: a spread between the venues.
    lighter_offset: Decimal = Decimal("0.0003")
    #: A venue whose book differs from ``depth`` (a thin Lighter book, set through ``/_sim/depth``).
    venue_depth: dict[str, DepthProfile] = field(default_factory=dict)
    _sizes: dict[DepthProfile, tuple[Decimal, ...]] = field(default_factory=dict)

    @property
    def half_spread(self) -> Decimal:
        return self.depth.half_spread

    def depth_of(self, venue: str) -> DepthProfile:
        return self.venue_depth.get(venue, self.depth)

    def venue_mid(self, venue: str) -> Decimal:
        return self.mid * (1 + self.lighter_offset) if venue == "lighter" else self.mid

    def book(self, venue: str) -> tuple[list[Level], list[Level]]:
        """(bids best-first, asks best-first) as (price, size)."""
        mid = self.venue_mid(venue)
        depth = self.depth_of(venue)
        sizes = self._sizes.get(depth)
        if sizes is None:
            sizes = self._sizes[depth] = level_sizes(depth, self.base)
        bids, asks = [], []
        for i, size in enumerate(sizes):
            off = depth.half_spread + depth.level_step * i
            bids.append((mid * (1 - off), size))
            asks.append((mid * (1 + off), size))
        return bids, asks


def walk(levels: list[Level], quantity: Decimal, sign: int, worst_price: Decimal | None) -> tuple[Decimal, Decimal]:
    """Take ``quantity`` from ``levels`` (best first) up to ``worst_price``: (filled, notional)."""
    left, notional = quantity, Decimal(0)
    for price, size in levels:
        if left <= 0:
            break
        if worst_price is not None and ((sign > 0 and price > worst_price) or (sign < 0 and price < worst_price)):
            break
        take = min(left, size)
        left -= take
        notional += take * price
    return quantity - left, notional
