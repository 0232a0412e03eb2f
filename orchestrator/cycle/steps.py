"""The cycle's steps as one table: each step's opening and the decision it calls, so the Celery
tasks (``xtb_tasks.worker``) and an in-process runner run the same steps the same way.

A step is called with its message's keyword arguments (JSON values) and, for a chord body, the
header's results (``observed``: the venue reads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.cycle_fields import Stage
from orchestrator.cycle import loop
from orchestrator.cycle.commands import Decision, StepName
from orchestrator.cycle.runner import Decide, Opening
from orchestrator.cycle.state import LOOP_STAGES, CycleState


@dataclass(frozen=True)
class Call:
    """One delivery of a step: its keyword arguments and what its chord header observed."""

    kwargs: Mapping[str, Any]
    observed: Sequence[Mapping[str, Any]] = field(default_factory=tuple)

    @property
    def token(self) -> int:
        """The loop token the step was issued under (0 outside the loop)."""
        return int(self.kwargs.get("step") or 0)

    def number(self, name: str) -> int:
        return int(self.kwargs.get(name) or 0)

    def text(self, name: str, default: str) -> str:
        return str(self.kwargs.get(name) or default)


@dataclass(frozen=True)
class StepSpec:
    """A step: how it opens, and its decision from the state, the time and the call."""

    opening: Opening
    decide: Callable[[CycleState, float, Call], Decision]

    def bind(self, call: Call) -> Decide:
        """The decision of one delivery, as the runner calls it."""
        return lambda state, now: self.decide(state, now, call)


def _rebalance(state: CycleState, now: float, call: Call) -> Decision:
    return loop.start_rebalance(state, attempt=call.number("attempt"), then=call.text("then", loop.AFTER_ENTRY),
                                token=call.token)


def _rebalance_decide(state: CycleState, now: float, call: Call) -> Decision:
    return loop.decide_rebalance(state, loop.positions_of(call.observed, state), attempt=call.number("attempt"),
                                 then=call.text("then", loop.AFTER_ENTRY), token=call.token + 1, now=now)


def _monitor_tick(state: CycleState, now: float, call: Call) -> Decision:
    return loop.monitor_tick(state, token=call.token, now=now)


def _monitor_decide(state: CycleState, now: float, call: Call) -> Decision:
    return loop.decide_monitor(state, loop.positions_of(call.observed, state), token=call.token + 1, now=now)


STEPS: dict[StepName, StepSpec] = {
    StepName.REBALANCE: StepSpec(Opening(LOOP_STAGES, token=True, label="rebalance"), _rebalance),
    StepName.REBALANCE_DECIDE: StepSpec(Opening(LOOP_STAGES, advance=True, label="rebalance decision"),
                                        _rebalance_decide),
    StepName.MONITOR_TICK: StepSpec(Opening((Stage.MONITORING,), token=True, label="monitor tick"), _monitor_tick),
    StepName.MONITOR_DECIDE: StepSpec(Opening((Stage.MONITORING,), advance=True, label="monitor decision"),
                                      _monitor_decide),
}
