"""The control loop run in one process on in-memory ports: the same step table and openings the
Celery tasks run, in virtual time."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import msgspec

from core.cycle_fields import ExitReason, Outcome, Stage
from core.legs import Leg, LegState
from monitoring.alert_texts import AlertKind
from orchestrator.cycle import entry
from orchestrator.cycle.commands import StartExit, Step, StepName
from orchestrator.cycle.state import CycleState
from tests.helpers.cycle_states import CLIENT_IDS, cycle_state, plan
from tests.simulation.memory import MemoryScheduler, MemoryStore, MemoryVenue, VirtualClock
from venues.base import Side
from venues.margin import InitialMargin


def entered(size: str = "1") -> tuple[CycleState, MemoryVenue]:
    """A cycle whose entry filled and was confirmed: Backpack bought ``size``, Lighter1 sold it, Lighter2 bought it."""
    q = Decimal(size)
    legs = {"bp_entry": Leg("bp", "ETH_USDC_PERP", Side.BUY, 1, q, q, LegState.FILLED),
            "l1_hedge": Leg("l1", "ETH", Side.SELL, 2, q, q, LegState.FILLED),
            "l2_entry": Leg("l2", "ETH", Side.BUY, 3, q, q, LegState.FILLED)}
    state = msgspec.structs.replace(cycle_state(stage=Stage.REBALANCE), legs=legs)
    return state, MemoryVenue({"bp": q, "l1": -q, "l2": q})


def runner(state: CycleState, venue: MemoryVenue) -> tuple[MemoryStore, MemoryScheduler]:
    store = MemoryStore({state.cycle_id: state})
    return store, MemoryScheduler(store, VirtualClock(), venue)


def test_the_loop_rebalances_backpack_to_its_target_then_exits_on_a_confirmed_liquidation() -> None:
    state, venue = entered()
    store, scheduler = runner(state, venue)
    scheduler.run(state.cycle_id, Step(StepName.REBALANCE, {"attempt": 0, "then": "hedge", "step": 0}))
    scheduler.run_until(lambda: store.states[state.cycle_id].stage is Stage.MONITORING, limit_secs=60)
    # Backpack was driven from +1 to -(l1 + l2) = 0 by one sell, then the cycle was hedged.
    assert venue.orders == [("bp", Side.SELL, Decimal("1.000"))]
    assert venue.positions["bp"] == 0
    assert (AlertKind.CYCLE_HEDGED, store.alerts[0][1]) == store.alerts[0]
    scheduler.run_until(lambda: False, limit_secs=30)
    assert not scheduler.exits
    venue.positions["l2"] = Decimal(0)  # the venue liquidates Lighter2
    scheduler.run_until(lambda: bool(scheduler.exits), limit_secs=60)
    assert scheduler.exits == [StartExit(ExitReason.LIGHTER2_ZERO)]
    assert not scheduler.stale


def test_a_redelivered_decision_refuses_so_the_cycle_keeps_one_loop() -> None:
    state, venue = entered()
    _, scheduler = runner(state, venue)
    read = [venue.read(a) for a in ("bp", "l1", "l2")]
    decide = Step(StepName.REBALANCE_DECIDE, {"attempt": 0, "then": "hedge", "step": 0})
    scheduler.run(state.cycle_id, decide, read)
    scheduler.run(state.cycle_id, decide, read)  # the same message delivered twice
    assert len(scheduler.stale) == 1 and "already decided" in scheduler.stale[0]
    scheduler.run_until(lambda: False, limit_secs=5)
    assert venue.orders == [("bp", Side.SELL, Decimal("1.000"))]


def test_the_timeout_ends_monitoring_in_virtual_time() -> None:
    state, venue = entered()
    store, scheduler = runner(state, venue)
    scheduler.run(state.cycle_id, Step(StepName.REBALANCE, {"attempt": 0, "then": "hedge", "step": 0}))
    scheduler.run_until(lambda: bool(scheduler.exits), limit_secs=state.params.timeout_secs + 60)
    assert scheduler.exits == [StartExit(ExitReason.TIMEOUT)]
    started = store.states[state.cycle_id].loop.monitoring_started_at
    assert started is not None and scheduler.clock.time - started >= state.params.timeout_secs


def test_the_entry_runs_from_the_plan_to_monitoring_in_one_process() -> None:
    planned = msgspec.structs.replace(cycle_state(stage=Stage.PLANNING), plan=plan(bp_size="2", wait_secs=3.0),
                                      client_ids=dict(CLIENT_IDS))
    venue = MemoryVenue()
    store, scheduler = runner(planned, venue)
    scheduler.publish(planned, [entry.enter(planned, planned.plan)])
    scheduler.run_until(lambda: store.states[planned.cycle_id].stage is Stage.MONITORING, limit_secs=60)
    assert not scheduler.failed and not scheduler.stale
    # Backpack bought 2, Lighter1 sold 2, after the wait Lighter2 bought 2; Backpack rebalanced to
    # -(l1 + l2) = 0 by one sell: the group's own net is zero.
    assert venue.positions == {"bp": Decimal(0), "l1": Decimal(-2), "l2": Decimal(2)}
    assert scheduler.clock.time >= 1_000_000.0 + 3.0
    assert [kind for kind, _ in store.alerts] == [AlertKind.CYCLE_HEDGED]


def test_a_whole_cycle_runs_in_one_process_from_the_plan_to_its_flat_end() -> None:
    """Plan → entry → wait → rebalance → monitoring → Lighter2 liquidated → the exit in steps →
    the report ends the cycle flat: every step of the table, its opening and its decision, on
    in-memory ports in virtual time."""
    created = cycle_state(stage=Stage.PLANNING, size="2", wait_min_secs=1.0, wait_max_secs=2.0)
    created = msgspec.structs.replace(created, plan=None, rules={}, created_at=1_000_000.0)
    venue = MemoryVenue()
    store, scheduler = runner(created, venue)
    margin = InitialMargin(Decimal("0.02"))
    rules = {role: dataclasses.replace(r, initial_margin=margin) for role, r in cycle_state().rules.items()}
    snapshots = [venue.snapshot(created.group.account_for(role), rules[role].to_json()) for role in rules]
    scheduler.run(created.cycle_id, Step(StepName.PLAN), snapshots)
    scheduler.run_until(lambda: store.states[created.cycle_id].stage is Stage.MONITORING, limit_secs=60)
    assert venue.positions == {"bp": Decimal(0), "l1": Decimal(-2), "l2": Decimal(2)}
    venue.positions["l2"] = Decimal(0)  # the venue liquidates Lighter2
    scheduler.run_until(lambda: created.cycle_id in store.finished, limit_secs=120)
    finish = store.finished[created.cycle_id]
    assert (finish.outcome, finish.reason) == (Outcome.FLAT, "lighter2_zero"), scheduler.trace[-5:]
    assert venue.positions == {"bp": Decimal(0), "l1": Decimal(0), "l2": Decimal(0)}
    assert store.states[created.cycle_id].stage is Stage.DONE
    assert not scheduler.failed and not scheduler.stale
    kinds = [kind for kind, _ in store.alerts]
    assert kinds[0] is AlertKind.CYCLE_STARTED and kinds[-1] is AlertKind.CYCLE_FINISHED
