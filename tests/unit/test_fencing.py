"""Fence.refusal: a task acts only while its cycle is in one of its stages, under its loop token
and its exit attempt; anything else is a stale copy and refuses."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from core.cycle_fields import Stage
from core.fencing import Fence

stages = st.sampled_from(list(Stage))


def test_a_task_in_its_stage_under_the_current_token_acts() -> None:
    fence = Fence((Stage.REBALANCE, Stage.MONITORING), step=4)
    assert fence.refusal({"stage": "monitoring", "step_seq": 4}) is None
    assert fence.refusal({"stage": "rebalance", "step_seq": 4}) is None


def test_a_task_from_a_stage_the_cycle_has_left_refuses() -> None:
    why = Fence((Stage.BP_ENTRY, Stage.L1_HEDGE)).refusal({"stage": "monitoring"})
    assert why == "cycle is in stage monitoring, the task was sent for bp_entry/l1_hedge"
    assert Fence((Stage.EMERGENCY_EXIT,)).refusal({"stage": "done"}) is not None
    assert Fence((Stage.PLANNING,)).refusal({}) is not None  # no record: nothing to act on
    # ... unless the fence says so: the default of a task sent without one refuses only a cycle that
    # exists and has moved on (an operator's or a probe's order may name an id that is no cycle).
    assert Fence((Stage.EMERGENCY_EXIT,), missing_ok=True).refusal({}) is None
    assert Fence((Stage.EMERGENCY_EXIT,), missing_ok=True).refusal({"stage": "done"}) is not None


def test_a_task_under_an_older_loop_token_refuses() -> None:
    assert Fence((Stage.MONITORING,), step=3).refusal({"stage": "monitoring", "step_seq": 5}) == (
        "control step 5 has moved past the task's token 3")
    # The token starts at 0 before the loop's first decision writes it.
    assert Fence((Stage.REBALANCE,), step=0).refusal({"stage": "rebalance"}) is None


def test_a_flatten_of_an_earlier_exit_attempt_or_a_reported_exit_refuses() -> None:
    fence = Fence((Stage.EMERGENCY_EXIT,), exit_attempt=0)
    assert fence.refusal({"stage": "emergency_exit", "exit_attempts": 1}) is None
    assert fence.refusal({"stage": "emergency_exit", "exit_attempts": 2}) == (
        "exit attempt 1 is current, the task belongs to attempt 0")
    assert fence.refusal({"stage": "emergency_exit", "exit_attempts": 1, "exit_reported_at": 1.0e9}) == (
        "the exit was already reported")


@given(st.lists(stages, min_size=1, max_size=4, unique=True), st.none() | st.integers(0, 5),
       st.none() | st.integers(0, 3), stages, st.integers(0, 5), st.integers(0, 4), st.booleans(), st.booleans())
def test_a_task_acts_exactly_when_stage_token_and_attempt_all_match(
        allowed: list[Stage], step: int | None, attempt: int | None, stage: Stage, step_seq: int,
        exit_attempts: int, reported: bool, missing_ok: bool) -> None:
    fence = Fence(tuple(allowed), step=step, exit_attempt=attempt, missing_ok=missing_ok)
    fields: dict[str, Any] = {"stage": stage.value, "step_seq": step_seq, "exit_attempts": exit_attempts}
    if reported:
        fields["exit_reported_at"] = 1.0
    acts = (stage in allowed and (step is None or step == step_seq)
            and (attempt is None or (attempt == exit_attempts - 1 and not reported)))
    assert (fence.refusal(fields) is None) is acts
    assert Fence.from_json(fence.to_json()) == fence
