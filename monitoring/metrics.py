"""``/metrics`` in the Prometheus text exposition format (version 0.0.4), computed from Redis on
each scrape: positions and heartbeat ages, queue lengths, cycles by outcome, alert delivery."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import Decimal

import redis

from monitoring.heartbeat import load_last_beats
from monitoring.overview import bot_statuses, bot_view, group_members, group_names, load_cycles, net_delta
from monitoring.relay import DEAD_LETTER, pending_delivery
from xtb_tasks.core import keys
from xtb_tasks.core.config import Settings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ORCHESTRATOR_QUEUE = "orchestrator"
# kombu's Redis transport keeps priority levels in lists named "<queue>\x06\x16<priority>".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Mapping[str, object], float | int | Decimal]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: float | int | Decimal) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def queue_names(settings: Settings | None, beats: Mapping[str, Mapping[str, object]]) -> list[str]:
    names = set(settings.accounts) if settings is not None else set()
    names.update(str(p["account"]) for p in beats.values() if p.get("account"))
    return [*sorted(names), ORCHESTRATOR_QUEUE]


def queue_lengths(r: redis.Redis, queues: list[str]) -> dict[str, int]:
    pipe = r.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        for step in _PRIORITY_STEPS:
            pipe.llen(f"{queue}{_PRIORITY_SEP}{step}")
    counts = pipe.execute()
    width = 1 + len(_PRIORITY_STEPS)
    return {q: sum(counts[i * width:(i + 1) * width]) for i, q in enumerate(queues)}


def cycle_outcomes(r: redis.Redis, groups: list[str]) -> Counter[tuple[str, str]]:
    """(group, outcome) → cycles in the kept history; unfinished ones count as ``active``."""
    counts: Counter[tuple[str, str]] = Counter()
    for group in groups:
        for record in load_cycles(r, r.lrange(keys.cycle_history(group), 0, -1)):
            counts[(group, str(record.get("outcome") or "active"))] += 1
    return counts


def render_metrics(r: redis.Redis, settings: Settings | None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    beats = load_last_beats(r)
    views = [bot_view(s) for s in bot_statuses(beats, now)]
    out = _Writer()
    out.family("xtb_heartbeat_age_seconds", "gauge", "Seconds since the bot's latest heartbeat.",
               [({"bot": v["name"], "role": v["role"] or ""}, round(v["age_ms"] / 1000, 3)) for v in views])
    out.family("xtb_bot_online", "gauge", "1 while the latest heartbeat is younger than two intervals.",
               [({"bot": v["name"]}, int(v["online"])) for v in views])
    positions = [v for v in views if v["account"] and v["position"] is not None]
    out.family("xtb_account_position", "gauge",
               "Signed position (base units) from the account's latest heartbeat; absent when unknown.",
               [({"account": v["account"], "group": v["group"] or "", "role": v["role"] or ""},
                 Decimal(v["position"])) for v in positions])
    groups = group_names(settings, views)
    deltas = []
    for group in groups:
        net = net_delta(group_members(group, settings, views)["members"])
        if net is not None:
            deltas.append(({"group": group}, net))
    out.family("xtb_group_net_delta", "gauge", "bp + l1 + l2 of a hedge group; absent when a leg is unknown.",
               deltas)
    out.family("xtb_queue_length", "gauge", "Tasks waiting in an account's (or the orchestrator's) queue.",
               [({"queue": q}, n) for q, n in queue_lengths(r, queue_names(settings, beats)).items()])
    out.family("xtb_cycles", "gauge", "Cycles in the kept history by group and outcome (active: unfinished).",
               [({"group": g, "outcome": o}, n) for (g, o), n in sorted(cycle_outcomes(r, groups).items())])
    out.family("xtb_cycles_active", "gauge", "Cycles not yet finished.", [({}, r.scard(keys.CYCLES_ACTIVE))])
    delivery = pending_delivery(r)
    out.family("xtb_alerts_pending_delivery", "gauge",
               "Alerts not yet delivered to Telegram: read by a relay but unacknowledged, or not yet read.",
               [({"state": "pending"}, delivery["pending"]), ({"state": "undelivered"}, delivery["undelivered"])])
    out.family("xtb_alerts_dead_letter", "gauge", "Alerts Telegram refused as malformed.",
               [({}, r.xlen(DEAD_LETTER))])
    return out.text()

