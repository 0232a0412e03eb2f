"""The entry's balance on the ``orchestrator`` queue (decision: ``orchestrator.cycle.entry``): after
the Backpack entry and the Lighter1 hedge, top Lighter1 up once or bring Backpack down to it, then
publish the rest of the entry with Lighter2 sized from Lighter1's actual fill."""

from __future__ import annotations

from typing import Any

from orchestrator.cycle.commands import StepName
from xtb_tasks.worker.celery_app import app
from xtb_tasks.worker.cycle_task import CycleStepTask


@app.task(name="xtb.hedge.balance_entry", base=CycleStepTask, bind=True)
def balance_entry(self: CycleStepTask, *, cycle_id: str, balance_round: int = 0) -> dict[str, Any]:
    """One round of the entry's balance, once per round; once balanced, the rest of the entry."""
    return self.run_named(StepName.BALANCE_ENTRY, cycle_id, {"balance_round": balance_round})
