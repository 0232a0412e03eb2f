"""Celery signal hooks: heartbeats from every worker's main process, crash alerts.

``install_heartbeat_hooks(app)`` is called once from ``xtb_tasks`` when the app is built. When a
worker is ready, the accounts it serves are derived from the queues it consumes (an account's
queue is named after it; queue ``orchestrator`` gives the orchestrator beat), and a
:class:`~monitoring.heartbeat.HeartbeatPublisher` daemon thread starts in the main process. Pool
children are forked before it starts and never inherit it. Beats stop at ``worker_shutdown``.

When a pool process dies under a task (``WorkerLostError``), a ``worker_crash`` alert is raised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, cast

from billiard.exceptions import WorkerLostError
from celery import Celery, signals

from core.config import ConfigError, Settings, TelemetryConfig
from core.policies import ORCHESTRATOR_QUEUE
from monitoring.alert_texts import AlertKind, format_worker_crash
from monitoring.alerts import raise_alert
from monitoring.heartbeat import HeartbeatPublisher, identities_for, ingest_target

log = logging.getLogger(__name__)



def consumed_queues(consumer: Any) -> list[str]:
    """Queue names a worker consumes (``-Q``), from the app's routing or the live consumer."""
    names: list[str] = []
    try:
        names = list(consumer.app.amqp.queues.consume_from or {})
    except AttributeError:
        names = []
    if not names:
        task_consumer = getattr(consumer, "task_consumer", None)
        names = [queue.name for queue in getattr(task_consumer, "queues", None) or []]
    return sorted(set(names))


def split_queues(settings: Settings | None, queues: Iterable[str]) -> tuple[list[str], bool]:
    """(accounts among ``queues``, whether the orchestrator queue is consumed)."""
    known = settings.accounts if settings is not None else {}
    names = list(queues)
    return [q for q in names if q in known], ORCHESTRATOR_QUEUE in names


def _settings_of(app: Celery) -> Settings | None:
    settings = getattr(app, "xtb_settings", None)
    if settings is not None:
        return cast(Settings, settings)
    from core.config import load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        log.warning("heartbeats without account details: %s", exc.render())
        return None


class _HeartbeatHooks:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self.publisher: HeartbeatPublisher | None = None
        self.hostname = ""
        self._lock = threading.Lock()

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        if sender is None or getattr(sender, "app", None) is not self.app:
            return
        self.hostname = getattr(sender, "hostname", "") or ""
        settings = _settings_of(self.app)
        # Without the config the accounts are unknown: only the orchestrator beats, and the
        # missing account beats raise the alarm.
        accounts, orchestrator = split_queues(settings, consumed_queues(sender))
        if not accounts and not orchestrator:
            log.info("worker %s consumes no account or orchestrator queue; no heartbeats", self.hostname)
            return
        from core.redis_conn import redis_client, resolve_redis_url

        telemetry = settings.telemetry if settings is not None else TelemetryConfig()
        url = resolve_redis_url(settings)
        publisher = HeartbeatPublisher(
            identities_for(settings, accounts, orchestrator=orchestrator),
            interval=telemetry.interval_secs, redis_factory=lambda: redis_client(url),
            ingest=ingest_target(settings) if settings is not None else None,
            budgets=_budgets(settings, accounts),
        )
        with self._lock:
            if self.publisher is not None:
                self.publisher.stop()
            self.publisher = publisher.start()

    def on_shutdown(self, sender: Any = None, **_: Any) -> None:
        with self._lock:
            if self.publisher is not None:
                self.publisher.stop()
                self.publisher = None

    def on_task_failure(self, sender: Any = None, task_id: str | None = None, exception: Any = None,
                        **_: Any) -> None:
        # Only the main process sees WorkerLostError: the pool child is already gone. Signals are
        # process-global, so a hook answers only for tasks of its own app.
        if not isinstance(exception, WorkerLostError) or getattr(sender, "app", self.app) is not self.app:
            return
        name = getattr(sender, "name", "?")
        detail = f"pool process died running {name} [{task_id}] ({exception})"
        try:
            from core.redis_conn import redis_client, resolve_redis_url

            r = redis_client(resolve_redis_url(_settings_of(self.app)))
            raise_alert(r, AlertKind.WORKER_CRASH, format_worker_crash(self.hostname or "?", detail),
                        worker=self.hostname, task=name, task_id=task_id)
        except Exception:
            log.exception("could not raise the worker_crash alert")


def _budgets(settings: Settings | None, accounts: list[str]) -> dict[str, Any]:
    from core.budgets import lighter_budget

    if settings is None:
        return {}
    found = {name: lighter_budget(settings.account(name), settings) for name in accounts}
    return {name: budget for name, budget in found.items() if budget is not None}


def install_heartbeat_hooks(app: Celery) -> None:
    """Connect the heartbeat and crash hooks for ``app`` (idempotent per app)."""
    hooks = _HeartbeatHooks(app)
    uid = f"xtb-monitoring-{id(app)}"
    # weak=False: the bound methods would otherwise be collected with ``hooks``.
    signals.worker_ready.connect(hooks.on_ready, weak=False, dispatch_uid=f"{uid}-ready")
    signals.worker_shutdown.connect(hooks.on_shutdown, weak=False, dispatch_uid=f"{uid}-shutdown")
    signals.task_failure.connect(hooks.on_task_failure, weak=False, dispatch_uid=f"{uid}-failure")
    app.xtb_heartbeat_hooks = hooks
