"""The ports the cycle talks to the world through: the cycle store, the scheduler and the clock.
Production adapters: ``orchestrator.store`` (Redis, and Redis ``TIME``), ``xtb_tasks.worker.cycle_task``
(Celery canvases); the venue tasks run the order execution on the venue connectors
(``venues.base.VenueConnector``). ``tests/simulation/memory.py`` implements the same protocols in
memory with a virtual clock and runs a whole cycle in one process.

Alerts are commands the store writes to the alert outbox in the step's own transaction (the relay
delivers them), so an alert goes out exactly when the state it reports is written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from orchestrator.cycle.commands import Command, Decision
from orchestrator.cycle.start import StartRefused
from orchestrator.cycle.state import CycleState


class Clock(Protocol):
    """The cycle's time: one clock for every process that runs a cycle's steps (epoch seconds)."""

    def now(self) -> float: ...


class CycleStore(Protocol):
    """Where a cycle's state lives."""

    def load(self, cycle_id: str) -> CycleState | None:
        """The cycle's state, None when it has no record."""

    def advance_step(self, cycle_id: str, token: int) -> bool:
        """Move the control loop's token from ``token`` to ``token + 1``; True for the one caller that did."""

    def claim(self, cycle_id: str, name: str, value: Any = None) -> bool:
        """Take the once-only claim ``name`` of the cycle (holding ``value``; None: the time); True for
        the one caller that took it."""

    def save(self, before: CycleState, decision: Decision, now: float) -> Sequence[Command]:
        """Write what ``decision`` changed since ``before``, its events and reading, the intents of its
        orders and its queued alerts, in one write; the commands to publish (with their client ids)."""

    def create(self, state: CycleState, *, trigger_task: str) -> StartRefused | None:
        """Write a new cycle's record from its state in stage ``planning``, active and holding its
        group's lease, in one atomic step; or write nothing and say why not
        (``orchestrator.cycle.start``)."""


class Scheduler(Protocol):
    """Runs the commands a decision published: steps now or later, reads and orders side by side."""

    def publish(self, state: CycleState, commands: Sequence[Command]) -> None:
        """Run ``commands`` for the cycle in ``state`` (its group names the accounts)."""
