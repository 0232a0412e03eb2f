"""What a venue task does, as plain functions, so ``xtb order --direct`` runs the same code in process.

The idempotency rule lives here: a client id whose intent may have reached the venue
(``sending``) is looked up before anything is sent, and a client id is never sent twice. A lookup
that finds nothing is not "never sent": the venue may hold the request past our timeout and fill it
later. Nothing else is sent for the leg until the order shows up (its outcome is recorded) or
``ORDER_SETTLE_SECS`` have passed since its intent (it is recorded as never placed and the next
planned client id, never the same one, is sent).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import redis

from core import keys, lease_clock
from core.client_ids import IntentStatus, intent_age, mark_intent, record_intent
from core.cycle_record import CycleRecord, grace_deadline
from core.durability import ReplicaTimeout, durable_execute
from core.errors import XtbError
from core.fencing import FENCE_FIELDS
from core.legs import Leg, LegState, parse_leg
from core.policies import ORDER_SETTLE_SECS, UNKNOWN_OUTCOME_RECHECK_SECS, never_placed
from orchestrator.cycle.entry import mirror_quantity
from venues.base import (
    OrderReport,
    OrderState,
    PendingReport,
    PositionReading,
    ReasonCode,
    Side,
    VenueConnector,
    VenueError,
)
from xtb_tasks.execution.handoff import announce_outcome

log = logging.getLogger(__name__)


class LegFailed(XtbError):
    """A hedge leg cannot be completed (every planned client id failed or a prerequisite is missing)."""


class RetryLater(XtbError):
    """Transient: run the task again after ``countdown`` seconds (the intent says where to resume).
    ``counted``: the re-run counts toward the task's limit; a wait for an unknown outcome to show
    does not (``ORDER_SETTLE_SECS`` bounds it)."""

    def __init__(self, reason: str, countdown: float, *, counted: bool = True) -> None:
        super().__init__(reason)
        self.countdown = countdown
        self.counted = counted


@dataclass(frozen=True)
class OrderRequest:
    account: str
    symbol: str
    side: Side
    client_ids: tuple[int, ...]
    quantity: Decimal | None = None
    reduce_only: bool = False
    max_slippage: float | None = None
    cycle_id: str | None = None
    leg: str | None = None
    #: Take the quantity from this leg's recorded fill in the cycle record (one-hop hand-off).
    quantity_from_leg: str | None = None
    retry_delay_secs: float = 0.5
    #: Push the final report to this leg's armed hedge (``xtb_tasks.execution.handoff``).
    announce_fill: bool = False


def note_account_state(client: redis.Redis, account: str, **fields: Any) -> None:
    """Latest venue facts for heartbeats (``xtb:acct:<account>``); never secrets."""
    client.hset(keys.account_state(account), mapping={k: "" if v is None else str(v) for k, v in fields.items()})


def position_state(connector: VenueConnector, reading: PositionReading, started: float,
                   cycle_id: str | None) -> dict[str, Any]:
    """The account-state fields of a position read that began at ``started`` (perf_counter)."""
    return {"symbol": reading.symbol, "venue": connector.venue,
            "position": "" if reading.quantity is None else reading.quantity,
            "position_read_at": reading.read_at if reading.known else "",
            "latency_ms": round((time.perf_counter() - started) * 1000, 2), "cycle_id": cycle_id or ""}


def read_position(client: redis.Redis, connector: VenueConnector, symbol: str, cycle_id: str | None = None) -> PositionReading:
    started = time.perf_counter()
    reading = connector.get_position(symbol)
    note_account_state(client, connector.account, **position_state(connector, reading, started, cycle_id))
    return reading


def _resolve_quantity(connector: VenueConnector, req: OrderRequest, prior_leg: Leg | None) -> Decimal:
    rules = connector.market_rules(req.symbol)
    if req.quantity_from_leg is None:
        if req.quantity is None:
            raise ValueError(f"{req.leg or 'order'} on {req.account}: neither a quantity nor a leg to take it from")
        return rules.quantize_size(req.quantity)
    filled = prior_leg.filled if prior_leg is not None else Decimal(0)
    if filled <= 0:
        raise LegFailed(f"{req.quantity_from_leg} filled nothing; {req.leg} has nothing to hedge")
    return mirror_quantity(rules, filled)


def first_unused_client_id(req: OrderRequest, fetched: Prefetch) -> int | None:
    """The client id the next send will use, when no planned id has been touched yet."""
    statuses = [(fetched.intents.get(cid) or {}).get("status") for cid in req.client_ids]
    if any(status not in (None, IntentStatus.PLANNED.value) for status in statuses):
        return None  # a re-run: submit_order walks the recorded outcomes
    return req.client_ids[0] if req.client_ids else None


@dataclass(frozen=True)
class Prefetch:
    """Everything a submit reads before it may send, fetched in one round trip (the hand-off path)."""

    cancelled: bool
    stage: str | None
    intents: dict[int, dict[str, str]]
    prior_leg: Leg | None
    #: The client id this run recorded as ARMED itself (it may send it without another write).
    armed_id: int | None = None
    #: The record's fencing fields (``core.fencing.FENCE_FIELDS``), decoded; empty without a cycle.
    fence_fields: dict[str, Any] = field(default_factory=dict)


def prefetch(client: redis.Redis, req: OrderRequest) -> Prefetch:
    pipe = client.pipeline(transaction=False)
    cycle_key = keys.cycle(req.cycle_id) if req.cycle_id else None
    if cycle_key:
        pipe.exists(keys.cycle_cancel(req.cycle_id or ""))
        pipe.hmget(cycle_key, FENCE_FIELDS)
        pipe.hget(cycle_key, f"leg:{req.quantity_from_leg}")
    for client_id in req.client_ids:
        pipe.hgetall(keys.intent(req.account, client_id))
    results: list[Any] = pipe.execute()
    head: list[Any] = results[:3] if cycle_key else [0, [], None]
    intents = results[3:] if cycle_key else results
    prior = parse_leg(json.loads(head[2])) if head[2] else None
    fence_fields = {name: json.loads(raw) for name, raw in zip(FENCE_FIELDS, head[1], strict=False) if raw}
    return Prefetch(bool(head[0]), fence_fields.get("stage"), dict(zip(req.client_ids, intents, strict=True)),
                    prior, fence_fields=fence_fields)


def settles_leg(report: OrderReport) -> bool:
    """Whether this report ends the leg; a failure that filled nothing moves on to the next client id."""
    return report.filled > 0 or report.state is not OrderState.FAILED


def submit_order(client: redis.Redis, connector: VenueConnector, req: OrderRequest,
                 fetched: Prefetch | None = None, stage: Any = None) -> OrderReport:
    """Walk the planned client ids: reuse a recorded outcome, look up an uncertain one, send a fresh one.

    ``stage`` (an ``core.cycle_record.Stage``) is entered in the same write as the intent.
    """
    fetched = fetched or prefetch(client, req)
    record = CycleRecord(client, req.cycle_id) if req.cycle_id else None
    for client_id in req.client_ids:
        intent = fetched.intents.get(client_id) or {}
        status = intent.get("status")
        if status == IntentStatus.REJECTED.value:
            continue
        if status == IntentStatus.DONE.value:
            report = OrderReport.from_json(json.loads(intent["report"]))
            if settles_leg(report):
                return report
            continue
        if status == IntentStatus.SENDING.value or (status == IntentStatus.ARMED.value
                                                     and client_id != fetched.armed_id):
            found = connector.find_order(req.symbol, client_id)
            if found is not None:
                return record_outcome(client, record, req, client_id, found)
            age = intent_age(intent)
            if not never_placed(age):
                raise RetryLater(f"{req.leg or 'order'} client id {client_id}: outcome unknown, not at the venue "
                                 f"{age:.0f} s after its intent; nothing sent until it shows or "
                                 f"{ORDER_SETTLE_SECS:.0f} s pass", UNKNOWN_OUTCOME_RECHECK_SECS, counted=False)
            record_never_placed(client, record, req, client_id, Decimal(intent.get("quantity") or 0), age)
            continue
        report = _send(client, connector, record, req, client_id, intent, fetched, stage)
        if not settles_leg(report):
            mark_intent(client, req.account, client_id, IntentStatus.REJECTED, report=report.to_json())
            if req.leg and record:
                record.record_leg(req.leg, Leg.from_report(req.account, report, settled=False))
            if client_id != req.client_ids[-1]:
                raise RetryLater(f"{req.leg or 'order'} {client_id} rejected: {report.reason}", req.retry_delay_secs)
            continue
        return report
    raise LegFailed(f"{req.leg or 'order'} on {req.account}: every planned client id failed")


def _send(client: redis.Redis, connector: VenueConnector, record: CycleRecord | None, req: OrderRequest,
          client_id: int, intent: dict[str, str], fetched: Prefetch, stage: Any) -> OrderReport:
    if not lease_clock.may_send(req.account):
        # A task that outlived its time limit (its worker's main process held up by a dead broker
        # connection) sends nothing on a lease that may have expired; the rerun takes a fresh one.
        raise RetryLater(f"the account lease has {lease_clock.remaining(req.account):.0f} s left; not sending on it",
                         req.retry_delay_secs)
    armed = client_id == fetched.armed_id
    quantity = (Decimal(intent["quantity"]) if intent.get("quantity") and not armed
                else _resolve_quantity(connector, req, fetched.prior_leg))
    enter = stage if stage is not None and req.leg and record and fetched.stage != stage.value else None
    # An armed hedge recorded this very order (intent ARMED, leg in flight) before the fill: it starts
    # the send at once and writes its stage and leg while the order travels. Anything else records first.
    presend = armed and intent.get("quantity") == str(quantity)
    if not presend:
        try:
            _record_sending(client, record, req, client_id, quantity, enter, durable=True)
        except ReplicaTimeout as exc:
            # Not sent, and known not to be: the intent goes back to planned (no lookup to wait for)
            # and the rerun records it again before it may send.
            mark_intent(client, req.account, client_id, IntentStatus.PLANNED)
            log.warning("account=%s cycle=%s leg=%s client_id=%s not sent: %s", req.account, req.cycle_id, req.leg,
                        client_id, exc)
            raise RetryLater(str(exc), 0.5) from exc
    # No log line before the send: record_outcome and _not_sent_or_found log each outcome with its order.
    started = time.perf_counter()
    pending = connector.begin_market_order(req.symbol, client_id, req.side, quantity,
                                           reduce_only=req.reduce_only, max_slippage=req.max_slippage)
    if presend:
        _record_while_sending(pending, lambda: _record_sending(client, record, req, client_id, quantity, enter))
    try:
        report = pending.result()
    except VenueError as exc:
        return _not_sent_or_found(client, connector, record, req, client_id, quantity, exc)
    return record_outcome(client, record, req, client_id, report,
                   latency_ms=round((time.perf_counter() - started) * 1000, 2))


def _record_while_sending(pending: PendingReport, write: Callable[[], None]) -> None:
    # The in-flight stage and leg land before the outcome overwrites the leg. If they cannot be
    # written, the order already on its way is waited for before the task fails (a rerun looks it up).
    try:
        write()
    except BaseException:
        with contextlib.suppress(VenueError):
            pending.result()
        raise


def _not_sent_or_found(client: redis.Redis, connector: VenueConnector, record: CycleRecord | None,
                       req: OrderRequest, client_id: int, quantity: Decimal, exc: VenueError) -> OrderReport:
    if exc.reason in (ReasonCode.REJECTED, ReasonCode.INVALID_REQUEST, ReasonCode.UNKNOWN_MARKET,
                      ReasonCode.AUTH):
        return OrderReport(client_id, req.symbol, req.side, quantity, Decimal(0), OrderState.FAILED,
                           reduce_only=req.reduce_only, reason=str(exc))
    if exc.reason is ReasonCode.DUPLICATE_CLIENT_ID:
        found = connector.find_order(req.symbol, client_id)
        if found is not None:
            return record_outcome(client, record, req, client_id, found)
    if exc.reason in (ReasonCode.RATE_LIMITED, ReasonCode.INVALID_NONCE):
        # Refused before it was executed (the rate limit, a nonce out of order): the venue never took
        # it, so the same client id goes again as it is, with no lookup to wait for.
        mark_intent(client, req.account, client_id, IntentStatus.PLANNED, refused=str(exc)[:200])
        log.warning("account=%s cycle=%s leg=%s client_id=%s refused unexecuted, sent again: %s", req.account,
                    req.cycle_id, req.leg, client_id, exc)
        raise RetryLater(str(exc), 1.0 if exc.reason is ReasonCode.RATE_LIMITED else 0.3) from exc
    log.warning("account=%s cycle=%s leg=%s client_id=%s outcome unknown: %s", req.account, req.cycle_id,
                req.leg, client_id, exc)
    raise RetryLater(str(exc), 0.3) from exc


def _record_sending(client: redis.Redis, record: CycleRecord | None, req: OrderRequest, client_id: int,
                    quantity: Decimal, enter: Any, *, durable: bool = False) -> None:
    # Intent before action: after this write a crash means "look it up", never "send again blindly".
    # One pipeline for the intent, the stage and the leg record: this is on the hand-off path.
    pipe = client.pipeline(transaction=False)
    record_intent(pipe, req.account, client_id, status=IntentStatus.SENDING.value, symbol=req.symbol,
                  side=req.side.value, quantity=str(quantity), reduce_only=req.reduce_only,
                  cycle_id=req.cycle_id or "", leg=req.leg or "")
    if req.leg and record:
        writer = CycleRecord(pipe, record.cycle_id)
        if enter is not None:
            writer.set_stage(enter, deadline=grace_deadline())
        writer.record_leg(req.leg, leg_in_flight(req, client_id, quantity))
    if not durable:  # written while the order travels: waiting for a replica would only delay the task
        pipe.execute()
        return
    # On a replica before the order goes out; an exit's orders are reduce-only and go on regardless.
    durable_execute(pipe, client, f"intent of {req.leg or 'order'} client id {client_id} on {req.account}",
                    required=not (req.leg or "").startswith("exit_"))


def leg_in_flight(req: OrderRequest, client_id: int, quantity: Decimal,
                  state: LegState = LegState.SUBMITTING, reason: str | None = None) -> Leg:
    return Leg.in_flight(req.account, req.symbol, req.side, client_id, quantity, state, reason)


def record_outcome(client: redis.Redis, record: CycleRecord | None, req: OrderRequest, client_id: int,
            report: OrderReport, latency_ms: float | None = None) -> OrderReport:
    # Outcome, leg record and latency in one round trip: the next leg waits for this task to return.
    pipe = client.pipeline(transaction=False)
    mark_intent(pipe, req.account, client_id, IntentStatus.DONE, report=report.to_json())
    if req.leg and record:
        leg = Leg.from_report(req.account, report)
        CycleRecord(pipe, record.cycle_id).record_leg(req.leg, leg)
        if req.announce_fill and settles_leg(report):  # a failed attempt moves on to the next client id
            announce_outcome(pipe, record.cycle_id, req.leg, leg)
    if latency_ms is not None:
        note_account_state(pipe, req.account, latency_ms=latency_ms)
    pipe.execute()
    log.info("account=%s cycle=%s leg=%s client_id=%s %s %s reduce_only=%s state=%s filled=%s avg=%s",
             req.account, req.cycle_id, req.leg, client_id, req.side.value, report.requested, req.reduce_only,
             report.state.value, report.filled, report.avg_price)
    return report


def record_never_placed(client: redis.Redis, record: CycleRecord | None, req: OrderRequest, client_id: int,
                        quantity: Decimal, age: float) -> None:
    """``client_id`` is not at the venue ``age`` (at least ``ORDER_SETTLE_SECS``) seconds after its
    intent: recorded as never placed (intent ``rejected``: no run sends it again; leg ``failed``)."""
    reason = f"not at the venue {age:.0f} s after its intent: never placed"
    mark_intent(client, req.account, client_id, IntentStatus.REJECTED, reason=reason)
    if req.leg and record:
        record.record_leg(req.leg, leg_in_flight(req, client_id, quantity, LegState.FAILED, reason))
    log.warning("account=%s cycle=%s leg=%s client_id=%s %s", req.account, req.cycle_id, req.leg, client_id, reason)


def confirmation(reading: PositionReading, baseline: Decimal, expected_sign: int, requested: Decimal,
                 min_fraction: Decimal) -> dict[str, Any]:
    """Confirmed when the position moved the expected way by more than ``min_fraction`` of the
    request: a fill too small to see, or a move the wrong way, is not a confirmation."""
    if reading.quantity is None:
        return {"confirmed": False, "position": None, "delta": None, "error": reading.error}
    delta = reading.quantity - baseline
    threshold = max(requested * min_fraction, Decimal("0.000001"))
    return {"confirmed": delta * expected_sign > threshold, "position": str(reading.quantity),
            "delta": str(delta), "read_at": reading.read_at, "source": reading.source}
