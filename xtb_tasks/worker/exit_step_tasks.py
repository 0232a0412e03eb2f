"""The emergency exit's steps on the ``orchestrator`` queue: registrations of the steps in
``orchestrator.cycle.exit`` (one step: three ``xtb.venue.exit_reading`` tasks → ``exit_decide`` →
the step's orders → ``exit_match`` → the next read; a read with nothing left to send reports).

Each step acts once (its claim) and only while its attempt is the current one.
"""

from __future__ import annotations

from typing import Any

from core import keys
from core.config import GroupConfig, Role
from core.redis_conn import redis_client
from orchestrator.cycle.commands import StepName
from orchestrator.cycle.state import ROLES
from orchestrator.store import RedisCycleStore
from xtb_tasks.worker import canvas
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.cycle_task import CycleStepTask
from xtb_tasks.worker.lease import holder_is_dead


def held_leases(grp: GroupConfig) -> dict[Role, float]:
    """The roles whose account lease a live process may hold, with the seconds it has left (one
    round trip). A lease whose holder is a dead process of this host is not counted: the account's
    worker breaks it (on its next task, or when it restarts)."""
    pipe = redis_client().pipeline(transaction=False)
    for role in ROLES:
        pipe.get(keys.account_lock(grp.account_for(role)))
        pipe.pttl(keys.account_lock(grp.account_for(role)))
    answers = pipe.execute()
    held = {}
    for n, role in enumerate(ROLES):
        token, ttl = answers[2 * n], answers[2 * n + 1]
        # PTTL is -2 for no key; -1 (a lease without expiry) is never written, but counts as held.
        if token and ttl != -2 and not holder_is_dead(token):
            held[role] = max(ttl, 0) / 1000
    return held


@app.task(name="xtb.hedge.exit_decide", base=CycleStepTask, bind=True)
def exit_decide(self: CycleStepTask, readings: list[dict[str, Any]], *, cycle_id: str, reason: str, attempt: int,
                step: int) -> dict[str, Any]:
    """Step ``step`` of exit attempt ``attempt``: from the fresh ``readings``, send the next orders or report."""
    state = RedisCycleStore(redis_client()).load(cycle_id)
    held = held_leases(state.group) if state is not None else {}
    return self.run_named(StepName.EXIT_DECIDE, cycle_id, {"reason": reason, "attempt": attempt, "step": step},
                          readings, held=held)


@app.task(name="xtb.hedge.exit_match", base=CycleStepTask, bind=True)
def exit_match(self: CycleStepTask, results: list[dict[str, Any]], *, cycle_id: str, reason: str, attempt: int,
               step: int, kind: str, state: dict[str, Any], caps: dict[str, float]) -> dict[str, Any]:
    """After a step's orders: for Lighter closes, take back what they filled off the net (Backpack
    first, else the other Lighter leg when the two closed unevenly); then read again."""
    return self.run_named(StepName.EXIT_MATCH, cycle_id, {"reason": reason, "attempt": attempt, "step": step,
                                                          "kind": kind, "state": state, "caps": caps}, results)


@app.task(name="xtb.hedge.exit_read", ignore_result=True)
def exit_read(*, cycle_id: str, reason: str, attempt: int, step: int) -> None:
    """Publish step ``step``'s read (used when the read is due a moment later: a chord's header takes
    no countdown)."""
    state = RedisCycleStore(redis_client()).load(cycle_id)
    if state is not None and state.current_attempt(attempt):
        canvas.exit_read(state.group, cycle_id, reason, attempt, step).apply_async()
