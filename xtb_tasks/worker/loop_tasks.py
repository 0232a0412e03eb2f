"""The cycle's control loop on the ``orchestrator`` queue: rebalance Backpack to its own-delta
target after the entry, then monitor until a Lighter leg is liquidated or the cycle times out.

One loop per cycle: each deciding step moves the record's ``step_seq`` token by compare-and-set
before it acts (``core.fencing``), so a redelivered copy refuses. Decisions are pure
(``orchestrator.flow``); these tasks read the record, record the decision, publish the next canvas.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

from core.client_ids import allocate_client_ids, record_intent
from core.config import GroupConfig, HedgeParams
from core.cycle_record import (
    CycleRecord,
    CycleView,
    ExitReason,
    Stage,
    grace_deadline,
    positions_fields,
    with_event,
)
from core.exposure import NetExposure
from core.fencing import Fence, advance_step
from core.redis_conn import redis_client
from monitoring.alerts import AlertKind, format_cycle_hedged, queue_alert, raise_alert
from orchestrator import canvas
from orchestrator.canvas import LOOP_STAGES
from orchestrator.exits import expected_positions
from orchestrator.flow import (
    Positions,
    RebalanceStep,
    backpack_from_fills,
    bp_rules_from_record,
    confirming_zero,
    group_and_params,
    l_minimum_from_record,
    own_net,
    rebalance_step,
    zero_legs,
    zero_streaks,
)
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.fences import enforce_fence, refuse_stale
from xtb_tasks.worker.hedge_tasks import record_of, settings

log = logging.getLogger(__name__)


@app.task(name="xtb.hedge.rebalance", ignore_result=True)
def rebalance(*, cycle_id: str, attempt: int = 0, then: str = "hedge", step: int = 0) -> None:
    """Read all three positions in parallel, then drive Backpack to its own-delta target
    (``-(l1 + l2)`` from flat accounts; ``orchestrator.flow.backpack_target``).

    ``step`` is the control loop's token (``core.fencing``): a copy issued under an older
    one refuses, and of two copies under the current one only the first decision goes on.
    """
    record = record_of(cycle_id)
    view = record.view("group", "overrides", "step_seq")
    if view.stage in (Stage.EMERGENCY_EXIT, Stage.DONE):
        return
    enforce_fence(Fence(LOOP_STAGES, step=step), view.fields, task="rebalance", cycle_id=cycle_id)
    if view.cancel_requested:
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=ExitReason.CANCELLED.value).apply_async()
        return
    if then == "hedge":
        record.set_stage(Stage.REBALANCE, deadline=grace_deadline())
    grp, _ = group_and_params(settings(), view)
    decide = canvas.hedge("rebalance_decide", immutable=False, cycle_id=cycle_id, attempt=attempt, then=then,
                          step=step)
    canvas.read_positions(grp, cycle_id, decide).apply_async()


def _take_step(cycle_id: str, step: int, task: str) -> int:
    # The deciding step moves the loop token on before it acts; a copy that lost the race refuses.
    if not advance_step(redis_client(), cycle_id, step):
        refuse_stale(task, cycle_id, None, f"control step {step} was already decided")
    return step + 1


@app.task(name="xtb.hedge.rebalance_decide", ignore_result=True)
def rebalance_decide(readings: list[dict[str, Any]], *, cycle_id: str, attempt: int, then: str,
                     step: int = 0) -> dict[str, Any]:
    record = record_of(cycle_id)
    view = record.view("group", "overrides", "bp_rules", "events", "l_step", "l_rules", "plan", "net_exposure")
    if view.stage in (Stage.EMERGENCY_EXIT, Stage.DONE):
        return {"skipped": True}
    token = _take_step(cycle_id, step, "rebalance decision")
    grp, params = group_and_params(settings(), view)
    read = Positions.from_readings(readings, grp)
    baselines = Positions.baselines_of(view.get("plan"))
    reading = {**positions_fields(f"rebalance_{attempt}", read.to_json()), **exposure_fields(view, read)}
    zeros = zero_legs(read, Decimal(view.get("l_step") or "0.0001"), baselines,
                      l_minimum_from_record(view)) if read.known else []
    if zeros:
        _confirm_zero(record, params, then, reading, zeros, token)
        return {"hedged": False, "zero": zeros}
    bp_rules = bp_rules_from_record(view)
    positions, doubt = backpack_from_fills(read, _backpack_from_fills(record, grp), bp_rules.step_size)
    step_order = None
    if positions is not None and positions.known:
        step_order = rebalance_step(positions, bp_rules, baselines)
        if step_order is None:
            _hedged(record, grp.name, params, positions, baselines, then, reading, token)
            return {"hedged": True, "positions": positions.to_json()}
    if attempt >= params.rebalance_max_attempts:
        why = doubt or ("positions unknown" if step_order is None else
                        f"Backpack still {read.bp} vs target {step_order.target}")
        record.update(**reading, events=with_event(view.get("events"),
                                                   f"rebalance gave up after {attempt} attempts: {why}"))
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=ExitReason.REBALANCE_FAILED.value).apply_async()
        return {"hedged": False}
    if step_order is None:  # unknown, or a read that disagrees with the fills: read again shortly
        events = with_event(view.get("events"), f"rebalance read again: {doubt}") if doubt else view.get("events")
        record.update(**reading, events=events or [])
        rebalance.apply_async(kwargs={"cycle_id": cycle_id, "attempt": attempt + 1, "then": then, "step": token},
                              countdown=params.rebalance_retry_delay_secs)
        return {"hedged": False, "unknown": True, "doubt": doubt}
    _send_rebalance(record, grp, params, view, step_order, reading, attempt, then, token)
    return {"hedged": False, "order": {"side": step_order.side.value, "quantity": str(step_order.quantity)}}


def _backpack_from_fills(record: CycleRecord, grp: GroupConfig) -> Decimal | None:
    return expected_positions(record.all(), {grp.account_for(role): role.short for role in canvas.ROLES}).get("BP")


def _send_rebalance(record: CycleRecord, grp: GroupConfig, params: HedgeParams, view: CycleView, order: RebalanceStep,
                    reading: dict[str, Any], attempt: int, then: str, token: int) -> None:
    # The order's id and intent are recorded before the order task is published.
    client = redis_client()
    client_id = allocate_client_ids(client, grp.backpack, "backpack", 1)[0]
    pipe = client.pipeline(transaction=False)
    record.increment("rebalances", via=pipe)
    record.update(via=pipe, **reading, events=with_event(
        view.get("events"), f"rebalance {order.side.value} {order.quantity} toward Backpack target {order.target}"))
    leg = f"bp_rebalance_{pipe.execute()[0]}"
    pipe = client.pipeline(transaction=False)
    record_intent(pipe, grp.backpack, client_id, cycle_id=record.cycle_id, leg=leg)
    pipe.execute()
    nxt = canvas.hedge("rebalance", cycle_id=record.cycle_id, attempt=attempt + 1, then=then, step=token)
    canvas.rebalance_order(grp, record.cycle_id, order.side.value, order.quantity, client_id, leg, token,
                           nxt, max_slippage=params.backpack_max_slippage or None).apply_async()


def _hedged(record: CycleRecord, group: str, params: HedgeParams, positions: Positions, baselines: Positions,
            then: str, reading: dict[str, Any], token: int) -> None:
    if then == "hedge":
        now = time.time()
        pipe = redis_client().pipeline(transaction=True)
        record.set_stage(Stage.MONITORING, deadline=grace_deadline(params.poll_interval_secs, now=now), via=pipe,
                         monitoring_started_at=now, net_delta=str(positions.own(baselines).net), **reading)
        queue_alert(pipe, AlertKind.CYCLE_HEDGED,
                    format_cycle_hedged(group, record.cycle_id, {"BP": positions.bp, "L1": positions.l1,
                                                                 "L2": positions.l2}),
                    cycle_id=record.cycle_id, group=group)
        pipe.execute()
    else:
        record.update(**reading)
    _next_tick(record.cycle_id, token, params.poll_interval_secs)


def _confirm_zero(record: CycleRecord, params: HedgeParams, then: str, reading: dict[str, Any], zeros: list[str],
                  token: int) -> None:
    # A Lighter leg read zero while rebalancing: no Backpack order toward it; the monitor re-reads it fast.
    now = time.time()
    note = f"{'/'.join(zeros)} read zero while rebalancing: no rebalance, confirming with fast re-reads"
    log.warning("cycle=%s %s", record.cycle_id, note)
    fields: dict[str, Any] = {**reading, "events": with_event(record.get("events"), note)}
    if then == "hedge":
        record.set_stage(Stage.MONITORING, deadline=grace_deadline(params.zero_reread_secs, now=now),
                         monitoring_started_at=now, **fields)
    else:
        record.update(**fields)
    _next_tick(record.cycle_id, token, params.zero_reread_secs)


def _next_tick(cycle_id: str, token: int, countdown: float) -> None:
    monitor_tick.apply_async(kwargs={"cycle_id": cycle_id, "step": token}, countdown=countdown)


@app.task(name="xtb.hedge.monitor_tick", ignore_result=True)
def monitor_tick(*, cycle_id: str, step: int = 0) -> None:
    """One short check; the next one is scheduled by :func:`monitor_decide` (never a long countdown).

    ``step`` is the loop token: a tick left behind by a dead orchestrator or resumed twice refuses,
    so a cycle has exactly one monitoring loop.
    """
    record = record_of(cycle_id)
    view = record.view("group", "overrides", "monitoring_started_at", "step_seq")
    if view.stage is not Stage.MONITORING:
        return
    enforce_fence(Fence((Stage.MONITORING,), step=step), view.fields, task="monitor tick", cycle_id=cycle_id)
    grp, params = group_and_params(settings(), view)
    if view.cancel_requested:
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=ExitReason.CANCELLED.value).apply_async()
        return
    started = float(view.get("monitoring_started_at") or time.time())
    if time.time() - started >= params.timeout_secs:
        log.warning("cycle=%s timeout reached after %.0fs; unwinding", cycle_id, time.time() - started)
        canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=ExitReason.TIMEOUT.value).apply_async()
        return
    record.touch_deadline(grace_deadline(params.poll_interval_secs))
    canvas.read_positions(grp, cycle_id, canvas.hedge("monitor_decide", immutable=False, cycle_id=cycle_id,
                                                      step=step)).apply_async()


@app.task(name="xtb.hedge.monitor_decide", ignore_result=True)
def monitor_decide(readings: list[dict[str, Any]], *, cycle_id: str, step: int = 0) -> dict[str, Any]:
    record = record_of(cycle_id)
    view = record.view("group", "overrides", "zero_streaks", "l_step", "l_rules", "bp_rules", "plan", "unknown_reads",
                       "net_exposure")
    if view.stage is not Stage.MONITORING:
        return {"skipped": True}
    token = _take_step(cycle_id, step, "monitor decision")
    grp, params = group_and_params(settings(), view)
    positions = Positions.from_readings(readings, grp)
    # Relative to the baselines: a leg is liquidated when the cycle's own delta on it is back to zero (or dust).
    baselines = Positions.baselines_of(view.get("plan"))
    streaks = zero_streaks(view.get("zero_streaks"), positions, Decimal(view.get("l_step") or "0.0001"), baselines,
                           l_minimum_from_record(view))
    own = positions.own(baselines)
    unknown = 0 if positions.known else int(view.get("unknown_reads") or 0) + 1
    record.update(positions=positions.to_json(), net_delta=str(own.net) if own.known else "",
                  zero_streaks=streaks, unknown_reads=unknown, **exposure_fields(view, positions))
    if unknown and unknown % params.unknown_reads_alert == 0:
        _alert_unknown(cycle_id, grp.name, positions, unknown)
    for role, reason in (("L1", ExitReason.LIGHTER1_ZERO), ("L2", ExitReason.LIGHTER2_ZERO)):
        if streaks.get(role, 0) >= params.zero_confirmations:
            log.warning("cycle=%s %s returned to zero on %s fresh reads", cycle_id, role, streaks[role])
            canvas.hedge("emergency_exit", cycle_id=cycle_id, reason=reason.value).apply_async()
            return {"exit": reason.value}
    if confirming_zero(streaks):
        _next_tick(cycle_id, token, params.zero_reread_secs)
        return {"confirming_zero": streaks}
    if positions.known:
        step_order = rebalance_step(positions, bp_rules_from_record(view), baselines)
        drift = abs(step_order.target - positions.bp) if step_order else Decimal(0)  # type: ignore[operator]
        if step_order is not None and drift > params.liquidation_tolerance:
            rebalance.delay(cycle_id=cycle_id, attempt=0, then="monitor", step=token)
            return {"rebalance": str(drift)}
    _next_tick(cycle_id, token, params.poll_interval_secs)
    return {"positions": positions.to_json()}


def _alert_unknown(cycle_id: str, group: str, positions: Positions, count: int) -> None:
    # Unknown is never traded on, so a venue whose reads keep failing leaves the cycle silently
    # unwatched: say so every unknown_reads_alert reads instead of staying quiet for hours.
    roles = [role for role, value in (("BP", positions.bp), ("L1", positions.l1), ("L2", positions.l2))
             if value is None]
    text = (f"Cycle {cycle_id} ({group}): {'/'.join(roles)} position unknown on {count} monitor reads in a row; "
            "nothing is traded on unknown reads. Check the venue and the worker (xtb status).")
    log.error("cycle=%s group=%s %s", cycle_id, group, text)
    raise_alert(redis_client(), AlertKind.POSITIONS_UNKNOWN, text, cycle_id=cycle_id, group=group,
                unknown_reads=count, roles=roles)


def exposure_fields(view: CycleView, positions: Positions) -> dict[str, Any]:
    # The worst own net and the time beyond one Backpack step, from every fully known read.
    net = own_net(positions, (view.get("plan") or {}).get("baselines") or {})
    if net is None:
        return {}
    step = bp_rules_from_record(view).step_size if view.get("bp_rules") else Decimal("0.0001")
    seen = NetExposure.from_json(view.get("net_exposure")).observe(net, step, time.time())
    return {"net_exposure": seen.to_json()}
