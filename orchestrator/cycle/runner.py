"""A step's shared opening, on the ports alone: load the state, skip a cycle the exit owns (or a
superseded exit attempt), check the fence, honour a cancel, take the once-only claim or the loop
token, decide, save, publish.

The Celery adapter (``xtb_tasks.worker.cycle_task``) and any in-process runner call :func:`run_spec`
with their own store, scheduler and clock, so both run exactly the same steps the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.config_schema import Role
from core.cycle_fields import ExitReason, Stage
from core.fencing import Fence
from orchestrator.cycle.commands import Decision, ReportExit, StartExit, StepName
from orchestrator.cycle.ports import Clock, CycleStore, Scheduler
from orchestrator.cycle.state import CycleState

#: Stages in which no step of the entry or the loop acts any more: the exit owns the cycle.
EXIT_OWNS = (Stage.EMERGENCY_EXIT, Stage.DONE)

Decide = Callable[[CycleState, float], Decision]


@dataclass(frozen=True)
class Opening:
    """How a step of the entry or the loop starts.

    Fields:
      stages   the stages the cycle must be in for the step to act; in another stage (before the
               exit) the step refuses as stale; once the exit owns the cycle it returns quietly
      token    the step carries the loop token (``step``) and refuses under another one
      advance  the step decides: it moves the loop token on before it acts, so of two copies only
               the first goes on
      label    how logs and refusals name the step
      cancel_exits  a cancel requested before the step starts the exit (the plan, which has sent
               nothing yet, ends the cycle not started instead: its decision reads the flag)
    """

    stages: tuple[Stage, ...]
    token: bool = False
    advance: bool = False
    label: str = "step"
    cancel_exits: bool = True


@dataclass(frozen=True)
class Call:
    """One delivery of a step: its keyword arguments and what was observed for it.

    Fields:
      kwargs    the message's keyword arguments (JSON values)
      observed  a chord body's header results (the venue reads or order reports)
      held      the roles whose account lease a live process holds, with its seconds left (the exit)
      grace     the watchdog's step grace of this deployment (seconds)
    """

    kwargs: Mapping[str, Any]
    observed: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    held: Mapping[Role, float] = field(default_factory=dict)
    grace: float = 30.0

    @property
    def token(self) -> int:
        """The loop token the step was issued under (0 outside the loop)."""
        return int(self.kwargs.get("step") or 0)

    @property
    def attempt(self) -> int:
        return int(self.kwargs.get("attempt") or 0)

    @property
    def reason(self) -> ExitReason:
        return ExitReason(self.kwargs["reason"])

    def number(self, name: str) -> int:
        return int(self.kwargs.get(name) or 0)

    def text(self, name: str, default: str) -> str:
        return str(self.kwargs.get(name) or default)


@dataclass(frozen=True)
class ExitOpening:
    """How a step of the emergency exit starts: only while the cycle is not done and its attempt is
    the current one (``starts``: the step that starts an attempt, which makes it current), then
    only once, for the delivery that takes its claim.

    Fields:
      label   how logs name the step
      claim   the claim a delivery takes (a record field and the value it keeps), from the decision;
              None: the step takes none (an errback: its chord fails once)
      starts  the step starts an attempt rather than belonging to one
    """

    label: str
    claim: Callable[[Decision, Call], tuple[str, Any]] | None = None
    starts: bool = False


@dataclass(frozen=True)
class StepSpec:
    """A step: how it opens, and its decision from the state, the time and the call."""

    opening: Opening | ExitOpening
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


Table = Mapping[StepName, StepSpec]


def run_spec(ports: Ports, table: Table, name: StepName, cycle_id: str, call: Call) -> dict[str, Any]:
    """Run delivery ``call`` of step ``name``; raises :class:`StaleStep` when the cycle has moved on."""
    return run(ports, table, table[name], cycle_id, call)


def run(ports: Ports, table: Table, spec: StepSpec, cycle_id: str, call: Call) -> dict[str, Any]:
    """Run delivery ``call`` of ``spec`` (``table``: the steps an exit report is looked up in)."""
    if isinstance(spec.opening, ExitOpening):
        return _run_exit(ports, table, cycle_id, spec, spec.opening, call)
    return _run(ports, table, cycle_id, spec, spec.opening, call)


def _run(ports: Ports, table: Table, cycle_id: str, spec: StepSpec, opening: Opening, call: Call) -> dict[str, Any]:
    state = ports.store.load(cycle_id)
    if state is None or state.stage in EXIT_OWNS:
        return {"skipped": True}
    step = call.token
    why = Fence(opening.stages, step=step if opening.token else None).refusal(
        {"stage": state.stage.value, "step_seq": state.loop.step_seq})
    if why is not None:
        raise StaleStep(opening.label, why)
    if state.cancel_requested and opening.cancel_exits:
        ports.scheduler.publish(state, [StartExit(ExitReason.CANCELLED)])
        return {"cancelled": True}
    claim = spec.claim_of(call)
    if claim is not None and not ports.store.claim(cycle_id, claim):
        return {"duplicate": True}
    if opening.advance and not ports.store.advance_step(cycle_id, step):
        raise StaleStep(opening.label, f"control step {step} was already decided")
    return _decide(ports, table, state, spec.bind(call))


def _run_exit(ports: Ports, table: Table, cycle_id: str, spec: StepSpec, opening: ExitOpening,
              call: Call) -> dict[str, Any]:
    state = ports.store.load(cycle_id)
    if state is None or state.finished or (not opening.starts and not state.current_attempt(call.attempt)):
        return {"skipped": True}
    now = ports.clock.now()
    decision = spec.decide(state, now, call)
    if opening.claim is not None:
        name, value = opening.claim(decision, call)
        if not ports.store.claim(cycle_id, name, value):
            return {"skipped": True} if opening.starts else {"duplicate": True}
    return _publish(ports, table, state, decision, now)


def _decide(ports: Ports, table: Table, state: CycleState, decide: Decide) -> dict[str, Any]:
    now = ports.clock.now()
    return _publish(ports, table, state, decide(state, now), now)


def _publish(ports: Ports, table: Table, state: CycleState, decision: Decision, now: float) -> dict[str, Any]:
    commands = ports.store.save(state, decision, now)
    ports.scheduler.publish(decision.state, [c for c in commands if not isinstance(c, ReportExit)])
    for report in (c for c in commands if isinstance(c, ReportExit)):
        # An attempt's report runs at once, in the step that ended the attempt.
        call = Call({"reason": report.reason.value, "attempt": report.attempt}, report.results)
        return {**decision.result, "report": run_spec(ports, table, StepName.EXIT_REPORT, state.cycle_id, call)}
    return decision.result
