"""The emergency exit in steps (decisions: ``orchestrator.cycle.exit``; the attempt: ``exit_tasks``).

One step: three ``xtb.venue.exit_reading`` tasks → ``exit_decide`` claims step <k> (attempt × 1000
+ step), records the read and the worst net, picks the orders (a catch-up, or capped Lighter closes),
records their intents and sends them → ``exit_match`` mirrors what the Lighter closes filled on
Backpack → the next read. A read with nothing left to send (or the attempt's last step) goes to
``report_exit``, which confirms flat or starts the next attempt. Each task stops when its attempt
is no longer the current one (a watchdog retry superseded it) or its step was already claimed.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any

from celery.canvas import Signature

from core import keys
from core.client_ids import allocate_id_blocks, record_intent
from core.config import GroupConfig, HedgeParams, Role
from core.cycle_record import CycleRecord, CycleView, Stage, grace_deadline, positions_fields, step_grace
from core.redis_conn import redis_client
from orchestrator import canvas
from orchestrator.cycle.exit import (
    ROLE_BY_SHORT,
    ExitOrder,
    ExitState,
    ExitStep,
    ExitStepKind,
    SlippageLadder,
    catch_up,
    next_step,
    signed_fills,
    state_from_json,
    state_to_json,
)
from orchestrator.flow import group_and_params
from venues.base import MarketRules
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.exit_tasks import report_exit
from xtb_tasks.worker.hedge_tasks import record_of, settings
from xtb_tasks.worker.lease import holder_is_dead

log = logging.getLogger(__name__)

#: Steps of one attempt are numbered below this; the record's step key is attempt × this + step.
STEP_KEY_BASE = 1000
#: Client ids per exit order: a rejected send moves on to the spare.
IDS_PER_ORDER = 2
#: The shortest wait before an exit step that found a lease held reads again.
LEASE_RECHECK_SECS = 0.5


def step_key(attempt: int, step: int) -> int:
    return attempt * STEP_KEY_BASE + step


def ladders(params: HedgeParams) -> tuple[SlippageLadder, SlippageLadder]:
    """(Lighter, Backpack) price caps of the exit; Backpack starts at its own entry cap."""
    lighter = SlippageLadder(params.exit_start_slippage, params.exit_slippage_step, params.exit_max_slippage)
    backpack = SlippageLadder(params.backpack_max_slippage, params.exit_slippage_step, params.exit_max_slippage)
    return lighter, backpack


def _superseded(view: CycleView, attempt: int) -> bool:
    # A step of an attempt the watchdog or a failure replaced (or of a finished cycle) does nothing.
    return view.stage is not Stage.EMERGENCY_EXIT or int(view.get("exit_attempts") or 0) != attempt + 1


def _roles_by_account(grp: GroupConfig) -> dict[str, str]:
    return {grp.account_for(role): role.short for role in canvas.ROLES}


def _state(by_role: dict[str, dict[str, Any]], view: CycleView) -> ExitState | None:
    # None when a role did not answer or its position is unknown: unknown is never zero.
    if set(by_role) != set(canvas.ROLE_SHORTS) or any(r.get("position") is None for r in by_role.values()):
        return None
    baselines = ((view.get("plan") or {}).get("baselines")) or {}
    return ExitState({ROLE_BY_SHORT[role]: Decimal(str(r["position"])) for role, r in by_role.items()},
                     {ROLE_BY_SHORT[role]: Decimal(str(baselines.get(role) or "0")) for role in by_role},
                     {ROLE_BY_SHORT[role]: MarketRules.from_json(r["rules"]) for role, r in by_role.items()})


@app.task(name="xtb.hedge.exit_decide", ignore_result=True)
def exit_decide(readings: list[dict[str, Any]], *, cycle_id: str, reason: str, attempt: int,
                step: int) -> dict[str, Any]:
    """Step ``step`` of exit attempt ``attempt``: from the fresh ``readings``, send the next orders or report."""
    record = record_of(cycle_id)
    view = record.view("group", "overrides", "plan", "exit_attempts", "exit_worst_net")
    if _superseded(view, attempt):
        return {"skipped": True}
    grp, params = group_and_params(settings(), view)
    accounts = _roles_by_account(grp)
    by_role = {accounts[str(r.get("account"))]: r for r in readings if str(r.get("account")) in accounts}
    state = _state(by_role, view)
    key = step_key(attempt, step)
    last = step + 1 >= params.exit_max_steps
    if state is None:
        if not record.claim(f"exit_step:{key}", {"unknown": sorted(set(canvas.ROLE_SHORTS) - set(by_role))
                                                 or [r for r, v in by_role.items() if v.get("position") is None]}):
            return {"duplicate": True}
        if last:
            return report_exit(record, _results(grp, by_role, None), reason=reason, attempt=attempt)
        log.warning("cycle=%s exit %s.%s: a position is unknown; reading again", cycle_id, attempt, step)
        _read_later(grp, cycle_id, reason, attempt, step + 1, params.lighter_retry_delay_secs)
        return {"unknown": True}
    lighter, backpack = ladders(params)
    held = held_leases(grp)
    decided = next_step(state, step, lighter, backpack, frozenset(ROLE_BY_SHORT[r] for r in held))
    if decided.done or last:
        if not record.claim(f"exit_step:{key}", {"read": state_to_json(state)["positions"], "kind": "report"}):
            return {"duplicate": True}
        _note_read(record, view, state, key)
        return report_exit(record, _results(grp, by_role, state), reason=reason, attempt=attempt)
    if decided.kind is ExitStepKind.WAIT:
        return _wait_step(record, view, grp, state, held, reason=reason, attempt=attempt, step=step)
    return _send_step(record, view, grp, params, state, decided, reason=reason, attempt=attempt, step=step)


def held_leases(grp: GroupConfig) -> dict[str, float]:
    """The roles whose account lease a live process may hold, with the seconds it has left (one
    round trip). A lease whose holder is a dead process of this host is not counted: the account's
    worker breaks it (on its next task, or when it restarts)."""
    accounts = {role: account for account, role in _roles_by_account(grp).items()}
    pipe = redis_client().pipeline(transaction=False)
    for account in accounts.values():
        pipe.get(keys.account_lock(account))
        pipe.pttl(keys.account_lock(account))
    answers = pipe.execute()
    held = {}
    for n, role in enumerate(accounts):
        token, ttl = answers[2 * n], answers[2 * n + 1]
        # PTTL is -2 for no key; -1 (a lease without expiry) is never written, but counts as held.
        if token and ttl != -2 and not holder_is_dead(token):
            held[role] = max(ttl, 0) / 1000
    return held


def _wait_step(record: CycleRecord, view: CycleView, grp: GroupConfig, state: ExitState, held: dict[str, float],
               *, reason: str, attempt: int, step: int) -> dict[str, Any]:
    # Nothing is sent while a role the step needs is leased (orchestrator.exit_steps); the read is
    # taken again when the lease should be gone, within half the step grace so the watchdog sees
    # the exit progressing and does not start another attempt.
    key = step_key(attempt, step)
    if not record.claim(f"exit_step:{key}", {"read": state_to_json(state)["positions"], "kind": "wait",
                                            "held": sorted(held)}):
        return {"duplicate": True}
    _note_read(record, view, state, key)
    accounts = {role: account for account, role in _roles_by_account(grp).items()}
    roles = ", ".join(f"{role} ({accounts[role]}, {secs:.0f} s left)" for role, secs in sorted(held.items()))
    record.add_event(f"exit {attempt}.{step}: waits, the account lease of {roles} is held; nothing sent, net {state.net}")
    log.warning("cycle=%s exit %s.%s waits: lease held on %s; net=%s", record.cycle_id, attempt, step, roles, state.net)
    countdown = min(max([*held.values(), LEASE_RECHECK_SECS]), step_grace() / 2)
    _read_later(grp, record.cycle_id, reason, attempt, step + 1, countdown)
    return {"step": step, "kind": "wait", "held": sorted(held)}


def _send_step(record: CycleRecord, view: CycleView, grp: GroupConfig, params: HedgeParams, state: ExitState,
               decided: ExitStep, *, reason: str, attempt: int, step: int) -> dict[str, Any]:
    key = step_key(attempt, step)
    planned = _plan_orders(record, grp, decided.orders)
    if not record.claim(f"exit_step:{key}", {"read": state_to_json(state)["positions"], "kind": decided.kind.value,
                                            "orders": [p["order"] for p in planned]}):
        return {"duplicate": True}
    _record_intents(record, grp, planned)
    _note_read(record, view, state, key)
    log.info("cycle=%s exit %s.%s %s net=%s orders=%s", record.cycle_id, attempt, step, decided.kind.value, state.net,
             [p["order"] for p in planned])
    sigs = [_order_sig(grp, record.cycle_id, p, params, attempt) for p in planned]
    lighter, backpack = ladders(params)
    match = canvas.hedge("exit_match", immutable=False, cycle_id=record.cycle_id, reason=reason, attempt=attempt,
                         step=step, kind=decided.kind.value, state=state_to_json(state),
                         caps={"BP": backpack.cap(step), "L": lighter.cap(step)})
    canvas.exit_orders_then(sigs, match, record.cycle_id, reason, attempt).apply_async()
    return {"step": step, "kind": decided.kind.value}


def _plan_orders(record: CycleRecord, grp: GroupConfig, orders: tuple[ExitOrder, ...]) -> list[dict[str, Any]]:
    # A leg number (exit_<role>_<n>) and fresh client ids per order; intents follow the step's claim.
    pipe = redis_client().pipeline(transaction=False)
    for _ in orders:
        record.increment("exit_orders", via=pipe)
    numbers = pipe.execute()
    blocks = allocate_id_blocks(redis_client(), [(grp.account_for(o.role), o.role.venue.value, IDS_PER_ORDER)
                                                 for o in orders])
    return [{"order": {**o.to_json(), "leg": f"exit_{o.role.short.lower()}_{n}", "client_ids": ids},
             "exit_order": o}
            for o, n, ids in zip(orders, numbers, blocks, strict=True)]


def _record_intents(record: CycleRecord, grp: GroupConfig, planned: list[dict[str, Any]]) -> None:
    roles = {role.short: role for role in canvas.ROLES}
    pipe = redis_client().pipeline(transaction=False)
    for p in planned:
        account = grp.account_for(roles[p["order"]["role"]])
        for client_id in p["order"]["client_ids"]:
            record_intent(pipe, account, client_id, cycle_id=record.cycle_id, leg=p["order"]["leg"])
    pipe.execute()


def _order_sig(grp: GroupConfig, cycle_id: str, planned: dict[str, Any], params: HedgeParams,
               attempt: int) -> Signature:
    order: ExitOrder = planned["exit_order"]
    role = order.role
    # A zero Backpack cap means plain market orders (backpack_max_slippage = 0); Lighter's 0 is the best price.
    slippage: float | None = order.max_slippage if (order.max_slippage or role is not Role.BP) else None
    delay = params.backpack_retry_delay_secs if role is Role.BP else params.lighter_retry_delay_secs
    return canvas.exit_order(grp, role, cycle_id, order.side.value, order.quantity, planned["order"]["client_ids"],
                             planned["order"]["leg"], slippage, delay, attempt)


def _note_read(record: CycleRecord, view: CycleView, state: ExitState, key: int) -> None:
    # The read, the worst |net| so far and a fresh deadline (the exit is progressing) in one write.
    net = abs(state.net)
    fields: dict[str, Any] = {**positions_fields(f"exit_{key}", {**state_to_json(state)["positions"],
                                                                "net": str(state.net), "read_at": time.time()}),
                              "next_deadline": grace_deadline()}
    worst = view.get("exit_worst_net")
    if worst in (None, "") or net > Decimal(str(worst)):
        fields.update(exit_worst_net=str(net), exit_worst_net_at=time.time())
    record.update(**fields)


def _results(grp: GroupConfig, by_role: dict[str, dict[str, Any]], state: ExitState | None) -> list[dict[str, Any]]:
    # The report's per-role results; the exit's orders are legs in the record (the fill ledger reads them).
    results: list[dict[str, Any]] = []
    for role in canvas.ROLES:
        reading = by_role.get(role.short)
        if reading is None:
            continue
        flat = state is not None and state.at_target(role)
        results.append({"account": grp.account_for(role), "flat": flat, "orders": [],
                        "final_position": {"quantity": reading.get("position"), "read_at": reading.get("read_at")},
                        "equity": reading.get("equity")})
    return results


def _read_later(grp: GroupConfig, cycle_id: str, reason: str, attempt: int, step: int, countdown: float) -> None:
    if countdown <= 0:
        canvas.exit_read(grp, cycle_id, reason, attempt, step).apply_async()
        return
    # A chord takes no countdown for its header: a short-lived task publishes it when due.
    canvas.hedge("exit_read", cycle_id=cycle_id, reason=reason, attempt=attempt, step=step).apply_async(
        countdown=countdown)


@app.task(name="xtb.hedge.exit_read", ignore_result=True)
def exit_read(*, cycle_id: str, reason: str, attempt: int, step: int) -> None:
    """Publish step ``step``'s read (used when the read is due a moment later)."""
    view = record_of(cycle_id).view("group", "overrides", "exit_attempts")
    if not _superseded(view, attempt):
        grp, _ = group_and_params(settings(), view)
        canvas.exit_read(grp, cycle_id, reason, attempt, step).apply_async()


@app.task(name="xtb.hedge.exit_match", ignore_result=True)
def exit_match(results: list[dict[str, Any]], *, cycle_id: str, reason: str, attempt: int, step: int, kind: str,
               state: dict[str, Any], caps: dict[str, float]) -> dict[str, Any]:
    """After a step's orders: for Lighter closes, take back what they filled off the net (Backpack
    first, else the other Lighter leg when the two closed unevenly); then read again."""
    record = record_of(cycle_id)
    view = record.view("group", "overrides", "exit_attempts")
    if _superseded(view, attempt) or not record.claim(f"exit_match:{step_key(attempt, step)}"):
        return {"skipped": True}
    grp, params = group_and_params(settings(), view)
    fills = signed_fills(results, {grp.account_for(role): role for role in canvas.ROLES})
    order = catch_up(state_from_json(state).with_fills(fills), caps["BP"], caps["L"]) \
        if kind == ExitStepKind.LIGHTER_CLOSE.value else None
    if order is None:
        # Nothing filled: the next read comes a moment later, at a wider cap.
        _read_later(grp, cycle_id, reason, attempt, step + 1,
                    0.0 if any(fills.values()) else params.lighter_retry_delay_secs / 2)
        return {"fills": {r.short: str(q) for r, q in fills.items()}}
    planned = _plan_orders(record, grp, (order,))
    _record_intents(record, grp, planned)
    filled = {r.short: str(q) for r, q in fills.items()}
    record.add_event(f"exit {attempt}.{step}: Lighter filled {filled}; {order.role.short} {order.side.value} {order.quantity}")
    log.info("cycle=%s exit %s.%s Lighter filled %s; %s %s %s", cycle_id, attempt, step, filled, order.role.short,
             order.side.value, order.quantity)
    canvas.exit_order_then_read(_order_sig(grp, cycle_id, planned[0], params, attempt), grp, cycle_id, reason, attempt,
                                step + 1).apply_async()
    return {"fills": filled, "match": order.to_json()}
