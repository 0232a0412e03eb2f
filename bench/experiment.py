"""``python -m bench.run --experiment``: the proposed fixes, emulated inside the workers, for A/B figures.

Loaded into every worker through ``XTB_TASK_MODULES`` (never in production). It does not change
any file outside bench/; it patches the running worker the way the proposals in bench/README.md
would change the code:

1. ``xtb_tasks.config.load_settings()`` is cached per (process, path, mtime): what
   ``redis_conn.redis_client()`` needs to stop re-reading the TOML file on every call;
2. ``task_track_started = False``: no STARTED state write (GET + SETEX + PUBLISH) before each task;
3. ``task_send_sent_event = False``: no ``task-sent`` event per publish (worker task events stay on,
   because tests/conftest.start_worker passes ``-E``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xtb_tasks import config
from xtb_tasks.celery_app import app

_original_load_settings = config.load_settings
_cache: dict[tuple[int, str, float], Any] = {}


def _cached_load_settings(explicit: Any = None) -> Any:
    path = config.config_path(explicit)
    try:
        key = (os.getpid(), str(path), Path(path).stat().st_mtime)
    except OSError:
        return _original_load_settings(explicit)
    if key not in _cache:
        _cache[key] = _original_load_settings(explicit)
    return _cache[key]


config.load_settings = _cached_load_settings
app.conf.task_track_started = False
app.conf.task_send_sent_event = False
for _task in app.tasks.values():
    _task.track_started = False
