"""A task that only holds the account lease, loaded into test workers via XTB_TASK_MODULES."""

from __future__ import annotations

import os
import time

from core.redis_conn import redis_client
from xtb_tasks import app
from xtb_tasks.worker.lease import AccountLeaseTask


@app.task(name="xtb.test.hold_lease", base=AccountLeaseTask, bind=True)
def hold_lease(self: AccountLeaseTask, *, account: str, index: int, hold_secs: float) -> dict[str, float]:
    start = time.time()
    time.sleep(hold_secs)
    end = time.time()
    redis_client().rpush(f"test:lease:{account}", f"{index}:{start}:{end}:{os.getpid()}")
    return {"start": start, "end": end}
