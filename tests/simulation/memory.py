"""In-memory implementations of the cycle's ports (``orchestrator.cycle.ports``) and a virtual clock.

The store keeps the same promises as the Redis store: the loop token moves by compare-and-set, a
claim is taken once, a save writes the decision's state without touching what the venue side owns
(the legs), every order gets a fresh client id whose intent is recorded before it is published.
The scheduler runs the commands on an in-memory venue in virtual time, one event at a time, in
the order a seeded schedule puts them; the venue fills market orders whole at its mark.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from core.config_schema import Role
from core.cycle_fields import Stage
from core.cycle_record import EVENTS_KEPT
from core.legs import Leg, LegState
from monitoring.alert_texts import AlertKind
from orchestrator.cycle import start
from orchestrator.cycle.commands import (
    Alert,
    Command,
    ConfirmPosition,
    Decision,
    EnterFirstLegs,
    EnterRest,
    EntryOrder,
    Finish,
    KeepResults,
    NoteStep,
    ReadForExit,
    ReadPositions,
    RunLater,
    SendExitOrders,
    SendOrder,
    StartExit,
    Step,
    StepName,
    StopGroup,
)
from orchestrator.cycle.entry import mirror_quantity
from orchestrator.cycle.plan import with_entry_ids
from orchestrator.cycle.runner import Call, Ports, StaleStep, run_spec
from orchestrator.cycle.start import GroupStop, StartRefused
from orchestrator.cycle.state import CycleState, Event, LegName
from orchestrator.cycle.steps import STEPS
from venues.base import Side


class VirtualClock:
    """:class:`~orchestrator.cycle.ports.Clock` that moves only when the scheduler moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.time = start

    def now(self) -> float:
        return self.time


@dataclass
class MemoryStore:
    """:class:`~orchestrator.cycle.ports.CycleStore` in a dict."""

    states: dict[str, CycleState] = field(default_factory=dict)
    claims: set[tuple[str, str]] = field(default_factory=set)
    cancels: set[str] = field(default_factory=set)
    intents: dict[tuple[str, int], str] = field(default_factory=dict)
    alerts: list[tuple[AlertKind, str]] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    finished: dict[str, Finish] = field(default_factory=dict)
    results: dict[tuple[str, int], tuple[dict[str, Any], ...]] = field(default_factory=dict)
    #: Cycles whose exit stopped their group (the kill switch) while it went on.
    stopped: list[str] = field(default_factory=list)
    #: Each group's start lease: the cycle holding it.
    leases: dict[str, str] = field(default_factory=dict)
    exit_orders: int = 0

    def create(self, state: CycleState, *, trigger_task: str = "") -> StartRefused | None:
        """The Redis store's start in one step: decide with ``start.refusal`` on the lease's holder
        (active: not done), the group's stop; then the record and the lease."""
        group = state.group.name
        holder = self.leases.get(group)
        held = self.states.get(holder) if holder is not None else None
        refused = start.refusal(group, self.group_stop(group), holder, held is not None and held.stage is not Stage.DONE)
        if refused is None:
            self.leases[group] = state.cycle_id
            self.states[state.cycle_id] = state
        return refused

    def group_stop(self, group: str) -> GroupStop | None:
        """The stop of the last cycle of ``group`` whose exit stopped it (no operator resumes here)."""
        cycle_id = next((c for c in reversed(self.stopped) if self.states[c].group.name == group), None)
        return None if cycle_id is None else GroupStop(group, cycle_id, "unresolved", 0.0)

    def load(self, cycle_id: str) -> CycleState | None:
        state = self.states.get(cycle_id)
        return None if state is None else msgspec.structs.replace(state, cancel_requested=cycle_id in self.cancels)

    def advance_step(self, cycle_id: str, token: int) -> bool:
        state = self.states[cycle_id]
        if state.loop.step_seq != token:
            return False
        self.states[cycle_id] = msgspec.structs.replace(
            state, loop=msgspec.structs.replace(state.loop, step_seq=token + 1))
        return True

    def claim(self, cycle_id: str, name: str, value: Any = None) -> bool:
        if (cycle_id, name) in self.claims:
            return False
        self.claims.add((cycle_id, name))
        return True

    def save(self, before: CycleState, decision: Decision, now: float) -> list[Command]:
        decision = with_entry_ids(decision, self._entry_ids)
        finish = next((c for c in decision.commands if isinstance(c, Finish)), None)
        if finish is not None and finish.claim is not None and not self.claim(before.cycle_id, finish.claim):
            return []  # another step ended the cycle first
        if finish is not None:
            self.finished[before.cycle_id] = finish
            if self.leases.get(before.group.name) == before.cycle_id:
                del self.leases[before.group.name]
        current = self.states[before.cycle_id]
        events = (*current.events, *(Event(now, text) for text in decision.events))[-EVENTS_KEPT:]
        # The legs are the venue side's: a decision's save never overwrites one written meanwhile.
        self.states[before.cycle_id] = msgspec.structs.replace(decision.state, legs=current.legs, events=events,
                                                               cancel_requested=False)
        out: list[Command] = []
        for command in decision.commands:
            if isinstance(command, Alert):
                self.alerts.append((command.kind, command.text))
                continue
            if isinstance(command, KeepResults):
                self.results[(before.cycle_id, command.attempt)] = command.results
                continue
            if isinstance(command, StopGroup):
                self.stopped.append(before.cycle_id)
                continue
            if isinstance(command, NoteStep):
                continue
            if isinstance(command, SendExitOrders) and not command.legs:
                # Numbered and given ids (a spare each) as the Redis store does, intents recorded first.
                legs, ids = [], []
                for order in command.orders:
                    self.exit_orders += 1
                    legs.append(f"exit_{order.role.short.lower()}_{self.exit_orders}")
                    ids.append((next(self.ids), next(self.ids)))
                command = msgspec.structs.replace(command, legs=tuple(legs), client_ids=tuple(ids))
            if isinstance(command, SendOrder) and command.client_id is None:
                command = msgspec.structs.replace(command, client_id=next(self.ids))
                self.intents[(decision.state.group.account_for(command.role), int(command.client_id or 0))] = \
                    command.leg
            out.append(command)
        return out


    def _entry_ids(self, state: CycleState, blocks: Mapping[LegName, int]) -> dict[LegName, list[int]]:
        return {leg: [next(self.ids) for _ in range(n)] for leg, n in blocks.items()}


@dataclass
class MemoryVenue:
    """The three accounts' positions, each order filled whole; a test moves them to liquidate."""

    positions: dict[str, Decimal] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)
    orders: list[tuple[str, Side, Decimal]] = field(default_factory=list)
    mark: Decimal = Decimal(2000)

    def read(self, account: str) -> dict[str, Any]:
        if account in self.unreadable:
            return {"account": account, "quantity": None, "error": "venue unreachable"}
        return {"account": account, "quantity": str(self.positions.get(account, Decimal(0)))}

    def snapshot(self, account: str, rules: dict[str, Any]) -> dict[str, Any]:
        """The account as planning reads it: rules, the touch, margin, the position."""
        return {"account": account, "rules": rules, "bid": str(self.mark - 1), "ask": str(self.mark),
                "equity": "10000", "collateral": "10000", "available": "1000000",
                "position": self.read(account)["quantity"]}

    def fill(self, account: str, side: Side, quantity: Decimal) -> Decimal:
        self.orders.append((account, side, quantity))
        self.positions[account] = self.positions.get(account, Decimal(0)) + side.sign * quantity
        return quantity


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class MemoryScheduler:
    """:class:`~orchestrator.cycle.ports.Scheduler` on a virtual-time event queue."""

    def __init__(self, store: MemoryStore, clock: VirtualClock, venue: MemoryVenue) -> None:
        self.store, self.clock, self.venue = store, clock, venue
        self.queue: list[_Due] = []
        self.seq = itertools.count()
        self.exits: list[StartExit] = []
        self.stale: list[str] = []
        self.failed: list[str] = []
        self.next_cycles: list[dict[str, Any]] = []
        #: Run the exit a StartExit asks for (off: a test stops at the decision to exit).
        self.run_exits = True
        self.trace: list[str] = []

    @property
    def ports(self) -> Ports:
        return Ports(self.store, self, self.clock)

    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, _Due(self.clock.time + delay, next(self.seq), action))

    def publish(self, state: CycleState, commands: Sequence[Command]) -> None:
        for command in commands:
            self._enqueue(state, command)

    def _enqueue(self, state: CycleState, command: Command) -> None:
        cycle_id = state.cycle_id
        if isinstance(command, ReadPositions):
            accounts = [state.group.account_for(role) for role in (Role.BP, Role.L1, Role.L2)]
            self.at(0.0, lambda: self.run(cycle_id, command.then, [self.venue.read(a) for a in accounts]))
        elif isinstance(command, RunLater):
            self.at(command.after_secs, lambda: self.run(cycle_id, command.step))
        elif isinstance(command, SendOrder):
            self.at(0.0, lambda: self._order(state, command))
        elif isinstance(command, StartExit):
            self.exits.append(command)
            if self.run_exits:
                self.at(0.0, lambda: self.run(cycle_id, Step(StepName.EMERGENCY_EXIT, {"reason": command.reason.value})))
        elif isinstance(command, ReadForExit):
            self.at(command.after_secs, lambda: self._exit_read(cycle_id, command))
        elif isinstance(command, SendExitOrders):
            self.at(0.0, lambda: self._exit_orders(cycle_id, command))
        elif isinstance(command, Finish):
            self.next_cycles.extend([command.next_cycle] if command.next_cycle else [])
        elif isinstance(command, EnterFirstLegs):
            self.at(0.0, lambda: self._enter_first(cycle_id, command))
        elif isinstance(command, EnterRest):
            self.at(0.0, lambda: self._enter_rest(cycle_id, command))
        else:
            raise TypeError(f"no in-memory form for {type(command).__name__}")

    def _order(self, state: CycleState, order: SendOrder) -> None:
        account = state.group.account_for(order.role)
        filled = self.venue.fill(account, order.side, order.quantity)
        leg = Leg(account, state.group.symbol_for(order.role), order.side, int(order.client_id or 0), order.quantity,
                  filled, LegState.FILLED, reduce_only=order.reduce_only)
        current = self.store.states[state.cycle_id]
        self.store.states[state.cycle_id] = msgspec.structs.replace(current, legs={**current.legs, order.leg: leg})
        self.run(state.cycle_id, order.then)

    def _enter_first(self, cycle_id: str, command: EnterFirstLegs) -> None:
        # The Celery group runs both at once; the armed hedge sends only once the entry's fill is
        # announced, for the fill mirrored on Lighter's grid.
        filled = self._entry_order(cycle_id, command.entry, Stage.BP_ENTRY)
        rules = self.store.states[cycle_id].rules[command.hedge.role]
        self._entry_order(cycle_id, command.hedge, Stage.L1_HEDGE, mirror_quantity(rules, filled))
        self.run(cycle_id, command.then)

    def _enter_rest(self, cycle_id: str, command: EnterRest) -> None:
        if not self._confirm(cycle_id, command.confirm_hedge):
            return

        def second_leg() -> None:
            self._entry_order(cycle_id, command.entry, Stage.L2_ENTRY)
            if self._confirm(cycle_id, command.confirm_entry):
                self.run(cycle_id, command.then)

        self.at(command.entry.after_secs, second_leg)

    def _entry_order(self, cycle_id: str, order: EntryOrder, stage: Stage, quantity: Decimal | None = None) -> Decimal:
        # The venue task enters the leg's stage in the same write as its intent, then records the leg.
        state = self.store.states[cycle_id]
        account = state.group.account_for(order.role)
        requested = quantity if quantity is not None else order.quantity or Decimal(0)
        filled = self.venue.fill(account, order.side, requested)
        leg = Leg(account, state.group.symbol_for(order.role), order.side, order.client_ids[0], requested, filled,
                  LegState.FILLED)
        self.store.states[cycle_id] = msgspec.structs.replace(state, stage=stage,
                                                              legs={**state.legs, order.leg.value: leg})
        return filled

    def _confirm(self, cycle_id: str, confirm: ConfirmPosition) -> bool:
        # The position holds enough of the leg's fill on its side: the cycle moves to the next stage.
        state = self.store.states[cycle_id]
        leg = state.legs[confirm.leg.value]
        held = (self.venue.positions.get(leg.account, Decimal(0)) - confirm.baseline) * confirm.expected_sign
        if held < leg.filled * Decimal(str(confirm.min_fraction)):
            self.failed.append(f"{confirm.leg.value} not confirmed: holds {held} of {leg.filled}")
            return False
        self.store.states[cycle_id] = msgspec.structs.replace(state, stage=confirm.next_stage)
        return True

    def _exit_read(self, cycle_id: str, read: ReadForExit) -> None:
        state = self.store.states[cycle_id]
        readings = []
        for role in (Role.BP, Role.L1, Role.L2):
            account = state.group.account_for(role)
            position = self.venue.read(account)["quantity"]
            readings.append({"account": account, "rules": state.rules[role].to_json(), "position": position,
                             "position_error": None if position is not None else "venue unreachable",
                             "equity": "1000", "read_at": self.clock.time})
        self.run(cycle_id, Step(StepName.EXIT_DECIDE, {"reason": read.reason.value, "attempt": read.attempt,
                                                       "step": read.step}), readings)

    def _exit_orders(self, cycle_id: str, send: SendExitOrders) -> None:
        # A reduce-only order never takes a position past zero; Backpack's offset opens.
        state = self.store.states[cycle_id]
        reports = []
        for order, leg_name, ids in zip(send.orders, send.legs, send.client_ids, strict=True):
            account = state.group.account_for(order.role)
            held = self.venue.positions.get(account, Decimal(0))
            quantity = order.quantity if not order.reduce_only else \
                min(order.quantity, abs(held)) if held * order.side.sign < 0 else Decimal(0)
            filled = self.venue.fill(account, order.side, quantity) if quantity else Decimal(0)
            leg = Leg(account, state.group.symbol_for(order.role), order.side, ids[0], order.quantity, filled,
                      LegState.FILLED if filled == order.quantity else LegState.CANCELLED,
                      reduce_only=order.reduce_only)
            current = self.store.states[cycle_id]
            self.store.states[cycle_id] = msgspec.structs.replace(current, legs={**current.legs, leg_name: leg})
            reports.append({"account": account, "side": order.side.value, "filled": str(filled)})
        if send.then_step is not None:
            self.run(cycle_id, send.then_step, reports)
        elif send.then_read is not None:
            self._exit_read(cycle_id, send.then_read)

    def run(self, cycle_id: str, step: Step, observed: Sequence[dict[str, Any]] = ()) -> None:
        self.trace.append(f"{self.clock.time:.2f} {step.name.value} {dict(step.kwargs)}")
        try:
            run_spec(self.ports, STEPS, step.name, cycle_id, Call(step.kwargs, observed))
        except StaleStep as stale:
            self.stale.append(str(stale))

    def run_until(self, done: Callable[[], bool], *, limit_secs: float) -> None:
        """Run due events in time order until ``done`` or the virtual clock passes ``limit_secs``."""
        end = self.clock.time + limit_secs
        while self.queue and not done():
            due = heapq.heappop(self.queue)
            if due.at > end:
                heapq.heappush(self.queue, due)
                break
            self.clock.time = max(self.clock.time, due.at)
            due.action()
