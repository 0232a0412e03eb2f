"""The hedge cycle's decisions, pure: each step is a function from the cycle's typed state and what
was observed (readings, order reports, the time) to a :class:`~orchestrator.cycle.commands.Decision`.

Nothing in this package touches Redis, Celery, a venue or the wall clock; ``.importlinter`` holds
it to that. The adapters that load the state, run the commands and keep the time live in
``orchestrator.store`` (Redis) and ``xtb_tasks.worker`` (Celery).
"""
