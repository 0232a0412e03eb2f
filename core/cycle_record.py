"""The cycle record in Redis: ``xtb:cycle:<id>``, the one place a cycle's truth is written.

Every step records its intent before it touches a venue and its outcome after, so a restarted
worker, the watchdog or ``xtb recover`` can always tell what was sent. Values are JSON strings
in one hash, each field declared with its type in ``cycle_fields.py``: a write of anything else
is refused and every value read is checked; ``xtb:cycles:active`` lists cycles not yet finished,
``xtb:cycles:<group>`` the history (newest first).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from core import keys
from core.cycle_fields import (
    FINAL_REASON_BY_STAGE,
    INT,
    CycleFieldTypeError,
    ExitReason,
    Kind,
    Outcome,
    Stage,
    check,
    check_fields,
    checked,
    kind_of,
)
from core.durability import durable_execute
from core.legs import Leg, parse_leg
from core.policies import DEFAULT_STEP_GRACE_SECS, watchdog_grace

# Stage, Outcome, ExitReason and FINAL_REASON_BY_STAGE are defined with the schema (cycle_fields.py,
# which is Redis-free so the cycle's decisions can use them); the record's readers import them here.
__all__ = [
    "FINAL_REASON_BY_STAGE",
    "HISTORY_LENGTH",
    "CycleRecord",
    "CycleView",
    "ExitReason",
    "Outcome",
    "Stage",
    "active_cycle_ids",
    "create_cycle",
    "grace_deadline",
    "positions_fields",
    "queue_create_cycle",
    "recent_cycle_ids",
    "set_step_grace",
    "stage_deadline",
    "stage_grace",
    "step_grace",
]

HISTORY_LENGTH = 200
#: How many events a cycle record keeps (the oldest are dropped).
EVENTS_KEPT = 100

# Events appended to the record's list inside Redis, never a list read earlier written back: the
# steps and the venue tasks of one cycle write events in parallel, and a read-then-write append
# loses whatever another wrote in between. KEYS: the record. ARGV: the new events (JSON list), how
# many to keep, the ``updated_at`` text.
_APPEND_EVENTS = """
local raw = redis.call('HGET', KEYS[1], 'events')
local events = {}
if raw then events = cjson.decode(raw) end
for _, event in ipairs(cjson.decode(ARGV[1])) do table.insert(events, event) end
local kept = {}
for i = math.max(#events - tonumber(ARGV[2]), 0) + 1, #events do table.insert(kept, events[i]) end
redis.call('HSET', KEYS[1], 'events', cjson.encode(kept), 'updated_at', ARGV[3])
"""




def _dump(value: Any) -> str:
    # JSON always, strings included: a group or reason written as "123" must read back as the
    # string "123", not the number 123.
    return json.dumps(value, default=str)


def _decode(key: str, name: str, kind: Kind, raw: str) -> Any:
    # Every stored value must be JSON of its field's type (see cycle_fields.checked).
    try:
        value = json.loads(raw)
    except ValueError:
        raise CycleFieldTypeError(f"{key} field {name!r} holds text that is not JSON: {raw[:80]!r}") from None
    return checked(name, value, kind, key)


def positions_fields(label: str, positions: dict[str, Any]) -> dict[str, Any]:
    """Record fields for a reading of the three positions: kept under ``label`` and as the latest."""
    return {f"positions:{label}": positions, "positions": positions}


@dataclass(frozen=True)
class CycleView:
    """The stage and some fields of a cycle record, with its cancel flag, read in one round trip."""

    fields: dict[str, Any]
    cancel_requested: bool

    def get(self, field: str) -> Any:
        return self.fields.get(field)

    @property
    def stage(self) -> Stage | None:
        raw = self.fields.get("stage")
        return Stage(raw) if raw else None


@dataclass
class CycleRecord:
    """Accessor for one cycle's hash."""

    client: redis.Redis
    cycle_id: str

    @property
    def key(self) -> str:
        return keys.cycle(self.cycle_id)

    def exists(self) -> bool:
        return bool(self.client.exists(self.key))

    def get(self, field: str) -> Any:
        """Field ``field`` as its declared type, None when absent (an undeclared name is refused)."""
        kind = kind_of(field)
        raw = cast(str | None, self.client.hget(self.key, field))
        return None if raw is None else _decode(self.key, field, kind, raw)

    def all(self) -> dict[str, Any]:
        """Every field, each as its declared type; a stored field the schema does not declare is an error."""
        return self.decoded(cast(dict[str, str], self.client.hgetall(self.key)))

    def decoded(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """The fields of an ``HGETALL`` answer, each as its declared type (see :meth:`all`)."""
        key = self.key
        return {k: _decode(key, k, kind_of(k), v) for k, v in raw.items()}

    def view(self, *fields: str, after: redis.client.Pipeline | None = None) -> CycleView:
        """``stage`` and ``fields`` with the cancel flag: a step's reads in one round trip.

        ``after`` is a pipeline of the caller's own writes, sent in the same round trip.
        """
        names = ["stage", *fields]
        kinds = [kind_of(n) for n in names]  # an undeclared name is refused before anything is sent
        pipe = after if after is not None else self.client.pipeline(transaction=False)
        pipe.hmget(self.key, names)
        pipe.exists(keys.cycle_cancel(self.cycle_id))
        *_, values, cancel = pipe.execute()
        return CycleView({n: _decode(self.key, n, k, v) for n, k, v in zip(names, kinds, values, strict=True)
                          if v is not None}, bool(cancel))

    def update(self, named: Mapping[str, Any] | None = None, /, *, via: redis.client.Pipeline | None = None,
               **fields: Any) -> None:
        """Write ``named`` (fields whose names are built, e.g. ``leg:<name>``) and ``fields``; ``via``
        queues the write in the caller's pipeline instead.

        Every field must be declared in ``cycle_fields`` with the type of its value, or nothing is
        written (:class:`~core.cycle_fields.CycleFieldError`).
        """
        fields = {**(named or {}), **fields, "updated_at": time.time()}
        check_fields(fields)  # before the write: a refused field or value writes nothing of this call
        (via if via is not None else self.client).hset(self.key, mapping={k: _dump(v) for k, v in fields.items()})

    @property
    def stage(self) -> Stage | None:
        raw = self.get("stage")
        return Stage(raw) if raw else None

    def set_stage(self, stage: Stage, *, deadline: float | None = None,
                  via: redis.client.Pipeline | None = None, **fields: Any) -> None:
        """Enter ``stage``; ``deadline`` is when the watchdog considers the next step overdue."""
        now = time.time()
        self.update(via=via, stage=stage.value, stage_started_at=now, next_deadline=deadline or 0,
                    **{f"t:{stage.value}": now}, **fields)

    def touch_deadline(self, deadline: float) -> None:
        # A raw write of the one field (``updated_at`` is left alone), checked like any other.
        check("next_deadline", deadline)
        self.client.hset(self.key, "next_deadline", _dump(deadline))

    def claim(self, field: str, value: Any = None) -> bool:
        """Set ``field`` to ``value`` (default: now) unless it is set (HSETNX): True for the one caller
        that set it.

        A duplicated delivery of a step stops at its claim (the plan, an exit attempt or step, the exit report).
        """
        value = time.time() if value is None else value
        check(field, value)
        if not isinstance(self.client, redis.Redis):
            return bool(self.client.hsetnx(self.key, field, _dump(value)))
        # Past a failover too: a claim the promoted replica never saw could be taken a second time.
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(self.key, field, _dump(value))
        return bool(durable_execute(pipe, self.client, f"claim {field} of cycle {self.cycle_id}", required=False)[0])

    def increment(self, field: str, *, via: redis.client.Pipeline | None = None) -> Any:
        """Add one to the integer counter ``field`` (HINCRBY); the new count, or the queued command."""
        if kind_of(field) is not INT:
            raise CycleFieldTypeError(f"cycle record field {field!r} is not an integer counter")
        return (via if via is not None else self.client).hincrby(self.key, field, 1)

    def record_leg(self, name: str, leg: Leg) -> None:
        self.update({f"leg:{name}": leg.to_json()})

    def leg(self, name: str) -> Leg | None:
        """The leg ``name``; None when it is not recorded or its record does not parse (unknown)."""
        return parse_leg(self.get(f"leg:{name}"))

    def record_positions(self, label: str, positions: dict[str, Any]) -> None:
        self.update(**positions_fields(label, positions))

    def add_event(self, text: str) -> None:
        """Append ``text`` to ``events`` (see :meth:`add_events`)."""
        self.add_events((text,), at=time.time())

    def add_events(self, texts: Sequence[str], *, at: float, via: redis.client.Pipeline | None = None) -> None:
        """Append ``texts``, each stamped ``at``, to ``events`` in one atomic script (the last
        ``EVENTS_KEPT`` kept); ``via`` queues it in the caller's transaction instead."""
        if texts:
            (via if via is not None else self.client).eval(
                _APPEND_EVENTS, 1, self.key, json.dumps([{"t": at, "text": text} for text in texts]), EVENTS_KEPT,
                _dump(time.time()))

    def cancel_requested(self) -> bool:
        return bool(self.client.exists(keys.cycle_cancel(self.cycle_id)))

    def request_cancel(self, *, via: redis.client.Pipeline | None = None) -> None:
        (via if via is not None else self.client).set(keys.cycle_cancel(self.cycle_id), "1", ex=7 * 86400)

    def finish(self, outcome: Outcome, reason: str | None) -> None:
        self.set_stage(Stage.DONE, outcome=outcome.value, reason=reason or "", finished_at=time.time())
        self.client.srem(keys.CYCLES_ACTIVE, self.cycle_id)


# The step grace of this process: the Celery app sets it from the config's ``[watchdog]`` table.
_step_grace = DEFAULT_STEP_GRACE_SECS


def set_step_grace(secs: float) -> None:
    global _step_grace
    _step_grace = float(secs)


def step_grace() -> float:
    return _step_grace


def stage_grace(stage: str | None) -> float:
    """This process's watchdog grace for a cycle in ``stage`` (``core.policies.watchdog_grace``)."""
    return watchdog_grace(stage, _step_grace)


def grace_deadline(extra: float = 0.0, *, now: float | None = None) -> float:
    """When a step that may take ``extra`` seconds is overdue: then plus the step grace."""
    return (time.time() if now is None else now) + extra + _step_grace


def stage_deadline(stage: Stage, plan: dict[str, Any] | None) -> float:
    """When the watchdog considers ``stage`` overdue: the grace, plus the random wait for ``wait``."""
    return grace_deadline(float((plan or {}).get("wait_secs") or 0) if stage is Stage.WAIT else 0.0)


def create_cycle(client: redis.Redis, cycle_id: str, group: str, **fields: Any) -> CycleRecord:
    """Write a new record (in stage ``planning``) with ``fields``, and list it active and in its group's history."""
    pipe = client.pipeline()
    queue_create_cycle(pipe, cycle_id, group, **fields)
    pipe.execute()
    return CycleRecord(client, cycle_id)


def queue_create_cycle(pipe: redis.client.Pipeline, cycle_id: str, group: str, **fields: Any) -> None:
    """:func:`create_cycle`'s writes, queued on ``pipe`` for the caller to execute (in its transaction)."""
    now = time.time()
    values = {"cycle_id": cycle_id, "group": group, "stage": Stage.PLANNING.value, "created_at": now,
              "updated_at": now, "t:planning": now, **fields}
    check_fields(values)  # before anything is queued: a refused field creates no record at all
    pipe.hset(keys.cycle(cycle_id), mapping={k: _dump(v) for k, v in values.items()})
    pipe.sadd(keys.CYCLES_ACTIVE, cycle_id)
    pipe.lpush(keys.cycle_history(group), cycle_id)
    pipe.ltrim(keys.cycle_history(group), 0, HISTORY_LENGTH - 1)


def active_cycle_ids(client: redis.Redis) -> list[str]:
    return sorted(map(str, client.smembers(keys.CYCLES_ACTIVE)))


def recent_cycle_ids(client: redis.Redis, group: str, count: int = 10) -> list[str]:
    return [str(i) for i in client.lrange(keys.cycle_history(group), 0, count - 1)]
