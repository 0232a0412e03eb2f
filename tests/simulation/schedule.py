"""A :class:`MemoryScheduler` whose deliveries a seeded schedule delays, repeats or loses, with the
venue's tasks emulated as production runs them (fences, each client id sent once, an exit read that
settles the cycle's in-flight orders first) and the orchestrator's watchdog sweeping every few
virtual seconds.

Every event is labelled in the trace; nothing here reads the wall clock, the global random or a set
in its iteration order.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import zlib
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

from core import policies
from core.config_schema import Role
from core.cycle_fields import Stage
from core.fencing import Fence
from core.legs import Leg, LegState
from core.policies import WATCHDOG_INTERVAL_SECS
from orchestrator.cycle import recovery
from orchestrator.cycle.commands import (
    Command,
    ConfirmPosition,
    EnterFirstLegs,
    EnterRest,
    EntryOrder,
    Finish,
    ReadForExit,
    ReadPositions,
    RunLater,
    SendExitOrders,
    SendOrder,
    StartExit,
    Step,
    StepName,
)
from orchestrator.cycle.entry import mirror_quantity
from orchestrator.cycle.runner import Call, StaleStep, run_spec
from orchestrator.cycle.state import LOOP_STAGES, ROLES, CycleState
from orchestrator.cycle.steps import STEPS
from tests.simulation.faults import LOST, Delivery, Rates, delivery
from tests.simulation.memory import MemoryScheduler
from tests.simulation.world import SimStore, SimVenue, VenueOrder
from venues.base import Side

#: Trace lines kept for a broken invariant's report.
TRACE_TAIL = 40


class FaultScheduler(MemoryScheduler):
    """Runs the cycle's commands with the faults ``rng`` draws at ``rates``."""

    def __init__(self, store: SimStore, venue: SimVenue, rng: random.Random, rates: Rates, *,
                 keep_trace: bool = False) -> None:
        super().__init__(store, venue.clock, venue)
        self.sim_store, self.sim_venue = store, venue
        self.rng, self.rates = rng, rates
        #: When each lost task was drawn, with the watchdog's grace of the cycle's stage then (the
        #: watchdog's recovery of each is a legging window's due).
        self.losses: list[tuple[float, float]] = []
        #: When an exit read last found a position unknown (unreadable, or an order unsettled).
        self.unknown_exit_read_at: float | None = None
        self.heap: list[tuple[float, int, str, Callable[[], None]]] = []
        self.tail: deque[str] = deque(maxlen=TRACE_TAIL)
        self.keep_trace = keep_trace
        self.events = 0
        self.digest = 0
        self.watchdog_actions: list[str] = []
        self.faults: dict[str, int] = {}
        #: When each in-flight leg's intent was written (the settle's age).
        self.intent_at: dict[tuple[str, str], float] = {}

    # ---- the event queue ----------------------------------------------------------------------

    def at(self, delay: float, action: Callable[[], None], label: str = "task") -> None:
        heapq.heappush(self.heap, (self.clock.time + delay, next(self.seq), label, action))

    def note(self, text: str) -> None:
        line = f"{self.clock.time - 1_000_000.0:9.3f} {text}"
        self.tail.append(line)
        self.digest = zlib.crc32(line.encode(), self.digest)
        if self.keep_trace:
            self.trace.append(line)

    def pop(self) -> tuple[float, str, Callable[[], None]] | None:
        if not self.heap:
            return None
        at, _, label, action = heapq.heappop(self.heap)
        return at, label, action

    def _fate(self, cycle_id: str, label: str, *, order: bool = False) -> Delivery:
        fate = delivery(self.rng, self.rates, order=order)
        if fate in LOST:
            self.losses.append((self.clock.time, self.sim_store.stage_grace(cycle_id)))
        if fate is not Delivery.ON_TIME:
            self.faults[fate.value] = self.faults.get(fate.value, 0) + 1
            self.note(f"fault {fate.value}: {label}")
        return fate

    def _deliver(self, cycle_id: str, delay: float, label: str, action: Callable[[], None]) -> None:
        """A step or read task, delivered as its fate says (a crash, before or after, loses it)."""
        fate = self._fate(cycle_id, label)
        if fate in (Delivery.CRASH_BEFORE, Delivery.CRASH_AFTER, Delivery.IN_FLIGHT):
            return
        extra = self.rng.uniform(0.0, self.rates.late_max_secs) if fate is Delivery.LATE else 0.0
        self.at(delay + extra, action, label)
        if fate is Delivery.TWICE:
            self.at(delay + self.rng.uniform(0.05, self.rates.late_max_secs), action, f"{label} (again)")

    # ---- the commands ---------------------------------------------------------------------------

    def _enqueue(self, state: CycleState, command: Command) -> None:
        cid = state.cycle_id
        if isinstance(command, ReadPositions):
            self._deliver(cid, 0.0, f"read -> {command.then.name.value}", lambda: self._read(cid, command.then))
        elif isinstance(command, RunLater):
            self._deliver(cid, command.after_secs, command.step.name.value, lambda: self.run(cid, command.step))
        elif isinstance(command, StartExit):
            self.exits.append(command)
            step = Step(StepName.EMERGENCY_EXIT, {"reason": command.reason.value})
            self._deliver(cid, 0.0, f"emergency_exit {command.reason.value}", lambda: self.run(cid, step))
        elif isinstance(command, ReadForExit):
            self._deliver(cid, command.after_secs, f"exit read {command.attempt}.{command.step}",
                          lambda: self._exit_read(cid, command))
        elif isinstance(command, SendOrder):
            self._send_order(state, command)
        elif isinstance(command, SendExitOrders):
            self._send_exit(cid, command)
        elif isinstance(command, EnterFirstLegs):
            self._deliver(cid, 0.0, "enter first legs", lambda: self._enter_first(cid, command))
        elif isinstance(command, EnterRest):
            self._deliver(cid, 0.0, "enter rest", lambda: self._enter_rest(cid, command))
        elif isinstance(command, Finish):
            self.note(f"finish {command.outcome.value} {command.reason}")
            self.next_cycles.extend([command.next_cycle] if command.next_cycle else [])
        else:
            raise TypeError(f"no in-memory form for {type(command).__name__}")

    def _read(self, cycle_id: str, then: Step) -> None:
        state = self.store.states[cycle_id]
        reads = [self.venue.read(state.group.account_for(role)) for role in ROLES]
        unknown = [r["account"] for r in reads if r["quantity"] is None]
        if unknown:
            self.note(f"read fails on {unknown}")
        self.run(cycle_id, then, reads)

    def run(self, cycle_id: str, step: Step, observed: Any = ()) -> None:
        self.note(f"step {step.name.value} {_short(step.kwargs)}")
        try:
            run_spec(self.ports, STEPS, step.name, cycle_id, Call(step.kwargs, observed, grace=self.sim_store.grace))
        except StaleStep as stale:
            self.stale.append(str(stale))
            self.note(f"  {stale}")

    # ---- orders --------------------------------------------------------------------------------

    def _record_leg(self, cycle_id: str, name: str, leg: Leg, stage: Stage | None = None,
                    deadline: float | None = None) -> None:
        current = self.store.states[cycle_id]
        self.store.states[cycle_id] = msgspec.structs.replace(current, legs={**current.legs, name: leg},
                                                              stage=stage or current.stage)
        self.sim_store.touch(cycle_id, deadline)

    def _place(self, cycle_id: str, role: Role, side: Side, quantity: Decimal, client_id: int, leg_name: str, *,
               reduce_only: bool, fate: Delivery, fraction: Decimal = Decimal(1),
               stage: Stage | None = None, deadline: float | None = None) -> VenueOrder | None:
        """One order as the venue task sends it: its intent's leg in flight first, then the venue, then
        the outcome (a crash before leaves the intent alone; after, the venue's fill unrecorded; a
        hung send reaches the venue later, unrecorded)."""
        state = self.store.states[cycle_id]
        account, symbol = state.group.account_for(role), state.group.symbol_for(role)
        flying = Leg.in_flight(account, symbol, side, client_id, quantity)
        if not (leg_name in state.legs and state.legs[leg_name].client_id == client_id):
            self._record_leg(cycle_id, leg_name, flying, stage, deadline)
            self.intent_at[(cycle_id, leg_name)] = self.clock.time
        if fate is Delivery.CRASH_BEFORE:
            return None
        if fate is Delivery.IN_FLIGHT:
            hang = self.rng.uniform(0.5, self.rates.in_flight_max_secs)
            def arrive() -> None:
                self._arrive(cycle_id, account, client_id, leg_name, side, quantity, reduce_only)

            self.at(hang, arrive, f"hung send {leg_name} reaches the venue")
            return None
        sent = self._arrive(cycle_id, account, client_id, leg_name, side, quantity, reduce_only, fraction)
        if fate is Delivery.CRASH_AFTER:
            return None
        final = LegState.FILLED if sent.filled == quantity else (LegState.FAILED if sent.rejected else LegState.CANCELLED)
        leg = Leg(account, symbol, side, client_id, quantity, sent.filled, final, reduce_only=reduce_only,
                  filled_at=self.clock.time)
        self._record_leg(cycle_id, leg_name, leg)
        return sent

    def _arrive(self, cycle_id: str, account: str, client_id: int, leg: str, side: Side, quantity: Decimal,
                reduce_only: bool, fraction: Decimal = Decimal(1)) -> VenueOrder:
        stage = self.store.states[cycle_id].stage
        known = self.sim_venue.find(account, client_id) is not None
        sent = self.sim_venue.send(account, client_id, leg, side, quantity, reduce_only=reduce_only, stage=stage,
                                   fraction=fraction)
        self.note(f"venue {account} #{client_id} {leg} {side.value} {quantity} "
                  f"{'known: it filled' if known else 'filled'} {sent.filled}")
        return sent

    def _send_order(self, state: CycleState, order: SendOrder) -> None:
        cid, label = state.cycle_id, f"order {order.leg}"
        fate = self._fate(cid, label, order=True)
        fence = Fence(order.fence_stages) if order.fence_stages is not None else Fence(LOOP_STAGES, step=order.fence_step)

        def send() -> None:
            current = self.store.load(cid)
            assert current is not None
            why = fence.refusal({"stage": current.stage.value, "step_seq": current.loop.step_seq})
            if why is not None or (current.cancel_requested and not order.reduce_only):
                self.note(f"refused {order.leg}: {why or 'cancelled'}")
                return
            sent = self._place(cid, order.role, order.side, order.quantity, int(order.client_id or 0), order.leg,
                               reduce_only=order.reduce_only, fate=Delivery.ON_TIME if fate in (
                                   Delivery.LATE, Delivery.TWICE) else fate)
            if sent is not None:
                self.run(cid, order.then)

        self._after(fate, label, send)

    def _after(self, fate: Delivery, label: str, action: Callable[[], None]) -> None:
        extra = self.rng.uniform(0.0, self.rates.late_max_secs) if fate is Delivery.LATE else 0.0
        self.at(extra, action, label)
        if fate is Delivery.TWICE:
            self.at(self.rng.uniform(0.05, self.rates.late_max_secs), action, f"{label} (again)")

    def _send_exit(self, cycle_id: str, send: SendExitOrders) -> None:
        fates = [self._fate(cycle_id, f"exit order {leg}", order=True) for leg in send.legs]
        fills = [self._exit_fraction(order.role) for order in send.orders]

        def run() -> None:
            why = self._exit_refusal(cycle_id, send.attempt)
            if why is not None:
                self.note(f"refused exit orders {send.legs}: {why}")
                return
            reports, lost = [], False
            for order, leg, ids, fate, fraction in zip(send.orders, send.legs, send.client_ids, fates, fills,
                                                       strict=True):
                fate = Delivery.ON_TIME if fate in (Delivery.LATE, Delivery.TWICE) else fate
                sent = self._place(cycle_id, order.role, order.side, order.quantity, ids[0], leg,
                                   reduce_only=order.reduce_only, fate=fate, fraction=fraction)
                lost = lost or sent is None
                if sent is not None:
                    reports.append({"account": sent.account, "side": order.side.value, "filled": str(sent.filled)})
            if lost:  # the chord never completes: the watchdog retries the attempt
                return
            if send.then_step is not None:
                self.run(cycle_id, send.then_step, reports)
            elif send.then_read is not None:
                self._exit_read(cycle_id, send.then_read)

        worst = next((f for f in fates if f in (Delivery.LATE, Delivery.TWICE)), Delivery.ON_TIME)
        self._after(worst, f"exit orders {list(send.legs)}", run)

    def _exit_fraction(self, role: Role) -> Decimal:
        r = self.rng.random()
        if r < self.rates.exit_none:
            return Decimal(0)
        if r < self.rates.exit_none + self.rates.exit_partial:
            return Decimal(str(round(self.rng.uniform(0.1, 0.9), 2)))
        return Decimal(1)

    # ---- the entry -------------------------------------------------------------------------------

    def _enter_first(self, cycle_id: str, command: EnterFirstLegs) -> None:
        entry = self._entry_order(cycle_id, command.entry, Stage.BP_ENTRY)
        if entry is None:
            return
        rules = self.store.states[cycle_id].rules[command.hedge.role]
        if self._entry_order(cycle_id, command.hedge, Stage.L1_HEDGE, mirror_quantity(rules, entry.filled)) is None:
            return
        self.run(cycle_id, command.then)

    def _enter_rest(self, cycle_id: str, command: EnterRest) -> None:
        if not self._confirm(cycle_id, command.confirm_hedge):
            return

        def second_leg() -> None:
            if self._entry_order(cycle_id, command.entry, Stage.L2_ENTRY) is None:
                return
            if self._confirm(cycle_id, command.confirm_entry):
                self.run(cycle_id, command.then)

        self.at(command.entry.after_secs, second_leg, "l2 entry after the wait")

    def _entry_order(self, cycle_id: str, order: EntryOrder, stage: Stage,  # type: ignore[override]
                     quantity: Decimal | None = None) -> VenueOrder | None:
        # The venue task enters the leg's stage in the same write as its intent (a new deadline).
        state = self.store.load(cycle_id)
        assert state is not None
        why = Fence(order.fence).refusal({"stage": state.stage.value, "step_seq": state.loop.step_seq})
        if why is not None or state.cancel_requested:
            self.note(f"refused {order.leg.value}: {why or 'cancelled'}")
            return None
        fate = self._fate(cycle_id, f"entry order {order.leg.value}", order=True)
        fate = Delivery.ON_TIME if fate in (Delivery.LATE, Delivery.TWICE) else fate
        requested = quantity if quantity is not None else order.quantity or Decimal(0)
        return self._place(cycle_id, order.role, order.side, requested, order.client_ids[0], order.leg.value,
                           reduce_only=False, fate=fate, stage=stage, deadline=self.clock.time + self.sim_store.grace)

    def _confirm(self, cycle_id: str, confirm: ConfirmPosition) -> bool:
        # The confirmation task refuses outside its fence, as production's does.
        why = Fence(confirm.fence).refusal({"stage": self.store.states[cycle_id].stage.value})
        if why is not None:
            self.note(f"refused confirmation of {confirm.leg.value}: {why}")
            return False
        if not super()._confirm(cycle_id, confirm):
            return False
        plan = self.store.states[cycle_id].plan
        wait = float(plan.wait_secs or 0) if plan is not None and confirm.next_stage is Stage.WAIT else 0.0
        self.sim_store.touch(cycle_id, self.clock.time + wait + self.sim_store.grace)
        return True

    # ---- the exit's reads ------------------------------------------------------------------------

    def _exit_refusal(self, cycle_id: str, attempt: int) -> str | None:
        """The exit's venue tasks' fence: their attempt is current and the exit not reported."""
        current = self.store.states[cycle_id]
        return Fence((Stage.EMERGENCY_EXIT,), exit_attempt=attempt).refusal(
            {"stage": current.stage.value, "exit_attempts": current.exit_attempts,
             "exit_reported_at": cycle_id in self.store.finished})

    def _exit_read(self, cycle_id: str, read: ReadForExit) -> None:
        if (why := self._exit_refusal(cycle_id, read.attempt)) is not None:
            self.note(f"refused exit read {read.attempt}.{read.step}: {why}")
            return
        state = self.store.states[cycle_id]
        readings = []
        for role in ROLES:
            account = state.group.account_for(role)
            unsettled = self._settle(cycle_id, account)
            position = self.venue.read(account)["quantity"]
            readings.append({"account": account, "rules": state.rules[role].to_json(), "position": position,
                             "position_error": None if position is not None else "venue unreachable",
                             "equity": "1000", "read_at": self.clock.time, "unsettled": unsettled})
            if position is None or unsettled:
                self.unknown_exit_read_at = self.clock.time
                self.note(f"exit read of {account}: {'unreadable' if position is None else f'unsettled {unsettled}'}")
        self.run(cycle_id, Step(StepName.EXIT_DECIDE, {"reason": read.reason.value, "attempt": read.attempt,
                                                       "step": read.step}), readings)

    def _settle(self, cycle_id: str, account: str) -> list[int]:
        """``settle_unknown_orders``: record what the venue holds for each in-flight leg on the account;
        a leg the venue does not know is failed once the product's rule (``policies.never_placed``,
        looked up at the call so a test can put a bug back in it) takes it as never placed."""
        state = self.store.states[cycle_id]
        unknown = []
        for name, leg in sorted(state.legs.items()):
            if leg.account != account or leg.state.final:
                continue
            found = self.sim_venue.find(account, leg.client_id)
            if found is not None:
                final = LegState.FILLED if found.filled == leg.requested else LegState.CANCELLED
                self._record_leg(cycle_id, name, dataclasses.replace(leg, filled=found.filled, state=final,
                                                                          filled_at=self.clock.time))
            elif policies.never_placed(self.clock.time - self.intent_at.get((cycle_id, name), self.clock.time)):
                self._record_leg(cycle_id, name, dataclasses.replace(leg, state=LegState.FAILED))
                self.sim_venue.written_off[(account, leg.client_id)] = self.clock.time
            else:
                unknown.append(leg.client_id)
        return unknown

    # ---- the watchdog ----------------------------------------------------------------------------

    def watchdog(self, cycle_id: str) -> None:
        """The orchestrator's sweep (``orchestrator.recovery.sweep``): resume an overdue cycle."""
        if self.store.states[cycle_id].stage is Stage.DONE:
            return
        self.at(WATCHDOG_INTERVAL_SECS, lambda: self.watchdog(cycle_id), "watchdog")
        if not self.sim_store.overdue(cycle_id):
            return
        self.sim_store.touch(cycle_id, self.clock.time + self.sim_store.stage_grace(cycle_id))
        state = self.store.load(cycle_id)
        assert state is not None
        action, commands = recovery.resume(state)
        self.watchdog_actions.append(action)
        self.note(f"watchdog: {state.stage.value} overdue; {action}")
        self.publish(state, commands)


def _short(kwargs: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(kwargs.items()) if k not in ("state", "caps"))
