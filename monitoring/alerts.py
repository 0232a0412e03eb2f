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
from typing import Any, cast

import redis

from core import keys
from monitoring.alert_texts import AlertKind

log = logging.getLogger(__name__)

#: Approximate cap of the outbox stream; delivered entries older than this many are trimmed.
OUTBOX_MAXLEN = 10_000
#: Telegram rejects longer messages; the tail is cut with an ellipsis.
MAX_TEXT_CHARS = 4000


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
