"""The cycle store on Redis: :class:`~orchestrator.cycle.state.CycleState` loaded from the cycle's
hash in one round trip and a step's :class:`~orchestrator.cycle.commands.Decision` saved in one.

The hash's layout (``orchestrator.record_fields``, schema in ``core.cycle_fields``) is known here and
in the readers that show a cycle (``xtb cycle``, the dashboard); decisions see only the typed state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import msgspec
import redis

from core import keys
from core.client_ids import allocate_id_blocks, record_intent
from core.cycle_fields import Outcome, check
from core.cycle_record import CycleRecord, grace_deadline, positions_fields, queue_create_cycle, stage_grace
from core.durability import durable_execute
from monitoring.alerts import queue_alert
from orchestrator.cycle import start
from orchestrator.cycle.commands import (
    RECORDED,
    Alert,
    Command,
    Decision,
    Finish,
    KeepResults,
    NoteStep,
    SendExitOrders,
    SendOrder,
    StopGroup,
)
from orchestrator.cycle.plan import with_entry_ids
from orchestrator.cycle.start import GroupStop, StartRefused
from orchestrator.cycle.state import (
    CycleState,
    LegName,
    numbered_leg,
)
from orchestrator.kill_switch import stop_group
from orchestrator.record_fields import (
    IDS_PER_ORDER,
    entry_fields,
    exit_fields,
    finish_fields,
    loop_fields,
    new_client_ids,
    positions_json,
    state_from_fields,
)

# The group's lease deleted only while it still names the cycle that ends (a GET then a DEL could
# delete the lease of a start that took it over in between).
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# HGET + compare + HSET in one step: two copies of a step that both read the old token cannot both
# move it. Values are the record's JSON integers, whose text is their decimal digits.
_ADVANCE_STEP = """
local current = redis.call('HGET', KEYS[1], 'step_seq') or '0'
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'step_seq', ARGV[2])
return 1
"""


class RedisCycleStore:
    """:class:`~orchestrator.cycle.ports.CycleStore` on the cycle's Redis hash."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def create(self, state: CycleState, *, trigger_task: str) -> StartRefused | None:
        """Write a new cycle's record (in stage ``planning``) with the group and parameters it runs
        on, its overrides and place in a run, active and holding its group's lease, in one
        transaction; or nothing, and why not (``orchestrator.cycle.start``). Its first step is due
        within the step grace. The trigger task names who started it."""
        group = state.group.name
        lease, stopped = keys.group_lock(group), keys.group_stopped(group)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    # Any write to the lease, the stop or the active set before EXEC: read and decide again.
                    pipe.watch(lease, stopped, keys.CYCLES_ACTIVE)
                    holder, stop = cast(str | None, pipe.get(lease)), cast(str | None, pipe.get(stopped))
                    active = holder is not None and bool(pipe.sismember(keys.CYCLES_ACTIVE, holder))
                    refused = start.refusal(group, None if stop is None else GroupStop.from_json(group, stop),
                                            holder, active)
                    if refused is not None:
                        return refused
                    pipe.multi()
                    pipe.set(lease, state.cycle_id)
                    queue_create_cycle(pipe, state.cycle_id, group, overrides=dict(state.overrides),
                                       cycle_index=state.cycle_index, direction=state.params.direction.value,
                                       params=state.params.to_json(), config=msgspec.to_builtins(state.group),
                                       next_deadline=grace_deadline(), trigger_task=trigger_task)
                    pipe.execute()
                    return None
                except redis.WatchError:
                    continue

    def load(self, cycle_id: str) -> CycleState | None:
        record = CycleRecord(self.client, cycle_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(record.key)
        pipe.exists(keys.cycle_cancel(cycle_id))
        raw, cancel = pipe.execute()
        if not raw:
            return None
        return state_from_fields(cycle_id, record.decoded(cast(dict[str, str], raw)), bool(cancel))

    def advance_step(self, cycle_id: str, token: int) -> bool:
        check("step_seq", token + 1)
        return bool(self.client.eval(_ADVANCE_STEP, 1, keys.cycle(cycle_id), str(token), str(token + 1)))

    def claim(self, cycle_id: str, name: str, value: Any = None) -> bool:
        return CycleRecord(self.client, cycle_id).claim(name, value)

    def save(self, before: CycleState, decision: Decision, now: float) -> list[Command]:
        decision = with_entry_ids(decision, self._entry_ids)
        after = decision.state
        record = CycleRecord(self.client, after.cycle_id)
        finish = next((c for c in decision.commands if isinstance(c, Finish)), None)
        if finish is not None and finish.claim is not None and not record.claim(finish.claim):
            return []  # another step ended the cycle first: this one writes and sends nothing
        stops = [c for c in decision.commands if isinstance(c, StopGroup)]
        for stopped in stops:
            # The kill switch goes first and stays after the cycle ends and its lease is released:
            # a start that takes the lease from then on finds the group stopped.
            stop = self.client.pipeline(transaction=False)
            stop_group(stop, after.group.name, after.cycle_id, stopped.reason)
            durable_execute(stop, self.client, f"kill switch of group {after.group.name}", required=False)
        fields = self.changed_fields(before, decision, now)
        if stops:
            fields["outcome"] = Outcome.UNRESOLVED.value  # a state the exit is in while it goes on
        if finish is not None:
            fields.update(finish_fields(finish, now))
        commands = self._with_exit_orders(after, self._with_client_ids(after, decision.commands))
        fields.update(self._notes(commands))
        pipe = self.client.pipeline(transaction=True)
        if after.cancel_requested and not before.cancel_requested:
            # Entry steps still queued read this key and send nothing.
            record.request_cancel(via=pipe)
        if fields:
            record.update(fields, via=pipe)
        # Appended in this transaction, never the list this step read written back (a venue task's
        # or the watchdog's event added meanwhile would be lost).
        record.add_events(decision.events, at=now, via=pipe)
        orders = [c for c in commands if isinstance(c, SendOrder)]
        for order in orders:
            record_intent(pipe, after.group.account_for(order.role), int(order.client_id or 0),
                          cycle_id=after.cycle_id, leg=order.leg)
        intents = new_client_ids(before, after)
        for account, client_id, leg in intents:
            record_intent(pipe, account, client_id, cycle_id=after.cycle_id, leg=leg.value)
        if finish is not None:
            # Out of the active set and the lease freed in the write of the end: a start's
            # transaction (``create``) sees both or neither.
            pipe.srem(keys.CYCLES_ACTIVE, after.cycle_id)
            pipe.eval(_RELEASE_LEASE, 1, keys.group_lock(after.group.name), after.cycle_id)
        for alert in (c for c in commands if isinstance(c, Alert)):
            queue_alert(pipe, alert.kind, alert.text, cycle_id=after.cycle_id, group=after.group.name, **alert.fields)
        for send in (c for c in commands if isinstance(c, SendExitOrders)):
            for exit_order, exit_leg, ids in zip(send.orders, send.legs, send.client_ids, strict=True):
                for client_id in ids:
                    record_intent(pipe, after.group.account_for(exit_order.role), client_id, cycle_id=after.cycle_id,
                                  leg=exit_leg)
        if orders or intents:
            # On a replica before any order is published: an order whose intent a failover lost
            # could be sent again under a fresh id.
            durable_execute(pipe, self.client, f"step of cycle {after.cycle_id}", required=True)
        elif len(pipe):
            pipe.execute()
        return [c for c in commands if not isinstance(c, RECORDED)]

    def changed_fields(self, before: CycleState, decision: Decision, now: float) -> dict[str, Any]:
        after = decision.state
        out: dict[str, Any] = loop_fields(before.loop, after.loop, after.baselines, now)
        out.update(entry_fields(before, after))
        if after.stage is not before.stage:
            out.update({"stage": after.stage.value, "stage_started_at": now, f"t:{after.stage.value}": now})
            if decision.next_within is None:
                out["next_deadline"] = 0.0
        if decision.next_within is not None:
            # The grace of the stage the step leaves the cycle in: the one the watchdog's test reads.
            out["next_deadline"] = now + decision.next_within + stage_grace(after.stage)
        if decision.reading is not None:
            label, positions = decision.reading
            reading = positions_json(positions, after.baselines, now)
            out.update(positions_fields(label, reading) if label else {"positions": reading})
            net = positions.own(after.baselines).net
            out["net_delta"] = "" if net is None else str(net)
        out.update(exit_fields(before, after))
        out.update({f"exit_results:{k.attempt}": list(k.results) for k in decision.commands
                    if isinstance(k, KeepResults)})
        if after.error and after.error != before.error:
            out["error"] = after.error
        return out

    def _with_client_ids(self, state: CycleState, commands: Sequence[Command]) -> list[Command]:
        # Fresh client ids for the orders, in one round trip; their intents go in the step's write.
        orders = [c for c in commands if isinstance(c, SendOrder) and c.client_id is None]
        if not orders:
            return list(commands)
        blocks = iter(allocate_id_blocks(self.client, [(state.group.account_for(o.role), o.role.venue.value, 1)
                                                       for o in orders]))
        return [msgspec.structs.replace(c, client_id=next(blocks)[0])
                if isinstance(c, SendOrder) and c.client_id is None else c for c in commands]


    def _entry_ids(self, state: CycleState, blocks: Mapping[LegName, int]) -> dict[LegName, list[int]]:
        # The entry legs' id blocks in one round trip; their intents go in the plan's write.
        allocated = allocate_id_blocks(self.client, [(state.group.account_for(leg.role), leg.role.venue.value, n)
                                                     for leg, n in blocks.items()])
        return dict(zip(blocks, allocated, strict=True))

    def _with_exit_orders(self, state: CycleState, commands: Sequence[Command]) -> list[Command]:
        # Each exit order's number (HINCRBY: two copies of a step never share a leg name) and its
        # client ids; their intents go in the step's write.
        sends = [c for c in commands if isinstance(c, SendExitOrders) and not c.legs]
        if not sends:
            return list(commands)
        record = CycleRecord(self.client, state.cycle_id)
        pipe = self.client.pipeline(transaction=False)
        for send in sends:
            for _ in send.orders:
                record.increment("exit_orders", via=pipe)
        numbers = iter(pipe.execute())
        blocks = iter(allocate_id_blocks(self.client, [
            (state.group.account_for(o.role), o.role.venue.value, IDS_PER_ORDER) for s in sends for o in s.orders]))
        out: list[Command] = []
        for command in commands:
            if isinstance(command, SendExitOrders) and not command.legs:
                legs = tuple(numbered_leg(f"exit_{o.role.short.lower()}_", next(numbers)) for o in command.orders)
                ids = tuple(tuple(next(blocks)) for _ in command.orders)
                command = msgspec.structs.replace(command, legs=legs, client_ids=ids)
            out.append(command)
        return out

    @staticmethod
    def _notes(commands: Sequence[Command]) -> dict[str, Any]:
        # A step's note, with the orders of the same decision as they were numbered and given ids.
        planned = [p for c in commands if isinstance(c, SendExitOrders) for p in c.planned()]
        return {n.field: {**n.note, **({"orders": planned} if planned else {})}
                for n in commands if isinstance(n, NoteStep)}


class RedisClock:
    """:class:`~orchestrator.cycle.ports.Clock` read from Redis ``TIME``: every host that runs a
    cycle's steps reads the same clock, so a timeout does not depend on which host's clock drifted."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def now(self) -> float:
        seconds, micros = self.client.time()
        return seconds + micros / 1e6
