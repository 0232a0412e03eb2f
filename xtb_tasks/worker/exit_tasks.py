"""Hedge-cycle tasks for the failure paths: a failed step's errback, the emergency exit and its report.

A step that fails before any order ends the cycle ``not_started``; any later failure, a
liquidation, a timeout or a cancel unwinds the three accounts to their baselines in steps
(``exit_step_tasks``: the group's net stays within one Backpack step) and the report confirms flat,
or tries again, or ends the cycle ``unresolved`` (the group stays stopped).
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

from core.cycle_record import FINAL_REASON_BY_STAGE, CycleRecord, ExitReason, Stage
from core.fencing import FENCE_FIELDS, Fence
from core.policies import EMERGENCY_EXIT
from core.redis_conn import redis_client
from orchestrator import canvas
from orchestrator.cycle.exit import start_exit
from orchestrator.cycle.report import exit_is_flat, exit_minimums, fills_disagree, results_by_role
from orchestrator.cycle.state import DEFAULT_STEP
from orchestrator.exits import finish_exit
from orchestrator.failures import before_any_order, chord_dependency, describe_step_failure
from orchestrator.flow import group_and_params
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.cycle_task import ExitStepTask
from xtb_tasks.worker.fences import enforce_fence
from xtb_tasks.worker.hedge_tasks import finish_not_started, record_of, settings

log = logging.getLogger(__name__)

#: How long an errback waits for the failed step's stored result (it is sent before it is stored).
FAILURE_STORED_WAIT_SECS = 2.0


@app.task(name="xtb.hedge.on_step_failed", ignore_result=True)
def on_step_failed(failed_task_id: str | None = None, *, cycle_id: str) -> None:
    """Chain and chord errback: a failed step ends in an emergency exit with the stage's reason, or,
    when it failed before any order was sent, ends the cycle ``not_started`` touching no venue."""
    record = record_of(cycle_id)
    stage = record.stage
    if stage in (Stage.EMERGENCY_EXIT, Stage.DONE, None):
        return
    error = _failure_text(failed_task_id)
    if stage is Stage.PLANNING and _claim_before_any_order(record):
        # Nothing was sent: an exit would only flatten positions the cycle never opened (the accounts'
        # positions from before the cycle among them).
        log.error("cycle=%s stage=%s failed before any order (%s); not started", cycle_id, stage.value, error)
        finish_not_started(record, str(record.get("group") or ""), error)
        return
    reason = ExitReason.CANCELLED if record.cancel_requested() else FINAL_REASON_BY_STAGE.get(
        stage, ExitReason.RECOVERED_UNWIND)
    log.error("cycle=%s stage=%s failed (%s); emergency exit %s", cycle_id, stage.value, error, reason.value)
    record.update(error=error[:500])
    emergency_exit.delay(cycle_id=cycle_id, reason=reason.value)


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


@app.task(name="xtb.hedge.emergency_exit", base=ExitStepTask, bind=True)
def emergency_exit(self: ExitStepTask, *, cycle_id: str, reason: str, attempt: int = 0) -> dict[str, Any]:
    """Unwind all three accounts in steps (``exit_step_tasks``); once per attempt, however often it is triggered."""
    log.warning("cycle=%s emergency exit reason=%s attempt=%s", cycle_id, reason, attempt)
    return self.run_exit_step(cycle_id, lambda state, now: start_exit(state, ExitReason(reason), attempt),
                              attempt=None, claim=lambda _: (f"exit_attempt:{attempt}", None),
                              label=f"emergency exit attempt {attempt}")


def report_exit(record: CycleRecord, results: list[dict[str, Any]], *, reason: str, attempt: int) -> dict[str, Any]:
    """Confirm flat (fresh reads and the cycle's own fills), compute per-venue PnL, record, alert,
    release the group, maybe start the next cycle; or start the next attempt."""
    cycle_id = record.cycle_id
    record.update({f"exit_results:{attempt}": results})
    accounts, steps = _ledger_inputs(record)
    by_role = results_by_role(results, accounts)
    data = record.all()
    # Dust (a leftover below the venue minimum, which no order can close) is flat for the exit, and for
    # the fill ledger that checks it: a role whose fills imply less than its minimum agrees with flat.
    minimums = exit_minimums(data)
    flat = exit_is_flat(by_role, minimums)
    tolerance = {role: max(step, minimums.get(role, step)) for role, step in steps.items()}
    doubts = fills_disagree(data, accounts, tolerance, reason=reason) if flat else []
    if (not flat or doubts) and not EMERGENCY_EXIT.exhausted(attempt):
        record.add_event(f"exit attempt {attempt} not confirmed flat ({'; '.join(doubts) or 'venue reads'}); again")
        emergency_exit.apply_async(kwargs={"cycle_id": cycle_id, "reason": reason, "attempt": attempt + 1},
                                   countdown=EMERGENCY_EXIT.delay(attempt))
        return {"retrying": True}
    summary = finish_exit(redis_client(), record, settings(), by_role, reason, unresolved=bool(doubts),
                          doubts=doubts)
    nxt = summary.get("next_cycle")
    if nxt:
        canvas.hedge("start_cycle", **nxt).apply_async()
    return summary


def _current_attempt_only(record: CycleRecord, attempt: int, task: str) -> None:
    fields = record.view(*FENCE_FIELDS[1:]).fields
    enforce_fence(Fence((Stage.EMERGENCY_EXIT,), exit_attempt=attempt), fields, task=task, cycle_id=record.cycle_id)


def _ledger_inputs(record: CycleRecord) -> tuple[dict[str, str], dict[str, Decimal]]:
    grp, _ = group_and_params(settings(), record)
    accounts = {grp.account_for(role): role.short for role in canvas.ROLES}
    step_bp = Decimal(str((record.get("bp_rules") or {}).get("step_size") or DEFAULT_STEP))
    step_l = Decimal(str(record.get("l_step") or DEFAULT_STEP))
    return accounts, {"BP": step_bp, "L1": step_l, "L2": step_l}


@app.task(name="xtb.hedge.exit_failed", ignore_result=True)
def exit_failed(failed_task_id: str | None = None, *, cycle_id: str, reason: str, attempt: int) -> None:
    record = record_of(cycle_id)
    _current_attempt_only(record, attempt, "exit failure")
    record.add_event(f"exit attempt {attempt} failed in an exit step ({failed_task_id})")
    if not EMERGENCY_EXIT.exhausted(attempt):
        emergency_exit.apply_async(kwargs={"cycle_id": cycle_id, "reason": reason, "attempt": attempt + 1},
                                   countdown=EMERGENCY_EXIT.delay(attempt))
        return
    finish_exit(redis_client(), record, settings(), {}, reason, unresolved=True)
