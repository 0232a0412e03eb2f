"""The watchdog's decision for an overdue cycle (orchestrator.cycle.recovery) on typed states."""

from __future__ import annotations

import msgspec
import pytest

from core.cycle_fields import ExitReason, Stage
from orchestrator.cycle import recovery
from orchestrator.cycle.commands import RunLater, StartExit, StepName
from orchestrator.cycle.state import LoopState
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
