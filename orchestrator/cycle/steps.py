"""Every step of the cycle, by name: its opening and its decision (each phase's module declares its
own). The Celery tasks (``xtb_tasks.worker``) and an in-process runner look steps up here, so both
run the same steps the same way.
"""

from __future__ import annotations

from orchestrator.cycle import entry, exit, loop, plan, report
from orchestrator.cycle.commands import StepName
from orchestrator.cycle.runner import StepSpec

STEPS: dict[StepName, StepSpec] = {**plan.STEPS, **entry.STEPS, **loop.STEPS, **exit.STEPS, **report.STEPS}
