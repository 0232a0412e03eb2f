"""Per-account venue tasks: each runs on its account's queue; those that act hold the account lease.

Arguments are JSON keyword arguments with no secrets (the worker loads the account's keys);
results are small JSON dicts. Confirmation polls by retrying with a short countdown, never by
sleeping in the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry

from core.client_ids import IntentStatus, intent_status, record_intent
from core.cycle_record import CycleRecord, CycleView, Stage, stage_deadline
from core.errors import XtbError
from core.fencing import FENCE_FIELDS, Fence
from core.redis_conn import redis_client
from venues.base import AccountReading, MarketRules, OrderReport, PositionReading, Side, VenueConnector, VenueError
from venues.margin import LIGHTER_FRACTION_UNITS, leverage_update
from xtb_tasks.execution.armed import arm_hedge, await_entry
from xtb_tasks.execution.handoff import announce_failure
from xtb_tasks.execution.settling import settle_unknown_orders
from xtb_tasks.execution.venue_ops import (
    LegFailed,
    OrderRequest,
    RetryLater,
    confirmation,
    note_account_state,
    position_state,
    prefetch,
    read_position,
    submit_order,
)
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.connectors import get_connector
from xtb_tasks.worker.fences import enforce_fence
from xtb_tasks.worker.lease import AccountLeaseTask, account_lease

log = logging.getLogger(__name__)

#: Re-runs of a submit beyond one per planned client id (uncertain outcomes are looked up, then resent).
SUBMIT_EXTRA_RETRIES = 3


#: A leverage update is an account setting made while planning, before any order of its cycle.
PLANNING = Fence((Stage.PLANNING,), missing_ok=True)

LEG_STAGES = {"bp_entry": Stage.BP_ENTRY, "l1_hedge": Stage.L1_HEDGE, "l2_entry": Stage.L2_ENTRY}


class WrongQueue(XtbError, RuntimeError):
    """A venue task for one account reached the worker of another (misrouting)."""


def _guard_queue(task: Task, account: str) -> None:
    # A worker serves only the accounts it consumes: it never acts with another account's keys.
    routing_key = (task.request.delivery_info or {}).get("routing_key")
    if routing_key and routing_key != account:
        raise WrongQueue(f"task for account {account!r} arrived on queue {routing_key!r}; refusing")


@app.task(name="xtb.venue.submit_market_order", base=AccountLeaseTask, bind=True, max_retries=None)
def submit_market_order(self: Task, *, account: str, symbol: str, side: str, client_ids: list[int],
                        quantity: str | None = None, reduce_only: bool = False,
                        max_slippage: float | None = None, cycle_id: str | None = None,
                        leg: str | None = None, quantity_from_leg: str | None = None,
                        retry_delay_secs: float = 0.5, reruns: int = 0, announce_fill: bool = False,
                        armed: bool = False, expected_quantity: str | None = None,
                        fence: dict[str, Any] | None = None) -> dict[str, Any]:
    """One market order through its planned client ids (a new id per attempt, each sent at most once).

    ``reruns`` counts re-runs after an uncertain outcome or a rejection; it is kept apart from
    Celery's retry counter, which lease waits also advance. ``announce_fill`` pushes the leg's
    final outcome to its armed hedge; ``armed`` (with ``quantity_from_leg``) starts before that
    leg is final and sends as soon as its outcome is announced (``xtb_tasks.execution.handoff``); it primes
    the order for ``expected_quantity`` (the entry's planned size) while it waits. ``fence``
    (``core.fencing.Fence``) refuses a copy sent from a stage the cycle has left.
    """
    _guard_queue(self, account)
    request = OrderRequest(
        account=account, symbol=symbol, side=Side(side), client_ids=tuple(client_ids),
        quantity=Decimal(quantity) if quantity is not None else None, reduce_only=reduce_only,
        max_slippage=max_slippage, cycle_id=cycle_id, leg=leg, quantity_from_leg=quantity_from_leg,
        retry_delay_secs=retry_delay_secs, announce_fill=announce_fill,
    )
    try:
        report = _submit(self, request, reruns, armed, expected_quantity, fence)
    except (Retry, Ignore):
        raise
    except Exception as exc:
        if announce_fill and cycle_id and leg:
            announce_failure(redis_client(), cycle_id, leg, f"{type(exc).__name__}: {exc}")
        raise
    return {**report.to_json(), "account": account}


def _submit(task: Task, request: OrderRequest, reruns: int, armed: bool,
            expected_quantity: str | None, fence: dict[str, Any] | None) -> OrderReport:
    client = redis_client()
    connector = get_connector(request.account)
    fetched = prefetch(client, request)
    if request.cycle_id and fence is None:
        # Every order a cycle publishes names where its cycle must still be; one that does not was
        # not sent by the cycle and must not act on it.
        raise ValueError(f"{request.leg or 'order'} for cycle {request.cycle_id} carries no fence; refusing")
    enforce_fence(fence, fetched.fence_fields, task=f"{request.leg or 'order'} submit",
                  cycle_id=request.cycle_id, account=request.account)
    # The cancel flag stops the entry. The exit sets it itself, so an exit's orders (fenced to their
    # attempt) go on, Backpack's offset too, and so does anything reduce-only.
    exit_order = fence is not None and Fence.from_json(fence).exit_attempt is not None
    if fetched.cancelled and not request.reduce_only and not exit_order:
        raise RuntimeError(f"cycle {request.cycle_id} was cancelled; {request.leg} not sent")
    entry_settled = fetched.prior_leg is not None and fetched.prior_leg.settled
    if armed and request.cycle_id and request.quantity_from_leg and not entry_settled:
        fetched = arm_hedge(client, connector, request, fetched, expected_quantity)
        fetched = replace(fetched, prior_leg=await_entry(client, request, fetched))
    try:
        return submit_order(client, connector, request, fetched, LEG_STAGES.get(request.leg or ""))
    except RetryLater as exc:
        if exc.counted and reruns >= len(request.client_ids) + SUBMIT_EXTRA_RETRIES:
            raise LegFailed(f"{request.leg or 'order'} on {request.account} gave up after {reruns} re-runs: "
                            f"{exc}") from None
        # The task's own count (``reruns``) is the limit; Celery's max_retries is off for this task.
        raise task.retry(countdown=exc.countdown,
                         kwargs={**task.request.kwargs, "reruns": reruns + (1 if exc.counted else 0)}) from None


@app.task(name="xtb.venue.get_position", base=AccountLeaseTask, bind=True, exclusive=False)
def get_position(self: Task, *, account: str, symbol: str, cycle_id: str | None = None) -> dict[str, Any]:
    """The position, with the market's rules (a position below its smallest order is dust)."""
    _guard_queue(self, account)
    connector = get_connector(account)
    return {**read_position(redis_client(), connector, symbol, cycle_id).to_json(),
            "rules": connector.market_rules(symbol).to_json()}


class ConfirmationFailed(XtbError, RuntimeError):
    """The position did not move as required before the deadline (or the cycle was cancelled)."""


@app.task(name="xtb.venue.confirm_position", base=AccountLeaseTask, bind=True, exclusive=False, max_retries=None)
def confirm_position(self: Task, *, account: str, symbol: str, baseline: str, expected_sign: int,
                     min_fraction: float, poll_secs: float, deadline: float | None = None,
                     timeout_secs: float | None = None, cycle_id: str | None = None, leg: str | None = None,
                     requested: str | None = None, fail_on_timeout: bool = False,
                     next_stage: str | None = None, fence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Poll until the position moved by more than ``min_fraction`` of the request, or the deadline.

    The deadline is absolute, or ``timeout_secs`` from the first poll (kept across retries). A copy
    sent from a stage the cycle has left (``fence``) refuses: it would move the stage backwards.
    """
    _guard_queue(self, account)
    started = time.monotonic()
    if deadline is None:
        deadline = time.time() + (timeout_secs or 0.0)
    client = redis_client()
    record = CycleRecord(client, cycle_id) if cycle_id else None
    if requested is None and record and leg:
        recorded = record.leg(leg)
        requested = str(recorded.requested) if recorded else "0"
    # The account state, the cancel flag and the stage travel in one round trip after the read.
    connector = get_connector(account)
    version = connector.stream_version()  # before the read: a push after it wakes the wait below
    pipe = client.pipeline(transaction=False)
    reading = read_position(pipe, connector, symbol, cycle_id)
    view = record.view("plan", *FENCE_FIELDS[1:], after=pipe) if record else None
    if view is None:
        pipe.execute()
    else:
        enforce_fence(fence, view.fields, task=f"{leg or 'position'} confirmation", cycle_id=cycle_id, account=account)
    result = confirmation(reading, Decimal(baseline), expected_sign, Decimal(requested or "0"),
                          Decimal(str(min_fraction)))
    if view and view.cancel_requested:
        raise ConfirmationFailed(f"cycle {cycle_id} cancelled while confirming {leg}")
    if not result["confirmed"] and version is not None:
        window_end = min(time.time() + poll_secs - (time.monotonic() - started), deadline)
        result = _confirm_on_push(client, connector, symbol, cycle_id, version, window_end,
                                  lambda r: confirmation(r, Decimal(baseline), expected_sign, Decimal(requested or "0"),
                                                         Decimal(str(min_fraction)))) or result
    result.update(account=account, polls=self.request.retries + 1)
    if not result["confirmed"] and time.time() < deadline:
        # Polls at a fixed rate: the next read is due poll_secs after this one started, not after it ended.
        countdown = max(0.0, poll_secs - (time.monotonic() - started))
        raise self.retry(countdown=countdown, kwargs={**self.request.kwargs, "deadline": deadline})
    log.info("account=%s cycle=%s leg=%s confirm=%s position=%s polls=%s", account, cycle_id, leg,
             result["confirmed"], result["position"], result["polls"])
    if not result["confirmed"] and fail_on_timeout:
        if record and leg:
            record.update({f"confirm:{leg}": result})
        raise ConfirmationFailed(f"{leg or 'position'} on {account} not confirmed: position {result['position']}, "
                                 f"baseline {baseline}, requested {requested}")
    if record and view:
        _record_confirmation(record, view, leg, result, Stage(next_stage) if next_stage else None)
    return result


def _confirm_on_push(client: Any, connector: VenueConnector, symbol: str, cycle_id: str | None, version: int,
                     until: float, judge: Callable[[PositionReading], dict[str, Any]]) -> dict[str, Any] | None:
    # Re-judged on each stream push until confirmed or this poll's window ends: the confirmation
    # lands a moment after the venue pushes the fill, and a quiet stream costs no REST read.
    result = None
    while (left := until - time.time()) > 0:
        changed = connector.wait_stream_change(version, left)
        if changed is None or changed == version:
            break
        version = changed
        result = judge(read_position(client, connector, symbol, cycle_id))
        if result["confirmed"]:
            break
    return result


def _record_confirmation(record: CycleRecord, view: CycleView, leg: str | None, result: dict[str, Any],
                         next_stage: Stage | None) -> None:
    # The confirmation and the next stage (once) in one write.
    fields: dict[str, Any] = {f"confirm:{leg}": result} if leg else {}
    if next_stage is not None and view.stage is not next_stage:
        record.set_stage(next_stage, deadline=stage_deadline(next_stage, view.get("plan")), **fields)
    elif fields:
        record.update(**fields)


def fresh_client_ids(client: Any, account: str, symbol: str, client_ids: list[int]) -> Iterator[int]:
    """Yield only ids never used before, marking each as sending when handed out (a re-run skips them)."""
    for client_id in client_ids:
        if intent_status(client, account, client_id) not in (None, IntentStatus.PLANNED):
            continue
        record_intent(client, account, client_id, status=IntentStatus.SENDING.value, symbol=symbol,
                      reduce_only=True, cycle_id="", leg="flatten")
        yield client_id


@app.task(name="xtb.venue.flatten", base=AccountLeaseTask, bind=True)
def flatten(self: Task, *, account: str, symbol: str, client_ids: list[int], max_attempts: int = 3) -> dict[str, Any]:
    """An operator's flatten (``xtb flatten``): reduce-only market orders until a fresh read says
    flat. A cycle never sends it: its exit goes in steps, in step across the three accounts."""
    _guard_queue(self, account)
    client = redis_client()
    connector = get_connector(account)
    report = connector.flatten(symbol, fresh_client_ids(client, account, symbol, client_ids),
                               max_attempts=max_attempts)
    final = report.final_position
    note_account_state(client, account, position="" if final.quantity is None else final.quantity,
                       position_read_at=final.read_at if final.known else "", cycle_id="")
    log.info("account=%s flatten flat=%s orders=%s position=%s", account, report.flat, len(report.orders),
             final.quantity)
    try:
        equity = connector.get_balance().equity
    except VenueError as exc:
        log.warning("account=%s balance after flatten unknown: %s", account, exc)
        equity = None
    return {**report.to_json(), "equity": None if equity is None else str(equity)}


@app.task(name="xtb.venue.exit_reading", base=AccountLeaseTask, bind=True, exclusive=False)
def exit_reading(self: Task, *, account: str, symbol: str, cycle_id: str | None = None,
                 fence: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fresh position, the market rules and the equity for the next exit step; the equity is None
    when the balance cannot be read (the exit goes on: PnL is then unknown, never zero). The cycle's
    orders on the account whose outcome nobody recorded are looked up first; ``unsettled`` lists
    those still unknown, and while it is not empty the position can still move.

    A read of an exit attempt that is no longer current (its ``fence``: the watchdog started another,
    or the cycle ended) refuses before any venue request: reads of superseded attempts would queue on
    the account behind a slow venue and spend its rate budget, and their step refuses anyway."""
    _guard_queue(self, account)
    client = redis_client()
    if cycle_id and fence is not None:
        enforce_fence(fence, CycleRecord(client, cycle_id).view(*FENCE_FIELDS[1:]).fields, task="exit read",
                      cycle_id=cycle_id, account=account)
    connector = get_connector(account)
    rules = connector.market_rules(symbol)
    unsettled = settle_unknown_orders(client, connector, account, symbol, cycle_id) if cycle_id else []
    reading = read_position(client, connector, symbol, cycle_id)
    try:
        equity: Decimal | None = connector.get_balance().equity
    except VenueError as exc:
        log.warning("account=%s cycle=%s balance during the exit unknown: %s", account, cycle_id, exc)
        equity = None
    return {"account": account, "rules": rules.to_json(), "read_at": reading.read_at,
            "position": None if reading.quantity is None else str(reading.quantity),
            "position_error": reading.error, "equity": None if equity is None else str(equity),
            "unsettled": unsettled}


@app.task(name="xtb.venue.account_snapshot", base=AccountLeaseTask, bind=True, exclusive=False)
def account_snapshot(self: Task, *, account: str, symbol: str, cycle_id: str | None = None) -> dict[str, Any]:
    """Rules, top of book, balance and a fresh position in one round trip (cycle planning)."""
    _guard_queue(self, account)
    connector = get_connector(account)
    started = time.perf_counter()
    rules = connector.market_rules(symbol)
    return _snapshot_json(account, connector, rules, connector.read_account(symbol), started, cycle_id)


@app.task(name="xtb.venue.leveraged_snapshot", base=AccountLeaseTask, bind=True, exclusive=False)
def leveraged_snapshot(self: Task, *, account: str, symbol: str, leverage: str,
                       cycle_id: str | None = None) -> dict[str, Any]:
    """:func:`account_snapshot` of an account whose venue has a per-market leverage setting (Lighter):
    where the account's own initial-margin fraction would not let it trade at the cycle's sizing
    ``leverage``, it is set first (``venues.margin.leverage_update``), under the account lease
    because it is a signed tx (only then: most cycles find it set). Only while the cycle is still
    planning: before any order."""
    _guard_queue(self, account)
    connector = get_connector(account)
    started = time.perf_counter()
    rules = connector.market_rules(symbol)
    read = connector.read_account(symbol)
    fraction_bp = leverage_update(rules.initial_margin, read.initial_margin_fraction, Decimal(leverage))
    if fraction_bp is None:
        return _snapshot_json(account, connector, rules, read, started, cycle_id)
    assert rules.initial_margin is not None  # leverage_update sets nothing without a rule
    record = CycleRecord(redis_client(), cycle_id) if cycle_id else None
    if record is not None:
        enforce_fence(PLANNING, record.view(*FENCE_FIELDS[1:]).fields, task="leverage update",
                      cycle_id=cycle_id, account=account)
    before_bp = int((read.initial_margin_fraction or rules.initial_margin.base) * LIGHTER_FRACTION_UNITS)
    with account_lease(self, account):
        connector.set_initial_margin_fraction(symbol, fraction_bp)
    note = f"{account} {symbol} initial margin fraction set to {fraction_bp} bp (was {before_bp} bp) for {leverage}x sizing"
    log.info("account=%s cycle=%s %s", account, cycle_id, note)
    if record is not None:
        record.add_event(note)
    read = connector.read_account(symbol)
    return _snapshot_json(account, connector, rules, read, started, cycle_id)


def _snapshot_json(account: str, connector: VenueConnector, rules: MarketRules, read: AccountReading,
                   started: float, cycle_id: str | None) -> dict[str, Any]:
    top, balance, reading = read.top, read.balance, read.position
    note_account_state(redis_client(), account, **position_state(connector, reading, started, cycle_id),
                       balance="" if balance.equity is None else balance.equity, balance_read_at=balance.read_at)

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {
        "account": account,
        "rules": rules.to_json(),
        "bid": text(top.bid), "ask": text(top.ask), "equity": text(balance.equity),
        "collateral": text(balance.collateral), "available": text(balance.available),
        "position": text(reading.quantity), "position_error": reading.error,
        "initial_margin_fraction": text(read.initial_margin_fraction),
    }


@app.task(name="xtb.venue.account_history", base=AccountLeaseTask, bind=True, exclusive=False)
def account_history(self: Task, *, account: str, symbol: str, since_ms: int, until_ms: int,
                    cycle_id: str | None = None) -> dict[str, Any]:
    """The account's fill and funding records of ``symbol`` over a finished cycle (its PnL split).

    A venue failure is answered, not raised: the report after it must run and say "unknown".
    """
    _guard_queue(self, account)
    try:
        history = get_connector(account).account_history(symbol, since_ms, until_ms)
    except VenueError as exc:
        log.warning("account=%s cycle=%s fill/funding history unknown: %s", account, cycle_id, exc)
        return {"account": account, "symbol": symbol, "error": str(exc)[:300]}
    log.info("account=%s cycle=%s history fills=%d funding=%d", account, cycle_id, len(history.fills),
             len(history.funding))
    return history.to_json()
