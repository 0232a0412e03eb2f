"""The failure paths on the ``orchestrator`` queue: a failed step's errback, the emergency exit's
start and an exit step's errback (decisions: ``orchestrator.cycle.report``, ``orchestrator.cycle.exit``).

A step that fails before any order ends the cycle ``not_started``; any later failure, a
liquidation, a timeout or a cancel unwinds the three accounts in steps (``exit_step_tasks``) and
the report confirms flat, or tries again, or ends the cycle ``unresolved`` (the group stays stopped).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from core.cycle_record import CycleRecord, Stage
from core.redis_conn import redis_client
from orchestrator.cycle import report
from orchestrator.cycle.commands import StepName
from orchestrator.cycle.runner import Opening
from orchestrator.failures import before_any_order, chord_dependency, describe_step_failure
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.cycle_task import CycleStepTask

log = logging.getLogger(__name__)

#: How long an errback waits for the failed step's stored result (it is sent before it is stored).
FAILURE_STORED_WAIT_SECS = 2.0
#: A failed step's errback acts in any stage before the exit (which owns failures of its own steps).
BEFORE_THE_EXIT = Opening(tuple(s for s in Stage if s not in (Stage.EMERGENCY_EXIT, Stage.DONE)),
                          label="step failure")


@app.task(name="xtb.hedge.on_step_failed", base=CycleStepTask, bind=True)
def on_step_failed(self: CycleStepTask, failed_task_id: str | None = None, *, cycle_id: str) -> dict[str, Any]:
    """Chain and chord errback: a failed step ends in an emergency exit with the stage's reason, or,
    when it failed before any order was sent, ends the cycle ``not_started`` touching no venue."""
    record = CycleRecord(redis_client(), cycle_id)
    if record.stage in (Stage.EMERGENCY_EXIT, Stage.DONE, None):
        return {"skipped": True}
    error = _failure_text(failed_task_id)
    nothing_sent = record.stage is Stage.PLANNING and _claim_before_any_order(record)
    log.error("cycle=%s failed (%s); %s", cycle_id, error, "not started" if nothing_sent else "emergency exit")
    return self.run_decision(cycle_id, BEFORE_THE_EXIT, lambda state, now: report.decide_step_failed(
        state, error, nothing_sent=nothing_sent))


def _failure_text(failed_task_id: str | None) -> str:
    """The failed step, its account and its error; a chord's failure is traced to the header task
    that raised (its own result is a ChordError that names neither)."""
    if not failed_task_id:
        return "unknown failure"
    failed = _stored_result(failed_task_id)
    dependency = chord_dependency(failed.result)
    if dependency:
        failed = _stored_result(dependency)
    kwargs = failed.kwargs  # stored with the result (result_extended)
    return describe_step_failure(failed.name, kwargs if isinstance(kwargs, dict) else None, failed.result)


def _stored_result(task_id: str) -> Any:
    # Celery sends a chord's errback just before it stores the body's ChordError, so the errback
    # can run first: wait a moment for the failure instead of reading "no result yet".
    result = app.AsyncResult(task_id)
    deadline = time.monotonic() + FAILURE_STORED_WAIT_SECS
    while not result.ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    return result


def _claim_before_any_order(record: CycleRecord) -> bool:
    """True when no order was or will be sent for this cycle: the plan step never claimed it (the
    claim taken here stops a late or duplicated plan at its HSETNX), or it failed before recording
    its plan and intents."""
    if record.claim("plan_claimed_at"):
        return True
    return before_any_order(record.all())


@app.task(name="xtb.hedge.emergency_exit", base=CycleStepTask, bind=True)
def emergency_exit(self: CycleStepTask, *, cycle_id: str, reason: str, attempt: int = 0) -> dict[str, Any]:
    """Unwind all three accounts in steps (``exit_step_tasks``); once per attempt, however often it is triggered."""
    log.warning("cycle=%s emergency exit reason=%s attempt=%s", cycle_id, reason, attempt)
    return self.run_named(StepName.EMERGENCY_EXIT, cycle_id, {"reason": reason, "attempt": attempt})


@app.task(name="xtb.hedge.exit_failed", base=CycleStepTask, bind=True)
def exit_failed(self: CycleStepTask, failed_task_id: str | None = None, *, cycle_id: str, reason: str,
                attempt: int) -> dict[str, Any]:
    """An exit step's errback: the next attempt while attempts remain, else the end, unresolved."""
    return self.run_named(StepName.EXIT_FAILED, cycle_id, {"reason": reason, "attempt": attempt,
                                                           "failed": failed_task_id or "?"})
