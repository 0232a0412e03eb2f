"""Hedge-cycle tasks on the ``orchestrator`` queue: start, plan, rebalance, monitor, watchdog (exits: exit_tasks).

Each task reads the cycle record, decides (``orchestrator.flow``), records the decision, then
publishes the next canvas (``orchestrator.canvas``). None of them calls a venue or waits on a
result; none holds venue keys.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from decimal import Decimal
from typing import Any

import redis
from celery import Task
from celery.signals import worker_ready, worker_shutdown

from monitoring.alerts import AlertKind, format_cycle_hedged, format_cycle_started, queue_alert, raise_alert
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
    release_group_lock,
    take_group_lock,
    zero_legs,
    zero_streaks,
)
from orchestrator.kill_switch import group_stop
from orchestrator.planning import AccountSnapshot, PlanRefused, plan_cycle
from orchestrator.recovery import sweep
from xtb_tasks.core.client_ids import allocate_client_ids, allocate_id_blocks, record_intent
from xtb_tasks.core.config import ConfigError, GroupConfig, HedgeParams, Settings, load_settings
from xtb_tasks.core.cycle_record import (
    CycleRecord,
    CycleView,
    ExitReason,
    Outcome,
    Stage,
    create_cycle,
    grace_deadline,
    positions_fields,
    with_event,
)
from xtb_tasks.core.errors import EXIT_USAGE, XtbError
from xtb_tasks.core.exposure import NetExposure
from xtb_tasks.core.fencing import Fence, advance_step
from xtb_tasks.core.policies import WATCHDOG_FIRST_SECS, WATCHDOG_INTERVAL_SECS
from xtb_tasks.core.redis_conn import redis_client
from xtb_tasks.worker.celery_app import ORCHESTRATOR_QUEUE, app
from xtb_tasks.worker.fences import enforce_fence, refuse_stale

log = logging.getLogger(__name__)


class InvalidCycleRequest(XtbError, ValueError):
    """Bad arguments to ``start_cycle``; rejected before any venue call."""

    exit_code = EXIT_USAGE


class CycleAlreadyActive(XtbError, RuntimeError):
    """The group already has an active cycle (one active cycle per group)."""


class GroupStopped(XtbError, RuntimeError):
    """The group is stopped by an unresolved exit until an operator runs ``xtb group resume``."""

    reason = "group_stopped"


def settings() -> Settings:
    return getattr(app, "xtb_settings", None) or load_settings()


def record_of(cycle_id: str) -> CycleRecord:
    return CycleRecord(redis_client(), cycle_id)


def validate_request(group: Any, overrides: dict[str, Any]) -> tuple[Settings, HedgeParams]:
    if not isinstance(group, str) or not group:
        raise InvalidCycleRequest("start_cycle needs 'group': the name of a configured hedge group")
    cfg = settings()
    try:
        grp = cfg.group(group)
        params = HedgeParams.from_mapping(overrides, base=grp.params)
    except ConfigError as exc:
        raise InvalidCycleRequest(exc.render()) from None
    return cfg, params


@app.task(name="xtb.hedge.start_cycle", bind=True)
def start_cycle(self: Task, group: str | None = None, cycle_index: int = 0, **overrides: Any) -> dict[str, Any]:
    """Validate, take the group lease, refuse a stopped group, write the cycle record and launch planning."""
    cfg, params = validate_request(group, overrides)
    assert group is not None
    cycle_id = f"{group}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    client = redis_client()
    holder = take_group_lock(client, group, cycle_id)
    if holder is not None:
        text = f"Cycle start refused for group {group}: cycle {holder} is still active."
        raise_alert(client, AlertKind.CYCLE_FINISHED, text, group=group, refused=True, active_cycle=holder)
        raise CycleAlreadyActive(text)
    # Checked with the lock held: finish_exit stops a group before it releases the lock (kill switch).
    stop = group_stop(client, group)
    if stop is not None:
        release_group_lock(client, group, cycle_id)
        text = stop.refusal()
        log.error("group=%s start refused: stopped since cycle=%s (%s)", group, stop.cycle_id, stop.reason)
        raise_alert(client, AlertKind.GROUP_STOPPED, text, group=group, refused=True, stopped_cycle=stop.cycle_id,
                    trigger_task=self.request.id or "")
        raise GroupStopped(text)
    create_cycle(client, cycle_id, group, overrides=overrides, cycle_index=cycle_index,
                 direction=params.direction.value, params=params.to_json(),
                 next_deadline=grace_deadline(), trigger_task=self.request.id or "")
    log.info("cycle=%s group=%s start (index %s, %s)", cycle_id, group, cycle_index, params.direction.value)
    canvas.snapshots(cfg.group(group), params, cycle_id).apply_async()
    return {"cycle_id": cycle_id, "group": group, "stage": Stage.PLANNING.value}


def _allocate(pipe: redis.client.Pipeline, grp: GroupConfig, params: HedgeParams,
              cycle_id: str) -> dict[str, list[int]]:
    # The ids in one round trip; their intents are queued in the caller's pipeline.
    plan = {"bp_entry": (grp.backpack, "backpack", params.backpack_entry_max_attempts),
            "l1_hedge": (grp.lighter1, "lighter", params.lighter_hedge_max_attempts),
            "l2_entry": (grp.lighter2, "lighter", params.lighter_hedge_max_attempts)}
    blocks = allocate_id_blocks(redis_client(), list(plan.values()))
    ids = dict(zip(plan, blocks, strict=True))
    for leg, (account, _, _) in plan.items():
        for client_id in ids[leg]:
            record_intent(pipe, account, client_id, cycle_id=cycle_id, leg=leg)
    return ids


@app.task(name="xtb.hedge.plan", ignore_result=True)
def plan(snapshots: list[dict[str, Any]], *, cycle_id: str) -> dict[str, Any]:
    """Size the cycle from fresh snapshots, allocate every client id, launch the entry chain."""
    record = record_of(cycle_id)
    # A duplicated delivery of this step must not allocate new ids and launch a second entry chain.
    if not record.claim("plan_claimed_at"):
        return {"cycle_id": cycle_id, "duplicate": True}
    view = record.view("group", "overrides")
    grp, params = group_and_params(settings(), view)
    if view.cancel_requested:
        return finish_not_started(record, grp.name, "cancelled before any order")
    # Keyed by the account each snapshot names, not by its position in the chord's results.
    by_account = {str(s.get("account")): s for s in snapshots}
    wanted = {role: grp.account_for(role) for role in canvas.ROLES}
    if len(snapshots) != len(wanted) or set(by_account) != set(wanted.values()):
        return finish_not_started(record, grp.name, f"snapshots of {sorted(by_account)} do not match the group's "
                                                    f"accounts {sorted(wanted.values())}")
    snaps = {role: AccountSnapshot.from_json(by_account[account]) for role, account in wanted.items()}
    try:
        cycle_plan = plan_cycle(grp, params, snaps)
    except PlanRefused as exc:
        return finish_not_started(record, grp.name, str(exc))
    # Intents, plan and alert in one transaction, before the entry chain is published.
    pipe = redis_client().pipeline(transaction=True)
    ids = _allocate(pipe, grp, params, cycle_id)
    start = {**{k: str(v) for k, v in cycle_plan.baselines.items()}, "read_at": time.time()}
    record.update(via=pipe, plan=cycle_plan.to_json(), client_ids=ids, bp_rules=snaps[canvas.Role.BP].rules.to_json(),
                  l_step=str(snaps[canvas.Role.L1].rules.step_size), l_rules=snaps[canvas.Role.L1].rules.to_json(),
                  **positions_fields("start", start))
    queue_alert(pipe, AlertKind.CYCLE_STARTED,
                format_cycle_started(grp.name, cycle_id, cycle_plan.direction.value, cycle_plan.bp_size),
                cycle_id=cycle_id, group=grp.name)
    pipe.execute()
    log.info("cycle=%s plan bp=%s %s wait=%.2fs price=%s", cycle_id, cycle_plan.bp_side.value,
             cycle_plan.bp_size, cycle_plan.wait_secs, cycle_plan.reference_price)
    canvas.entry_chain(grp, params, cycle_plan, cycle_id, ids).apply_async()
    return {"cycle_id": cycle_id, "plan": cycle_plan.to_json()}


def finish_not_started(record: CycleRecord, group: str, why: str) -> dict[str, Any]:
    log.warning("cycle=%s group=%s not started: %s", record.cycle_id, group, why)
    record.update(error=why)
    record.finish(Outcome.FLAT, "not_started")
    release_group_lock(redis_client(), group, record.cycle_id)
    raise_alert(redis_client(), AlertKind.CYCLE_FINISHED,
                f"Cycle {record.cycle_id} ({group}) not started: {why}.", cycle_id=record.cycle_id, group=group)
    return {"cycle_id": record.cycle_id, "stage": Stage.DONE.value, "error": why}


@app.task(name="xtb.hedge.rebalance", ignore_result=True)
def rebalance(*, cycle_id: str, attempt: int = 0, then: str = "hedge", step: int = 0) -> None:
    """Read all three positions in parallel, then drive Backpack to its own-delta target
    (``-(l1 + l2)`` from flat accounts; ``orchestrator.flow.backpack_target``).

    ``step`` is the control loop's token (``xtb_tasks.core.fencing``): a copy issued under an older
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


@app.task(name="xtb.hedge.watchdog", ignore_result=True)
def watchdog() -> list[dict[str, Any]]:
    """Resolve cycles whose next step is overdue (lost message, hung chord, dead worker)."""
    return sweep(redis_client(), settings())


def _watchdog_loop(stop: threading.Event) -> None:
    # The orchestrator worker sweeps by itself, so recovery does not depend on a beat process being up.
    while not stop.wait(WATCHDOG_INTERVAL_SECS):
        try:
            sweep(redis_client(), settings())
        except Exception:
            log.exception("watchdog sweep failed; retrying in %.0fs", WATCHDOG_INTERVAL_SECS)


_watchdog_stop = threading.Event()


@worker_ready.connect
def _recover_on_orchestrator_start(sender: Any = None, **_: Any) -> None:
    consumed = sender.app.amqp.queues.consume_from if sender is not None else {}
    if ORCHESTRATOR_QUEUE in consumed:
        watchdog.apply_async(countdown=WATCHDOG_FIRST_SECS)
        threading.Thread(target=_watchdog_loop, args=(_watchdog_stop,), name="xtb-watchdog", daemon=True).start()


@worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    _watchdog_stop.set()
