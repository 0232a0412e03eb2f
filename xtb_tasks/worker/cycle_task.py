"""The one Celery adapter of the cycle's decisions: :class:`CycleStepTask` runs a step's shared
opening once (load the state, skip a finished cycle, check the fence, honour a cancel, take the
loop token), calls the step's pure decision, saves it and publishes its commands.

Task modules only register steps: a name, an :class:`Opening`, and the decision to call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.canvas import Signature

from core.cycle_fields import ExitReason, Stage
from core.fencing import Fence
from core.redis_conn import redis_client
from orchestrator import canvas
from orchestrator.cycle.commands import (
    Command,
    Decision,
    EnterFirstLegs,
    EnterRest,
    ReadPositions,
    RunLater,
    SendOrder,
    StartExit,
    Step,
)
from orchestrator.cycle.state import CycleState
from orchestrator.store import RedisClock, RedisCycleStore
from xtb_tasks.worker.fences import refuse_stale

log = logging.getLogger(__name__)

#: Stages in which no step of the entry or the loop acts any more: the exit owns the cycle.
EXIT_OWNS = (Stage.EMERGENCY_EXIT, Stage.DONE)


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


Decide = Callable[[CycleState, float], Decision]


def order_fence(order: SendOrder) -> Fence:
    """Where the cycle must still be when ``order`` runs: its own stages (an entry order), else the
    control loop's under the token it was issued with."""
    if order.fence_stages is not None:
        return Fence(order.fence_stages)
    return Fence(canvas.LOOP_STAGES, step=order.fence_step)


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
        store = RedisCycleStore(client)
        state = store.load(cycle_id)
        if state is None or state.stage in EXIT_OWNS:
            return {"skipped": True}
        fence = Fence(opening.stages, step=step if opening.token else None)
        why = fence.refusal({"stage": state.stage.value, "step_seq": state.loop.step_seq})
        if why is not None:
            refuse_stale(opening.label, cycle_id, None, why)
        scheduler = CeleryScheduler()
        if state.cancel_requested:
            scheduler.publish(state, [StartExit(ExitReason.CANCELLED)])
            return {"cancelled": True}
        if claim is not None and not store.claim(cycle_id, claim):
            return {"duplicate": True}
        if opening.advance and not store.advance_step(cycle_id, step):
            refuse_stale(opening.label, cycle_id, None, f"control step {step} was already decided")
        now = RedisClock(client).now()
        decision = decide(state, now)
        scheduler.publish(decision.state, store.save(state, decision, now))
        if decision.events:
            log.info("cycle=%s %s: %s", cycle_id, opening.label, "; ".join(decision.events))
        return decision.result
