"""Waiting for a task result from a command-line process (never from inside a task).

Polls the result backend instead of ``AsyncResult.get()``: the pub/sub subscription that
``get()`` opens is torn down in ``AsyncResult.__del__`` at interpreter exit and prints a traceback.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from core.errors import XtbError


class TaskFailed(XtbError, RuntimeError):
    """The task ended in FAILURE; the message is the task's own error."""


def wait_result(app: Celery, task_id: str, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = app.backend.get_task_meta(task_id)
        state = meta.get("status")
        if state == "SUCCESS":
            return meta.get("result")
        if state in ("FAILURE", "REVOKED"):
            result = meta.get("result")
            message = result.get("exc_message") if isinstance(result, dict) else result
            if isinstance(message, list | tuple):
                message = " ".join(str(m) for m in message)
            raise TaskFailed(str(message))
        time.sleep(interval)
    raise TimeoutError(f"task {task_id} did not finish within {timeout:.0f}s")
