"""The watchdog's decision for an overdue cycle (orchestrator.cycle.recovery) on typed states, and
its grace: which cycle is overdue (orchestrator.recovery.overdue, core.policies.watchdog_grace)."""

from __future__ import annotations

import msgspec
import pytest
import redis

from core.cycle_fields import ExitReason, Stage
from core.cycle_record import step_grace
from core.policies import DEFAULT_STEP_GRACE_SECS, EXIT_STEP_GRACE_SECS, watchdog_grace
from orchestrator.cycle import exit as exits
from orchestrator.cycle import recovery
from orchestrator.cycle.commands import Decision, RunLater, StartExit, StepName
from orchestrator.cycle.state import LoopState
from orchestrator.recovery import overdue
from orchestrator.store import RedisCycleStore
from tests.helpers.cycle_states import cycle_state


def test_the_loop_resumes_under_its_current_token() -> None:
    state = cycle_state(stage=Stage.MONITORING, loop=LoopState(step_seq=7))
    action, (tick,) = recovery.resume(state)
    assert action == "resume_monitoring"
    assert isinstance(tick, RunLater) and tick.step.name is StepName.MONITOR_TICK and tick.step.kwargs == {"step": 7}
    action, (again,) = recovery.resume(msgspec.structs.replace(state, stage=Stage.REBALANCE))
    assert action == "resume_rebalance" and isinstance(again, RunLater)
    assert again.step.kwargs == {"attempt": 0, "then": "hedge", "step": 7}


def test_a_stuck_exit_is_retried_as_its_next_attempt_with_its_reason() -> None:
    state = msgspec.structs.replace(cycle_state(stage=Stage.EMERGENCY_EXIT), exit_attempts=2,
                                    exit_reason=ExitReason.LIGHTER2_ZERO)
    action, (retry,) = recovery.resume(state)
    assert action == "retry_exit" and isinstance(retry, RunLater)
    assert retry.step.kwargs == {"reason": "lighter2_zero", "attempt": 2}


@pytest.mark.parametrize("stage", [Stage.PLANNING, Stage.BP_ENTRY, Stage.L1_HEDGE, Stage.WAIT, Stage.L2_ENTRY])
def test_a_half_done_entry_is_unwound(stage: Stage) -> None:
    assert recovery.resume(cycle_state(stage=stage)) == ("unwind", (StartExit(ExitReason.RECOVERED_UNWIND),))


def test_a_finished_cycle_is_forgotten_and_a_cancel_unwinds_as_cancelled() -> None:
    assert recovery.resume(cycle_state(stage=Stage.DONE)) == ("forgotten", ())
    (cancel,) = recovery.cancel(msgspec.structs.replace(cycle_state(), exit_attempts=1))
    assert isinstance(cancel, RunLater) and cancel.step.kwargs == {"reason": "cancelled", "attempt": 1}


def test_an_exit_has_a_shorter_grace_never_longer_than_the_deployments() -> None:
    assert EXIT_STEP_GRACE_SECS < DEFAULT_STEP_GRACE_SECS
    assert watchdog_grace(Stage.EMERGENCY_EXIT, DEFAULT_STEP_GRACE_SECS) == EXIT_STEP_GRACE_SECS
    assert watchdog_grace(Stage.EMERGENCY_EXIT.value, 5.0) == 5.0  # the config's shortest grace stands
    for stage in (Stage.PLANNING, Stage.L2_ENTRY, Stage.MONITORING, Stage.REBALANCE, None):
        assert watchdog_grace(stage, DEFAULT_STEP_GRACE_SECS) == DEFAULT_STEP_GRACE_SECS


@pytest.mark.parametrize(("stage", "grace"), [(Stage.EMERGENCY_EXIT, EXIT_STEP_GRACE_SECS),
                                              (Stage.MONITORING, DEFAULT_STEP_GRACE_SECS)])
def test_a_cycle_is_overdue_past_its_deadline_and_quiet_for_its_stages_grace(stage: Stage, grace: float) -> None:
    # The record as the sweep reads it: written last at 100, its next step due by the deadline.
    record = {"stage": stage.value, "updated_at": 100.0, "next_deadline": 100.0 + grace}
    assert not overdue(record, 100.0 + grace, DEFAULT_STEP_GRACE_SECS)
    assert overdue(record, 100.0 + grace + 0.1, DEFAULT_STEP_GRACE_SECS)
    assert not overdue({**record, "updated_at": 101.0}, 100.0 + grace + 0.1, DEFAULT_STEP_GRACE_SECS)
    assert not overdue({**record, "next_deadline": 0.0}, 1e9, DEFAULT_STEP_GRACE_SECS)  # no step is due


def test_the_store_writes_the_deadline_with_the_grace_of_the_stage_the_step_leaves_the_cycle_in() -> None:
    store = RedisCycleStore(redis.Redis())  # the fields of a step's write: nothing is sent to Redis
    monitoring = cycle_state(stage=Stage.MONITORING)
    exiting = exits.start_exit(monitoring, ExitReason.TIMEOUT, 0)
    assert store.changed_fields(monitoring, exiting, 100.0)["next_deadline"] == \
        100.0 + watchdog_grace(Stage.EMERGENCY_EXIT, step_grace())
    ticking = Decision(state=monitoring, next_within=5.0)
    assert store.changed_fields(monitoring, ticking, 100.0)["next_deadline"] == 105.0 + step_grace()
