"""The faults a seeded schedule injects, and the scenario one seed draws.

Everything is drawn from one ``random.Random(seed)``: first the scenario (sizes, rules, timings and
each fault's probability), then, while the simulation runs, each delivery's fate in event order.
So a seed is a complete description of a run: the same seed gives the same trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum

from core.config_schema import Direction, Role


class Delivery(str, Enum):
    """What happens to one task the cycle published (a step, a read, an order)."""

    #: Runs when due.
    ON_TIME = "on_time"
    #: Runs late by an extra virtual delay.
    LATE = "late"
    #: Runs when due and once more later (a redelivered message).
    TWICE = "twice"
    #: Never runs: its worker died before the side effect (an order leaves only its intent).
    CRASH_BEFORE = "crash_before"
    #: The side effect happens (an order reaches the venue) but its result is lost: nothing follows.
    CRASH_AFTER = "crash_after"
    #: An order's send hangs: the venue gets it only some seconds later, and nothing follows it.
    IN_FLIGHT = "in_flight"


class Liquidation(str, Enum):
    """What the venue does to the Lighter legs while the cycle monitors."""

    #: Nothing: the cycle ends on its timeout (or a cancel).
    NONE = "none"
    #: Lighter1 closed to zero.
    L1_FULL = "l1_full"
    #: Lighter2 closed to zero.
    L2_FULL = "l2_full"
    #: Both Lighter legs closed to zero, a moment apart.
    BOTH_FULL = "both_full"
    #: Part of Lighter1 closed (on its step; what is left may be dust below the venue minimum).
    L1_PARTIAL = "l1_partial"
    #: Part of Lighter2 closed.
    L2_PARTIAL = "l2_partial"


#: The longest read outage of the accounts other than the one a seed's long outage hits.
SHORT_OUTAGE_SECS = 10.0


@dataclass(frozen=True)
class Rates:
    """Each fault's probability (per delivery, per order, per run) and bounds, as the seed drew them.

    Fields:
      late, twice, crash_before, crash_after, in_flight  per delivery of a task
      late_max_secs   the longest extra delay of a late task (and the latest second copy)
      in_flight_max_secs  the longest hang of an order's send before the venue gets it
      outages         read-failure stretches per account (each unreadable for a while)
      outage_max_secs the longest stretch
      exit_partial, exit_none  per exit order: fills a fraction (on the venue's step), or nothing
      cancel_at       when an operator cancels (virtual seconds from the start), None: never
    """

    late: float = 0.0
    twice: float = 0.0
    crash_before: float = 0.0
    crash_after: float = 0.0
    in_flight: float = 0.0
    late_max_secs: float = 3.0
    in_flight_max_secs: float = 15.0
    outages: int = 0
    outage_max_secs: float = 10.0
    exit_partial: float = 0.0
    exit_none: float = 0.0
    cancel_at: float | None = None

    @property
    def crashes(self) -> bool:
        """Some task can be lost: only the watchdog's sweep moves the cycle on then."""
        return self.crash_before > 0 or self.crash_after > 0 or self.in_flight > 0


@dataclass(frozen=True)
class Scenario:
    """One seed's cycle: its parameters, the venues' rules, the market's events and the fault rates.

    Fields:
      size          the Backpack entry size
      l_min         Lighter's minimum order (its step is 0.0001): a leftover below it is dust
      wait_secs     the random wait before Lighter2 enters (min = max: the plan draws it exactly)
      timeout_secs  the monitoring deadline
      liquidation   what the venue does to the Lighter legs, ``liquidate_after`` seconds into monitoring
      fraction      the part a partial liquidation closes
      adl           the fraction an auto-deleverage takes off the surviving leg after a liquidation (0: none)
      outages       per account: (start, length) of each stretch its reads fail, from the start
      starts        (when, who) of each other trigger starting a cycle of the group: beat, the CLI,
                    a second orchestrator; two at the same instant race
    """

    seed: int
    direction: Direction
    size: Decimal
    l_min: Decimal
    wait_secs: float
    timeout_secs: float
    liquidation: Liquidation
    liquidate_after: float
    fraction: Decimal
    adl: Decimal
    rates: Rates
    outages: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    starts: tuple[tuple[float, str], ...] = ()


#: Who else starts cycles of the group.
TRIGGERS = ("beat", "the CLI", "a second orchestrator")


def draw_starts(seed: int, timeout_secs: float) -> tuple[tuple[float, str], ...]:
    """Other triggers' starts, from a generator of their own (the rest of the seed's draws, and so
    every seed's trace before the first start, stay as they were): none to three, any time while
    the cycle runs or after it, sometimes two at one instant."""
    rng = random.Random(f"starts-{seed}")
    starts = []
    for _ in range(rng.randrange(4)):
        at = round(rng.uniform(0.0, timeout_secs + 120.0), 3)
        starts.append((at, TRIGGERS[rng.randrange(len(TRIGGERS))]))
        if rng.random() < 0.3:
            starts.append((at, TRIGGERS[rng.randrange(len(TRIGGERS))]))
    return tuple(sorted(starts))


def _pick(rng: random.Random, *values: float) -> float:
    return values[rng.randrange(len(values))]


def draw_rates(rng: random.Random) -> Rates:
    """Each fault's probability for one seed: off for some seeds, rare or frequent for others."""
    return Rates(late=_pick(rng, 0.0, 0.05, 0.15), twice=_pick(rng, 0.0, 0.05, 0.1),
                 crash_before=_pick(rng, 0.0, 0.0, 0.02, 0.05), crash_after=_pick(rng, 0.0, 0.0, 0.02, 0.05),
                 in_flight=_pick(rng, 0.0, 0.0, 0.05), outages=int(_pick(rng, 0, 0, 1, 2)),
                 exit_partial=_pick(rng, 0.0, 0.2, 0.5), exit_none=_pick(rng, 0.0, 0.1, 0.3),
                 cancel_at=rng.uniform(0.0, 80.0) if rng.random() < 0.1 else None,
                 # Some seeds' outages outlast the exit's quick attempts (about 45 s): it goes on unresolved.
                 outage_max_secs=_pick(rng, 10.0, 10.0, 10.0, 90.0))


def draw(seed: int) -> tuple[Scenario, random.Random]:
    """The scenario of ``seed`` and the generator that goes on to draw its deliveries' fates."""
    rng = random.Random(seed)
    rates = draw_rates(rng)
    direction = Direction.LONG_BACKPACK if rng.random() < 0.5 else Direction.SHORT_BACKPACK
    size = Decimal(str(_pick(rng, 0.5, 1.0, 1.5, 2.0, 0.37)))
    l_min = Decimal(str(_pick(rng, 0.005, 0.01, 0.05)))
    liquidation = list(Liquidation)[rng.randrange(len(Liquidation))]
    fraction = Decimal(str(round(rng.uniform(0.2, 0.999), 3)))
    adl = Decimal(str(round(rng.uniform(0.1, 0.6), 2))) if rng.random() < 0.3 else Decimal(0)
    timeout = float(rng.randrange(30, 90))
    outages: dict[str, list[tuple[float, float]]] = {}
    long_one = ("bp", "l1", "l2")[rng.randrange(3)]  # a long outage hits one venue account, as a venue's does
    for account in ("bp", "l1", "l2"):
        longest = rates.outage_max_secs if account == long_one else min(rates.outage_max_secs, SHORT_OUTAGE_SECS)
        outages[account] = sorted((rng.uniform(0.0, 120.0), rng.uniform(0.5, longest)) for _ in range(rates.outages))
    scenario = Scenario(seed=seed, direction=direction, size=size, l_min=l_min, wait_secs=round(rng.uniform(0.5, 3), 2),
                        timeout_secs=timeout, liquidation=liquidation,
                        liquidate_after=round(rng.uniform(0.5, timeout * 0.9), 2),
                        fraction=fraction, adl=adl, rates=rates, outages=outages,
                        starts=draw_starts(seed, timeout))
    return scenario, rng


def delivery(rng: random.Random, rates: Rates, *, order: bool) -> Delivery:
    """One task's fate; ``order``: it sends an order (it can hang mid-send)."""
    r = rng.random()
    for fate, p in ((Delivery.LATE, rates.late), (Delivery.TWICE, rates.twice),
                    (Delivery.CRASH_BEFORE, rates.crash_before), (Delivery.CRASH_AFTER, rates.crash_after),
                    (Delivery.IN_FLIGHT, rates.in_flight if order else 0.0)):
        if r < p:
            return fate
        r -= p
    return Delivery.ON_TIME


LOST = (Delivery.CRASH_BEFORE, Delivery.CRASH_AFTER, Delivery.IN_FLIGHT)


#: The roles a liquidation kind closes, in order.
LIQUIDATED: dict[Liquidation, tuple[Role, ...]] = {
    Liquidation.NONE: (), Liquidation.L1_FULL: (Role.L1,), Liquidation.L2_FULL: (Role.L2,),
    Liquidation.BOTH_FULL: (Role.L1, Role.L2), Liquidation.L1_PARTIAL: (Role.L1,), Liquidation.L2_PARTIAL: (Role.L2,),
}
