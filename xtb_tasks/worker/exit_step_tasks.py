"""The emergency exit's steps on the ``orchestrator`` queue (decisions: ``orchestrator.cycle.exit``;
the attempt and its report: ``exit_tasks``).

One step: three ``xtb.venue.exit_reading`` tasks → ``exit_decide`` claims step <k> (attempt × 1000
+ step), records the read and the worst net, picks the orders (a catch-up, or capped Lighter closes),
records their intents and sends them → ``exit_match`` mirrors what the Lighter closes filled on
Backpack → the next read. A read with nothing left to send (or the attempt's last step) goes to
``report_exit``, which confirms flat or starts the next attempt. Each task stops when its attempt
is no longer the current one (a watchdog retry superseded it) or its step was already claimed.
"""

from __future__ import annotations

from typing import Any

from core import keys
from core.config import GroupConfig, Role
from core.cycle_fields import ExitReason
from core.cycle_record import step_grace
from core.redis_conn import redis_client
from orchestrator import canvas
from orchestrator.cycle import exit as exits
from orchestrator.cycle.commands import Decision, NoteStep, ReportExit
from orchestrator.cycle.state import ROLES, CycleState
from orchestrator.store import RedisCycleStore
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.cycle_task import ExitStepTask
from xtb_tasks.worker.exit_tasks import report_exit
from xtb_tasks.worker.hedge_tasks import record_of
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


def _report(cycle_id: str, command: ReportExit) -> dict[str, Any]:
    return report_exit(record_of(cycle_id), list(command.results), reason=command.reason.value,
                       attempt=command.attempt)


def _note_claim(decision: Decision) -> tuple[str, Any]:
    # The step's claim holds its note (the save adds the orders as they were numbered and given ids).
    note = next(c for c in decision.commands if isinstance(c, NoteStep))
    return note.field, note.note


@app.task(name="xtb.hedge.exit_decide", base=ExitStepTask, bind=True)
def exit_decide(self: ExitStepTask, readings: list[dict[str, Any]], *, cycle_id: str, reason: str, attempt: int,
                step: int) -> dict[str, Any]:
    """Step ``step`` of exit attempt ``attempt``: from the fresh ``readings``, send the next orders or report."""
    def decide(state: CycleState, now: float) -> Decision:
        return exits.decide_exit_step(state, exits.readings_by_role(readings, state), held_leases(state.group),
                                      reason=ExitReason(reason), attempt=attempt, step=step, now=now,
                                      grace=step_grace())

    return self.run_exit_step(cycle_id, decide, attempt=attempt, claim=_note_claim,
                              label=f"exit {attempt}.{step}", report=_report)


@app.task(name="xtb.hedge.exit_match", base=ExitStepTask, bind=True)
def exit_match(self: ExitStepTask, results: list[dict[str, Any]], *, cycle_id: str, reason: str, attempt: int,
               step: int, kind: str, state: dict[str, Any], caps: dict[str, float]) -> dict[str, Any]:
    """After a step's orders: for Lighter closes, take back what they filled off the net (Backpack
    first, else the other Lighter leg when the two closed unevenly); then read again."""
    exit_state = exits.state_from_json(state)
    return self.run_exit_step(cycle_id, lambda cycle, now: exits.decide_exit_match(
        cycle, results, reason=ExitReason(reason), attempt=attempt, step=step, kind=kind, exit_state=exit_state,
        caps=caps), attempt=attempt, claim=lambda _: (exits.match_field(attempt, step), None),
        label=f"exit {attempt}.{step} match")


@app.task(name="xtb.hedge.exit_read", ignore_result=True)
def exit_read(*, cycle_id: str, reason: str, attempt: int, step: int) -> None:
    """Publish step ``step``'s read (used when the read is due a moment later)."""
    state = RedisCycleStore(redis_client()).load(cycle_id)
    if state is not None and not exits.superseded(state, attempt):
        canvas.exit_read(state.group, cycle_id, reason, attempt, step).apply_async()
