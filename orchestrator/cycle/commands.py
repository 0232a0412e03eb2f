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
from core.cycle_fields import ExitReason
from monitoring.alert_texts import AlertKind
from orchestrator.cycle.state import CycleState, Positions
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


class StartExit(msgspec.Struct, frozen=True, tag=True):
    """Unwind the cycle in steps, for ``reason``."""

    reason: ExitReason


class Alert(msgspec.Struct, frozen=True, tag=True):
    """Raise an alert (queued in the same write as the state, so it goes out exactly when the state does)."""

    kind: AlertKind
    text: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


Command = ReadPositions | RunLater | SendOrder | StartExit | Alert


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
