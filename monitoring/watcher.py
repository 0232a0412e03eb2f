"""The missing-heartbeat watcher: ``heartbeat_missing`` once when a bot goes silent,
``heartbeat_back`` once when it returns.

It runs inside the alert relay process (``xtb alerts relay``), which must always run anyway for
alerts to reach anyone. Silent means no beat for more than ``grace`` (2) of the bot's own
intervals, the same rule as the dashboard's online flag and the original ``server.js``.

State lives in Redis (set :data:`MISSING_SET`), so a restarted relay neither repeats nor forgets
an alert. The flag and the alert are written in one ``WATCH``/``MULTI`` transaction: a crash
cannot leave one without the other, and two relays running side by side raise each alert once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from redis.exceptions import WatchError

from core import keys
from monitoring.alert_texts import AlertKind, format_heartbeat_back, format_heartbeat_missing
from monitoring.alerts import queue_alert
from monitoring.heartbeat import beat_interval, last_seen, load_last_beats

log = logging.getLogger(__name__)

#: Bots currently reported missing (an alert was raised and no "back" yet).
MISSING_SET = keys.HEARTBEAT_MISSING
#: Per-bot time (epoch s) of the last beat before the silence, to say how long the gap was.
MISSING_SINCE = keys.HEARTBEAT_MISSING_SINCE
GRACE_INTERVALS = 2.0


class HeartbeatWatcher:
    """Call :meth:`check` periodically (or :meth:`run` in a thread)."""

    def __init__(self, r: redis.Redis, *, grace: float = GRACE_INTERVALS, check_every: float = 0.5) -> None:
        self.redis = r
        self.grace = grace
        self.check_every = check_every

    def check(self, now: float | None = None) -> list[str]:
        """One pass over every bot's latest beat; returns the ids of alerts raised."""
        now = time.time() if now is None else now
        beats = load_last_beats(self.redis)
        missing = self.redis.smembers(MISSING_SET)
        raised: list[str] = []
        for bot, payload in beats.items():
            seen = last_seen(payload)
            if seen is None:
                continue
            interval = beat_interval(payload)
            silent = now - seen
            if silent > self.grace * interval and bot not in missing:
                text = format_heartbeat_missing(bot, silent, interval)
                alert = self._flip(bot, True, AlertKind.HEARTBEAT_MISSING, text, seen, silent=round(silent, 3))
            elif silent <= self.grace * interval and bot in missing:
                before = self.redis.hget(MISSING_SINCE, bot)
                gap = seen - float(before) if before else None
                alert = self._flip(bot, False, AlertKind.HEARTBEAT_BACK, format_heartbeat_back(bot, gap), seen)
            else:
                continue
            if alert:
                raised.append(alert)
        # A bot pruned from the dashboard is forgotten, not "back".
        gone = [bot for bot in missing if bot not in beats]
        if gone:
            self.redis.srem(MISSING_SET, *gone)
            self.redis.hdel(MISSING_SINCE, *gone)
        return raised

    def _flip(self, bot: str, now_missing: bool, kind: AlertKind, text: str, seen: float,
              **fields: Any) -> str | None:
        """Set or clear the flag and raise the alert atomically; None if another watcher did."""
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(MISSING_SET)
                if bool(pipe.sismember(MISSING_SET, bot)) == now_missing:
                    return None
                pipe.multi()
                alert_id = queue_alert(pipe, kind, text, bot=bot, **fields)
                if now_missing:
                    pipe.sadd(MISSING_SET, bot)
                    pipe.hset(MISSING_SINCE, bot, f"{seen:.3f}")
                else:
                    pipe.srem(MISSING_SET, bot)
                    pipe.hdel(MISSING_SINCE, bot)
                pipe.execute()
            except WatchError:
                return None
        return alert_id

    def run(self, stop: threading.Event) -> None:
        log.info("watching heartbeats (missing after %.0f intervals)", self.grace)
        failing = False
        while not stop.is_set():
            try:
                self.check()
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("heartbeat watcher cannot reach Redis: %s", exc)
                failing = True
            stop.wait(self.check_every)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="heartbeat-watcher", daemon=True)
        thread.start()
        return thread
