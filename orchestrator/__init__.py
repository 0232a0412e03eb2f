"""The hedge cycle: planning, the Celery canvas, cycle state, monitor, emergency exit, recovery."""
