"""A Celery app of its own for broker tests: the xtb app's broker connection on the broker that
``$PROBE_BROKER_URL`` names (``sentinel://`` included, with ``$PROBE_MASTER_NAME``), one queue,
one task that does nothing, no result backend and no xtb config (importing the xtb app would
start the embedded Redis and the heartbeats in this worker).
"""

from __future__ import annotations

import os

from celery import Celery

from xtb_tasks.worker.broker_connection import AMQP

URL = os.environ["PROBE_BROKER_URL"]
QUEUE = "probe"

app = Celery("xtb-broker-probe", broker=URL, backend=None, amqp=AMQP)
app.conf.update(
    task_default_queue=QUEUE, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_transport_options={"socket_timeout": 5, "master_name": os.environ.get("PROBE_MASTER_NAME", "")},
)


@app.task(name="xtb.test.held")
def held() -> None:
    """Sent with a countdown: the worker holds it unacknowledged until then."""
