"""Fault schedules over the real step table: thousands of seeds keep every invariant, a seed replays
the same trace, and the simulator does catch each bug a small switch puts back into the product.

The seeds are split over two files (``test_fault_schedules_more.py`` runs the second half) so that
pytest-xdist's ``--dist loadfile`` runs them on two workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from core import policies
from core.config_schema import Role
from core.cycle_fields import ExitReason, Outcome, Stage
from core.policies import EMERGENCY_EXIT
from orchestrator.cycle import exit as exit_step
from orchestrator.cycle import in_step, loop, report, start
from orchestrator.cycle.commands import Command, Decision, Finish
from orchestrator.cycle.state import CycleState
from tests.simulation.invariants import Broken, Rule
from tests.simulation.run import run_seeds, simulate

#: This file's seeds; the other half is ``test_fault_schedules_more.py``'s.
SEEDS = range(0, 3000)


def test_every_seed_keeps_every_invariant() -> None:
    summary = run_seeds(SEEDS)
    assert summary.outcomes and sum(summary.outcomes.values()) == len(SEEDS)


def test_a_seed_replays_the_same_trace() -> None:
    first, again = simulate(4242, keep_trace=True), simulate(4242, keep_trace=True)
    assert first.trace == again.trace and first.digest == again.digest and first.events == again.events
    assert simulate(4243).digest != first.digest


# ---- the simulator can fail: each switch puts a real bug back and a pinned seed catches it ----------

def unknown_as_zero(mp: pytest.MonkeyPatch) -> None:
    """The exit reads a position it could not read (or one with an order unsettled) as zero, and the
    report trusts the reads alone (without the fill ledger, which by itself catches the zero read:
    no seed of thousands breaks with this switch alone)."""
    real = exit_step.exit_state_of

    def buggy(by_role: Mapping[Role, Mapping[str, Any]], state: CycleState) -> exit_step.ExitState | None:
        zeroed = {role: {**r, "position": "0" if r.get("position") is None else r["position"], "unsettled": []}
                  for role, r in by_role.items()}
        return real(zeroed, state)

    mp.setattr(exit_step, "exit_state_of", buggy)
    mp.setattr(report, "legs_in_flight", lambda state: [])
    mp.setattr(report, "backpack_fills_imply", lambda state, tolerance: None)


def closes_past_the_baseline(mp: pytest.MonkeyPatch) -> None:
    """The exit sizes a reduce-only order by more than the role's own delta (three steps past it)."""
    def reducible(self: in_step.ExitState, role: Role) -> Decimal:
        delta = self.delta(role)
        return abs(delta) + 3 * self.rules[role].step_size if delta else Decimal(0)

    mp.setattr(in_step.ExitState, "reducible", reducible)


def no_backpack_catch_up(mp: pytest.MonkeyPatch) -> None:
    """The exit closes Lighter1 and Lighter2 without the Backpack catch-up."""
    mp.setattr(in_step, "catch_up", lambda *args, **kwargs: None)
    mp.setattr(exit_step, "catch_up", lambda *args, **kwargs: None)


def no_lighter_closes(mp: pytest.MonkeyPatch) -> None:
    """The exit never closes the Lighter legs (the net is in step, so it thinks it is done)."""
    mp.setattr(in_step, "lighter_closes", lambda *args, **kwargs: [])


def lighter_held_to_fills(mp: pytest.MonkeyPatch) -> None:
    """The report holds every Lighter leg but the one the exit's reason names to the cycle's fills:
    a leg the venue closed (a second liquidation, part of one, ADL) reads as a stale flat read."""
    real = report.legs_in_flight

    def buggy(state: CycleState) -> list[str]:
        named = {ExitReason.LIGHTER1_ZERO: "L1", ExitReason.LIGHTER2_ZERO: "L2"}.get(state.exit_reason or
                                                                                      ExitReason.TIMEOUT)
        lighter = [f"{role.short} fills imply {q}" for role, q in state.ledger().items()
                   if role.short not in ("BP", named) and abs(q) >= Decimal("0.0001")]
        return real(state) + lighter

    mp.setattr(report, "legs_in_flight", buggy)


def gives_up(mp: pytest.MonkeyPatch) -> None:
    """The exit ends ``unresolved`` once its quick attempts are spent, whatever is still open (an
    exit that stops trying while a leg is open, and never resumes when the reads heal)."""
    real = report.again

    def buggy(state: CycleState, *, reason: ExitReason, attempt: int, why: str, now: float,
              finals: Mapping[str, Any], first: tuple[Command, ...] = ()) -> Decision:
        if not EMERGENCY_EXIT.exhausted(attempt):
            return real(state, reason=reason, attempt=attempt, why=why, now=now, finals=finals, first=first)
        ended = Finish(outcome=Outcome.UNRESOLVED, reason=reason.value, claim=report.REPORTED)
        return Decision(state=msgspec.structs.replace(state, stage=Stage.DONE), commands=(*first, ended))

    mp.setattr(report, "again", buggy)


def lighter_stand_in(mp: pytest.MonkeyPatch) -> None:
    """An unreadable Lighter leg is taken from the cycle's ledger like Backpack (found: seed 208 sold
    2.17 on Backpack against a 0.17 net, the ledger still holding a leg the venue had liquidated)."""
    def buggy(by_role: Mapping[Role, Mapping[str, Any]], state: CycleState) -> Any:
        unknown = frozenset(role for role in Role if role not in by_role or not exit_step.known(by_role[role]))
        ledger = state.ledger()
        if not unknown or any(role not in ledger or role not in state.rules for role in unknown):
            return None
        positions = {role: ledger[role] if role in unknown else Decimal(str(by_role[role]["position"]))
                     for role in Role}
        rules = {role: state.rules[role] for role in Role}
        return in_step.ExitState(positions, {role: state.baselines.get(role) or Decimal(0) for role in Role},
                                 rules), unknown

    mp.setattr(exit_step, "estimated_state", buggy)


def dust_hides_backpack(mp: pytest.MonkeyPatch) -> None:
    """The exit's net counts Lighter dust (found: seed 167 left Backpack a whole step open beside
    Lighter1's 0.0046, the net within a step, the exit done)."""
    mp.setattr(in_step.ExitState, "net_beyond_dust", property(lambda self: self.net))


def never_rebalances(mp: pytest.MonkeyPatch) -> None:
    """The loop never finds a Backpack order to send (Lighter2's entry is left unhedged)."""
    mp.setattr(loop, "rebalance_order", lambda *args, **kwargs: None)


def zero_never_confirmed(mp: pytest.MonkeyPatch) -> None:
    """The monitor never counts a Lighter leg at zero as liquidated."""
    mp.setattr(loop, "liquidated_below", lambda state: Decimal(0))


def unknown_taken_as_never_placed(mp: pytest.MonkeyPatch) -> None:
    """An order the venue does not know yet is taken as never placed at once, so another goes in its
    place while a request the venue holds can still fill (one order filled twice: a Backpack order
    the venue held past the request timeout filled after another had been sent in its place)."""
    mp.setattr(policies, "never_placed", lambda intent_age_secs: True)


def active_holder_taken_for_stale(mp: pytest.MonkeyPatch) -> None:
    """A start takes the group's lease from a cycle that is still active, as if the lease were stale
    (found: while the lease was taken before the cycle's record and active mark were written, a
    start racing another read the holder as not active and took the lease over; six starts racing
    on a real Redis left two cycles in 109 rounds of 200)."""
    real = start.refusal
    mp.setattr(start, "refusal", lambda group, stop, holder, holder_active: real(group, stop, holder, False))


BUGS: list[tuple[Callable[[pytest.MonkeyPatch], None], int, Rule]] = [
    (unknown_as_zero, 51, Rule.TRUTHFUL),
    (closes_past_the_baseline, 0, Rule.OWN),
    (never_rebalances, 15, Rule.IN_STEP),
    (no_backpack_catch_up, 2, Rule.IN_STEP),
    (no_lighter_closes, 0, Rule.LIVE),
    (gives_up, 595, Rule.PERSISTENT),
    (zero_never_confirmed, 44, Rule.SEEN),
    (lighter_held_to_fills, 1, Rule.TRUTHFUL),
    (lighter_stand_in, 37, Rule.OWN),
    (dust_hides_backpack, 25, Rule.LIVE),
    (unknown_taken_as_never_placed, 37, Rule.ONCE),
    (active_holder_taken_for_stale, 1, Rule.ALONE),
]


@pytest.mark.parametrize(("bug", "seed", "rule"), BUGS, ids=[bug.__name__ for bug, _, _ in BUGS])
def test_a_pinned_seed_catches_the_bug(monkeypatch: pytest.MonkeyPatch, bug: Callable[[pytest.MonkeyPatch], None],
                                       seed: int, rule: Rule) -> None:
    simulate(seed)  # the product as it is keeps every invariant on this seed
    bug(monkeypatch)
    with pytest.raises(Broken) as broken:
        simulate(seed)
    assert broken.value.rule is rule, broken.value
    assert broken.value.seed == seed and broken.value.tail
