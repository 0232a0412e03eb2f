"""Every step of the cycle, by name: its opening and its decision (each phase's module declares its
own). The Celery tasks (``xtb_tasks.worker``) and an in-process runner look steps up here, so both
run the same steps the same way.
"""

from __future__ import annotations

from orchestrator.cycle import entry, loop
from orchestrator.cycle.commands import StepName
from orchestrator.cycle.runner import StepSpec

STEPS: dict[StepName, StepSpec] = {**entry.STEPS, **loop.STEPS}
