"""The end of an exit: confirm flat, per-venue PnL, record, alert, release the group (or, when the
exit ends unresolved, stop it: ``orchestrator.kill_switch``).

PnL here is each account's equity after the exit minus its equity at planning (the original read
Backpack's collateral list as a number and always reported 0, bug §8.10); the realised split into
trading, fees and funding follows from the venues' records (``canvas.history_reads`` →
``pnl_report``, ``orchestrator.pnl_split``). A leftover below the venue's minimum order size is dust:
flat for the outcome, reported as such (issue 16 item 8). The normal end (a liquidation or the
timeout, then flat) alerts ``cycle_completed`` once the split is read; every other end alerts
``emergency_exit`` at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import redis

from core.config import Settings
from core.cycle_record import CycleRecord, ExitReason, Outcome
from core.durability import durable_execute
from core.legs import parse_leg
from monitoring.alert_texts import AlertKind, fmt_amount, format_cycle_finished, format_emergency_exit, format_group_stopped
from monitoring.alerts import raise_alert
from orchestrator.canvas import history_reads
from orchestrator.flow import pnl, release_group_lock
from orchestrator.kill_switch import stop_group

log = logging.getLogger(__name__)

ROLE_ORDER = ("BP", "L1", "L2")
#: Reasons after which a multi-cycle run continues (the hedge did its job); failures stop it.
CONTINUE_AFTER = {ExitReason.LIGHTER1_ZERO.value, ExitReason.LIGHTER2_ZERO.value, ExitReason.TIMEOUT.value}


def results_by_role(results: list[dict[str, Any]], accounts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each exit result under the role of the account it names (``accounts``: account -> role).

    A chord's results are not keyed by anything; zipping them with the roles by position would
    drop or swap a role without a word. A result naming an unknown or repeated account is left out
    (and logged), so that role counts as not confirmed flat.
    """
    by_role: dict[str, dict[str, Any]] = {}
    for result in results:
        account = str(result.get("account", ""))
        role = accounts.get(account)
        if role is None or role in by_role:
            log.error("exit result for an unexpected or repeated account %r left out", account)
            continue
        by_role[role] = result
    return by_role


def exit_dust(by_role: dict[str, dict[str, Any]], minimums: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Roles whose flatten did not end flat but whose final fresh read is a leftover below the venue's
    minimum order size: nothing can close it (the venue refuses the order), so it is dust, not open."""
    dust: dict[str, Decimal] = {}
    for role, result in by_role.items():
        quantity = (result.get("final_position") or {}).get("quantity")
        if result.get("flat") or quantity in (None, "") or role not in minimums:
            continue
        if abs(Decimal(str(quantity))) < minimums[role]:
            dust[role] = Decimal(str(quantity))
    return dust


def exit_is_flat(by_role: dict[str, dict[str, Any]], minimums: Mapping[str, Decimal] | None = None) -> bool:
    """Every role reported, and every report says flat (or, given the venues' minimums, dust)."""
    dust = exit_dust(by_role, minimums) if minimums else {}
    return set(by_role) == set(ROLE_ORDER) and all(r.get("flat") or role in dust for role, r in by_role.items())


def completion_kind(reason: str, flat: bool) -> AlertKind:
    """``cycle_completed`` for the normal end (a Lighter leg liquidated, or the timeout, then a flat
    exit); every other end (a failure, a cancel, an exit not confirmed flat) is an ``emergency_exit``."""
    return AlertKind.CYCLE_COMPLETED if flat and reason in CONTINUE_AFTER else AlertKind.EMERGENCY_EXIT


def exit_minimums(data: Mapping[str, Any]) -> dict[str, Decimal]:
    """Each role's smallest closable size from the rules recorded at planning (dust is below it)."""
    bp = data.get("bp_rules") or {}
    lighter = data.get("l_rules") or {}
    l_min = max(Decimal(str(lighter.get("min_quantity") or 0)), Decimal(str(data.get("l_step") or 0)))
    bp_min = max(Decimal(str(bp.get("min_quantity") or 0)), Decimal(str(bp.get("step_size") or 0)))
    return {"BP": bp_min, "L1": l_min, "L2": l_min}


def shown_positions(finals: Mapping[str, Any], dust: Mapping[str, Decimal]) -> dict[str, Any]:
    # For the alerts: a dust leftover reads "flat, dust X", every other role its final quantity.
    return {role: f"flat, dust {fmt_amount(dust[role], signed=True)}" if role in dust else finals.get(role)
            for role in ROLE_ORDER if role in finals}


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
    nxt = next_cycle(settings, data, reason, flat)
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


def expected_positions(data: dict[str, Any], accounts: dict[str, str]) -> dict[str, Decimal]:
    """Positions the cycle's own fills imply (baseline + legs + flatten orders), for the roles whose
    record is complete; a role with a leg still in flight, or any unreported exit attempt, is left out."""
    plan = data.get("plan") or {}
    baselines = plan.get("baselines") or {}
    expected = {role: Decimal(str(baselines[role])) for role in ROLE_ORDER if role in baselines}
    reported = [k for k in data if k.startswith("exit_results:")]
    if len(reported) < int(data.get("exit_attempts") or 0):
        return {}  # an exit attempt died without reporting its orders: no complete ledger
    for key, value in data.items():
        if not key.startswith("leg:"):
            continue
        leg = parse_leg(value)
        account = leg.account if leg else (value.get("account", "") if isinstance(value, dict) else "")
        role = accounts.get(account)
        if role is None or role not in expected:
            continue
        if leg is None or not leg.state.final:
            expected.pop(role)  # outcome unknown to the record: the venue read is all there is
            continue
        expected[role] += leg.signed_fill
    for key in reported:
        for role, result in results_by_role(data[key] or [], accounts).items():
            for order in result.get("orders") or []:
                if role in expected:
                    expected[role] += Decimal(str(order["filled"])) * (1 if order["side"] == "buy" else -1)
    return expected


def fills_disagree(data: dict[str, Any], accounts: dict[str, str], steps: dict[str, Decimal], *,
                   reason: str) -> list[str]:
    """Roles that read flat while the cycle's own fills say they are not (a stale read, bug hunt §8.2)."""
    liquidated = {ExitReason.LIGHTER1_ZERO.value: "L1", ExitReason.LIGHTER2_ZERO.value: "L2"}.get(reason)
    return [f"{role} fills imply {quantity}" for role, quantity in expected_positions(data, accounts).items()
            if role != liquidated and abs(quantity) >= steps.get(role, Decimal("0.0001"))]


def next_cycle(settings: Settings, data: dict[str, Any], reason: str, flat: bool) -> dict[str, Any] | None:
    """The kwargs of the next cycle of a ``max_cycles`` run, or None (original §1.3 step 3, now live)."""
    from core.config import HedgeParams

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
