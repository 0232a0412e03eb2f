"""The control loop's tasks on the ``orchestrator`` queue: registrations of the steps in
``orchestrator.cycle.steps`` (decisions: ``orchestrator.cycle.loop``).

``step`` is the loop token each step was issued under: a tick or read left behind by a dead
orchestrator, or resumed twice, refuses, so a cycle has exactly one loop.
"""

from __future__ import annotations

from typing import Any

from orchestrator.cycle.commands import StepName
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.cycle_task import CycleStepTask


@app.task(name="xtb.hedge.rebalance", base=CycleStepTask, bind=True)
def rebalance(self: CycleStepTask, *, cycle_id: str, attempt: int = 0, then: str = "hedge",
              step: int = 0) -> dict[str, Any]:
    return self.run_named(StepName.REBALANCE, cycle_id, {"attempt": attempt, "then": then, "step": step})


@app.task(name="xtb.hedge.rebalance_decide", base=CycleStepTask, bind=True)
def rebalance_decide(self: CycleStepTask, readings: list[dict[str, Any]], *, cycle_id: str, attempt: int,
                     then: str, step: int = 0) -> dict[str, Any]:
    return self.run_named(StepName.REBALANCE_DECIDE, cycle_id, {"attempt": attempt, "then": then, "step": step},
                          readings)


@app.task(name="xtb.hedge.monitor_tick", base=CycleStepTask, bind=True)
def monitor_tick(self: CycleStepTask, *, cycle_id: str, step: int = 0) -> dict[str, Any]:
    return self.run_named(StepName.MONITOR_TICK, cycle_id, {"step": step})


@app.task(name="xtb.hedge.monitor_decide", base=CycleStepTask, bind=True)
def monitor_decide(self: CycleStepTask, readings: list[dict[str, Any]], *, cycle_id: str,
                   step: int = 0) -> dict[str, Any]:
    return self.run_named(StepName.MONITOR_DECIDE, cycle_id, {"step": step}, readings)
