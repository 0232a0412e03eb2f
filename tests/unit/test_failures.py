"""orchestrator.failures: which step failed on which account, and whether any order can have been sent."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.failures import before_any_order, chord_dependency, describe_step_failure, exception_text

DEP = "ed1afa09-806a-45a0-b3fa-c5ae1c6798f8"
HTTP_500 = "unavailable: GET /api/v1/capital/collateral -> HTTP 500 SERVER_ERROR: Internal server error"


class ChordError(Exception):
    """Shaped like celery.exceptions.ChordError (this module must not need Celery)."""


class Wrapped(Exception):
    """Shaped like Celery's UnpickleableExceptionWrapper: str() is the repr, the message is exc_args[0]."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.exc_args = (message,)

    def __str__(self) -> str:
        return f"BackpackHttpError({self.exc_args[0]!r})"


def test_the_header_task_is_found_in_a_chord_error() -> None:
    assert chord_dependency(ChordError(f"Dependency {DEP} raised UnpickleableExceptionWrapper(...)")) == DEP
    assert chord_dependency(f"Dependency {DEP} raised X") == DEP
    assert chord_dependency(ValueError("boom")) is None
    assert chord_dependency(None) is None


def test_the_failure_names_the_read_and_the_account() -> None:
    text = describe_step_failure("xtb.venue.account_snapshot", {"account": "backpack1"}, Wrapped(HTTP_500))
    assert text == f"account_snapshot on backpack1: {HTTP_500}"
    assert "Wrapped" not in text and "BackpackHttpError(" not in text


def test_unknown_parts_still_say_something() -> None:
    assert describe_step_failure(None, None, None) == "step: unknown error"
    assert describe_step_failure("xtb.hedge.plan", {}, ValueError("bad")) == "plan: bad"
    assert exception_text(RuntimeError()) == "RuntimeError"
    assert len(describe_step_failure("x", {"account": "a"}, "y" * 2000)) <= 400


def test_before_any_order_until_the_plan_is_recorded() -> None:
    planning: dict[str, Any] = {"stage": "planning", "group": "main", "plan_claimed_at": 1.0, "error": "x"}
    assert before_any_order(planning)
    assert not before_any_order({**planning, "plan": {"bp_size": "1"}})
    assert not before_any_order({**planning, "leg:bp_entry": {"state": "submitting"}})
    assert not before_any_order({**planning, "exit_attempt:0": 1.0})


@given(st.dictionaries(st.sampled_from(["plan", "leg:bp_entry", "leg:l1_hedge", "exit_attempt:0", "exit_attempts",
                                        "stage", "group", "t:planning", "plan_claimed_at", "error"]),
                       st.just(1)))
def test_any_trace_of_an_order_path_means_not_before_any_order(data: dict[str, Any]) -> None:
    traces = {"plan", "exit_attempts"} | {k for k in data if k.startswith(("leg:", "exit_attempt:"))}
    assert before_any_order(data) == (not traces & set(data))
