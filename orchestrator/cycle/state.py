"""The cycle's state as one typed value, :class:`CycleState`, loaded once and saved once per step.

Amounts are ``Decimal``; a position that could not be read is ``None`` (unknown), never zero. The
store (``orchestrator.store``) maps this value to and from the cycle's Redis hash; nothing else
knows that layout's field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

import msgspec

from core.config_schema import GroupConfig, HedgeParams, Role
from core.cycle_fields import ExitReason, Stage
from core.exposure import NetExposure
from core.legs import Leg
from orchestrator.cycle.planning import CyclePlan
from venues.base import MarketRules

#: The size step a decision falls back to when the market's rules were never read (a cycle that
#: failed before planning recorded them): the finest step either venue lists.
DEFAULT_STEP = Decimal("0.0001")
#: The three roles in the order every report lists them.
ROLES = (Role.BP, Role.L1, Role.L2)
LIGHTER_ROLES = (Role.L1, Role.L2)
#: The control loop's stages: a rebalance order is issued under the loop's token (``step_seq``).
LOOP_STAGES = (Stage.REBALANCE, Stage.MONITORING)


class LegName(str, Enum):
    """The entry's legs; the loop's and the exit's orders are numbered (:func:`numbered_leg`)."""

    #: Backpack's market entry.
    BP_ENTRY = "bp_entry"
    #: Lighter1's hedge of the Backpack fill, armed alongside it.
    L1_HEDGE = "l1_hedge"
    #: Lighter1's one top-up when its hedge filled short of the Backpack fill.
    L1_TOPUP = "l1_topup"
    #: Backpack brought down to what Lighter1 hedges, when the top-up was not enough.
    BP_BALANCE = "bp_balance"
    #: Lighter2's entry after the random wait, mirroring Lighter1's fill.
    L2_ENTRY = "l2_entry"

    @property
    def role(self) -> Role:
        """The role whose account sends the leg."""
        if self in (LegName.BP_ENTRY, LegName.BP_BALANCE):
            return Role.BP
        return Role.L2 if self is LegName.L2_ENTRY else Role.L1


def numbered_leg(stem: str, number: int) -> str:
    """The name of the ``number``-th order of a numbered family (``bp_rebalance_3``, ``exit_l1_2``)."""
    return f"{stem}{number}"


class Positions(msgspec.Struct, frozen=True):
    """Signed positions of the three roles; None where the read failed (unknown)."""

    bp: Decimal | None
    l1: Decimal | None
    l2: Decimal | None

    @classmethod
    def zero(cls) -> Positions:
        return cls(Decimal(0), Decimal(0), Decimal(0))

    @classmethod
    def of(cls, values: Mapping[Role, Decimal | None]) -> Positions:
        return cls(values.get(Role.BP), values.get(Role.L1), values.get(Role.L2))

    def get(self, role: Role) -> Decimal | None:
        return {Role.BP: self.bp, Role.L1: self.l1, Role.L2: self.l2}[role]

    def unknown_roles(self) -> list[Role]:
        return [role for role in ROLES if self.get(role) is None]

    @property
    def known(self) -> bool:
        return None not in (self.bp, self.l1, self.l2)

    @property
    def net(self) -> Decimal | None:
        if self.bp is None or self.l1 is None or self.l2 is None:
            return None
        return self.bp + self.l1 + self.l2

    def own(self, baselines: Positions) -> Positions:
        """The cycle's own deltas: each known position less the baseline it started from."""
        def less(x: Decimal | None, base: Decimal | None) -> Decimal | None:
            return None if x is None else x - (base or Decimal(0))

        return Positions(less(self.bp, baselines.bp), less(self.l1, baselines.l1), less(self.l2, baselines.l2))


class Event(msgspec.Struct, frozen=True):
    """A note in the cycle's event log."""

    t: float
    text: str


class LoopState(msgspec.Struct, frozen=True, kw_only=True):
    """The control loop's state (rebalance and monitoring).

    Fields:
      step_seq        the loop's fencing token: only a step issued under it may act, and the step that
                      acts moves it on (compare-and-set in the store), so a cycle runs one loop
      rebalances      rebalance orders placed so far (numbers ``bp_rebalance_<n>``)
      monitoring_started_at  when monitoring began (the cycle's timeout counts from it); None before
      zero_streaks    consecutive fresh reads per Lighter role whose own delta is zero or dust
      unknown_reads   consecutive monitor reads with a position unknown
      exposure        the worst own net the reads saw and how long it stayed beyond one step
      last_read       the latest reading of the three positions, None before the first
    """

    step_seq: int = 0
    rebalances: int = 0
    monitoring_started_at: float | None = None
    zero_streaks: dict[Role, int] = msgspec.field(default_factory=dict)
    unknown_reads: int = 0
    exposure: NetExposure = msgspec.field(default_factory=NetExposure)
    last_read: Positions | None = None


class ExitRead(msgspec.Struct, frozen=True):
    """One read of the exit: the three positions (all known), the group's net of its own deltas, when.

    Fields:
      key        the step it was taken for (attempt × 1000 + step); the record keeps it under ``exit_<key>``
    """

    key: int
    positions: Positions
    net: Decimal
    at: float


class ExitProgress(msgspec.Struct, frozen=True, kw_only=True):
    """The emergency exit's progress; its attempts and reason are ``CycleState.exit_attempts`` /
    ``exit_reason``.

    Fields:
      worst_net     the largest |own net| a read of the exit saw; None before the first read
      worst_net_at  when that read was taken
      orders        exit orders planned so far; the store numbers new ones (``exit_<role>_<n>``) with
                    an atomic increment, so two copies of a step never share a leg name
      last_read     the latest read of the exit, None before the first
      unresolved_since  when the exit's attempts first ran out without confirming flat; it goes on
                    (slower) and pages from then on; None while it has not
      paged_at      when the exit last paged that it is still not flat
      flat_doubted_since  when a flat read first disagreed with the cycle's own Backpack fills; None
                    while none has (see ``FLAT_READ_TRUSTED_SECS``)
    """

    worst_net: Decimal | None = None
    worst_net_at: float | None = None
    orders: int = 0
    last_read: ExitRead | None = None
    unresolved_since: float | None = None
    paged_at: float | None = None
    flat_doubted_since: float | None = None

    def observed(self, read: ExitRead) -> ExitProgress:
        """The progress after ``read``: the latest read, and the worst |net| when it is worse."""
        net = abs(read.net)
        if self.worst_net is None or net > self.worst_net:
            return msgspec.structs.replace(self, last_read=read, worst_net=net, worst_net_at=read.at)
        return msgspec.structs.replace(self, last_read=read)


class CycleState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a decision knows about one cycle.

    Fields:
      cycle_id   the cycle's id
      group      the hedge group as configured when the cycle started: accounts and symbols never
                 follow a config edit while the cycle runs
      params     the effective hedge parameters the cycle started with (config plus overrides)
      stage      where the cycle is; ``emergency_exit`` can follow any stage
      cancel_requested  an operator (or the exit) asked the cycle to stop sending entry orders
      created_at when the cycle's record was written
      plan       sides, sizes, wait and baselines; None until planning recorded it
      rules      each role's market rules at planning (both Lighter roles trade one market)
      legs       every order the cycle recorded, by leg name (``LegName`` values and numbered legs)
      loop       the control loop's state
      exit_attempts  emergency-exit attempts launched so far
      exit_reason    why the exit runs, once it does
      events     the cycle's event log, oldest first
      client_ids the entry legs' client id blocks, recorded at planning
      exit       the emergency exit's progress
      overrides  the parameter overrides the cycle was started with (a multi-cycle run passes them on)
      cycle_index  the cycle's place in a multi-cycle run (0: the first)
      error      why the cycle failed or did not start, once it did
      client_ids the client id blocks planning allocated to the entry's legs (each leg's retries
                 use its block in order; their intents are recorded with the plan)
      exit       the emergency exit's progress
    """

    cycle_id: str
    group: GroupConfig
    params: HedgeParams
    stage: Stage
    cancel_requested: bool = False
    created_at: float = 0.0
    plan: CyclePlan | None = None
    rules: dict[Role, MarketRules] = msgspec.field(default_factory=dict)
    legs: dict[str, Leg] = msgspec.field(default_factory=dict)
    loop: LoopState = msgspec.field(default_factory=LoopState)
    exit_attempts: int = 0
    exit_reason: ExitReason | None = None
    events: tuple[Event, ...] = ()
    client_ids: dict[LegName, list[int]] = msgspec.field(default_factory=dict)
    exit: ExitProgress = msgspec.field(default_factory=ExitProgress)
    overrides: dict[str, Any] = msgspec.field(default_factory=dict)
    cycle_index: int = 0
    error: str | None = None

    @property
    def baselines(self) -> Positions:
        """The positions the accounts held before the cycle; zero where the plan recorded none."""
        recorded = self.plan.baselines if self.plan is not None else {}
        return Positions(*(Decimal(str(recorded.get(role.short) or 0)) for role in ROLES))

    def step_of(self, role: Role) -> Decimal:
        """The size step of ``role``'s market, :data:`DEFAULT_STEP` while its rules are unknown."""
        rules = self.rules.get(role)
        return rules.step_size if rules is not None else DEFAULT_STEP

    def minimum_of(self, role: Role) -> Decimal:
        """The smallest order ``role``'s market takes (zero while its rules are unknown)."""
        rules = self.rules.get(role)
        return rules.min_quantity if rules is not None else Decimal(0)

    def role_of(self, account: str) -> Role | None:
        return next((role for role in ROLES if self.group.account_for(role) == account), None)

    def ledger(self) -> dict[Role, Decimal]:
        """Each role's position as the cycle's own recorded orders put it: its baseline plus every
        final leg's signed fill. A role with a leg still in flight is left out: that order can still
        fill, so only the venue's read can say where the role is. The venue's own trades on the
        account (a liquidation, ADL) are not legs: the ledger is what the cycle did, not the venue."""
        baselines = self.baselines
        expected = {role: baselines.get(role) or Decimal(0) for role in ROLES}
        for leg in self.legs.values():
            role = self.role_of(leg.account)
            if role is None or role not in expected:
                continue
            if not leg.state.final:
                expected.pop(role)
                continue
            expected[role] += leg.signed_fill
        return expected

    @property
    def finished(self) -> bool:
        return self.stage is Stage.DONE

    def current_attempt(self, attempt: int) -> bool:
        """Exit attempt ``attempt`` is the current one (``exit_attempts`` names it); a step of an
        attempt that another replaced (the watchdog, a failure), or of a cycle no longer exiting,
        does nothing."""
        return self.stage is Stage.EMERGENCY_EXIT and self.exit_attempts == attempt + 1

    @property
    def exiting(self) -> bool:
        return self.stage in (Stage.EMERGENCY_EXIT, Stage.DONE)
