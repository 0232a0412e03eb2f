"""The Celery app: queues and routes from the account config, and the Redis broker and result settings.

``celery -A xtb_tasks worker -Q lighter1`` runs one account's worker; ``-Q orchestrator`` runs
the control steps. Venue tasks are routed to the queue named by their ``account`` argument.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from core.config import ConfigError, Settings, config_path, load_settings
from core.cycle_record import set_step_grace
from core.policies import ORCHESTRATOR_QUEUE, WATCHDOG_INTERVAL_SECS
from core.redis_conn import RedisUnavailable, configured_url, embedded_url, resolve_redis_url
from core.redis_target import (
    RedisAccess,
    celery_redis_settings,
    credentials,
    parse_sentinel_url,
    sentinel_options,
)
from xtb_tasks.worker.lease import TASK_SOFT_TIME_LIMIT, TASK_TIME_LIMIT

log = logging.getLogger(__name__)

#: Seconds of the broker's unacked-message sweep, as kombu 5.7 runs it by default (interval x throttle).
DEFAULT_RESTORE_SWEEP_SECS = 100
#: Celery's AMQP wiring with the broker connection that outlives a lost Redis.
BROKER_AMQP = "xtb_tasks.worker.broker_connection:AMQP"
TASK_MODULES = ["xtb_tasks.worker.venue_tasks", "xtb_tasks.worker.hedge_tasks", "xtb_tasks.worker.exit_tasks",
                "xtb_tasks.worker.exit_step_tasks", "xtb_tasks.worker.report_tasks", "xtb_tasks.worker.entry_tasks",
                "xtb_tasks.worker.loop_tasks"]


def load_app_settings() -> Settings | None:
    """The config for the app; None when no config file exists (only the orchestrator queue)."""
    path = config_path()
    if not path.exists():
        log.warning("no config file at %s: only the orchestrator queue is known", path)
        return None
    return load_settings(path)


def route_task(name: str, args: Any, kwargs: dict[str, Any], options: Any, task: Any = None, **kw: Any) -> Any:
    if name.startswith("xtb.venue.") and kwargs and "account" in kwargs:
        return {"queue": kwargs["account"]}
    if name.startswith("xtb.hedge."):
        return {"queue": ORCHESTRATOR_QUEUE}
    return None


def transport_options(visibility_timeout: int) -> dict[str, Any]:
    """The broker's visibility settings; a short timeout (tests) gets a sweep to match, or the
    redelivery would still wait for kombu's ~100 s sweep."""
    options: dict[str, Any] = {"visibility_timeout": visibility_timeout}
    if visibility_timeout < 4 * DEFAULT_RESTORE_SWEEP_SECS:
        options.update(unacked_restore_interval=max(1, visibility_timeout // 5), unacked_restore_throttle=1)
    return options


def redis_settings(settings: Settings | None, redis_url: str, visibility: int) -> dict[str, Any]:
    """Broker, result backend and RedBeat on the target ``redis_url``; with Sentinels, each asks
    them for the current primary (``master_name``) whenever it connects."""
    access = settings.redis_access if settings else RedisAccess()
    conf = celery_redis_settings(redis_url, access)
    sentinel = conf.pop("sentinel", None)
    broker_options = {**transport_options(visibility), "socket_timeout": 10, "health_check_interval": 25}
    backend_options: dict[str, Any] = {"visibility_timeout": visibility}
    target = parse_sentinel_url(redis_url)
    if sentinel is not None and target is not None:
        from xtb_tasks.worker.sentinel_wiring import BACKEND, use_primary_connections

        use_primary_connections()
        broker_options.update(sentinel)
        backend_options.update(sentinel)
        conf["result_backend"] = f"{BACKEND}+{conf['result_backend']}"
        # RedBeat asks the Sentinels itself when its URL starts with redis-sentinel and it has the list.
        conf.update(redbeat_redis_url="redis-sentinel://", redbeat_redis_options={
            "sentinels": list(target.sentinels), "service_name": target.master_name, "db": target.db,
            "socket_timeout": 10, "sentinel_kwargs": sentinel_options(access), **credentials(access)})
    else:
        conf["redbeat_redis_url"] = conf["broker_url"]
    conf.update(broker_transport_options=broker_options, result_backend_transport_options=backend_options)
    return {k: v for k, v in conf.items() if v is not None}


def celery_settings(settings: Settings | None, redis_url: str) -> dict[str, Any]:
    accounts = list(settings.accounts) if settings else []
    visibility = settings.visibility_timeout_secs if settings else 3600
    return {
        **redis_settings(settings, redis_url, visibility),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_extended": True,
        "result_expires": 7 * 86400,
        # Each queue on its own direct exchange, as Celery creates a queue it was not told about: a
        # process without this config (or with another one) then publishes to the same exchange and
        # binding as the worker. With the default exchange (task_default_queue) a publish through
        # queues[name].exchange found no binding and kombu dropped the message without a word.
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name)
                        for name in [*accounts, ORCHESTRATOR_QUEUE]],
        "task_default_queue": ORCHESTRATOR_QUEUE,
        "task_routes": (route_task,),
        "task_create_missing_queues": True,
        # Late ack only on tasks that declare themselves idempotent (venue tasks, hedge steps).
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        # Task events cost ~100 Redis commands per cycle: off unless someone watches. Flower turns
        # them on in the workers while it runs (its --enable_events default).
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        # Results nobody reads are not stored (hedge steps, chain links), but a failure still is:
        # on_step_failed reads the failed step's error.
        "task_store_errors_even_if_ignored": True,
        # No STARTED write before every task: nothing reads it, and it is one more round trip on the hand-off.
        "task_track_started": False,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_SOFT_TIME_LIMIT,
        "visibility_timeout": visibility,
        "redis_socket_timeout": 10,
        "redis_retry_on_timeout": True,
        "broker_connection_retry_on_startup": True,
        # A lost broker connection re-queues what it held (broker_connection.py): a late-ack task
        # still running then must stop, or its re-queued copy would run beside it.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": 5.0,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "redbeat_key_prefix": "xtb:redbeat",
        "redbeat_lock_timeout": 30,
        "beat_max_loop_interval": 5,
    }




def beat_schedule(settings: Settings | None) -> dict[str, Any]:
    """The watchdog sweep plus one entry per ``[schedules.<name>]``; stale triggers expire."""
    schedule: dict[str, Any] = {
        "xtb-watchdog": {"task": "xtb.hedge.watchdog", "schedule": WATCHDOG_INTERVAL_SECS,
                         "options": {"queue": ORCHESTRATOR_QUEUE, "expires": WATCHDOG_INTERVAL_SECS}},
    }
    for entry in (settings.schedules.values() if settings else []):
        schedule[f"xtb-cycle-{entry.name}"] = {
            "task": "xtb.hedge.start_cycle", "schedule": entry.every_secs, "kwargs": {"group": entry.group},
            "options": {"queue": ORCHESTRATOR_QUEUE, "expires": entry.expires_secs or min(entry.every_secs, 300.0)},
        }
    return schedule


def _require_embedded_redis(**_: Any) -> None:
    try:
        resolve_redis_url(None)
    except RedisUnavailable as exc:
        raise SystemExit(f"error: redis: {exc}") from None


def create_app() -> Celery:
    settings = load_app_settings()
    # Every broker connection of the app survives losing Redis with messages unacknowledged
    # (xtb_tasks.worker.broker_connection states why kombu's own does not).
    celery_app = Celery("xtb_tasks", amqp=BROKER_AMQP)
    url = configured_url(settings)
    celery_app.conf.update(celery_settings(settings, url or embedded_url()))
    celery_app.conf.beat_schedule = beat_schedule(settings)
    if url is None:
        # A worker with nothing configured runs on this checkout's embedded Redis, which it never
        # starts (`xtb redis` or `xtb demo` does): with none answering it stops with one line.
        from celery.signals import worker_init

        worker_init.connect(_require_embedded_redis, weak=False)
    extra = [m for m in os.environ.get("XTB_TASK_MODULES", "").split(",") if m]
    celery_app.conf.include = [*TASK_MODULES, *extra]
    celery_app.xtb_settings = settings
    if settings is not None:
        # Every process that writes a step deadline or sweeps for overdue ones imports this app.
        set_step_grace(settings.step_grace_secs)
    _install_hooks(celery_app)
    return celery_app


def _install_hooks(celery_app: Celery) -> None:
    from xtb_tasks.worker.connectors import install_prewarm_hooks

    install_prewarm_hooks()
    try:
        from xtb_tasks.worker.monitoring_hooks import install_heartbeat_hooks
    except ImportError:
        return
    install_heartbeat_hooks(celery_app)


try:
    app = create_app()
except ConfigError as exc:
    # Celery prints a traceback for import errors; make the first line say what to fix.
    raise SystemExit(f"error: {exc.render()}") from None
