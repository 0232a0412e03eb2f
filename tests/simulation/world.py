"""The simulated world a fault schedule runs in: a venue that keeps every order it was sent (with its
client id) and fails reads in stretches, and a store that keeps the watchdog's deadline as the Redis
store does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from core.config_schema import Role
from core.cycle_fields import Stage
from core.policies import DEFAULT_STEP_GRACE_SECS, watchdog_grace
from orchestrator.cycle.commands import Command, Decision
from orchestrator.cycle.state import CycleState
from tests.simulation.memory import MemoryStore, MemoryVenue, VirtualClock
from venues.base import MarketRules, Side


@dataclass(frozen=True)
class VenueOrder:
    """One order the venue received.

    Fields:
      at        virtual time it reached the venue
      stage     the cycle's stage then (the store's)
      leg       the leg the cycle recorded its intent under
      before    the account's position just before it
      rejected  below the venue's minimum: nothing filled
    """

    at: float
    account: str
    client_id: int
    leg: str
    side: Side
    requested: Decimal
    filled: Decimal
    reduce_only: bool
    stage: Stage
    before: Decimal
    rejected: bool = False
    #: The group's net (every account's position; the baselines are zero) when the order arrived,
    #: less the Lighter positions below their market's minimum order (dust no order can close).
    group_before: Decimal = Decimal(0)


@dataclass
class SimVenue(MemoryVenue):
    """Three accounts' positions; every order kept by client id, reads failing in stretches."""

    clock: VirtualClock = field(default_factory=VirtualClock)
    #: Per account, (start, end) virtual times of the stretches its reads fail.
    outages: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    rules: dict[str, MarketRules] = field(default_factory=dict)
    sent: list[VenueOrder] = field(default_factory=list)
    #: Client ids received twice under a different leg (the *once* invariant reads it).
    duplicates: list[VenueOrder] = field(default_factory=list)
    #: (account, client id) the cycle recorded as never placed, and when: another order may go in
    #: its place from then on, so this one reaching the venue later is an order sent twice.
    written_off: dict[tuple[str, int], float] = field(default_factory=dict)
    #: Orders that reached the venue after the cycle wrote them off (the *once* invariant reads it).
    revived: list[VenueOrder] = field(default_factory=list)
    failed_reads: int = 0
    last_failed_read: float = float("-inf")

    def unreadable_now(self, account: str) -> bool:
        now = self.clock.time
        return any(start <= now < end for start, end in self.outages.get(account, ()))

    def read(self, account: str) -> dict[str, Any]:
        if self.unreadable_now(account):
            self.failed_reads += 1
            self.last_failed_read = self.clock.time
            return {"account": account, "quantity": None, "error": "venue unreachable"}
        return super().read(account)

    def net_beyond_dust(self) -> Decimal:
        def dust(account: str, position: Decimal) -> bool:
            rules = self.rules[account]
            return account != "bp" and 0 < abs(position) < max(rules.step_size, rules.min_quantity)

        return sum((q for a, q in self.positions.items() if not dust(a, q)), Decimal(0))

    def find(self, account: str, client_id: int) -> VenueOrder | None:
        """The order the venue holds under ``client_id`` (what a connector's ``find_order`` answers)."""
        return next((o for o in self.sent if o.account == account and o.client_id == client_id), None)

    def send(self, account: str, client_id: int, leg: str, side: Side, quantity: Decimal, *, reduce_only: bool,
             stage: Stage, fraction: Decimal = Decimal(1)) -> VenueOrder:
        """Fill ``fraction`` of ``quantity`` (on the market's step), reduce-only never past zero; an
        order below the market's minimum is rejected whole. The same client id again is the same
        order: its outcome is answered, nothing is sent twice (unless it names another leg)."""
        known = self.find(account, client_id)
        if known is not None and known.leg == leg:
            return known
        rules = self.rules[account]
        held = self.positions.get(account, Decimal(0))
        want = quantity
        if reduce_only:
            want = min(want, abs(held)) if held * side.sign < 0 else Decimal(0)
        filled = rules.quantize_size(want * fraction)
        rejected = quantity < rules.min_quantity
        if rejected:
            filled = Decimal(0)
        order = VenueOrder(self.clock.time, account, client_id, leg, side, quantity, filled, reduce_only, stage, held,
                           rejected, self.net_beyond_dust())
        if known is not None:
            self.duplicates.append(order)
        if (account, client_id) in self.written_off:
            self.revived.append(order)
        self.sent.append(order)
        if filled:
            self.orders.append((account, side, filled))
            self.positions[account] = held + side.sign * filled
        return order


@dataclass
class SimStore(MemoryStore):
    """:class:`MemoryStore` that keeps the watchdog's deadline and last write as the Redis store does
    (``next_deadline``: now + ``next_within`` + the grace of the stage the step leaves the cycle in;
    a stage change without one clears it). ``grace`` is the deployment's step grace; a stage's is
    the product's :func:`~core.policies.watchdog_grace` of it."""

    clock: VirtualClock = field(default_factory=VirtualClock)
    grace: float = DEFAULT_STEP_GRACE_SECS
    deadline: dict[str, float] = field(default_factory=dict)
    updated: dict[str, float] = field(default_factory=dict)

    def stage_grace(self, cycle_id: str) -> float:
        """The watchdog's grace for the cycle in its current stage (``core.cycle_record.stage_grace``)."""
        return watchdog_grace(self.states[cycle_id].stage, self.grace)

    def save(self, before: CycleState, decision: Decision, now: float) -> list[Command]:
        stage = self.states[before.cycle_id].stage
        out = super().save(before, decision, now)
        self.touch(before.cycle_id)
        if decision.next_within is not None:
            self.deadline[before.cycle_id] = now + decision.next_within + watchdog_grace(decision.state.stage,
                                                                                         self.grace)
        elif decision.state.stage is not stage:
            self.deadline[before.cycle_id] = 0.0
        return out

    def touch(self, cycle_id: str, deadline: float | None = None) -> None:
        """A write to the record (the venue side's too); ``deadline``: it sets the next one."""
        self.updated[cycle_id] = self.clock.time
        if deadline is not None:
            self.deadline[cycle_id] = deadline

    def overdue(self, cycle_id: str) -> bool:
        """The watchdog's test (``orchestrator.recovery.overdue``)."""
        now, deadline = self.clock.time, self.deadline.get(cycle_id, 0.0)
        return bool(deadline) and now > deadline and now - self.updated.get(cycle_id, 0.0) > self.stage_grace(cycle_id)


def roles_positions(venue: MemoryVenue, state: CycleState) -> dict[Role, Decimal]:
    """Venue truth per role."""
    return {role: venue.positions.get(state.group.account_for(role), Decimal(0)) for role in (Role.BP, Role.L1, Role.L2)}


def own_deltas(venue: MemoryVenue, state: CycleState) -> dict[Role, Decimal]:
    """Each role's position at the venue less the cycle's baseline."""
    base = state.baselines
    return {role: q - (base.get(role) or Decimal(0)) for role, q in roles_positions(venue, state).items()}


def closable(state: CycleState, role: Role) -> Decimal:
    """The smallest own delta that is exposure, not dust: the larger of the market's step and minimum."""
    return max(state.step_of(role), state.minimum_of(role))


def sorted_items(values: dict[str, Any]) -> Sequence[tuple[str, Any]]:
    return sorted(values.items())
