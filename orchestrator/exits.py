"""The end of an emergency exit: confirm flat, per-venue PnL, record, alert, release the group.

PnL is each account's equity after the exit minus its equity at planning (the original read
Backpack's collateral list as a number and always reported 0, bug §8.10).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from monitoring.alerts import AlertKind, format_cycle_finished, format_emergency_exit, raise_alert
from orchestrator.flow import pnl, release_group_lock
from orchestrator.state import CycleRecord, ExitReason, Outcome
from xtb_tasks.config import Settings

log = logging.getLogger(__name__)

ROLE_ORDER = ("BP", "L1", "L2")
#: Reasons after which a multi-cycle run continues (the hedge did its job); failures stop it.
CONTINUE_AFTER = {ExitReason.LIGHTER1_ZERO.value, ExitReason.LIGHTER2_ZERO.value, ExitReason.TIMEOUT.value}


def finish_exit(client: redis.Redis, record: CycleRecord, settings: Settings, results: list[dict[str, Any]],
                reason: str, *, unresolved: bool = False) -> dict[str, Any]:
    # Several exit attempts (watchdog retries) may all report; the first one finishes the cycle.
    if not client.hsetnx(record.key, "exit_reported_at", time.time()):
        return {"cycle_id": record.cycle_id, "duplicate_report": True}
    data = record.all()
    group = data.get("group", "")
    finals = {role: (r.get("final_position") or {}).get("quantity") for role, r in zip(ROLE_ORDER, results, strict=False)}
    end_equity = {role: r.get("equity") for role, r in zip(ROLE_ORDER, results, strict=False)}
    start_equity = (data.get("plan") or {}).get("start_equity") or {}
    per_venue = pnl(start_equity, end_equity)
    flat = bool(results) and all(r.get("flat") for r in results) and not unresolved
    outcome = Outcome.FLAT if flat else Outcome.UNRESOLVED
    record.record_positions("exit", finals)
    record.update(pnl=per_venue, net_delta="0" if flat else "")
    record.finish(outcome, reason)
    release_group_lock(client, group, record.cycle_id)
    started = float(data.get("created_at") or time.time())
    text = format_emergency_exit(group, record.cycle_id, reason, per_venue, finals)
    if not flat:
        text += " NOT FLAT: check the accounts now (xtb status, xtb flatten --group)."
    raise_alert(client, AlertKind.EMERGENCY_EXIT, text, cycle_id=record.cycle_id, group=group, reason=reason,
                outcome=outcome.value)
    raise_alert(client, AlertKind.CYCLE_FINISHED,
                format_cycle_finished(group, record.cycle_id, outcome.value, per_venue, time.time() - started),
                cycle_id=record.cycle_id, group=group, outcome=outcome.value)
    log.warning("cycle=%s finished outcome=%s reason=%s pnl=%s", record.cycle_id, outcome.value, reason, per_venue)
    summary: dict[str, Any] = {"cycle_id": record.cycle_id, "outcome": outcome.value, "reason": reason,
                               "pnl": per_venue, "positions": finals}
    nxt = next_cycle(settings, data, reason, flat)
    if nxt:
        summary["next_cycle"] = nxt
    return summary


def next_cycle(settings: Settings, data: dict[str, Any], reason: str, flat: bool) -> dict[str, Any] | None:
    """The kwargs of the next cycle of a ``max_cycles`` run, or None (original §1.3 step 3, now live)."""
    from xtb_tasks.config import HedgeParams

    group = settings.groups.get(data.get("group", ""))
    if group is None or not flat or reason not in CONTINUE_AFTER:
        return None
    overrides = dict(data.get("overrides") or {})
    params = HedgeParams.from_mapping(overrides, base=group.params)
    index = int(data.get("cycle_index") or 0) + 1
    if index >= params.max_cycles:
        return None
    if reason == ExitReason.TIMEOUT.value and params.reverse_on_timeout:
        flipped = "short_backpack" if params.direction.value == "long_backpack" else "long_backpack"
        overrides["direction"] = flipped
    return {"group": group.name, "cycle_index": index, **overrides}
