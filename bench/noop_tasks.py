"""No-op tasks for the Celery baselines, loaded into workers with ``XTB_TASK_MODULES=bench.noop_tasks``."""

from __future__ import annotations

import time
from typing import Any

from xtb_tasks.worker.celery_app import app


@app.task(name="xtb.bench.noop")
def noop(*_: Any, **__: Any) -> float:
    """Return the wall-clock time at which the task ran (the end mark of a bare chain)."""
    return time.time()
