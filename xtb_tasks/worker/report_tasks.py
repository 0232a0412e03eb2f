"""The end-of-cycle report on the ``orchestrator`` queue: the realised PnL split and the completion alert.

A cycle's end (the ``Finish`` command) publishes ``canvas.history_reads``; these tasks are its body
and errback. They touch no venue and change nothing but the record and alerts.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from core.cycle_record import CycleRecord
from core.exposure import worst_net_report
from core.redis_conn import redis_client
from monitoring.alert_texts import AlertKind, format_cycle_completed
from monitoring.alerts import raise_alert
from orchestrator.cycle.report import shown_positions
from orchestrator.cycle.state import ROLES
from orchestrator.pnl_split import cycle_split
from orchestrator.record_fields import state_from_fields
from xtb_tasks.worker.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="xtb.hedge.pnl_report", ignore_result=True)
def pnl_report(histories: list[dict[str, Any]], *, cycle_id: str, completed: bool) -> dict[str, Any]:
    """Record each venue's trading / fees / funding split; alert ``cycle_completed`` for a normal end."""
    record = CycleRecord(redis_client(), cycle_id)
    if not record.claim("pnl_split_claimed_at"):
        return {"cycle_id": cycle_id, "duplicate": True}
    data = record.all()
    # The cycle's own group and rules, as it started: the split reads the accounts it traded.
    state = state_from_fields(cycle_id, data, cancel=False)
    grp = state.group
    accounts = {grp.account_for(role): role.short for role in ROLES}
    split = cycle_split(data, accounts, histories, {role.short: state.step_of(role) for role in ROLES})
    record.update(pnl_split=split)
    log.info("cycle=%s group=%s pnl split %s", cycle_id, grp.name, split)
    if completed:
        _alert_completed(record, data, split)
    return {"cycle_id": cycle_id, "pnl_split": split}


@app.task(name="xtb.hedge.pnl_report_failed", ignore_result=True)
def pnl_report_failed(failed_task_id: str | None = None, *, cycle_id: str, completed: bool) -> None:
    # The history chord failed outright (a worker died under it): the split is unknown, the alert still goes.
    record = CycleRecord(redis_client(), cycle_id)
    if not record.claim("pnl_split_claimed_at"):
        return
    why = f"history reads failed ({failed_task_id})"
    split = {role.short: {"error": why} for role in ROLES}
    record.update(pnl_split=split)
    log.error("cycle=%s pnl split unknown: %s", cycle_id, why)
    if completed:
        _alert_completed(record, record.all(), split)


def _alert_completed(record: CycleRecord, data: dict[str, Any], split: dict[str, dict[str, Any]]) -> None:
    started, finished = float(data.get("created_at") or 0), data.get("finished_at")
    duration = float(finished) - started if finished is not None and started else None
    finals = {k: v for k, v in (data.get("positions:exit") or {}).items() if k in ("BP", "L1", "L2")}
    dust = {role: Decimal(str(q)) for role, q in (data.get("dust") or {}).items()}
    group, reason = str(data.get("group") or ""), str(data.get("reason") or "")
    text = format_cycle_completed(group, record.cycle_id, reason, duration, data.get("pnl") or {}, split,
                                  shown_positions(finals, dust), worst_net_report(data))
    raise_alert(redis_client(), AlertKind.CYCLE_COMPLETED, text, cycle_id=record.cycle_id, group=group,
                reason=reason, outcome=str(data.get("outcome") or ""))
