"""The Celery app of XTradingBot: ``celery -A xtb_tasks worker -Q <account>``.

``app`` is built lazily (PEP 562) so that the pure modules here (config, keys) can be imported
by tools that do not need Celery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from xtb_tasks.worker.celery_app import app

        return app
    raise AttributeError(name)
