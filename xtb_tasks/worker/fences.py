"""Refusing a stale task (``core.fencing``): logged, noted in its cycle's events, and
ended with Celery's ``Ignore``, so it stores no result, retries nothing and runs no chain link,
chord body or errback: a stale copy must not look like a failure that starts an exit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

from celery.exceptions import Ignore

from core.cycle_record import CycleRecord
from core.fencing import Fence
from core.redis_conn import redis_client

log = logging.getLogger(__name__)


def refuse_stale(task: str, cycle_id: str, account: str | None, why: str) -> NoReturn:
    log.warning("cycle=%s account=%s refused a stale %s: %s", cycle_id, account or "-", task, why)
    with contextlib.suppress(Exception):  # the refusal stands even if the note cannot be written
        CycleRecord(redis_client(), cycle_id).add_event(f"refused a stale {task}{f' on {account}' if account else ''}: {why}")
    raise Ignore()


def enforce_fence(fence: Mapping[str, Any] | Fence | None, fields: Mapping[str, Any], *, task: str,
                  cycle_id: str | None, account: str | None = None) -> None:
    """Refuse the task unless its cycle is still where ``fence`` says (no fence, no cycle: nothing to check)."""
    if fence is None or not cycle_id:
        return
    why = (fence if isinstance(fence, Fence) else Fence.from_json(fence)).refusal(fields)
    if why is not None:
        refuse_stale(task, cycle_id, account, why)
