"""The one Celery adapter of the cycle's decisions: :class:`CycleStepTask` runs a step of the table
(``orchestrator.cycle.steps.STEPS``) through ``orchestrator.cycle.runner`` on the Redis store, Redis
``TIME`` and :class:`CeleryScheduler`, which turns the decision's commands into canvases.

Task modules only register steps: a task name, its documented arguments, the step it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Task
from celery.canvas import Signature

from core.config import Role
from core.cycle_record import step_grace
from core.fencing import Fence
from core.redis_conn import redis_client
from orchestrator.cycle.commands import (
    Command,
    EnterFirstLegs,
    EnterRest,
    Finish,
    ReadForExit,
    ReadPositions,
    RunLater,
    SendExitOrders,
    SendOrder,
    StartExit,
    Step,
    StepName,
)
from orchestrator.cycle.runner import Call, Decide, Opening, Ports, StaleStep, StepSpec, run, run_spec
from orchestrator.cycle.state import LOOP_STAGES, CycleState
from orchestrator.cycle.steps import STEPS
from orchestrator.store import RedisClock, RedisCycleStore
from xtb_tasks.worker import canvas
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
    accounts' queues, orders as a chain (the order, then the next step), steps on ``orchestrator``;
    a cycle's end reads the venues' history and starts the next cycle of a run."""

    def publish(self, state: CycleState, commands: Sequence[Command]) -> None:
        for command in commands:
            if isinstance(command, Finish):
                self.finished(state, command)
                continue
            self.signature(state, command).apply_async()

    @staticmethod
    def finished(state: CycleState, finish: Finish) -> None:
        if finish.history:
            canvas.history_reads(state.group, state.cycle_id, finish.since_ms, finish.until_ms,
                                 completed=finish.completed).apply_async()
        if finish.next_cycle:
            canvas.hedge("start_cycle", **finish.next_cycle).apply_async()

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
        if isinstance(command, ReadForExit):
            return self.exit_read(state, command)
        if isinstance(command, SendExitOrders):
            return self.exit_orders(state, command)
        raise TypeError(f"no Celery form for command {type(command).__name__}")

    @staticmethod
    def step(cycle_id: str, step: Step, *, immutable: bool = True) -> Signature:
        return canvas.hedge(step.name.value, immutable=immutable, cycle_id=cycle_id, **step.kwargs)

    @staticmethod
    def exit_read(state: CycleState, read: ReadForExit) -> Signature:
        reason = read.reason.value
        if read.after_secs <= 0:
            return canvas.exit_read(state.group, state.cycle_id, reason, read.attempt, read.step)
        # A chord takes no countdown for its header: a short-lived task publishes it when due.
        return canvas.hedge("exit_read", cycle_id=state.cycle_id, reason=reason, attempt=read.attempt,
                            step=read.step).set(countdown=read.after_secs)

    def exit_orders(self, state: CycleState, send: SendExitOrders) -> Signature:
        cycle_id, reason, params = state.cycle_id, send.reason.value, state.params
        sigs = []
        for order, leg, ids in zip(send.orders, send.legs, send.client_ids, strict=True):
            bp = order.role is Role.BP
            # A zero Backpack cap means plain market orders (backpack_max_slippage = 0); Lighter's 0 is the best price.
            slippage = order.max_slippage if (order.max_slippage or not bp) else None
            delay = params.backpack_retry_delay_secs if bp else params.lighter_retry_delay_secs
            sigs.append(canvas.exit_order(state.group, order.role, cycle_id, order.side.value, order.quantity,
                                          list(ids), leg, slippage, delay, send.attempt,
                                          reduce_only=order.reduce_only))
        if send.then_step is not None:
            return canvas.exit_orders_then(sigs, self.step(cycle_id, send.then_step, immutable=False), cycle_id,
                                           reason, send.attempt)
        if send.then_read is None or len(sigs) != 1:
            raise TypeError("an exit order without a step to follow runs alone, then the next read")
        return canvas.exit_order_then_read(sigs[0], state.group, cycle_id, reason, send.attempt, send.then_read.step)


class CycleStepTask(Task):
    """Base class of the cycle's steps on the ``orchestrator`` queue."""

    abstract = True
    ignore_result = True

    @staticmethod
    def ports() -> Ports:
        client = redis_client()
        return Ports(RedisCycleStore(client), CeleryScheduler(), RedisClock(client))

    def run_named(self, name: StepName, cycle_id: str, kwargs: dict[str, Any],
                  observed: Sequence[dict[str, Any]] = (), *, held: dict[Role, float] | None = None) -> dict[str, Any]:
        """Run one delivery of step ``name`` of the table; a stale one is refused (``fences``)."""
        call = Call(kwargs, observed, held or {}, step_grace())
        try:
            result = run_spec(self.ports(), STEPS, name, cycle_id, call)
        except StaleStep as stale:
            refuse_stale(stale.label, cycle_id, None, stale.why)
        log.debug("cycle=%s %s: %s", cycle_id, name.value, result)
        return result

    def run_decision(self, cycle_id: str, opening: Opening, decide: Decide, *,
                     claim: str | None = None) -> dict[str, Any]:
        """Run a decision that is no step of the table (an errback, the plan) through the same opening."""
        spec = StepSpec(opening, lambda state, now, _: decide(state, now), None if claim is None else lambda _: claim)
        try:
            return run(self.ports(), STEPS, spec, cycle_id, Call({}))
        except StaleStep as stale:
            refuse_stale(stale.label, cycle_id, None, stale.why)
