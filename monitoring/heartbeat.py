"""Heartbeats: what each venue worker (and the orchestrator) tells the world every interval.

A heartbeat is cheap by design: REST calls every few seconds per bot would eat the accounts' rate
budget and compete with orders in the trading process. It reads the facts the venue tasks already wrote into
``keys.account_state(account)`` and never calls a venue. It is published on
:data:`keys.HEARTBEAT_CHANNEL` (live, at-most-once: a missing beat is itself the signal) and kept
per bot in :data:`keys.HEARTBEAT_LAST` (so the watcher and the dashboard see the latest after a
restart). The payload is a superset of the original's ``/ingest`` payload, so it can also be
POSTed to an original ``server.js``.

A position older than ``stale_after_secs`` is reported as ``null`` (unknown is not zero), with the
last known value and its age alongside for the dashboard.

``python -m monitoring.heartbeat --account lighter1 --orchestrator`` runs a publisher without a
Celery worker (tests, or a host that wants beats for accounts it does not consume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, cast
from urllib.parse import quote

import redis

from core import keys
from core.budgets import budget_used
from core.config import Direction, Role, Settings
from core.policies import ORCHESTRATOR_QUEUE
from venues.lighter.budget import LighterBudget

log = logging.getLogger(__name__)

#: The role reported by the orchestrator's heartbeat (venue workers report BP / L1 / L2).
ORCHESTRATOR_ROLE = ORCHESTRATOR_QUEUE
ORCHESTRATOR_BOT = ORCHESTRATOR_QUEUE
DEFAULT_STALE_AFTER_SECS = 120.0


@dataclass(frozen=True)
class BotIdentity:
    """Who a heartbeat speaks for; static for the life of the publisher."""

    bot: str
    role: str
    group: str | None = None
    account: str | None = None
    venue: str | None = None
    symbol: str | None = None
    #: ``long``/``short`` per role as the original reported it.
    direction: str | None = None


@dataclass(frozen=True)
class IngestTarget:
    """An original ``server.js`` (or our dashboard) that also receives every heartbeat."""

    base_url: str
    token: str = field(default="", repr=False)


def role_direction(direction: Direction, role: Role) -> str:
    bp_long = direction is Direction.LONG_BACKPACK
    long = (not bp_long) if role is Role.L1 else bp_long
    return "long" if long else "short"


def account_identity(settings: Settings, account: str) -> BotIdentity:
    """The bot of one account: its group and role when it plays one, else a bare account bot."""
    config = settings.account(account)
    found = settings.role_of(account)
    if found is None:
        return BotIdentity(bot=account, role="account", account=account, venue=config.venue.value)
    group_name, role = found
    group = settings.group(group_name)
    return BotIdentity(
        bot=account, role=role.short, group=group_name, account=account, venue=config.venue.value,
        symbol=group.symbol_for(role), direction=role_direction(group.params.direction, role),
    )


def identities_for(settings: Settings | None, accounts: Iterable[str], *,
                   orchestrator: bool = False) -> list[BotIdentity]:
    """Bots for ``accounts`` (which need ``settings``) plus, optionally, the orchestrator."""
    names = list(accounts)
    if names and settings is None:
        raise ValueError("account heartbeats need the settings")
    bots = [account_identity(settings, name) for name in names] if settings is not None else []
    if orchestrator:
        bots.append(BotIdentity(bot=ORCHESTRATOR_BOT, role=ORCHESTRATOR_ROLE))
    return bots


def _number(raw: str | None) -> float | None:
    if raw in (None, "", "None", "null"):
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _decimal_text(raw: str | None) -> str | None:
    if raw in (None, "", "None", "null"):
        return None
    try:
        number = Decimal(raw)
    except InvalidOperation:
        return None
    return str(number) if number.is_finite() else None


def _position_fields(state: Mapping[str, str], now: float, stale_after: float) -> dict[str, Any]:
    last = _decimal_text(state.get("position"))
    read_at = _number(state.get("position_read_at"))
    age = None if read_at is None else max(0.0, now - read_at)
    fresh = last is not None and age is not None and age <= stale_after
    return {
        "position": last if fresh else None,
        "position_base": float(last) if fresh and last is not None else None,
        "position_read_at": read_at,
        "position_age_secs": None if age is None else round(age, 3),
        "position_stale": last is not None and not fresh,
        "last_known_position": last,
    }


def _stream_fields(state: Mapping[str, str], now: float) -> dict[str, Any]:
    heard = _number(state.get("stream_heard_at"))
    return {"stream_state": state.get("stream_state") or None,
            "stream_age_secs": None if heard is None else round(max(0.0, now - heard), 2),
            "stream_connects": _number(state.get("stream_connects"))}


def build_payload(identity: BotIdentity, state: Mapping[str, str], *, now: float, interval: float,
                  stale_after: float = DEFAULT_STALE_AFTER_SECS, extra: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """One heartbeat. Keys of the original payload keep their names and meaning."""
    balance = _decimal_text(state.get("balance"))
    payload: dict[str, Any] = {
        "bot": identity.bot, "name": identity.bot, "group": identity.group, "role": identity.role,
        "account": identity.account, "venue": identity.venue, "symbol": identity.symbol,
        "direction": identity.direction,
        **_position_fields(state, now, stale_after),
        "balance": balance, "balance_total": float(balance) if balance is not None else None,
        "balance_read_at": _number(state.get("balance_read_at")),
        "latency_ms": _number(state.get("latency_ms")),
        "cycle_id": state.get("cycle_id") or None, "stage": state.get("stage") or None,
        **_stream_fields(state, now),
        "max_position_base": None, "pnl_unrealized": None,
        "timestamp": round(now, 3), "telemetry_interval_secs": interval, "interval": interval,
        "host": socket.gethostname(), "pid": os.getpid(),
    }
    payload.update(extra or {})
    return payload


def record_heartbeat(r: redis.Redis, payload: Mapping[str, Any]) -> None:
    """Keep the latest beat per bot and announce it live, in one round trip."""
    text = json.dumps(payload, default=str, separators=(",", ":"))
    pipe = r.pipeline(transaction=False)
    pipe.hset(keys.HEARTBEAT_LAST, str(payload["bot"]), text)
    pipe.publish(keys.HEARTBEAT_CHANNEL, text)
    pipe.execute()


def last_seen(payload: Mapping[str, Any]) -> float | None:
    """When a bot was last heard of: the receiver's clock when known, else the sender's."""
    for name in ("received_at", "timestamp"):
        value = payload.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def beat_interval(payload: Mapping[str, Any], default: float = 10.0) -> float:
    """The bot's own interval (``telemetry_interval_secs``, then ``interval``), as server.js did."""
    for name in ("telemetry_interval_secs", "interval"):
        value = payload.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return default


def load_last_beats(r: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every bot's latest heartbeat; unreadable entries are skipped (never crash a viewer)."""
    beats: dict[str, dict[str, Any]] = {}
    for bot, raw in cast(dict[str, str], r.hgetall(keys.HEARTBEAT_LAST)).items():
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, TypeError):
            log.warning("unreadable heartbeat of %r in %s", bot, keys.HEARTBEAT_LAST)
            continue
        if isinstance(payload, dict):
            beats[bot] = payload
    return beats


class HeartbeatPublisher:
    """A daemon thread that publishes one beat per identity every ``interval`` seconds.

    Runs in a worker's main process (not in tasks, which may be busy for a minute); a Redis or
    ingest failure is logged and the next tick tries again.
    """

    def __init__(self, identities: Iterable[BotIdentity], *, interval: float,
                 redis_factory: Callable[[], redis.Redis], ingest: IngestTarget | None = None,
                 stale_after: float = DEFAULT_STALE_AFTER_SECS,
                 budgets: Mapping[str, LighterBudget] | None = None) -> None:
        self.identities = list(identities)
        #: account → its rate budget: each beat carries what the account's buckets hold this minute.
        self.budgets = dict(budgets or {})
        self.interval = interval
        self.stale_after = stale_after
        self.ingest = ingest
        self._redis_factory = redis_factory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: Any = None  # a requests.Session, made on the first ingest post
        self._failing = False

    @property
    def bots(self) -> list[str]:
        return [identity.bot for identity in self.identities]

    def start(self) -> HeartbeatPublisher:
        self._thread = threading.Thread(target=self._run, name="xtb-heartbeat", daemon=True)
        self._thread.start()
        log.info("heartbeats every %.1fs for %s", self.interval, ", ".join(self.bots) or "nobody")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._session is not None:
            self._session.close()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.beat_once()
            # Fixed-rate schedule: a slow tick does not push every later beat back.
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def beat_once(self) -> list[dict[str, Any]]:
        payloads: list[dict[str, Any]] = []
        try:
            r = self._redis_factory()
            now = time.time()
            for identity in self.identities:
                payload = self._payload(r, identity, now)
                record_heartbeat(r, payload)
                payloads.append(payload)
            if self._failing:
                log.info("heartbeats reach Redis again")
            self._failing = False
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("heartbeat not published (Redis): %s", exc)
            self._failing = True
        if self.ingest is not None:
            for payload in payloads:
                self._post_ingest(self.ingest, payload)
        return payloads

    def _payload(self, r: redis.Redis, identity: BotIdentity, now: float) -> dict[str, Any]:
        if identity.account is None:
            extra = {"active_cycles": r.scard(keys.CYCLES_ACTIVE)}
            return build_payload(identity, {}, now=now, interval=self.interval, extra=extra)
        state = cast(dict[str, str], r.hgetall(keys.account_state(identity.account)))
        budget = self.budgets.get(identity.account)
        used: dict[str, Any] | None = {"rate_budget": budget_used(budget)} if budget is not None else None
        return build_payload(identity, state, now=now, interval=self.interval, stale_after=self.stale_after,
                             extra=used)

    def _post_ingest(self, ingest: IngestTarget, payload: Mapping[str, Any]) -> None:
        # Imported here: a worker without an ingest target saves the library's ~6 MB (counted twice
        # under prefork, in the parent and the pool child).
        import requests

        if self._session is None:
            self._session = requests.Session()
        headers = {"x-auth-token": ingest.token} if ingest.token else {}
        url = f"{ingest.base_url.rstrip('/')}/ingest/{quote(str(payload['bot']), safe='')}"
        try:
            reply = self._session.post(url, json=payload, headers=headers, timeout=min(5.0, self.interval))
            if reply.status_code >= 400:
                log.debug("ingest %s answered HTTP %d", url, reply.status_code)
        except requests.RequestException as exc:
            log.debug("ingest %s failed: %s", url, type(exc).__name__)


def ingest_target(settings: Settings, env: Mapping[str, str] | None = None) -> IngestTarget | None:
    if not settings.telemetry.ingest_url:
        return None
    environ = os.environ if env is None else env
    return IngestTarget(settings.telemetry.ingest_url, environ.get(settings.telemetry.token_env, ""))


def main(argv: list[str] | None = None) -> None:
    """Run a publisher in the foreground until SIGTERM/SIGINT."""
    from core.config import load_settings
    from core.redis_conn import redis_client, resolve_redis_url

    parser = argparse.ArgumentParser(prog="python -m monitoring.heartbeat", description=main.__doc__)
    parser.add_argument("--config", default=None, help="config file (default: $XTB_CONFIG or ./xtb.toml)")
    parser.add_argument("--account", action="append", default=[], help="account to beat for (repeatable)")
    parser.add_argument("--orchestrator", action="store_true", help="also beat as the orchestrator")
    parser.add_argument("--interval", type=float, default=None, help="seconds (default: [telemetry])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    interval = args.interval or settings.telemetry.interval_secs
    url = resolve_redis_url(settings)
    publisher = HeartbeatPublisher(
        identities_for(settings, args.account, orchestrator=args.orchestrator), interval=interval,
        redis_factory=lambda: redis_client(url), ingest=ingest_target(settings),
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    publisher.start()
    done.wait()
    publisher.stop()


if __name__ == "__main__":
    main()
