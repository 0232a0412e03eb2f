"""One at a time per account, even with two worker processes consuming the same queue."""

from __future__ import annotations

import itertools
from pathlib import Path

import redis

from tests.helpers.support import wait_until, write_config

FAKE_URLS = {"backpack": "http://127.0.0.1:9", "backpack_ws": "ws://127.0.0.1:9/ws",
             "lighter": "http://127.0.0.1:9", "lighter_ws": "ws://127.0.0.1:9/stream"}


def test_two_workers_on_one_account_queue_never_overlap(tmp_path: Path, redis_url: str, workers, monkeypatch) -> None:
    from xtb_tasks.worker.celery_app import create_app

    config = write_config(tmp_path / "xtb.toml", FAKE_URLS)
    env = {"XTB_TASK_MODULES": "tests.helpers.lease_tasks"}
    first = workers(["lighter1"], name="l1a", config_path=config, redis_url=redis_url, extra_env=env)
    second = workers(["lighter1"], name="l1b", config_path=config, redis_url=redis_url, extra_env=env)

    monkeypatch.setenv("XTB_CONFIG", str(config))
    app = create_app()
    for i in range(10):
        app.send_task("xtb.test.hold_lease", kwargs={"account": "lighter1", "index": i, "hold_secs": 0.2},
                      queue="lighter1")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_until(lambda: client.llen("test:lease:lighter1") == 10, timeout=90, what="ten lease-holding tasks")

    runs = sorted((float(s), float(e), int(pid)) for _, s, e, pid in
                  (entry.split(":") for entry in client.lrange("test:lease:lighter1", 0, -1)))
    for (_, end, _), (start, _, _) in itertools.pairwise(runs):
        assert start >= end, f"two tasks held lighter1 at once: {runs}"
    # Both processes did work, so the lease (not a single consumer) is what serialised them.
    assert len({pid for *_, pid in runs}) == 2, f"only one worker process ran tasks: {runs}"
    assert first.alive() and second.alive()
    assert not client.exists("xtb:lock:account:lighter1")
