"""Run fault schedules: ``python -m tests.simulation.run --seeds N [--start S]`` or ``--seed S`` (one
replay, printing its trace). Prints the seeds run, the seconds, events per second and each
invariant's worst measurement; exits non-zero on the first broken invariant.

One seed is one cycle, from its plan to its end and a while after (an order still in flight can
land late), driven through the real step table (``run_spec(..., STEPS, ...)``) on in-memory ports.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
import traceback
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from core.config_schema import Role
from core.cycle_fields import Stage
from core.policies import DEFAULT_STEP_GRACE_SECS
from orchestrator.cycle.commands import Step, StepName
from orchestrator.cycle.state import CycleState
from tests.helpers.cycle_states import cycle_state, rules
from tests.simulation.faults import LIQUIDATED, Liquidation, Rates, Scenario, draw
from tests.simulation.invariants import Broken, Rule, Watch, legging_bound, recovery_secs, total_outage
from tests.simulation.schedule import FaultScheduler
from tests.simulation.world import SimStore, SimVenue
from venues.margin import InitialMargin

START = 1_000_000.0
#: Virtual seconds a run may take past the cycle's timeout, beyond each lost task's recovery
#: (``invariants.recovery_secs``), before it counts as stuck.
HORIZON_SECS = 400.0
#: Virtual seconds the run goes on after the cycle is done (a hung send may still land).
AFTER_DONE_SECS = 15.0
#: The deployment's step grace (``[watchdog] step_grace_secs``): the default.
STEP_GRACE_SECS = DEFAULT_STEP_GRACE_SECS


@dataclass
class Result:
    """One seed's run: its trace's digest, its events and each rule's worst measurement."""

    seed: int
    digest: int
    events: int
    outcome: str
    worst: dict[Rule, float]
    faults: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)


def created(scenario: Scenario) -> CycleState:
    state = cycle_state(stage=Stage.PLANNING, size=str(scenario.size), direction=scenario.direction.value,
                        wait_min_secs=scenario.wait_secs, wait_max_secs=scenario.wait_secs,
                        timeout_secs=scenario.timeout_secs)
    return msgspec.structs.replace(state, plan=None, rules={}, created_at=START)


def build(scenario: Scenario) -> tuple[CycleState, SimStore, SimVenue]:
    state = created(scenario)
    venue = SimVenue()
    venue.clock.time = START
    margin = InitialMargin(Decimal("0.02"))
    venue.rules = {"bp": dataclasses.replace(rules("0.01", "0.01"), initial_margin=margin),
                   "l1": dataclasses.replace(rules("0.0001", str(scenario.l_min), "ETH"), initial_margin=margin),
                   "l2": dataclasses.replace(rules("0.0001", str(scenario.l_min), "ETH"), initial_margin=margin)}
    venue.outages = {a: [(START + s, START + s + n) for s, n in spans] for a, spans in sorted(scenario.outages.items())}
    store = SimStore(clock=venue.clock, grace=STEP_GRACE_SECS)
    if store.create(state) is not None:
        raise AssertionError(f"the first cycle of the group was refused: {store.create(state)}")
    store.touch(state.cycle_id, START + STEP_GRACE_SECS)
    return state, store, venue


def simulate(seed: int, *, keep_trace: bool = False, trace: list[str] | None = None) -> Result:
    """Run ``seed``'s schedule; raises :class:`Broken` on the first invariant it breaks."""
    scenario, rng = draw(seed)
    state, store, venue = build(scenario)
    cid = state.cycle_id
    scheduler = FaultScheduler(store, venue, rng, scenario.rates, keep_trace=keep_trace)
    if trace is not None:
        scheduler.trace = trace  # the caller keeps the whole trace even when an invariant breaks
    params = state.params
    watch = Watch(cid, store, venue, legging_bound(params.poll_interval_secs, params.zero_reread_secs,
                                                   params.zero_confirmations, scenario.rates, STEP_GRACE_SECS,
                                                   total_outage((s for spans in scenario.outages.values()
                                                                 for s in spans), params.poll_interval_secs)))
    watch.unknown_exit_read = lambda: scheduler.unknown_exit_read_at
    watch.losses = lambda: scheduler.losses
    # What faults add to the legging bound stretches the seen bound too; after an outage the next
    # read comes at the next poll.
    watch.seen_bound += watch.bound - legging_bound(params.poll_interval_secs, params.zero_reread_secs,
                                                    params.zero_confirmations, Rates(), STEP_GRACE_SECS, 0.0)
    if scenario.outages:
        watch.seen_bound += params.poll_interval_secs
    watch.per_try_secs = params.lighter_retry_delay_secs + (scenario.rates.late_max_secs
                                                          if scenario.rates.late or scenario.rates.twice else 0.0)
    snapshots = [venue.snapshot(a, venue.rules[a].to_json()) for a in ("bp", "l1", "l2")]
    scheduler.at(0.0, lambda: scheduler.run(cid, Step(StepName.PLAN), snapshots), "plan")
    scheduler.at(1.0, lambda: scheduler.watchdog(cid), "watchdog")
    if scenario.rates.cancel_at is not None:
        scheduler.at(scenario.rates.cancel_at, lambda: _cancel(scheduler, cid), "operator cancel")
    for n, (at, who) in enumerate(scenario.starts):
        scheduler.at(at, functools.partial(_start_another, scheduler, state, n, who), f"{who} starts a cycle")
    market = _Market(scenario, scheduler, watch)
    def end() -> float:
        # Each lost task costs its recovery, which no decision can shorten (as in the other bounds).
        return START + scenario.timeout_secs + HORIZON_SECS + sum(recovery_secs(g) for _, g in scheduler.losses)

    done_at: float | None = None

    def broken(rule: Rule, text: str) -> Broken:
        return Broken(seed, rule, text, list(scheduler.tail))

    while True:
        due = scheduler.pop()
        if due is None or due[0] > end() or (done_at is not None and due[0] > done_at + AFTER_DONE_SECS):
            break
        venue.clock.time = max(venue.clock.time, due[0])
        for rule, check in watch.timed():
            if (text := check()) is not None:
                raise broken(rule, text)
        scheduler.events += 1
        try:
            due[2]()
        except Exception as exc:  # a decision that raises is a finding, not a crash of the simulator
            scheduler.note(f"raised: {traceback.format_exception_only(exc)[-1].strip()}")
            raise broken(Rule.LIVE, f"{due[1]} raised {type(exc).__name__}: {exc}") from exc
        market.after_event()
        for rule, check in watch.rules():
            if (text := check()) is not None:
                raise broken(rule, text)
        if done_at is None and store.states[cid].stage is Stage.DONE:
            done_at = venue.clock.time
    if store.states[cid].stage is not Stage.DONE:
        raise broken(Rule.LIVE, f"not done {end() - START:.0f} s in ({len(scheduler.losses)} tasks lost): "
                                f"stage {store.states[cid].stage.value}")
    finish = store.finished.get(cid)
    return Result(seed, scheduler.digest, scheduler.events, finish.outcome.value if finish else "?", watch.worst,
                  dict(sorted(scheduler.faults.items())), scheduler.trace)


def _cancel(scheduler: FaultScheduler, cycle_id: str) -> None:
    """``xtb recover --unwind``: the cancel flag, then the exit as cancelled (``recovery.cancel``)."""
    from orchestrator.cycle import recovery

    scheduler.store.cancels.add(cycle_id)
    state = scheduler.store.load(cycle_id)
    if state is None or state.stage is Stage.DONE:
        return
    scheduler.note("operator cancels the cycle")
    scheduler.publish(state, recovery.cancel(state))


def _start_another(scheduler: FaultScheduler, first: CycleState, n: int, who: str) -> None:
    """Another trigger starts a cycle of the group (``xtb.hedge.start_cycle`` through the store).
    The run follows the first cycle only: one started after it ends stays in planning."""
    state = msgspec.structs.replace(first, cycle_id=f"{first.cycle_id}-start{n}", stage=Stage.PLANNING,
                                    created_at=scheduler.clock.time)
    refused = scheduler.store.create(state)
    scheduler.note(f"{who} starts {state.cycle_id}: " + ("started" if refused is None else
                                                          f"refused ({refused.reason.value})"))


class _Market:
    """The venue's own moves: the liquidation (and ADL) the scenario draws, while the cycle monitors."""

    def __init__(self, scenario: Scenario, scheduler: FaultScheduler, watch: Watch) -> None:
        self.scenario, self.scheduler, self.watch = scenario, scheduler, watch
        self.armed = scenario.liquidation is not Liquidation.NONE

    def after_event(self) -> None:
        state = self.watch.state
        if not self.armed or state.stage is not Stage.MONITORING:
            return
        self.armed = False
        roles = LIQUIDATED[self.scenario.liquidation]
        for n, role in enumerate(roles):
            self.scheduler.at(self.scenario.liquidate_after + 0.7 * n, functools.partial(self.liquidate, role),
                              f"liquidation {role.short}")

    def liquidate(self, role: Role) -> None:
        state = self.watch.state
        if state.stage is not Stage.MONITORING:
            return
        account = state.group.account_for(role)
        held, base = self.scheduler.venue.positions.get(account, Decimal(0)), state.baselines.get(role) or Decimal(0)
        partial = self.scenario.liquidation in (Liquidation.L1_PARTIAL, Liquidation.L2_PARTIAL)
        cut = state.rules[role].quantize_size((held - base) * self.scenario.fraction) if partial else held - base
        self.scheduler.venue.positions[account] = held - cut
        self.scheduler.note(f"venue liquidates {role.short}: {held} -> {held - cut}")
        self.watch.venue_moved()
        if self.scenario.adl and role is LIQUIDATED[self.scenario.liquidation][-1]:
            self.scheduler.at(0.3, self.adl, "adl")

    def adl(self) -> None:
        state = self.watch.state
        if state.stage is not Stage.MONITORING:
            return
        for role in (Role.L1, Role.L2):
            account = state.group.account_for(role)
            held = self.scheduler.venue.positions.get(account, Decimal(0))
            cut = state.rules[role].quantize_size(held * self.scenario.adl)
            if cut:
                self.scheduler.venue.positions[account] = held - cut
                self.scheduler.note(f"venue auto-deleverages {role.short}: {held} -> {held - cut}")
                self.watch.venue_moved()


@dataclass
class Summary:
    """Seeds run, how long they took, and each rule's worst measurement with the seed that made it."""

    seeds: range
    secs: float
    events: int
    outcomes: dict[str, int]
    worst: dict[Rule, tuple[float, int]]

    def __str__(self) -> str:
        lines = [f"{len(self.seeds)} seeds ({self.seeds.start}..{self.seeds.stop - 1}) in {self.secs:.1f} s, "
                 f"{self.events} events, {self.events / max(self.secs, 1e-9):.0f} events/s; "
                 f"outcomes {dict(sorted(self.outcomes.items()))}"]
        lines += [f"  {rule.value:<11} worst {value:8.2f}  (seed {seed})" for rule, (value, seed) in self.worst.items()]
        return "\n".join(lines)


def run_seeds(seeds: range) -> Summary:
    """Run every seed of ``seeds``; raises :class:`Broken` on the first invariant broken."""
    began, events = time.perf_counter(), 0
    worst: dict[Rule, tuple[float, int]] = {rule: (0.0, -1) for rule in Rule}
    outcomes: dict[str, int] = {}
    for seed in seeds:
        result = simulate(seed)
        events += result.events
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        for rule, value in result.worst.items():
            if value > worst[rule][0]:
                worst[rule] = (value, seed)
    return Summary(seeds, time.perf_counter() - began, events, outcomes, worst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, default=None, help="replay one seed, printing its trace")
    args = parser.parse_args(argv)
    if args.seed is not None:
        trace: list[str] = []
        try:
            result = simulate(args.seed, keep_trace=True, trace=trace)
        except Broken as broken:
            print("\n".join(trace))
            print(broken)
            return 1
        print("\n".join(result.trace))
        print(f"seed {args.seed}: {result.outcome}, {result.events} events, faults {result.faults}")
        return 0
    try:
        summary = run_seeds(range(args.start, args.start + args.seeds))
    except Broken as broken:
        print(broken)
        print(f"FAILED; replay: make simulate SEED={broken.seed}")
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
