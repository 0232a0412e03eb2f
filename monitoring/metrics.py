"""``/metrics`` in the Prometheus text exposition format (version 0.0.4), written by prometheus_client
from a collector that reads Redis on each scrape: positions and heartbeat ages, queue lengths,
cycles by outcome, alert delivery."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import cast

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core import keys
from core.config import Settings
from core.policies import ORCHESTRATOR_QUEUE
from monitoring.heartbeat import load_last_beats
from monitoring.overview import bot_statuses, bot_view, group_members, group_names, load_cycles, net_delta
from monitoring.relay import DEAD_LETTER, pending_delivery

# generate_latest writes the text format 0.0.4; CONTENT_TYPE_LATEST names 1.0.0, which only
# differs for UTF-8 metric names and which older scrapers refuse.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# kombu's Redis transport keeps priority levels in lists named "<queue>\x06\x16<priority>".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


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
        for record in load_cycles(r, cast(list[str], r.lrange(keys.cycle_history(group), 0, -1))):
            counts[(group, str(record.get("outcome") or "active"))] += 1
    return counts


class RedisCollector(Collector):
    """Every metric, read from Redis when scraped; nothing is kept between scrapes."""

    def __init__(self, r: redis.Redis, settings: Settings | None, now: float | None = None) -> None:
        self.r = r
        self.settings = settings
        self.now = now

    def collect(self) -> Iterator[Metric]:
        r, settings = self.r, self.settings
        now = time.time() if self.now is None else self.now
        beats = load_last_beats(r)
        views = [bot_view(s) for s in bot_statuses(beats, now)]
        yield _gauge("xtb_heartbeat_age_seconds", "Seconds since the bot's latest heartbeat.", ["bot", "role"],
                     [((v["name"], v["role"] or ""), round(v["age_ms"] / 1000, 3)) for v in views])
        yield _gauge("xtb_bot_online", "1 while the latest heartbeat is younger than two intervals.", ["bot"],
                     [((v["name"],), int(v["online"])) for v in views])
        yield _gauge("xtb_account_position",
                     "Signed position (base units) from the account's latest heartbeat; absent when unknown.",
                     ["account", "group", "role"],
                     [((v["account"], v["group"] or "", v["role"] or ""), Decimal(v["position"]))
                      for v in views if v["account"] and v["position"] is not None])
        groups = group_names(settings, views)
        deltas = []
        for group in groups:
            net = net_delta(group_members(group, settings, views)["members"])
            if net is not None:
                deltas.append(((group,), net))
        yield _gauge("xtb_group_net_delta", "bp + l1 + l2 of a hedge group; absent when a leg is unknown.",
                     ["group"], deltas)
        yield _gauge("xtb_queue_length", "Tasks waiting in an account's (or the orchestrator's) queue.", ["queue"],
                     [((q,), n) for q, n in queue_lengths(r, queue_names(settings, beats)).items()])
        yield _gauge("xtb_cycles", "Cycles in the kept history by group and outcome (active: unfinished).",
                     ["group", "outcome"], sorted(cycle_outcomes(r, groups).items()))
        yield _gauge("xtb_cycles_active", "Cycles not yet finished.", [], [((), r.scard(keys.CYCLES_ACTIVE))])
        delivery = pending_delivery(r)
        yield _gauge("xtb_alerts_pending_delivery",
                     "Alerts not yet delivered to Telegram: read by a relay but unacknowledged, or not yet read.",
                     ["state"], [(("pending",), delivery["pending"]), (("undelivered",), delivery["undelivered"])])
        yield _gauge("xtb_alerts_dead_letter", "Alerts Telegram refused as malformed.", [],
                     [((), r.xlen(DEAD_LETTER))])


def _gauge(name: str, documentation: str, labels: list[str],
           samples: Iterable[tuple[tuple[str, ...], float | int | Decimal]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), float(value))
    return family


def render_metrics(r: redis.Redis, settings: Settings | None, now: float | None = None) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(r, settings, now))
    return generate_latest(registry).decode("utf-8")
