"""The control loop's steps on the ``orchestrator`` queue (decisions: ``orchestrator.cycle.loop``).

``step`` is the loop token each step was issued under: a tick or read left behind by a dead
orchestrator, or resumed twice, refuses, so a cycle has exactly one loop.
"""

from __future__ import annotations

from typing import Any

from core.cycle_fields import Stage
from orchestrator.canvas import LOOP_STAGES
from orchestrator.cycle import loop
from orchestrator.cycle.runner import Opening
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.cycle_task import CycleStepTask

REBALANCE = Opening(LOOP_STAGES, token=True, label="rebalance")
REBALANCE_DECIDE = Opening(LOOP_STAGES, advance=True, label="rebalance decision")
MONITOR_TICK = Opening((Stage.MONITORING,), token=True, label="monitor tick")
MONITOR_DECIDE = Opening((Stage.MONITORING,), advance=True, label="monitor decision")


@app.task(name="xtb.hedge.rebalance", base=CycleStepTask, bind=True)
def rebalance(self: CycleStepTask, *, cycle_id: str, attempt: int = 0, then: str = loop.AFTER_ENTRY,
              step: int = 0) -> dict[str, Any]:
    return self.run_step(cycle_id, REBALANCE, lambda state, now: loop.start_rebalance(
        state, attempt=attempt, then=then, token=step), step=step)


@app.task(name="xtb.hedge.rebalance_decide", base=CycleStepTask, bind=True)
def rebalance_decide(self: CycleStepTask, readings: list[dict[str, Any]], *, cycle_id: str, attempt: int,
                     then: str, step: int = 0) -> dict[str, Any]:
    return self.run_step(cycle_id, REBALANCE_DECIDE, lambda state, now: loop.decide_rebalance(
        state, loop.positions_of(readings, state), attempt=attempt, then=then, token=step + 1, now=now), step=step)


@app.task(name="xtb.hedge.monitor_tick", base=CycleStepTask, bind=True)
def monitor_tick(self: CycleStepTask, *, cycle_id: str, step: int = 0) -> dict[str, Any]:
    return self.run_step(cycle_id, MONITOR_TICK, lambda state, now: loop.monitor_tick(state, token=step, now=now),
                         step=step)


@app.task(name="xtb.hedge.monitor_decide", base=CycleStepTask, bind=True)
def monitor_decide(self: CycleStepTask, readings: list[dict[str, Any]], *, cycle_id: str,
                   step: int = 0) -> dict[str, Any]:
    return self.run_step(cycle_id, MONITOR_DECIDE, lambda state, now: loop.decide_monitor(
        state, loop.positions_of(readings, state), token=step + 1, now=now), step=step)
