"""The Telegram relay: delivers the alert outbox at least once, in order, and never twice.

* One relay delivers at a time: it holds the leader lock :data:`LEADER_KEY` (renewed by a
  keeper thread; it expires ``lock_ttl_secs`` after the holder dies). A second relay waits as a
  hot standby. One deliverer is what keeps Telegram's order equal to the outbox order.
* Entries are read in consumer group :data:`keys.ALERTS_GROUP` and acknowledged only after
  Telegram answered ``ok``. Entries a dead relay had read but not acknowledged are taken over
  with ``XAUTOCLAIM`` once idle for ``min_idle_secs``, and delivered before any newer entry.
* The alert id goes into :data:`keys.ALERTS_DELIVERED` in the same ``MULTI`` as the ack; an id
  already there is acknowledged without sending. The remaining window (Telegram accepted, the
  relay died before the ``MULTI``) is the at-least-once part and cannot be closed from our side.
* 429 waits ``retry_after``; 5xx, timeouts and wrong credentials back off exponentially and retry
  the same entry forever (later alerts wait behind it). A 400 is retried a few times and then
  moved to :data:`DEAD_LETTER` so one malformed alert cannot block the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import redis
from redis.exceptions import LockError, ResponseError

from core import keys
from core.policies import ALERT_DELIVERY
from monitoring.alerts import Alert, alert_id_ms
from monitoring.telegram import SendResult, SendStatus

log = logging.getLogger(__name__)

#: Leader lock of the relay (one deliverer keeps Telegram's order).
LEADER_KEY = keys.ALERTS_RELAY_LEADER
#: Consumer that parks the entries of a relay that stopped cleanly (see ``_release_pending``).
RELEASED_CONSUMER = "released"
#: Consumers with nothing pending and idle this long are removed from the group (ms).
STALE_CONSUMER_MS = 3600 * 1000
#: Stream of alerts Telegram refused as malformed (HTTP 400), kept for inspection.
DEAD_LETTER = keys.ALERTS_DEAD

Entry = tuple[str, dict[str, str] | None]


class Sender(Protocol):
    @property
    def safe_url(self) -> str: ...

    def send(self, text: str) -> SendResult: ...


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class RelayOptions:
    """Tuning of :class:`AlertRelay`; defaults suit production, tests shrink the times."""

    consumer: str = field(default_factory=default_consumer_name)
    #: Pending entries of another consumer idle this long belong to a dead relay.
    min_idle_secs: float = 30.0
    lock_ttl_secs: float = 15.0
    block_secs: float = 1.0
    batch: int = 20
    backoff_base_secs: float = ALERT_DELIVERY.delay_secs
    backoff_max_secs: float = ALERT_DELIVERY.max_delay_secs
    bad_request_attempts: int = 3
    #: Delivered ids older than this are forgotten (the outbox is trimmed long before).
    delivered_retention_secs: float = 7 * 86400.0


def ensure_group(r: redis.Redis) -> None:
    """Create the consumer group (and the stream) if missing; start at the beginning."""
    try:
        r.xgroup_create(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class _LeaderKeeper(threading.Thread):
    """Renews the leader lock every third of its TTL; flags loss so delivery stops."""

    def __init__(self, lock: redis.lock.Lock, ttl: float) -> None:
        super().__init__(name="relay-leader", daemon=True)
        self.lock = lock
        self.ttl = ttl
        self.lost = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.ttl / 3):
            try:
                self.lock.reacquire()
            except (LockError, redis.RedisError) as exc:
                log.warning("relay lost the leader lock: %s", exc)
                self.lost.set()
                return


class AlertRelay:
    """Runs until ``stop`` is set: wait for leadership, take over pending entries, deliver."""

    def __init__(self, r: redis.Redis, sender: Sender, options: RelayOptions | None = None) -> None:
        self.redis = r
        self.sender = sender
        self.options = options or RelayOptions()
        self.delivered_count = 0
        self._keeper: _LeaderKeeper | None = None
        self._last_prune = 0.0

    # -- leadership -----------------------------------------------------------------------

    def _acquire(self, stop: threading.Event) -> redis.lock.Lock | None:
        lock = self.redis.lock(LEADER_KEY, timeout=self.options.lock_ttl_secs, thread_local=False)
        logged = False
        while not stop.is_set():
            try:
                if lock.acquire(blocking=False):
                    return lock
            except redis.RedisError as exc:
                log.warning("relay cannot reach Redis: %s", exc)
            if not logged:
                log.info("another relay is delivering; %s waits as standby", self.options.consumer)
                logged = True
            stop.wait(min(1.0, self.options.lock_ttl_secs / 3))
        return None

    def _leading(self, stop: threading.Event) -> bool:
        return not stop.is_set() and self._keeper is not None and not self._keeper.lost.is_set()

    # -- main loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        ensure_group(self.redis)
        log.info("alert relay %s sending to %s", self.options.consumer, self.sender.safe_url)
        while not stop.is_set():
            lock = self._acquire(stop)
            if lock is None:
                return
            self._keeper = _LeaderKeeper(lock, self.options.lock_ttl_secs)
            self._keeper.start()
            log.info("relay %s is the leader", self.options.consumer)
            try:
                self._lead(stop)
            except redis.RedisError as exc:
                log.warning("relay Redis error, starting over: %s", exc)
                stop.wait(1.0)
            finally:
                if stop.is_set():
                    self._release_pending()
                self._keeper.done.set()
                self._keeper.join()
                self._keeper = None
                with contextlib.suppress(LockError, redis.RedisError):
                    lock.release()

    def _lead(self, stop: threading.Event) -> None:
        ensure_group(self.redis)
        self._drain_pending(stop)
        while self._leading(stop):
            self._maybe_prune()
            entries = self._read(">", block_ms=int(self.options.block_secs * 1000))
            if not self._deliver_all(entries, stop):
                return

    def _read(self, start: str, block_ms: int | None = None) -> list[Entry]:
        reply: Any = self.redis.xreadgroup(keys.ALERTS_GROUP, self.options.consumer, {keys.ALERTS_OUTBOX: start},
                                           count=self.options.batch, block=block_ms)
        if not reply:
            return []
        # redis-py 8 answers RESP2 as [[stream, entries]] and RESP3 as {stream: [entries]}.
        streams = list(reply.items()) if isinstance(reply, dict) else reply
        out: list[Entry] = []
        for _, entries in streams:
            # A RESP3 reply nests the entries one level deeper.
            rows = entries[0] if entries and isinstance(entries[0], list) else entries
            out.extend((str(entry_id), dict(data) if data else None) for entry_id, data in rows)
        return out

    def _drain_pending(self, stop: threading.Event) -> None:
        """Deliver every entry a previous relay read but did not acknowledge, oldest first."""
        while self._leading(stop):
            self._claim_idle()
            own = self._read("0")
            while own:
                if not self._deliver_all(own, stop):
                    return
                own = self._read("0")
            pending = self.redis.xpending(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP)
            if not pending or not pending.get("pending"):
                return
            # Another consumer still holds younger entries; newer alerts must wait behind them.
            log.info("waiting for %d pending alert(s) of another relay to become claimable",
                     pending["pending"])
            stop.wait(min(0.5, self.options.min_idle_secs / 4))

    def _release_pending(self) -> None:
        """On a clean stop, make our unacknowledged entries claimable at once (not after min idle)."""
        try:
            pending = self.redis.xpending_range(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, "-", "+", 1000,
                                                consumername=self.options.consumer)
            ids: list[Any] = [p["message_id"] for p in pending]
            if ids:
                # Parked under a marker consumer with a huge idle time: the next leader's XAUTOCLAIM
                # takes them in its first pass, and in order.
                self.redis.xclaim(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, RELEASED_CONSUMER, 0, ids,
                                  idle=10**10, justid=True)
                log.info("released %d undelivered alert(s) for the next relay", len(ids))
        except redis.RedisError as exc:
            log.warning("could not release pending alerts (they are taken over after min idle): %s", exc)

    def _claim_idle(self) -> None:
        start = "0-0"
        min_idle_ms = int(self.options.min_idle_secs * 1000)
        while True:
            # Not JUSTID: redis-py then drops the cursor from the reply.
            reply = self.redis.xautoclaim(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, self.options.consumer,
                                          min_idle_ms, start_id=start, count=100)
            start, claimed = str(reply[0]), reply[1]
            if claimed:
                log.info("took over %d pending alert(s) from a dead relay", len(claimed))
            if start == "0-0":
                return

    def _deliver_all(self, entries: Sequence[Entry], stop: threading.Event) -> bool:
        return all(self._deliver(entry_id, data, stop) for entry_id, data in entries)

    # -- one entry ------------------------------------------------------------------------

    def _deliver(self, entry_id: str, data: dict[str, str] | None, stop: threading.Event) -> bool:
        """True when the entry is settled (sent, known sent, or dead-lettered)."""
        if not data:
            log.warning("alert entry %s was trimmed from the outbox before delivery", entry_id)
            self.redis.xack(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, entry_id)
            return True
        alert = Alert.from_entry(entry_id, data)
        if self.redis.sismember(keys.ALERTS_DELIVERED, alert.alert_id):
            log.info("alert %s already delivered; acknowledging without sending", alert.alert_id)
            self.redis.xack(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, entry_id)
            return True
        attempt = 0
        bad_requests = 0
        while self._leading(stop):
            attempt += 1
            result = self.sender.send(alert.text or f"({alert.kind})")
            if result.status is SendStatus.OK:
                self._settle(entry_id, alert)
                return True
            if result.status is SendStatus.BAD_REQUEST:
                bad_requests += 1
                if bad_requests >= self.options.bad_request_attempts:
                    self._dead_letter(entry_id, alert, result.description)
                    return True
            delay = self._delay(attempt, result)
            log.warning("alert %s attempt %d: %s (%s); retrying in %.1fs", alert.alert_id, attempt,
                        result.status.value, result.description, delay)
            stop.wait(delay)
        return False

    def _delay(self, attempt: int, result: SendResult) -> float:
        if result.status is SendStatus.RATE_LIMITED and result.retry_after is not None:
            return max(0.0, result.retry_after)
        policy = replace(ALERT_DELIVERY, delay_secs=self.options.backoff_base_secs,
                         max_delay_secs=self.options.backoff_max_secs)
        return policy.delay(attempt)

    def _settle(self, entry_id: str, alert: Alert) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(keys.ALERTS_DELIVERED, alert.alert_id)
        pipe.xack(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, entry_id)
        pipe.execute()
        self.delivered_count += 1
        log.info("alert %s delivered (%s)", alert.alert_id, alert.kind)

    def _dead_letter(self, entry_id: str, alert: Alert, reason: str) -> None:
        log.error("alert %s refused by Telegram (%s); moved to %s", alert.alert_id, reason, DEAD_LETTER)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(DEAD_LETTER, {"id": alert.alert_id, "kind": alert.kind, "text": alert.text,
                                "error": reason, "entry_id": entry_id}, maxlen=1000, approximate=True)
        pipe.xack(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, entry_id)
        pipe.execute()

    def _maybe_prune(self) -> None:
        now = time.time()
        if now - self._last_prune < 3600:
            return
        self._last_prune = now
        removed = prune_delivered(self.redis, now - self.options.delivered_retention_secs)
        if removed:
            log.info("forgot %d delivered alert id(s) older than the retention", removed)
        # Every relay process is a new consumer; drop the old ones once they hold nothing.
        for consumer in self.redis.xinfo_consumers(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP):
            name = str(consumer.get("name"))
            if (name != self.options.consumer and not consumer.get("pending")
                    and int(consumer.get("idle", 0)) > STALE_CONSUMER_MS):
                self.redis.xgroup_delconsumer(keys.ALERTS_OUTBOX, keys.ALERTS_GROUP, name)


def prune_delivered(r: redis.Redis, before_epoch: float) -> int:
    """Remove delivered ids raised before ``before_epoch``; returns how many."""
    cutoff_ms = int(before_epoch * 1000)
    old = [aid for aid in r.sscan_iter(keys.ALERTS_DELIVERED, count=1000)
           if (ms := alert_id_ms(aid)) is not None and ms < cutoff_ms]
    for start in range(0, len(old), 1000):
        r.srem(keys.ALERTS_DELIVERED, *old[start:start + 1000])
    return len(old)


def pending_delivery(r: redis.Redis) -> dict[str, int]:
    """``{"pending": read but unacknowledged, "undelivered": not yet read}`` for metrics."""
    try:
        groups: list[dict[str, Any]] = r.xinfo_groups(keys.ALERTS_OUTBOX)
    except ResponseError:
        return {"pending": 0, "undelivered": 0}
    for group in groups:
        if group.get("name") == keys.ALERTS_GROUP:
            lag = group.get("lag")
            if lag is None:
                # Redis answers nil when it cannot tell cheaply (after deletions); count instead.
                last = group.get("last-delivered-id", "0-0")
                lag = len(r.xrange(keys.ALERTS_OUTBOX, min=f"({last}", count=100_000) or [])
            return {"pending": int(group.get("pending", 0)), "undelivered": int(lag)}
    return {"pending": 0, "undelivered": r.xlen(keys.ALERTS_OUTBOX)}
