"""Celery wiring: the app, the per-account venue tasks, the hedge steps and the worker hooks."""
