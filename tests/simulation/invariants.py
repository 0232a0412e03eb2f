"""The desk's rules as code, checked after every event a fault schedule runs.

Each rule is a function of the simulated world (venue truth: positions and every order with its
client id; the store's states; virtual time) returning a violation text or None. Some rules are
about durations; :class:`Watch` keeps the clocks they need and the worst measurement of each.

Bounds (virtual seconds):

* *in step*: the legging window is one order's round trip as the seed's faults can stretch it:
  a poll interval and the zero re-reads (an order waits at most that long for the read that sends
  its match), the longest late delivery, the time some account's reads fail (unknown is never
  traded), and when tasks can be lost a recovery for each one lost (:func:`recovery_secs`: the
  watchdog's grace of the cycle's stage when the task was lost, ``core.policies.watchdog_grace``,
  the step grace outside the exit and the shorter exit grace in it; the sweep interval, since only
  the sweep moves a cycle whose message was lost; and an order's settle time), the pace of an
  unresolved exit's attempts when reads can fail past its quick attempts, plus one try per order
  the venue filled nothing of, plus one second of slack. The first recovery is counted at the step
  grace, the longest; each further loss at its own. See :func:`legging_bound` and
  :meth:`Watch.in_step`.
* *seen*: ``reconcile_secs + 1`` (the Lighter connector's REST reconciliation, 10 s by default:
  a liquidation the push stream lost is read by REST within it), stretched as the in-step bound is
  by what no decision can shorten: the time reads fail (unknown is never zero), the longest late
  delivery, and when tasks can be lost their recoveries.
* *live*: the cycle is done within ``run.HORIZON_SECS`` (400 s) past its timeout, and no decision
  raises. Lost tasks are not spaced: an exit that loses a step in most attempts ends in time only
  because each lost exit step costs the exit's grace and a sweep, not the step grace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum

from core.config_schema import Role
from core.cycle_fields import Outcome, Stage
from core.policies import ORDER_SETTLE_SECS, UNRESOLVED_RETRY_SECS, WATCHDOG_INTERVAL_SECS
from orchestrator.cycle.state import LIGHTER_ROLES, ROLES, CycleState
from tests.simulation.faults import SHORT_OUTAGE_SECS, Rates
from tests.simulation.world import SimStore, SimVenue, closable, own_deltas
from venues.lighter.reconcile import DEFAULT_RECONCILE_SECS

#: The Lighter connector's REST reconciliation period (``reconcile_secs``' default).
RECONCILE_SECS = DEFAULT_RECONCILE_SECS


class Rule(str, Enum):
    """The invariants, in the order they are checked after an event."""

    #: No client order id reaches the venue twice for two legs; no leg is sent under two ids; no
    #: order reaches the venue after the cycle took it as never placed (its outcome was unknown).
    ONCE = "once"
    #: No exit order takes a role past its baseline; no order reaches the venue after the cycle is done.
    OWN = "own"
    #: At most one cycle of the group is not done.
    ALONE = "alone"
    #: A flat end is flat at the venue; a cycle flat at the venue whose exit reads all answered is not unresolved.
    TRUTHFUL = "truthful"
    #: The cycle never ends while its own exposure is open at the venue: unresolved is a state the
    #: exit goes on in, never an end.
    PERSISTENT = "persistent"
    #: A liquidation (or a partial one that leaves the net off-step) is acted on within reconcile_secs + 1.
    SEEN = "seen"
    #: The group's own net stays within one Backpack step but for a legging window of bounded length.
    IN_STEP = "in_step"
    #: The cycle ends before the run's horizon (its timeout, 400 s, and each lost task's recovery);
    #: no decision raises.
    LIVE = "live"


class Broken(AssertionError):
    """An invariant broke: the seed, the rule, its text and the trace's tail."""

    def __init__(self, seed: int, rule: Rule, text: str, tail: list[str]) -> None:
        self.seed, self.rule, self.text, self.tail = seed, rule, text, tail
        trace = "\n  ".join(tail)
        super().__init__(f"seed {seed}: invariant {rule.value} broken: {text}\n  trace tail:\n  {trace}")


def total_outage(outages: Iterable[tuple[float, float]], chain_within: float = 0.0) -> float:
    """The time some account's reads fail, in all ((start, length) spans). Spans of different
    accounts chain when they overlap or the gap between them is shorter than ``chain_within`` (a
    poll interval: the one read in the gap can still miss it), because a decision needs all three
    reads; the stretches add up, since each holds the cycle back in turn."""
    total, start, end = 0.0, None, None
    for begin, length in sorted(outages):
        if end is None or start is None or begin > end + chain_within:
            total += 0.0 if end is None or start is None else end - start
            start, end = begin, begin + length
        else:
            end = max(end, begin + length)
    return total + (0.0 if end is None or start is None else end - start)


def legging_bound(poll_secs: float, reread_secs: float, confirmations: int, rates: Rates, grace: float,
                  outage_secs: float) -> float:
    """The longest legging window the seed's faults allow (see the module docstring); ``grace``:
    the deployment's step grace (one loss's recovery at it is in the bound); ``outage_secs``: the
    time some account's reads fail (:func:`total_outage`)."""
    bound = poll_secs + confirmations * reread_secs + 1.0
    if rates.outage_max_secs > SHORT_OUTAGE_SECS or rates.crashes:
        # Reads failing past the exit's quick attempts, or its tasks lost: the exit may be unresolved,
        # and an unresolved exit tries again every UNRESOLVED_RETRY_SECS.
        bound += UNRESOLVED_RETRY_SECS
    if rates.late or rates.twice:
        bound += rates.late_max_secs
    bound += outage_secs
    if rates.crashes:
        bound += recovery_secs(grace)
    return bound


def recovery_secs(grace: float) -> float:
    """What one lost task costs a cycle whose watchdog grace is ``grace`` (``watchdog_grace`` of its
    stage then): the grace and a sweep before the watchdog moves it, and the settle time of an order
    the lost task left in flight (``ORDER_SETTLE_SECS``), which the retried attempt's reads wait out."""
    return grace + WATCHDOG_INTERVAL_SECS + ORDER_SETTLE_SECS


@dataclass
class Watch:
    """The clocks and worst measurements of the duration rules, for one cycle."""

    cycle_id: str
    store: SimStore
    venue: SimVenue
    bound: float
    #: What each order that filled nothing (a price beyond its cap, a thin book) adds to the legging
    #: window's bound: the time to the next try. No decision makes a venue fill; the rule is that the
    #: cycle keeps trying, one step after another, without leaving the net off for longer than that.
    per_try_secs: float = 0.0
    #: When each lost task was drawn, with the watchdog's grace of the cycle's stage then: each one
    #: beyond the one recovery ``bound`` holds adds its own (:func:`recovery_secs`).
    losses: Callable[[], list[tuple[float, float]]] = lambda: []
    seen_bound: float = RECONCILE_SECS + 1.0
    off_since: float | None = None
    venue_moved_at: float | None = None
    leg_zeroed: bool = False
    exit_started_at: float | None = None
    #: When an exit read last found a position unknown (the scheduler's record of it).
    unknown_exit_read: Callable[[], float | None] = lambda: None
    checked_orders: int = 0
    ended: bool = False
    stop_checked: bool = False
    worst: dict[Rule, float] = field(default_factory=lambda: {rule: 0.0 for rule in Rule})

    @property
    def state(self) -> CycleState:
        return self.store.states[self.cycle_id]

    @property
    def now(self) -> float:
        return self.venue.clock.time

    def net(self) -> Decimal:
        return sum(own_deltas(self.venue, self.state).values(), Decimal(0))

    def off_step(self) -> bool:
        return abs(self.net()) > self.state.step_of(Role.BP)

    def venue_moved(self) -> None:
        """The venue moved a Lighter leg (a liquidation, an ADL) while the cycle monitored."""
        state = self.state
        deltas = own_deltas(self.venue, state)
        if self.venue_moved_at is None:
            self.venue_moved_at = self.now
        self.leg_zeroed = self.leg_zeroed or any(abs(deltas[r]) < closable(state, r) for r in LIGHTER_ROLES)

    def measure(self, rule: Rule, value: float) -> None:
        self.worst[rule] = max(self.worst[rule], value)

    # ---- the rules -----------------------------------------------------------------------------

    def once(self) -> str | None:
        if self.venue.duplicates:
            o = self.venue.duplicates[0]
            return f"client id {o.client_id} on {o.account} sent again for leg {o.leg}"
        if self.venue.revived:
            o = self.venue.revived[0]
            since = self.venue.written_off[(o.account, o.client_id)]
            return (f"{o.leg} (client id {o.client_id} on {o.account}, {o.side.value} {o.requested}) reached the "
                    f"venue {o.at - since:.2f} s after the cycle took it as never placed (filled {o.filled})")
        legs: dict[str, int] = {}
        for order in self.venue.sent:
            if legs.setdefault(order.leg, order.client_id) != order.client_id:
                return f"leg {order.leg} sent under client ids {legs[order.leg]} and {order.client_id}"
        return None

    def own(self) -> str | None:
        state = self.state
        for order in self.venue.sent[self.checked_orders:]:
            self.checked_orders += 1
            if order.stage is Stage.DONE:
                return f"{order.leg} ({order.side.value} {order.requested}) reached {order.account} after the cycle was done"
            role = state.role_of(order.account)
            if role is None or order.stage is not Stage.EMERGENCY_EXIT or not order.leg.startswith("exit_"):
                continue
            signed = order.side.sign * order.requested
            if not order.reduce_only:
                # Backpack's offset: it opens, but only against the group's net beyond the Lighter dust,
                # never past zero.
                after = order.group_before + signed
                if role is not Role.BP or signed * order.group_before >= 0 or abs(after) >= abs(order.group_before):
                    self.measure(Rule.OWN, float(abs(after) - abs(order.group_before)))
                    return (f"exit order {order.leg} {order.side.value} {order.requested} on {role.short} with the "
                            f"group's net at {order.group_before}: an offset must take the net toward zero")
                continue
            delta = order.before - (state.baselines.get(role) or Decimal(0))
            if delta == 0 or signed * delta > 0 or order.requested > abs(delta):
                self.measure(Rule.OWN, float(order.requested - abs(delta)))
                return (f"exit order {order.leg} {order.side.value} {order.requested} on {role.short} whose own delta "
                        f"was {delta}: past the baseline")
        return None

    def alone(self) -> str | None:
        active = sorted(cid for cid, s in self.store.states.items() if s.stage is not Stage.DONE)
        self.measure(Rule.ALONE, float(len(active)))
        return f"cycles {active} are active at once" if len(active) > 1 else None

    def _exposed(self) -> dict[Role, Decimal]:
        state = self.state
        return {r: d for r, d in own_deltas(self.venue, state).items() if abs(d) >= closable(state, r)}

    def _reads_answered(self) -> bool:
        return self.unknown_exit_read() is None

    def truthful(self) -> str | None:
        if self.cycle_id in self.store.stopped and not self.stop_checked:
            # The exit declared itself unresolved (the group stopped, a NOT FLAT page) from its last
            # read; every exit read answered and the venue is flat: that page is false.
            self.stop_checked = True
            if not self._exposed() and self._reads_answered():
                deltas = own_deltas(self.venue, self.state)
                return f"declared unresolved while flat at the venue ({_shown(deltas)}), every exit read answered"
        finish = self.store.finished.get(self.cycle_id)
        if finish is None or self.ended:
            return None
        exposed = self._exposed()
        if finish.outcome is Outcome.FLAT and exposed:
            return f"ended flat ({finish.reason}) with {_shown(exposed)} open at the venue"
        if finish.outcome is Outcome.UNRESOLVED and not exposed and self._reads_answered():
            deltas = own_deltas(self.venue, self.state)
            return f"ended unresolved ({finish.reason}) while flat at the venue ({_shown(deltas)}), every exit read answered"
        return None

    def persistent(self) -> str | None:
        finish = self.store.finished.get(self.cycle_id)
        if finish is None or self.ended:
            return None
        self.ended = True
        exposed = self._exposed()
        self.measure(Rule.PERSISTENT, float(sum(abs(d) for d in exposed.values())))
        if exposed:
            # Unresolved is a state the exit goes on in (paging), never an end: the venues answer
            # again sooner or later, and the exit must be there when they do.
            return f"ended {finish.outcome.value} ({finish.reason}) leaving {_shown(exposed)}"
        return None

    def seen(self) -> str | None:
        if self.venue_moved_at is None:
            return None
        waited = self.now - self.venue_moved_at
        acted = self.state.stage in (Stage.EMERGENCY_EXIT, Stage.DONE) or (not self.leg_zeroed and not self.off_step())
        if acted:
            self.measure(Rule.SEEN, waited)
            self.venue_moved_at, self.leg_zeroed = None, False
            return None
        _, extra = self.more_lost_since(self.venue_moved_at)
        if waited > self.seen_bound + extra:
            what = "a Lighter leg read zero" if self.leg_zeroed else f"the net {self.net()} off-step"
            return f"{what} for {waited:.2f} s (bound {self.seen_bound + extra:.0f} s) and the cycle did not act"
        return None

    def more_lost_since(self, since: float) -> tuple[int, float]:
        """Lost tasks beyond one since ``since``, and the seconds their recoveries add: the bounds hold
        one recovery already, of the longest kind (a loss outside the exit), so the longest of these
        is left out. A loss up to its recovery before ``since`` counts: the cycle may still be
        waiting for its sweep."""
        recoveries = sorted(recovery_secs(grace) for at, grace in self.losses() if at >= since - recovery_secs(grace))
        return max(len(recoveries) - 1, 0), sum(recoveries[:-1])

    def in_step(self) -> str | None:
        state = self.state
        if state.plan is None or state.stage is Stage.DONE or self.venue_moved_at is not None or not self.off_step():
            self.off_since = None
            return None
        if self.off_since is None:
            self.off_since = self.now
        window = self.now - self.off_since
        unfilled = sum(1 for order in self.venue.sent if order.at >= self.off_since and order.filled == 0)
        lost, recovering = self.more_lost_since(self.off_since)
        extra = unfilled * self.per_try_secs + recovering
        self.measure(Rule.IN_STEP, window - extra)
        if window > self.bound + extra:
            return (f"own net {self.net()} beyond one Backpack step ({state.step_of(Role.BP)}) for {window:.2f} s "
                    f"(bound {self.bound:.1f} s + {unfilled} unfilled orders + {lost} more lost tasks), "
                    f"stage {state.stage.value}")
        return None

    def rules(self) -> list[tuple[Rule, Callable[[], str | None]]]:
        return [(Rule.ONCE, self.once), (Rule.OWN, self.own), (Rule.ALONE, self.alone),
                (Rule.TRUTHFUL, self.truthful), (Rule.PERSISTENT, self.persistent), (Rule.SEEN, self.seen),
                (Rule.IN_STEP, self.in_step)]

    def timed(self) -> list[tuple[Rule, Callable[[], str | None]]]:
        """The rules about durations, checked before an event too (time moved, nothing else did)."""
        return [(Rule.SEEN, self.seen), (Rule.IN_STEP, self.in_step)]


def _shown(deltas: dict[Role, Decimal]) -> str:
    return ", ".join(f"{role.short} {q}" for role, q in sorted(deltas.items(), key=lambda i: ROLES.index(i[0])))
