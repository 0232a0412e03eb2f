"""Raising alerts: a durable outbox stream for Telegram plus a pub/sub copy for live views.

Pub/sub is at-most-once (a subscriber that is down loses the message), so every alert is first
``XADD``ed to :data:`keys.ALERTS_OUTBOX`; the relay (:mod:`monitoring.relay`) delivers it at least
once and, by the alert id, never twice. Both writes go in one ``MULTI`` so a live view never sees
an alert that the outbox does not have.

Texts are plain English, one line of facts; the helpers below format the standard kinds so every
producer says the same thing the same way.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, cast

import redis

from core import keys

log = logging.getLogger(__name__)

#: Approximate cap of the outbox stream; delivered entries older than this many are trimmed.
OUTBOX_MAXLEN = 10_000
#: Telegram rejects longer messages; the tail is cut with an ellipsis.
MAX_TEXT_CHARS = 4000


class AlertKind(StrEnum):
    """What happened; the relay sends every kind, dashboards may filter by it."""

    #: A hedge cycle was planned and its first order is about to go out.
    CYCLE_STARTED = "cycle_started"
    #: All three legs are in and Backpack is rebalanced; the cycle is being monitored.
    CYCLE_HEDGED = "cycle_hedged"
    #: A cycle ended (any outcome) and all legs are flat, with per-venue PnL.
    CYCLE_FINISHED = "cycle_finished"
    #: A cycle ended the normal way (a Lighter leg liquidated, or the timeout, then a flat exit): reason,
    #: duration, per-venue realised PnL split into trading, fees and funding, dust, worst net exposure.
    CYCLE_COMPLETED = "cycle_completed"
    #: Everything was unwound after a failure, a cancel, or an exit not confirmed flat (the normal end is
    #: ``cycle_completed``).
    EMERGENCY_EXIT = "emergency_exit"
    #: A bot (venue worker or orchestrator) stopped sending heartbeats.
    HEARTBEAT_MISSING = "heartbeat_missing"
    #: A bot that was reported missing is sending heartbeats again.
    HEARTBEAT_BACK = "heartbeat_back"
    #: A worker process or task died unexpectedly and needs a look.
    WORKER_CRASH = "worker_crash"
    #: A cycle's monitor has read a position as unknown many times in a row (nothing is traded on unknown).
    POSITIONS_UNKNOWN = "positions_unknown"
    #: A venue's stream and its REST answer disagreed on a position beyond a push in flight (REST was used).
    STREAM_DISAGREEMENT = "stream_disagreement"
    #: Kill switch: a group is stopped after an unresolved exit (and each cycle start refused meanwhile).
    GROUP_STOPPED = "group_stopped"
    #: An operator resumed a stopped group once its accounts read flat.
    GROUP_RESUMED = "group_resumed"


@dataclass(frozen=True)
class Alert:
    """One alert as stored in the outbox stream."""

    alert_id: str
    kind: str
    text: str
    ts: float
    entry_id: str = ""
    host: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry_id: str, data: Mapping[str, str]) -> Alert:
        try:
            extra = json.loads(data.get("fields") or "{}")
        except json.JSONDecodeError:
            extra = {}
        try:
            ts = float(data.get("ts", "0"))
        except ValueError:
            ts = 0.0
        return cls(
            alert_id=data.get("id") or entry_id, kind=data.get("kind", ""), text=data.get("text", ""),
            ts=ts, entry_id=entry_id, host=data.get("host", ""),
            fields=extra if isinstance(extra, dict) else {},
        )

    def to_json(self) -> dict[str, Any]:
        return {"id": self.alert_id, "kind": self.kind, "text": self.text, "ts": self.ts,
                "entry_id": self.entry_id, "host": self.host, "fields": self.fields}


def new_alert_id(now: float | None = None) -> str:
    """Unique and time-prefixed (ms), so the relay can expire old delivered ids by age."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms}-{uuid.uuid4().hex[:16]}"


def alert_id_ms(alert_id: str) -> int | None:
    head = alert_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > MAX_TEXT_CHARS:
        flat = flat[: MAX_TEXT_CHARS - 1] + "…"
    return flat


def raise_alert(redis: redis.Redis, kind: AlertKind, text: str, **fields: Any) -> str:
    """Queue an alert for Telegram (outbox stream) and announce it live (pub/sub); returns its id.

    ``fields`` are extra JSON-able facts kept with the alert (cycle id, group, ...); never put
    secrets in them. Raises ``redis.RedisError`` when Redis is unreachable: an alert that could
    not be queued must not pass silently.
    """
    pipe = redis.pipeline(transaction=True)
    alert_id = queue_alert(pipe, kind, text, **fields)
    pipe.execute()
    return alert_id


def queue_alert(pipe: redis.client.Pipeline, kind: AlertKind, text: str, **fields: Any) -> str:
    """Add the alert's commands to a transactional pipeline, atomic with the caller's other writes.

    The caller executes the pipeline; after a ``WATCH`` it must have called ``pipe.multi()``.
    """
    kind = AlertKind(kind)
    line = _one_line(text)
    if not line:
        raise ValueError("alert text is empty")
    now = time.time()
    alert_id = new_alert_id(now)
    entry: dict[Any, Any] = {
        "id": alert_id, "kind": kind.value, "text": line, "ts": f"{now:.3f}",
        "host": socket.gethostname(), "pid": str(os.getpid()),
        "fields": json.dumps(fields, default=str, sort_keys=True),
    }
    live = json.dumps({**{k: v for k, v in entry.items() if k != "fields"}, "fields": fields}, default=str)
    pipe.xadd(keys.ALERTS_OUTBOX, entry, maxlen=OUTBOX_MAXLEN, approximate=True)
    pipe.publish(keys.ALERTS_CHANNEL, live)
    log.info("alert %s %s: %s", alert_id, kind.value, line)
    return alert_id


def recent_alerts(redis: redis.Redis, count: int = 20) -> list[Alert]:
    """The newest ``count`` alerts in the outbox, newest first."""
    entries = cast(list[tuple[str, dict[str, str]]], redis.xrevrange(keys.ALERTS_OUTBOX, count=count))
    return [Alert.from_entry(entry_id, data) for entry_id, data in entries]


# --------------------------------------------------------------------------------------------
# Formatters for the standard kinds: one line of facts, plain English.

Amount = Decimal | float | int | str | None


def fmt_amount(value: Amount, *, signed: bool = False) -> str:
    """``unknown`` for None (unknown is not zero), otherwise the number without float noise."""
    if value is None:
        return "unknown"
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return str(value)  # already words ("flat, dust 0.003")
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    if signed and number > 0:
        text = "+" + text
    return text


def _per_venue(values: Mapping[str, Amount], *, signed: bool) -> str:
    return ", ".join(f"{name} {fmt_amount(v, signed=signed)}" for name, v in values.items()) or "none"


def format_cycle_started(group: str, cycle_id: str, direction: str, size: Amount) -> str:
    return f"Cycle {cycle_id} started in group {group}: {direction}, Backpack size {fmt_amount(size)}."


def format_cycle_hedged(group: str, cycle_id: str, positions: Mapping[str, Amount]) -> str:
    net = _net(positions.values())
    return (f"Cycle {cycle_id} ({group}) hedged; positions: {_per_venue(positions, signed=True)}; "
            f"net {fmt_amount(net, signed=True)}.")


def format_cycle_finished(group: str, cycle_id: str, outcome: str, pnl: Mapping[str, Amount],
                          duration_secs: float | None = None) -> str:
    took = f" after {_duration(duration_secs)}" if duration_secs is not None else ""
    total = _net(pnl.values())
    return (f"Cycle {cycle_id} ({group}) finished{took}: {outcome}; PnL {_per_venue(pnl, signed=True)}; "
            f"total {fmt_amount(total, signed=True)}.")


def format_emergency_exit(group: str, cycle_id: str, reason: str, pnl: Mapping[str, Amount],
                          positions: Mapping[str, Amount]) -> str:
    return (f"EMERGENCY EXIT of cycle {cycle_id} ({group}): {reason}; "
            f"PnL {_per_venue(pnl, signed=True)}; positions {_per_venue(positions, signed=True)}.")


def _venue_split(role: str, equity_pnl: Amount, split: Mapping[str, Any] | None) -> str:
    if not split or split.get("error"):
        why = f"; split unknown: {split['error']}" if split and split.get("error") else ""
        return f"{role} {fmt_amount(equity_pnl, signed=True)} (equity{why})"
    parts = ", ".join(f"{part} {fmt_amount(split.get(part), signed=True)}" for part in ("trading", "fees", "funding"))
    left = f", {fmt_amount(split['open'], signed=True)} still open" if split.get("open") else ""
    return f"{role} {fmt_amount(split.get('net'), signed=True)} ({parts}{left})"


def format_cycle_completed(group: str, cycle_id: str, reason: str, duration_secs: float | None,
                           pnl: Mapping[str, Amount], split: Mapping[str, Mapping[str, Any]],
                           positions: Mapping[str, Any], worst_net: Mapping[str, Any] | None = None) -> str:
    """``pnl``: each venue's equity change; ``split``: role -> {trading, fees, funding, net} or {error}."""
    took = f" after {_duration(duration_secs)}" if duration_secs is not None else ""
    venues = "; ".join(_venue_split(role, pnl.get(role), split.get(role)) for role in pnl) or "unknown"
    nets = [(split.get(role) or {}).get("net") for role in pnl]
    total = _net(nets) if nets and all(not (split.get(r) or {}).get("error") for r in pnl) else None
    shown = _per_venue(positions, signed=True)
    text = (f"Cycle completed: {cycle_id} ({group}) ended {reason}{took}; PnL {venues}; "
            f"total {fmt_amount(total, signed=True)}; positions {shown}.")
    if worst_net and worst_net.get("worst_net") is not None:
        beyond = worst_net.get("beyond_step_secs")
        text += (f" Worst net {fmt_amount(worst_net['worst_net'])}"
                 + (f", {_duration(float(beyond))} beyond one step." if beyond is not None else "."))
    return text


def format_group_stopped(group: str, cycle_id: str, reason: str) -> str:
    return (f"Group {group} STOPPED: cycle {cycle_id} ended unresolved ({reason}); no cycle starts until an "
            f"operator checks `xtb status`, flattens the accounts and runs `xtb group resume {group}`.")


def format_group_resumed(group: str, cycle_id: str, positions: Mapping[str, Amount]) -> str:
    return (f"Group {group} resumed by an operator after cycle {cycle_id}; positions read "
            f"{_per_venue(positions, signed=True)}.")


def format_heartbeat_missing(bot: str, silent_secs: float, interval_secs: float) -> str:
    return (f"Heartbeat missing from {bot}: silent for {_duration(silent_secs)} "
            f"(expected every {_duration(interval_secs)}).")


def format_heartbeat_back(bot: str, silent_secs: float | None) -> str:
    gap = f" after {_duration(silent_secs)} of silence" if silent_secs is not None else ""
    return f"Heartbeat back from {bot}{gap}."


def format_worker_crash(worker: str, detail: str) -> str:
    return f"Worker {worker} crashed: {detail}."


def _net(values: Any) -> Decimal | None:
    total = Decimal(0)
    for value in values:
        if value is None:
            return None
        total += value if isinstance(value, Decimal) else Decimal(str(value))
    return total


def _duration(secs: float) -> str:
    if secs < 10:
        return f"{secs:.1f}s"
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    return f"{secs / 3600:.1f}h"
