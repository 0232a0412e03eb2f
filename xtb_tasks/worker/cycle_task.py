"""The one Celery adapter of the cycle's decisions: :class:`CycleStepTask` runs a step through
``orchestrator.cycle.runner.run_step`` on the Redis store, Redis ``TIME`` and :class:`CeleryScheduler`.

Task modules only register steps: a name, an ``Opening``, and the decision to call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Task
from celery.canvas import Signature

from core.fencing import Fence
from core.redis_conn import redis_client
from orchestrator import canvas
from orchestrator.cycle.commands import (
    Command,
    EnterFirstLegs,
    EnterRest,
    ReadPositions,
    RunLater,
    SendOrder,
    StartExit,
    Step,
    StepName,
)
from orchestrator.cycle.runner import Call, Decide, Opening, Ports, StaleStep, run_step
from orchestrator.cycle.state import LOOP_STAGES, CycleState
from orchestrator.cycle.steps import STEPS
from orchestrator.store import RedisClock, RedisCycleStore
from xtb_tasks.worker.fences import refuse_stale

log = logging.getLogger(__name__)

def order_fence(order: SendOrder) -> Fence:
    """Where the cycle must still be when ``order`` runs: its own stages (an entry order), else the
    control loop's under the token it was issued with."""
    if order.fence_stages is not None:
        return Fence(order.fence_stages)
    return Fence(LOOP_STAGES, step=order.fence_step)


class CeleryScheduler:
    """:class:`~orchestrator.cycle.ports.Scheduler` on Celery canvases: reads as a chord on the
    accounts' queues, orders as a chain (the order, then the next step), steps on ``orchestrator``."""

    def publish(self, state: CycleState, commands: Sequence[Command]) -> None:
        for command in commands:
            self.signature(state, command).apply_async()

    def signature(self, state: CycleState, command: Command) -> Signature:
        cycle_id, group = state.cycle_id, state.group
        if isinstance(command, ReadPositions):
            return canvas.read_positions(group, cycle_id, self.step(cycle_id, command.then, immutable=False))
        if isinstance(command, RunLater):
            return self.step(cycle_id, command.step).set(**canvas.wait_option(command.after_secs))
        if isinstance(command, SendOrder):
            return canvas.order_then(group, command.role, cycle_id, side=command.side.value,
                                     quantity=command.quantity, client_id=int(command.client_id or 0),
                                     leg=command.leg, reduce_only=command.reduce_only,
                                     max_slippage=command.max_slippage, fence=order_fence(command),
                                     then=self.step(cycle_id, command.then))
        if isinstance(command, StartExit):
            return canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=command.reason.value)
        if isinstance(command, EnterFirstLegs):
            return canvas.entry_chain(group, cycle_id, command, self.step(cycle_id, command.then))
        if isinstance(command, EnterRest):
            return canvas.entry_rest(group, cycle_id, command, self.step(cycle_id, command.then))
        raise TypeError(f"no Celery form for command {type(command).__name__}")

    @staticmethod
    def step(cycle_id: str, step: Step, *, immutable: bool = True) -> Signature:
        return canvas.hedge(step.name.value, immutable=immutable, cycle_id=cycle_id, **step.kwargs)


class CycleStepTask(Task):
    """Base class of the cycle's steps on the ``orchestrator`` queue."""

    abstract = True
    ignore_result = True

    def run_step(self, cycle_id: str, opening: Opening, decide: Decide, *, step: int = 0,
                 claim: str | None = None) -> dict[str, Any]:
        """Run one step; ``claim`` names a once-only claim of the cycle the step takes before it acts
        (a second delivery of the same step stops there)."""
        client = redis_client()
        ports = Ports(RedisCycleStore(client), CeleryScheduler(), RedisClock(client))
        try:
            result = run_step(ports, cycle_id, opening, decide, step=step, claim=claim)
        except StaleStep as stale:
            refuse_stale(stale.label, cycle_id, None, stale.why)
        log.debug("cycle=%s %s: %s", cycle_id, opening.label, result)
        return result

    def run_named(self, name: StepName, cycle_id: str, kwargs: dict[str, Any],
                  observed: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """Run step ``name`` of the table (``orchestrator.cycle.steps.STEPS``) for one delivery."""
        spec = STEPS[name]
        call = Call(kwargs, observed)
        return self.run_step(cycle_id, spec.opening, spec.bind(call), step=call.token, claim=spec.claim_of(call))
