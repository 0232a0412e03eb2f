"""Celery signatures of the hedge cycle: which task runs where, with which arguments.

Venue steps go to the account's own queue; decisions go to ``orchestrator``. The Lighter1 hedge
does not wait for a Celery hop after the Backpack fill: it runs alongside the Backpack entry,
armed, and sends as soon as the fill is announced (``xtb_tasks.execution.handoff``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from celery import chain, chord, group
from celery.canvas import Signature

from core.config import GroupConfig, HedgeParams, Role
from core.cycle_fields import Stage
from core.fencing import Fence
from core.policies import ORCHESTRATOR_QUEUE
from orchestrator.cycle.commands import ConfirmPosition, EnterFirstLegs, EnterRest, EntryOrder

ORCHESTRATOR = ORCHESTRATOR_QUEUE
ROLES = (Role.BP, Role.L1, Role.L2)
ROLE_SHORTS = tuple(role.short for role in ROLES)



def venue(task: str, account: str, **kwargs: Any) -> Signature:
    return Signature(f"xtb.venue.{task}", kwargs={"account": account, **kwargs}, queue=account, immutable=True)


def unread(sig: Signature) -> Signature:
    # A chain link's result is read by nobody (links are immutable): storing and publishing it
    # would cost ~7 Redis commands. Failures are still stored (task_store_errors_even_if_ignored).
    return sig.set(ignore_result=True)


def hedge(task: str, *, immutable: bool = True, **kwargs: Any) -> Signature:
    return Signature(f"xtb.hedge.{task}", kwargs=kwargs, queue=ORCHESTRATOR, immutable=immutable)


def on_failure(cycle_id: str) -> Signature:
    # Not immutable: Celery passes the failed task's id as the one positional argument.
    return hedge("on_step_failed", immutable=False, cycle_id=cycle_id)


def snapshots(grp: GroupConfig, params: HedgeParams, cycle_id: str) -> chord:
    """Every account's snapshot, then ``plan``; the Lighter accounts' leverage is raised first where
    their own initial margin would not carry the cycle's sizing leverage."""
    def snapshot(role: Role) -> Signature:
        account, symbol = grp.account_for(role), grp.symbol_for(role)
        if role is Role.BP:
            return venue("account_snapshot", account, symbol=symbol, cycle_id=cycle_id)
        return venue("leveraged_snapshot", account, symbol=symbol, leverage=str(params.leverage), cycle_id=cycle_id)

    header = group(snapshot(r) for r in ROLES)
    return chord(header, hedge("plan", immutable=False, cycle_id=cycle_id).on_error(on_failure(cycle_id)))


def wait_option(wait_secs: float) -> dict[str, float]:
    # A zero countdown still sends the message through the worker's ETA timer (~20 ms measured).
    return {"countdown": wait_secs} if wait_secs > 0 else {}


def entry_order(grp: GroupConfig, cycle_id: str, order: EntryOrder) -> Signature:
    """One order of the entry on the ids of its leg; an armed hedge sends the moment the fill of
    ``order.quantity_from_leg`` is announced (``xtb_tasks.execution.handoff``)."""
    sized: dict[str, Any] = (
        {"quantity_from_leg": order.quantity_from_leg.value, "armed": True,
         "expected_quantity": str(order.expected_quantity)}
        if order.quantity_from_leg is not None else {"quantity": str(order.quantity)})
    if order.announce_fill:
        sized["announce_fill"] = True
    sig = venue("submit_market_order", grp.account_for(order.role), symbol=grp.symbol_for(order.role),
                side=order.side.value, client_ids=order.client_ids, max_slippage=order.max_slippage, cycle_id=cycle_id,
                leg=order.leg.value, retry_delay_secs=order.retry_delay_secs, fence=Fence(order.fence).to_json(), **sized)
    return sig.set(**wait_option(order.after_secs))


def confirm_position(grp: GroupConfig, cycle_id: str, confirm: ConfirmPosition) -> Signature:
    return venue("confirm_position", grp.account_for(confirm.role), symbol=grp.symbol_for(confirm.role),
                 baseline=str(confirm.baseline), expected_sign=confirm.expected_sign, leg=confirm.leg.value,
                 next_stage=confirm.next_stage.value, fence=Fence(confirm.fence).to_json(),
                 min_fraction=confirm.min_fraction, timeout_secs=confirm.timeout_secs, poll_secs=confirm.poll_secs,
                 cycle_id=cycle_id, fail_on_timeout=True)


def entry_chain(grp: GroupConfig, cycle_id: str, command: EnterFirstLegs, then: Signature) -> chain:
    """(Backpack entry ∥ armed Lighter1 hedge) → ``then`` (the entry's balance)."""
    # The hedge is published first: arming (lease, book, signature) should be done before the fill arrives.
    legs = group(entry_order(grp, cycle_id, command.hedge), entry_order(grp, cycle_id, command.entry))
    return chain(legs, then).on_error(on_failure(cycle_id))


def entry_rest(grp: GroupConfig, cycle_id: str, command: EnterRest, then: Signature) -> chain:
    """Confirm Lighter1 → (random wait) Lighter2's entry → confirm it → ``then`` (the control loop)."""
    return chain(
        unread(confirm_position(grp, cycle_id, command.confirm_hedge)),
        unread(entry_order(grp, cycle_id, command.entry)),
        unread(confirm_position(grp, cycle_id, command.confirm_entry)),
        then,
    ).on_error(on_failure(cycle_id))


def read_positions(grp: GroupConfig, cycle_id: str, then: Signature) -> chord:
    """Read all three positions in parallel on their own queues, then run ``then`` with the list."""
    header = group(venue("get_position", grp.account_for(r), symbol=grp.symbol_for(r), cycle_id=cycle_id)
                   for r in ROLES)
    return chord(header, then.on_error(on_failure(cycle_id)))


def order_then(grp: GroupConfig, role: Role, cycle_id: str, *, side: str, quantity: Decimal, client_id: int,
               leg: str, reduce_only: bool, max_slippage: float | None, fence: Fence, then: Signature) -> chain:
    """One order of a decision on ``role``'s account under ``fence``, then the step ``then``."""
    return chain(
        unread(venue("submit_market_order", grp.account_for(role), symbol=grp.symbol_for(role), side=side,
                     client_ids=[client_id], quantity=str(quantity), reduce_only=reduce_only, cycle_id=cycle_id,
                     leg=leg, max_slippage=max_slippage, fence=fence.to_json())),
        then,
    ).on_error(on_failure(cycle_id))


# ---- the emergency exit, in steps (orchestrator.cycle.exit; tasks in xtb_tasks.worker.exit_step_tasks) ----
def exit_failed(cycle_id: str, reason: str, attempt: int) -> Signature:
    return hedge("exit_failed", immutable=False, cycle_id=cycle_id, reason=reason, attempt=attempt)


def exit_read(grp: GroupConfig, cycle_id: str, reason: str, attempt: int, step: int) -> chord:
    """A fresh read of the three accounts, then ``exit_decide`` picks step ``step``'s orders."""
    fence = Fence((Stage.EMERGENCY_EXIT,), exit_attempt=attempt).to_json()
    header = group(venue("exit_reading", grp.account_for(r), symbol=grp.symbol_for(r), cycle_id=cycle_id,
                         fence=fence) for r in ROLES)
    body = hedge("exit_decide", immutable=False, cycle_id=cycle_id, reason=reason, attempt=attempt, step=step)
    return chord(header, body.on_error(exit_failed(cycle_id, reason, attempt)))


def exit_order(grp: GroupConfig, role: Role, cycle_id: str, side: str, quantity: Decimal, client_ids: list[int],
               leg: str, max_slippage: float | None, retry_delay_secs: float, attempt: int, *,
               reduce_only: bool = True) -> Signature:
    """One price-capped order of an exit step (a Limit IOC on Backpack, an IOC on Lighter);
    reduce-only but for Backpack's offset of the net (``orchestrator.cycle.in_step.catch_up``).

    A copy of it refuses once another exit attempt is current or the cycle has ended (its fence): an
    exit order passes the cancel flag the exit itself sets, and a spare client id would close the
    next cycle's leg.
    """
    return venue("submit_market_order", grp.account_for(role), symbol=grp.symbol_for(role), side=side,
                 client_ids=client_ids, quantity=str(quantity), reduce_only=reduce_only, max_slippage=max_slippage,
                 cycle_id=cycle_id, leg=leg, retry_delay_secs=retry_delay_secs,
                 fence=Fence((Stage.EMERGENCY_EXIT,), exit_attempt=attempt).to_json())


def exit_orders_then(orders: list[Signature], then: Signature, cycle_id: str, reason: str, attempt: int) -> chord:
    """Send a step's orders in parallel, then ``then`` with their reports."""
    return chord(group(orders), then.on_error(exit_failed(cycle_id, reason, attempt)))


def exit_order_then_read(order: Signature, grp: GroupConfig, cycle_id: str, reason: str, attempt: int,
                         step: int) -> chain:
    return chain(unread(order), exit_read(grp, cycle_id, reason, attempt, step)).on_error(
        exit_failed(cycle_id, reason, attempt))


def history_reads(grp: GroupConfig, cycle_id: str, since_ms: int, until_ms: int, *, completed: bool) -> chord:
    """Each account's fill and funding records over the cycle, then ``pnl_report`` (the realised split and,
    for a ``completed`` cycle, its alert). The reads answer an error rather than fail, so the report
    always runs; a chord that fails anyway still alerts (``pnl_report_failed``)."""
    header = group(venue("account_history", grp.account_for(r), symbol=grp.symbol_for(r), cycle_id=cycle_id,
                         since_ms=since_ms, until_ms=until_ms) for r in ROLES)
    body = hedge("pnl_report", immutable=False, cycle_id=cycle_id, completed=completed)
    return chord(header, body.on_error(hedge("pnl_report_failed", immutable=False, cycle_id=cycle_id,
                                             completed=completed)))
