"""The control loop's decisions (orchestrator.cycle.loop) on typed states: rebalance toward the own-delta
target, monitoring, zero confirmation, unknown never zero. No Redis, no Celery."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.cycle_fields import ExitReason, Stage
from core.legs import Leg, LegState
from monitoring.alert_texts import AlertKind
from orchestrator.cycle import loop
from orchestrator.cycle.commands import Alert, ReadPositions, RunLater, SendOrder, StartExit, StepName
from orchestrator.cycle.state import CycleState, LoopState, Positions
from tests.helpers.cycle_states import cycle_state, readings, rules
from venues.base import Side

L_STEP = Decimal("0.0001")
NOW = 1_000_000.0
ZERO = Positions.zero()
lots = st.integers(min_value=-10**6, max_value=10**6).map(lambda n: Decimal(n) * L_STEP)


def order_for(positions: Positions, step: str = "0.001", baselines: Positions = ZERO,
              min_qty: str | None = None) -> loop.RebalanceOrder | None:
    return loop.rebalance_order(positions, rules(step, min_qty), baselines)


def with_bp_leg(state: CycleState, filled: str, final: bool = True, name: str = "bp_entry") -> CycleState:
    """``state`` with a Backpack leg that moved Backpack by ``filled`` (signed)."""
    quantity = abs(Decimal(filled))
    leg = Leg("bp", "ETH_USDC_PERP", Side.BUY if Decimal(filled) >= 0 else Side.SELL, 1, quantity, quantity,
              LegState.FILLED if final else LegState.SUBMITTING)
    return msgspec.structs.replace(state, legs={**state.legs, name: leg})


# ---- the rebalance order ---------------------------------------------------------------------------

def test_rebalance_moves_backpack_to_minus_the_lighter_sum() -> None:
    order = order_for(Positions(Decimal("1"), Decimal("-1"), Decimal("0.5")))
    assert order is not None
    assert (order.side, order.quantity, order.target) == (Side.SELL, Decimal("0.500"), Decimal("0.5"))
    order = order_for(Positions(Decimal("-2"), Decimal("1"), Decimal("0.5")))
    assert order is not None and (order.side, order.quantity) == (Side.BUY, Decimal("0.500"))


def test_within_one_step_or_below_the_minimum_is_hedged() -> None:
    assert order_for(Positions(Decimal("0.0004"), Decimal("0"), Decimal("0"))) is None
    assert order_for(Positions(Decimal("0.05"), Decimal("0"), Decimal("0")), min_qty="0.1") is None


def test_unknown_positions_are_never_rebalanced() -> None:
    assert order_for(Positions(Decimal(1), None, Decimal(0))) is None
    assert order_for(Positions(None, Decimal(1), Decimal(0))) is None


def test_half_a_backpack_step_of_drift_is_hedged() -> None:
    # Lighter's grid is finer: L1 at -0.0015 leaves Backpack 0.0005 (half its 0.001 step) from any
    # grid point either way. Buying 0.001 would only move the half step to the other side.
    assert order_for(Positions(Decimal("0.001"), Decimal("-0.0015"), Decimal("0"))) is None
    assert order_for(Positions(Decimal("0.002"), Decimal("-0.0015"), Decimal("0"))) is None
    order = order_for(Positions(Decimal("0"), Decimal("-0.0015"), Decimal("0")))
    assert order is not None and (order.side, order.quantity) == (Side.BUY, Decimal("0.001"))


@settings(max_examples=500, deadline=None)
@given(bp=lots, l1=lots, l2=lots, base_bp=lots, base_l1=lots, base_l2=lots,
       step=st.sampled_from(["0.0001", "0.001", "0.01", "0.1"]), min_steps=st.sampled_from([1, 3, 10]))
@example(bp=Decimal("0"), l1=Decimal("-0.0005"), l2=Decimal("0"), base_bp=Decimal(0), base_l1=Decimal(0),
         base_l2=Decimal(0), step="0.001", min_steps=1)
def test_an_order_strictly_reduces_the_own_net_and_never_trades_the_baselines(
        bp: Decimal, l1: Decimal, l2: Decimal, base_bp: Decimal, base_l1: Decimal, base_l2: Decimal, step: str,
        min_steps: int) -> None:
    r = rules(step, str(Decimal(step) * min_steps))
    baselines = Positions(base_bp, base_l1, base_l2)
    own_net = (bp - base_bp) + (l1 - base_l1) + (l2 - base_l2)
    order = loop.rebalance_order(Positions(bp, l1, l2), r, baselines)
    if order is None:
        # No grid point is strictly nearer the target, or the order would be below the minimum.
        assert abs(own_net) <= r.step_size / 2 or abs(own_net) < r.min_quantity + r.step_size
        return
    assert order.target == base_bp - ((l1 - base_l1) + (l2 - base_l2))
    assert order.quantity % r.step_size == 0 and order.quantity >= r.min_quantity
    signed = order.quantity if order.side is Side.BUY else -order.quantity
    assert abs(own_net + signed) < abs(own_net)
    # After the order there is no second one: no sell-buy-sell oscillation.
    if min_steps == 1:
        assert loop.rebalance_order(Positions(bp + signed, l1, l2), r, baselines) is None


def test_a_backpack_position_held_before_the_cycle_is_not_sold() -> None:
    baselines = Positions(Decimal("0.5"), Decimal(0), Decimal(0))
    order = order_for(Positions(Decimal("1.5"), Decimal("-1"), Decimal("1")), baselines=baselines)
    assert order is not None and (order.side, order.quantity, order.target) == (Side.SELL, Decimal("1.000"),
                                                                               Decimal("0.5"))
    assert order_for(Positions(Decimal("0.5"), Decimal("-1"), Decimal("1")), baselines=baselines) is None


# ---- reading and zero confirmation ----------------------------------------------------------------------

def test_positions_are_keyed_by_the_account_each_read_names() -> None:
    state = cycle_state()
    reads = [{"account": "l2", "quantity": "0.5"}, {"account": "bp", "quantity": "1"},
             {"account": "l1", "quantity": "-1"}]
    assert loop.positions_of(reads, state) == Positions(Decimal(1), Decimal(-1), Decimal("0.5"))
    # A missing or doubled read is unknown, never another account's number.
    assert loop.positions_of(reads[:2], state).l1 is None
    assert loop.positions_of([*reads, {"account": "l1", "quantity": "0"}], state).l1 is None


reading = st.one_of(st.none(), st.just(Decimal(0)), lots)


@settings(max_examples=300, deadline=None)
@given(reads=st.lists(st.tuples(reading, reading), max_size=30))
def test_an_unknown_read_neither_counts_nor_resets_a_zero_streak(reads: list[tuple[Decimal | None, Decimal | None]]) -> None:
    state = cycle_state()
    streaks = dict(state.loop.zero_streaks)
    model = {"L1": 0, "L2": 0}
    for l1, l2 in reads:
        streaks = loop.zero_streaks(streaks, Positions(Decimal(0), l1, l2), state)
        for role, value in zip(("L1", "L2"), (l1, l2), strict=True):
            if value is not None:
                model[role] = model[role] + 1 if abs(value) < L_STEP else 0
        assert {r.short: n for r, n in streaks.items()} == model


def test_a_leg_counts_as_liquidated_below_the_larger_of_step_and_venue_minimum() -> None:
    state = cycle_state(l_min="0.005")
    streaks = loop.zero_streaks({}, Positions(Decimal(0), Decimal("-1"), Decimal("0.003")), state)
    assert {r.short: n for r, n in streaks.items()} == {"L1": 0, "L2": 1}


@settings(max_examples=300, deadline=None)
@given(q=lots, minimum=st.sampled_from(["0.0001", "0.005", "0.02"]))
def test_a_leg_counts_as_zero_exactly_when_below_max_of_step_and_minimum(q: Decimal, minimum: str) -> None:
    state = cycle_state(l_min=minimum)
    streaks = loop.zero_streaks({loop.Role.L1: 3}, Positions(Decimal(0), q, None), state)
    assert streaks[loop.Role.L1] == (4 if abs(q) < max(L_STEP, Decimal(minimum)) else 0)
    assert streaks[loop.Role.L2] == 0  # unknown neither counts nor resets


def test_a_lighter_leg_counts_as_liquidated_when_its_own_delta_returns_to_zero() -> None:
    state = cycle_state(baselines=Positions(Decimal(0), Decimal("2"), Decimal(0)))
    # Lighter1 held 2 before and the cycle sold 1: reading 1 is the open hedge, reading 2 its own zero.
    assert loop.zero_streaks({}, Positions(Decimal(0), Decimal("1"), Decimal("1")), state)[loop.Role.L1] == 0
    assert loop.zero_streaks({}, Positions(Decimal(0), Decimal("2"), Decimal("1")), state)[loop.Role.L1] == 1
    # A flat reading of a leg that held 2 is not the cycle's zero (its own delta is -2).
    assert loop.zero_streaks({loop.Role.L1: 1}, Positions(Decimal(0), Decimal(0), Decimal(1)), state)[loop.Role.L1] == 0


# ---- decide_rebalance ---------------------------------------------------------------------------------

def decide(state: CycleState, bp: str | None, l1: str | None, l2: str | None, *, attempt: int = 0,
           then: str = loop.AFTER_ENTRY) -> loop.Decision:
    return loop.decide_rebalance(state, loop.positions_of(readings(bp, l1, l2), state), attempt=attempt, then=then,
                                 token=state.loop.step_seq + 1, now=NOW)


def test_start_rebalance_enters_the_stage_and_reads_under_the_token() -> None:
    state = cycle_state(stage=Stage.L2_ENTRY)
    decision = loop.start_rebalance(state, attempt=0, then=loop.AFTER_ENTRY, token=4)
    assert decision.state.stage is Stage.REBALANCE
    (read,) = decision.commands
    assert isinstance(read, ReadPositions) and read.then.name is StepName.REBALANCE_DECIDE
    assert read.then.kwargs == {"attempt": 0, "then": "hedge", "step": 4}
    # From monitoring it stays in monitoring.
    assert loop.start_rebalance(cycle_state(), attempt=0, then=loop.FROM_MONITOR, token=4).state.stage is Stage.MONITORING


def test_a_drifted_backpack_gets_one_order_under_the_new_token_numbered_by_the_rebalances() -> None:
    state = with_bp_leg(cycle_state(stage=Stage.REBALANCE, loop=LoopState(step_seq=2, rebalances=1)), "1")
    decision = decide(state, "1", "-1", "0.5")
    (send,) = decision.commands
    assert isinstance(send, SendOrder)
    assert (send.role, send.side, send.quantity, send.leg, send.fence_step) == (
        loop.Role.BP, Side.SELL, Decimal("0.500"), "bp_rebalance_2", 3)
    assert send.then.name is StepName.REBALANCE and send.then.kwargs == {"attempt": 1, "then": "hedge", "step": 3}
    assert decision.state.loop.rebalances == 2 and decision.state.loop.step_seq == 3
    assert decision.reading is not None and decision.reading[0] == "rebalance_0"


def test_hedged_after_the_entry_enters_monitoring_alerts_and_ticks() -> None:
    state = with_bp_leg(cycle_state(stage=Stage.REBALANCE), "-0.5")
    decision = decide(state, "-0.5", "-1", "1.5")
    assert decision.state.stage is Stage.MONITORING
    assert decision.state.loop.monitoring_started_at == NOW
    alert, tick = decision.commands
    assert isinstance(alert, Alert) and alert.kind is AlertKind.CYCLE_HEDGED
    assert isinstance(tick, RunLater) and tick.step.name is StepName.MONITOR_TICK
    assert tick.after_secs == state.params.poll_interval_secs and tick.step.kwargs == {"step": 1}


def test_hedged_from_a_monitor_read_stays_in_monitoring_without_an_alert() -> None:
    state = with_bp_leg(cycle_state(), "-0.5")
    decision = decide(state, "-0.5", "-1", "1.5", then=loop.FROM_MONITOR)
    assert decision.state.stage is Stage.MONITORING and decision.state.loop.monitoring_started_at is None
    assert [type(c) for c in decision.commands] == [RunLater]


def test_a_lighter_leg_reading_zero_is_confirmed_by_fast_rereads_not_rebalanced() -> None:
    state = with_bp_leg(cycle_state(stage=Stage.REBALANCE), "1")
    decision = decide(state, "1", "-1", "0")
    (tick,) = decision.commands
    assert isinstance(tick, RunLater) and tick.after_secs == state.params.zero_reread_secs
    assert decision.state.stage is Stage.MONITORING and decision.result["zero"] == ["L2"]


def test_unknown_reads_are_read_again_and_never_traded() -> None:
    state = cycle_state(stage=Stage.REBALANCE)
    decision = decide(state, "1", None, "0.5")
    (again,) = decision.commands
    assert isinstance(again, RunLater) and again.step.name is StepName.REBALANCE
    assert again.after_secs == state.params.rebalance_retry_delay_secs


def test_backpack_is_decided_from_the_fills_and_a_disagreeing_read_is_read_again() -> None:
    state = with_bp_leg(cycle_state(stage=Stage.REBALANCE), "0")
    # The read still shows 9.5 the fills do not: read again, trade on neither.
    decision = decide(state, "9.5", "-9.5", "9.5")
    assert [type(c) for c in decision.commands] == [RunLater]
    assert decision.events == ("rebalance read again: Backpack read 9.5 but the cycle's fills put it at 0",)
    # An unknown Backpack read is known from the fills; a leg in flight leaves only the read.
    filled = with_bp_leg(cycle_state(stage=Stage.REBALANCE), "0.5")
    assert decide(filled, None, "-1", "0.5").state.stage is Stage.MONITORING
    assert decide(filled, "0.5", "-1", "0.5").state.stage is Stage.MONITORING
    in_flight = with_bp_leg(cycle_state(stage=Stage.REBALANCE), "0.5", final=False)
    assert [type(c) for c in decide(in_flight, None, "-1", "0.5").commands] == [RunLater]


def test_rebalance_gives_up_into_the_exit_after_its_attempts() -> None:
    state = with_bp_leg(cycle_state(stage=Stage.REBALANCE), "1")
    decision = decide(state, "1", "-1", "0.5", attempt=state.params.rebalance_max_attempts)
    assert decision.commands == (StartExit(ExitReason.REBALANCE_FAILED),)


# ---- monitoring -----------------------------------------------------------------------------------

def test_a_monitor_tick_reads_until_the_timeout_then_exits() -> None:
    state = cycle_state(loop=LoopState(monitoring_started_at=NOW - 10))
    (read,) = loop.monitor_tick(state, token=3, now=NOW).commands
    assert isinstance(read, ReadPositions) and read.then.kwargs == {"step": 3}
    late = NOW + state.params.timeout_secs
    assert loop.monitor_tick(state, token=3, now=late).commands == (StartExit(ExitReason.TIMEOUT),)


def test_a_zero_confirmed_on_enough_fresh_reads_starts_the_liquidation_exit() -> None:
    state = cycle_state()
    for n in range(1, state.params.zero_confirmations + 1):
        decision = loop.decide_monitor(state, Positions(Decimal(-1), Decimal(0), Decimal(1)), token=n, now=NOW)
        state = decision.state
    assert decision.commands[-1] == StartExit(ExitReason.LIGHTER1_ZERO)


def test_drift_beyond_the_tolerance_rebalances_from_monitoring() -> None:
    state = cycle_state(liquidation_tolerance="0.1")
    decision = loop.decide_monitor(state, Positions(Decimal("1"), Decimal("-1"), Decimal("0.5")), token=5, now=NOW)
    (run,) = decision.commands
    assert isinstance(run, RunLater) and run.step.name is StepName.REBALANCE
    assert run.step.kwargs == {"attempt": 0, "then": "monitor", "step": 5}
    within = loop.decide_monitor(state, Positions(Decimal("-0.45"), Decimal("-1"), Decimal("1.5")), token=5, now=NOW)
    assert [c.step.name for c in within.commands if isinstance(c, RunLater)] == [StepName.MONITOR_TICK]


def test_unknown_reads_are_alerted_every_n_and_never_traded() -> None:
    state = cycle_state()
    every = state.params.unknown_reads_alert
    alerts = 0
    for n in range(1, 2 * every + 1):
        decision = loop.decide_monitor(state, Positions(None, Decimal(-1), Decimal(1)), token=n, now=NOW)
        state = decision.state
        alerts += sum(isinstance(c, Alert) and c.kind is AlertKind.POSITIONS_UNKNOWN for c in decision.commands)
        assert not any(isinstance(c, SendOrder) for c in decision.commands)
    assert alerts == 2 and state.loop.unknown_reads == 2 * every


def test_the_exposure_counts_the_worst_own_net_of_known_reads() -> None:
    state = cycle_state(baselines=Positions(Decimal("2"), Decimal(0), Decimal(0)))
    decision = loop.decide_monitor(state, Positions(Decimal("2.5"), Decimal(-1), Decimal(1)), token=1, now=NOW)
    assert decision.state.loop.exposure.worst == Decimal("0.5")
    unknown = loop.decide_monitor(decision.state, Positions(None, Decimal(-1), Decimal(1)), token=2, now=NOW + 1)
    assert unknown.state.loop.exposure.reads == 1
