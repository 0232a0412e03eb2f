"""The watchdog and ``xtb recover``: resolve cycles whose next step is overdue.

A lost message, a chord that never fires or a dead worker leaves a cycle waiting forever.
The record says where it was; what to do is ``orchestrator.cycle.recovery``'s decision, published
through the scheduler it is given (Celery's in production).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from core import keys
from core.cycle_fields import CycleFieldError
from core.cycle_record import CycleRecord, Stage, active_cycle_ids, stage_grace, step_grace
from core.policies import watchdog_grace
from orchestrator.cycle import recovery
from orchestrator.cycle.ports import Scheduler
from orchestrator.record_fields import state_from_fields
from orchestrator.store import RedisCycleStore

log = logging.getLogger(__name__)


def overdue(data: dict[str, Any], now: float, deployment_grace: float) -> bool:
    """Past its deadline, and nothing wrote the record for the grace of its stage
    (``core.policies.watchdog_grace`` of the deployment's step grace)."""
    deadline = float(data.get("next_deadline") or 0)
    updated = float(data.get("updated_at") or 0)
    grace = watchdog_grace(data.get("stage"), deployment_grace)
    return bool(deadline) and now > deadline and now - updated > grace


def resolve(client: redis.Redis, scheduler: Scheduler, cycle_id: str, data: dict[str, Any]) -> dict[str, Any] | None:
    # Several sweepers (the orchestrator's thread, beat, `xtb recover`) may see the same overdue
    # cycle; only the one that claims it acts, so monitoring is never resumed twice. The claim and
    # the next deadline last the grace of the cycle's stage, as a step's write would set it.
    grace = stage_grace(data.get("stage"))
    if not client.set(keys.cycle_resolving(cycle_id), "1", nx=True, ex=int(grace)):
        return None
    record = CycleRecord(client, cycle_id)
    record.touch_deadline(time.time() + grace)
    if data.get("stage") == Stage.DONE.value:
        # Finished but left in the active set (its end was cut short): nothing to run.
        client.srem(keys.CYCLES_ACTIVE, cycle_id)
        return {"cycle_id": cycle_id, "stage": Stage.DONE.value, "action": "forgotten"}
    try:
        state = state_from_fields(cycle_id, data, record.cancel_requested())
    except (KeyError, ValueError) as exc:  # a field the cycle's state needs is missing or malformed
        log.error("cycle=%s record does not make a cycle state, not resolved: %r", cycle_id, exc)
        return {"cycle_id": cycle_id, "action": "unreadable", "error": repr(exc)}
    action, commands = recovery.resume(state)
    scheduler.publish(state, commands)
    record.add_event(f"watchdog: {state.stage.value} overdue; {action}")
    log.warning("cycle=%s stage=%s overdue; %s", cycle_id, state.stage.value, action)
    return {"cycle_id": cycle_id, "stage": state.stage.value, "action": action}


def sweep(client: redis.Redis, scheduler: Scheduler, *, force: bool = False) -> list[dict[str, Any]]:
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
            action = resolve(client, scheduler, cycle_id, data)
            if action:
                actions.append(action)
    return actions


def unwind_all(client: redis.Redis, scheduler: Scheduler) -> list[str]:
    """Cancel and unwind every active cycle (``xtb recover --unwind``, a demo restarting)."""
    store = RedisCycleStore(client)
    ids = active_cycle_ids(client)
    for cycle_id in ids:
        CycleRecord(client, cycle_id).request_cancel()
        state = store.load(cycle_id)
        if state is not None:
            scheduler.publish(state, recovery.cancel(state))
    return ids
