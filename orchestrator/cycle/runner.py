"""A step's shared opening, on the ports alone: load the state, skip a cycle the exit owns, check the
fence, honour a cancel, take the loop token, decide, save, publish.

The Celery adapter (``xtb_tasks.worker.cycle_task``) and any in-process runner call :func:`run_step`
with their own store, scheduler and clock, so both run exactly the same opening.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.cycle_fields import ExitReason, Stage
from core.fencing import Fence
from orchestrator.cycle.commands import Decision, StartExit
from orchestrator.cycle.exit import superseded
from orchestrator.cycle.ports import Clock, CycleStore, Scheduler
from orchestrator.cycle.state import CycleState

#: Stages in which no step of the entry or the loop acts any more: the exit owns the cycle.
EXIT_OWNS = (Stage.EMERGENCY_EXIT, Stage.DONE)

Decide = Callable[[CycleState, float], Decision]


@dataclass(frozen=True)
class Opening:
    """How a step starts.

    Fields:
      stages   the stages the cycle must be in for the step to act; in another stage (before the
               exit) the step refuses as stale; once the exit owns the cycle it returns quietly
      token    the step carries the loop token (``step``) and refuses under another one
      advance  the step decides: it moves the loop token on before it acts, so of two copies only
               the first goes on
      label    how logs and refusals name the step
    """

    stages: tuple[Stage, ...]
    token: bool = False
    advance: bool = False
    label: str = "step"


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
    claim: Callable[[Call], str] | None = None

    def claim_of(self, call: Call) -> str | None:
        """The once-only claim of this delivery, when the step takes one."""
        return None if self.claim is None else self.claim(call)

    def bind(self, call: Call) -> Decide:
        """The decision of one delivery, as the runner calls it."""
        return lambda state, now: self.decide(state, now, call)


class StaleStep(Exception):
    """The step's cycle has moved on since the step was sent: it must not act (``why`` says how)."""

    def __init__(self, label: str, why: str) -> None:
        super().__init__(f"refused a stale {label}: {why}")
        self.label = label
        self.why = why


@dataclass(frozen=True)
class Ports:
    """The world a step runs in."""

    store: CycleStore
    scheduler: Scheduler
    clock: Clock


def run_step(ports: Ports, cycle_id: str, opening: Opening, decide: Decide, *, step: int = 0,
             claim: str | None = None) -> dict[str, Any]:
    """Run one step; raises :class:`StaleStep` when the cycle has moved on. ``claim`` names a
    once-only claim of the cycle the step takes before it acts: a second delivery stops there."""
    state = ports.store.load(cycle_id)
    if state is None or state.stage in EXIT_OWNS:
        return {"skipped": True}
    fence = Fence(opening.stages, step=step if opening.token else None)
    why = fence.refusal({"stage": state.stage.value, "step_seq": state.loop.step_seq})
    if why is not None:
        raise StaleStep(opening.label, why)
    if state.cancel_requested:
        ports.scheduler.publish(state, [StartExit(ExitReason.CANCELLED)])
        return {"cancelled": True}
    if claim is not None and not ports.store.claim(cycle_id, claim):
        return {"duplicate": True}
    if opening.advance and not ports.store.advance_step(cycle_id, step):
        raise StaleStep(opening.label, f"control step {step} was already decided")
    now = ports.clock.now()
    decision = decide(state, now)
    ports.scheduler.publish(decision.state, ports.store.save(state, decision, now))
    return decision.result


# ---- the emergency exit's opening ----

def run_exit_step(ports: Ports, cycle_id: str, decide: Decide, *, attempt: int | None,
                  claim: Callable[[Decision], tuple[str, Any]]) -> dict[str, Any]:
    """Run one step of the exit: only while the cycle is not done and, for a step of attempt
    ``attempt``, only while that attempt is the current one (None: the step that starts an
    attempt); then only once, for the one delivery that takes the decision's ``claim`` (a record
    field and the value it holds)."""
    state = ports.store.load(cycle_id)
    if state is None or state.finished or (attempt is not None and superseded(state, attempt)):
        return {"skipped": True}
    now = ports.clock.now()
    decision = decide(state, now)
    name, value = claim(decision)
    if not ports.store.claim(cycle_id, name, value):
        return {"skipped": True} if attempt is None else {"duplicate": True}
    ports.scheduler.publish(decision.state, ports.store.save(state, decision, now))
    return decision.result
