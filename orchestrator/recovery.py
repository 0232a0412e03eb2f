"""The watchdog and ``xtb recover``: resolve cycles whose next step is overdue.

A lost message, a chord that never fires or a dead worker leaves a cycle waiting forever.
The record says where it was; venue truth (positions, orders by client id) is read again by
the step that resumes. Resume where that is safe (monitoring, rebalancing, an exit already under
way); unwind everything otherwise (an entry half done is not worth guessing about).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from core import keys
from core.config import Settings
from core.cycle_fields import CycleFieldError
from core.cycle_record import CycleRecord, ExitReason, Stage, active_cycle_ids, grace_deadline, step_grace
from orchestrator import canvas

log = logging.getLogger(__name__)


def overdue(data: dict[str, Any], now: float, grace: float) -> bool:
    deadline = float(data.get("next_deadline") or 0)
    updated = float(data.get("updated_at") or 0)
    return bool(deadline) and now > deadline and now - updated > grace


def resolve(client: redis.Redis, record: CycleRecord, data: dict[str, Any]) -> dict[str, Any] | None:
    stage = Stage(data.get("stage", Stage.PLANNING.value))
    cycle_id = record.cycle_id
    # Several sweepers (the orchestrator's thread, beat, `xtb recover`) may see the same overdue
    # cycle; only the one that claims it acts, so monitoring is never resumed twice.
    if not client.set(keys.cycle_resolving(cycle_id), "1", nx=True, ex=int(step_grace())):
        return None
    record.touch_deadline(grace_deadline())
    if stage is Stage.DONE:
        client.srem(keys.CYCLES_ACTIVE, cycle_id)
        return {"cycle_id": cycle_id, "action": "forgotten"}
    # Resumed under the loop's current token: if the loop was only slow, not lost, the two copies
    # meet at its compare-and-set and one of them stops (core.fencing).
    step = int(data.get("step_seq") or 0)
    if stage is Stage.MONITORING:
        action = "resume_monitoring"
        canvas.hedge("monitor_tick", cycle_id=cycle_id, step=step).apply_async()
    elif stage is Stage.REBALANCE:
        action = "resume_rebalance"
        canvas.hedge("rebalance", cycle_id=cycle_id, attempt=0, then="hedge", step=step).apply_async()
    elif stage is Stage.EMERGENCY_EXIT:
        action = "retry_exit"
        attempt = int(data.get("exit_attempts") or 1)
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=data.get("reason") or ExitReason.RECOVERED_UNWIND.value,
                     attempt=attempt).apply_async()
    else:
        action = "unwind"
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=ExitReason.RECOVERED_UNWIND.value).apply_async()
    record.add_event(f"watchdog: {stage.value} overdue; {action}")
    log.warning("cycle=%s stage=%s overdue; %s", cycle_id, stage.value, action)
    return {"cycle_id": cycle_id, "stage": stage.value, "action": action}


def sweep(client: redis.Redis, settings: Settings, *, force: bool = False) -> list[dict[str, Any]]:
    """Resolve every active cycle that is overdue (or every active one with ``force``)."""
    now, grace = time.time(), step_grace()
    actions = []
    for cycle_id in active_cycle_ids(client):
        record = CycleRecord(client, cycle_id)
        try:
            data = record.all()
        except CycleFieldError as exc:
            # One record that does not read (written around the schema) must not stop the sweep of
            # the others; it stays active and is reported every sweep until an operator fixes it.
            log.error("cycle=%s record unreadable, not resolved: %s", cycle_id, exc)
            actions.append({"cycle_id": cycle_id, "action": "unreadable", "error": str(exc)})
            continue
        if not data:
            client.srem(keys.CYCLES_ACTIVE, cycle_id)
            continue
        if force or overdue(data, now, grace):
            action = resolve(client, record, data)
            if action:
                actions.append(action)
    return actions


def unwind_all(client: redis.Redis) -> list[str]:
    """Cancel and flatten every active cycle (``xtb recover --unwind``, a demo restarting)."""
    ids = active_cycle_ids(client)
    for cycle_id in ids:
        record = CycleRecord(client, cycle_id)
        record.request_cancel()
        attempt = int(record.get("exit_attempts") or 0)
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=ExitReason.CANCELLED.value, attempt=attempt).apply_async()
    return ids
