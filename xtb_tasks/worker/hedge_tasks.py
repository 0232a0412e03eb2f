"""Hedge-cycle tasks on the ``orchestrator`` queue: start, plan, watchdog (the loop: loop_tasks; exits: exit_tasks).

``plan`` loads the cycle's state, decides (``orchestrator.cycle.plan``), saves the decision, then
publishes its commands (``CeleryScheduler``). None of them calls a venue or waits on a
result; none holds venue keys.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from core.config import ConfigError, HedgeParams, Settings, load_settings
from core.cycle_record import Stage
from core.errors import EXIT_USAGE, XtbError
from core.policies import WATCHDOG_FIRST_SECS, WATCHDOG_INTERVAL_SECS
from core.redis_conn import redis_client
from monitoring.alert_texts import AlertKind
from monitoring.alerts import raise_alert
from orchestrator.cycle.commands import StepName
from orchestrator.cycle.state import CycleState
from orchestrator.recovery import sweep
from orchestrator.store import RedisCycleStore
from xtb_tasks.worker import canvas
from xtb_tasks.worker.celery_app import ORCHESTRATOR_QUEUE, app
from xtb_tasks.worker.cycle_task import CeleryScheduler, CycleStepTask

log = logging.getLogger(__name__)


class InvalidCycleRequest(XtbError, ValueError):
    """Bad arguments to ``start_cycle``; rejected before any venue call."""

    exit_code = EXIT_USAGE


class CycleAlreadyActive(XtbError, RuntimeError):
    """The group already has an active cycle (one active cycle per group)."""


class GroupStopped(XtbError, RuntimeError):
    """The group is stopped by an unresolved exit until an operator runs ``xtb group resume``."""

    reason = "group_stopped"


def settings() -> Settings:
    return getattr(app, "xtb_settings", None) or load_settings()


def validate_request(group: Any, overrides: dict[str, Any]) -> tuple[Settings, str, HedgeParams]:
    if not isinstance(group, str) or not group:
        raise InvalidCycleRequest("start_cycle needs 'group': the name of a configured hedge group")
    cfg = settings()
    try:
        grp = cfg.group(group)
        params = HedgeParams.from_mapping(overrides, base=grp.params)
    except ConfigError as exc:
        raise InvalidCycleRequest(exc.render()) from None
    return cfg, group, params


@app.task(name="xtb.hedge.start_cycle", bind=True)
def start_cycle(self: Task, group: str | None = None, cycle_index: int = 0, **overrides: Any) -> dict[str, Any]:
    """Validate, take the group lease, refuse a stopped group, write the cycle record and launch planning."""
    cfg, group, params = validate_request(group, overrides)
    cycle_id = f"{group}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    client = redis_client()
    state = CycleState(cycle_id=cycle_id, group=cfg.group(group), params=params, stage=Stage.PLANNING,
                       overrides=dict(overrides), cycle_index=cycle_index)
    refused = RedisCycleStore(client).create(state, trigger_task=self.request.id or "")
    if refused is not None and refused.stop is not None:
        stop = refused.stop
        log.error("group=%s start refused: stopped since cycle=%s (%s)", group, stop.cycle_id, stop.reason)
        raise_alert(client, AlertKind.GROUP_STOPPED, refused.text(), group=group, refused=True,
                    stopped_cycle=stop.cycle_id, trigger_task=self.request.id or "")
        raise GroupStopped(refused.text())
    if refused is not None:
        raise_alert(client, AlertKind.CYCLE_FINISHED, refused.text(), group=group, refused=True,
                    active_cycle=refused.holder)
        raise CycleAlreadyActive(refused.text())
    log.info("cycle=%s group=%s start (index %s, %s)", cycle_id, group, cycle_index, params.direction.value)
    canvas.snapshots(state.group, params, cycle_id).apply_async()
    return {"cycle_id": cycle_id, "group": group, "stage": Stage.PLANNING.value}


@app.task(name="xtb.hedge.plan", base=CycleStepTask, bind=True)
def plan(self: CycleStepTask, snapshots: list[dict[str, Any]], *, cycle_id: str) -> dict[str, Any]:
    """Size the cycle from fresh snapshots (``orchestrator.cycle.plan``), give every entry leg its
    client ids, launch the entry chain; or end the cycle not started, naming why."""
    return self.run_named(StepName.PLAN, cycle_id, {}, snapshots)


@app.task(name="xtb.hedge.watchdog", ignore_result=True)
def watchdog() -> list[dict[str, Any]]:
    """Resolve cycles whose next step is overdue (lost message, hung chord, dead worker)."""
    return sweep(redis_client(), CeleryScheduler())


def _watchdog_loop(stop: threading.Event) -> None:
    # The orchestrator worker sweeps by itself, so recovery does not depend on a beat process being up.
    while not stop.wait(WATCHDOG_INTERVAL_SECS):
        try:
            sweep(redis_client(), CeleryScheduler())
        except Exception:
            log.exception("watchdog sweep failed; retrying in %.0fs", WATCHDOG_INTERVAL_SECS)


_watchdog_stop = threading.Event()


@worker_ready.connect
def _recover_on_orchestrator_start(sender: Any = None, **_: Any) -> None:
    consumed = sender.app.amqp.queues.consume_from if sender is not None else {}
    if ORCHESTRATOR_QUEUE in consumed:
        watchdog.apply_async(countdown=WATCHDOG_FIRST_SECS)
        threading.Thread(target=_watchdog_loop, args=(_watchdog_stop,), name="xtb-watchdog", daemon=True).start()


@worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    _watchdog_stop.set()
