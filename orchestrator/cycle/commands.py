"""What a decision asks the world to do: typed commands, carried out by the adapters in order.

A decision never sends anything itself. The Celery adapter (``xtb_tasks.worker.cycle_task``) saves
the decision's state and records every order's intent first, in one write, then publishes the
commands; an in-memory adapter can run the same commands in one process.
"""

from __future__ import annotations

from decimal import Decimal
from enum import Enum
from typing import Any

import msgspec

from core.config_schema import Role
from core.cycle_fields import ExitReason, Outcome, Stage
from monitoring.alert_texts import AlertKind
from orchestrator.cycle.state import CycleState, LegName, Positions
from venues.base import Side


class StepName(str, Enum):
    """The cycle's steps that run on the orchestrator queue (task ``xtb.hedge.<value>``)."""

    #: Read the three positions, then decide the next rebalance order.
    REBALANCE = "rebalance"
    #: Decide the next rebalance order from the readings.
    REBALANCE_DECIDE = "rebalance_decide"
    #: One monitoring check: the timeout, then a read of the three positions.
    MONITOR_TICK = "monitor_tick"
    #: Decide from the monitoring readings: liquidated, drifted, or look again.
    MONITOR_DECIDE = "monitor_decide"
    #: Start (or retry) the emergency exit.
    EMERGENCY_EXIT = "emergency_exit"
    #: One round of the entry's balance, after the Backpack entry and the Lighter1 hedge are final.
    BALANCE_ENTRY = "balance_entry"
    #: Decide one exit step from a fresh read of the three positions.
    EXIT_DECIDE = "exit_decide"
    #: Take what an exit step's Lighter closes filled back off the net, then read again.
    EXIT_MATCH = "exit_match"
    #: Size the cycle from the accounts' snapshots and launch the entry, or end it not started.
    PLAN = "plan"
    #: Conclude an exit attempt from its last read: flat, another attempt, or the end unresolved.
    EXIT_REPORT = "exit_report"
    #: An exit step failed (chord or chain errback): another attempt, or the end unresolved.
    EXIT_FAILED = "exit_failed"


class Step(msgspec.Struct, frozen=True):
    """A step to run with its arguments (JSON values only: they travel in a message)."""

    name: StepName
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)


class ReadPositions(msgspec.Struct, frozen=True, tag=True):
    """Read the three accounts' positions side by side, then run ``then`` with the readings."""

    then: Step


class RunLater(msgspec.Struct, frozen=True, tag=True):
    """Run ``step`` after ``after_secs`` seconds (0: now)."""

    step: Step
    after_secs: float = 0.0


class SendOrder(msgspec.Struct, frozen=True, tag=True):
    """Send one order on ``role``'s account, then run ``then``.

    Fields:
      leg           the leg name the order is recorded under (its intent is written before the send)
      max_slippage  the price cap as a fraction of the touch; None: the venue task's default
      fence_step    the loop token the order is issued under: a copy refuses once the loop moved on
      client_id     set by the store, which allocates it and records its intent before the send
      fence_stages  the stages the cycle must still be in when the order runs (an entry order); None:
                    the control loop's stages under ``fence_step``
    """

    role: Role
    side: Side
    quantity: Decimal
    leg: str
    then: Step
    reduce_only: bool = False
    max_slippage: float | None = None
    fence_step: int | None = None
    client_id: int | None = None
    fence_stages: tuple[Stage, ...] | None = None


class StartExit(msgspec.Struct, frozen=True, tag=True):
    """Unwind the cycle in steps, for ``reason``."""

    reason: ExitReason


class Alert(msgspec.Struct, frozen=True, tag=True):
    """Raise an alert (queued in the same write as the state, so it goes out exactly when the state does)."""

    kind: AlertKind
    text: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


class EntryOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One order of the entry, with retries on the ids planning recorded for its leg.

    Fields:
      quantity           the order's size; None for an armed hedge, which takes it from ``quantity_from_leg``
      quantity_from_leg  the leg whose announced fill the armed hedge mirrors
      expected_quantity  the size the armed hedge prepares for before the fill is announced
      announce_fill      the order announces its fill to the hedge armed on it
      after_secs         the order runs this long after the step before it (the random wait)
      fence              the stages the cycle must still be in when the order runs
    """

    role: Role
    side: Side
    leg: LegName
    client_ids: list[int]
    fence: tuple[Stage, ...]
    quantity: Decimal | None = None
    quantity_from_leg: LegName | None = None
    expected_quantity: Decimal | None = None
    announce_fill: bool = False
    max_slippage: float | None = None
    retry_delay_secs: float | None = None
    after_secs: float = 0.0


class ConfirmPosition(msgspec.Struct, frozen=True, kw_only=True):
    """Poll ``role``'s position until it holds ``min_fraction`` of ``leg``'s fill on the expected side
    (from ``baseline``), then move the cycle to ``next_stage``; past ``timeout_secs`` it fails the chain."""

    role: Role
    leg: LegName
    baseline: Decimal
    expected_sign: int
    next_stage: Stage
    fence: tuple[Stage, ...]
    min_fraction: float
    timeout_secs: float
    poll_secs: float


class EnterFirstLegs(msgspec.Struct, frozen=True, tag=True):
    """The Backpack entry and the Lighter1 hedge armed on its fill, side by side, then ``then``."""

    hedge: EntryOrder
    entry: EntryOrder
    then: Step


class EnterRest(msgspec.Struct, frozen=True, tag=True):
    """Confirm Lighter1, then (after the wait) Lighter2's entry, confirm it, then ``then``; one at a time."""

    confirm_hedge: ConfirmPosition
    entry: EntryOrder
    confirm_entry: ConfirmPosition
    then: Step


class ExitOrder(msgspec.Struct, frozen=True):
    """One order of an exit step, capped at ``max_slippage`` from the top of book."""

    role: Role
    side: Side
    quantity: Decimal
    max_slippage: float
    #: Only takes back the role's own delta (every Lighter order; Backpack unless it offsets the net).
    reduce_only: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role.short, "side": self.side.value, "quantity": str(self.quantity),
                "max_slippage": self.max_slippage, "reduce_only": self.reduce_only}


class ReadForExit(msgspec.Struct, frozen=True, tag=True):
    """Read the three positions for step ``step`` of exit attempt ``attempt`` (after ``after_secs``),
    then decide that step."""

    reason: ExitReason
    attempt: int
    step: int
    after_secs: float = 0.0


class SendExitOrders(msgspec.Struct, frozen=True, tag=True):
    """Send an exit step's orders side by side, then run ``then_step`` with their reports, or read
    again for ``then_read``.

    Fields:
      legs, client_ids  set by the store: each order's leg name (``exit_<role>_<n>``) and its client
                        ids (a spare for a rejected send), recorded as intents before the send
    """

    reason: ExitReason
    attempt: int
    orders: tuple[ExitOrder, ...]
    then_step: Step | None = None
    then_read: ReadForExit | None = None
    legs: tuple[str, ...] = ()
    client_ids: tuple[tuple[int, ...], ...] = ()

    def planned(self) -> list[dict[str, Any]]:
        """The orders as the step's record note lists them (with their legs and ids once allocated)."""
        return [{**order.to_json(), "leg": leg, "client_ids": list(ids)}
                for order, leg, ids in zip(self.orders, self.legs, self.client_ids, strict=True)]


class ReportExit(msgspec.Struct, frozen=True, tag=True):
    """Confirm the attempt's end from its last read (one result per role that answered): flat, or
    start the next attempt, or end the cycle unresolved."""

    reason: ExitReason
    attempt: int
    results: tuple[dict[str, Any], ...]


class NoteStep(msgspec.Struct, frozen=True, tag=True):
    """Keep ``note`` under the record field ``field`` (an exit step's read and kind; the orders of the
    same decision's :class:`SendExitOrders` are added as the store allocated them)."""

    field: str
    note: dict[str, Any]


class KeepResults(msgspec.Struct, frozen=True, tag=True):
    """Keep exit attempt ``attempt``'s per-role results (the report reads them; so do operators)."""

    attempt: int
    results: tuple[dict[str, Any], ...]


class StopGroup(msgspec.Struct, frozen=True, tag=True):
    """The exit could not confirm flat and goes on working: the kill switch (no cycle of the group
    starts until an operator resumes it) and the record's outcome ``unresolved`` while it works.
    The store carries it out in the step's own write; nothing is published."""

    reason: str


class Finish(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """End the cycle: record its outcome, leave the active set, release the group, then read the
    venues' history and start the next cycle. An exit ends only flat (:class:`StopGroup` is the
    kill switch of one that could not confirm it and goes on).

    Fields:
      outcome     how it ended
      reason      why: an ``ExitReason`` value, or ``not_started``
      claim       a once-only claim the end takes first (an exit's report: of several attempts that
                  report, the first one ends the cycle); None: no other step can end it
      finals      each role's final position (short role names, decimal text or None when unknown)
      pnl         each role's equity change over the cycle (decimal text, None when unknown)
      dust        roles left with a position below the venue minimum (decimal text)
      history     read the venues' fills and funding over ``since_ms``..``until_ms`` for the PnL split
      completed   the normal end (a liquidation or the timeout, then flat): the split's alert follows
      next_cycle  the start arguments of the next cycle of a multi-cycle run, or None
    """

    outcome: Outcome
    reason: str
    claim: str | None = None
    finals: dict[str, str | None] = msgspec.field(default_factory=dict)
    pnl: dict[str, str | None] = msgspec.field(default_factory=dict)
    dust: dict[str, str] = msgspec.field(default_factory=dict)
    history: bool = False
    since_ms: int = 0
    until_ms: int = 0
    completed: bool = False
    next_cycle: dict[str, Any] | None = None


Command = (ReadPositions | RunLater | SendOrder | StartExit | Alert | EnterFirstLegs | EnterRest | ReadForExit
           | KeepResults | Finish | StopGroup
           | SendExitOrders | ReportExit | NoteStep)
#: Commands the store carries out in the step's write; the scheduler never sees them.
RECORDED = (Alert, NoteStep, KeepResults, StopGroup)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One step's outcome.

    Fields:
      state        the cycle's state after the step (the store writes what changed)
      commands     what to do next, in order; the orders' intents are recorded before any is sent
      events       notes for the cycle's event log
      reading      a reading to keep as the latest, and under its label when it has one
      next_within  seconds of work before the step that follows is overdue (the watchdog adds its
                   grace); None leaves the deadline as it is
      result       what the task returns (for logs and tests)
    """

    state: CycleState
    commands: tuple[Command, ...] = ()
    events: tuple[str, ...] = ()
    reading: tuple[str | None, Positions] | None = None
    next_within: float | None = None
    result: dict[str, Any] = msgspec.field(default_factory=dict)
