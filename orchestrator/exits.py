"""The end of an exit, its writes: record the outcome and PnL, stop the group when the exit ends
unresolved (``orchestrator.kill_switch``), release the group, alert, and read the venues' history.
What the end concludes (flat, dust, the alert kind, the next cycle) is ``orchestrator.cycle.report``.

PnL here is each account's equity after the exit minus its equity at planning; the realised split
into trading, fees and funding follows from the venues' records (``canvas.history_reads`` →
``pnl_report``, ``orchestrator.pnl_split``). The normal end (a liquidation or the timeout, then
flat) alerts ``cycle_completed`` once the split is read; every other end alerts ``emergency_exit``
at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import redis

from core.config import Settings
from core.cycle_record import CycleRecord, Outcome
from core.durability import durable_execute
from monitoring.alert_texts import AlertKind, format_cycle_finished, format_emergency_exit, format_group_stopped
from monitoring.alerts import raise_alert
from orchestrator.canvas import history_reads
from orchestrator.cycle.report import completion_kind, exit_dust, exit_is_flat, exit_minimums, next_cycle, shown_positions
from orchestrator.flow import pnl, release_group_lock
from orchestrator.kill_switch import stop_group

log = logging.getLogger(__name__)


def finish_exit(client: redis.Redis, record: CycleRecord, settings: Settings, by_role: dict[str, dict[str, Any]],
                reason: str, *, unresolved: bool = False, doubts: list[str] | None = None) -> dict[str, Any]:
    # Several exit attempts (watchdog retries) may all report; the first one finishes the cycle.
    if not record.claim("exit_reported_at"):
        return {"cycle_id": record.cycle_id, "duplicate_report": True}
    data = record.all()
    group = data.get("group", "")
    finals = {role: (r.get("final_position") or {}).get("quantity") for role, r in by_role.items()}
    dust = exit_dust(by_role, exit_minimums(data))
    end_equity = {role: r.get("equity") for role, r in by_role.items()}
    start_equity = (data.get("plan") or {}).get("start_equity") or {}
    per_venue = pnl(start_equity, end_equity)
    flat = exit_is_flat(by_role, exit_minimums(data)) and not unresolved
    outcome = Outcome.FLAT if flat else Outcome.UNRESOLVED
    kind = completion_kind(reason, flat)
    record.record_positions("exit", finals)
    record.update(pnl=per_venue, net_delta="0" if flat else "", dust={r: str(q) for r, q in dust.items()})
    if not flat:
        # Kill switch, set before the cycle leaves the active set and its lock is released: a start
        # that takes the lock from then on finds the group stopped (start_cycle checks after the lock).
        pipe = client.pipeline(transaction=False)
        stop_group(pipe, group, record.cycle_id, reason)
        durable_execute(pipe, client, f"kill switch of group {group}", required=False)
    record.finish(outcome, reason)
    release_group_lock(client, group, record.cycle_id)
    started = float(data.get("created_at") or time.time())
    if kind is AlertKind.EMERGENCY_EXIT:
        _alert_emergency(client, record.cycle_id, group, reason, outcome, per_venue, shown_positions(finals, dust),
                         doubts)
    raise_alert(client, AlertKind.CYCLE_FINISHED,
                format_cycle_finished(group, record.cycle_id, outcome.value, per_venue, time.time() - started),
                cycle_id=record.cycle_id, group=group, outcome=outcome.value)
    if not flat:
        raise_alert(client, AlertKind.GROUP_STOPPED, format_group_stopped(group, record.cycle_id, reason),
                    cycle_id=record.cycle_id, group=group, reason=reason)
        log.error("cycle=%s group=%s stopped: exit unresolved (%s); resume with xtb group resume %s",
                  record.cycle_id, group, reason, group)
    log.warning("cycle=%s finished outcome=%s reason=%s pnl=%s dust=%s", record.cycle_id, outcome.value, reason,
                per_venue, dust)
    # The realised split (and, for a completed cycle, its alert) from the venues' fill and funding records.
    grp = settings.groups.get(group)
    if grp is not None:
        history_reads(grp, record.cycle_id, int(started * 1000), int(time.time() * 1000),
                      completed=kind is AlertKind.CYCLE_COMPLETED).apply_async()
    summary: dict[str, Any] = {"cycle_id": record.cycle_id, "outcome": outcome.value, "reason": reason,
                               "pnl": per_venue, "positions": finals, "dust": {r: str(q) for r, q in dust.items()}}
    nxt = next_cycle(settings.groups, data, reason, flat)
    if nxt:
        summary["next_cycle"] = nxt
    return summary


def _alert_emergency(client: redis.Redis, cycle_id: str, group: str, reason: str, outcome: Outcome,
                     per_venue: Mapping[str, Any], positions: Mapping[str, Any], doubts: list[str] | None) -> None:
    text = format_emergency_exit(group, cycle_id, reason, per_venue, positions)
    if doubts:
        text += f" Venue reads and recorded fills disagree ({'; '.join(doubts)})."
    if outcome is not Outcome.FLAT:
        text += (f" NOT FLAT: check the accounts now (xtb status, xtb flatten --group {group}); the group is "
                 f"stopped until `xtb group resume {group}`.")
    raise_alert(client, AlertKind.EMERGENCY_EXIT, text, cycle_id=cycle_id, group=group, reason=reason,
                outcome=outcome.value)
