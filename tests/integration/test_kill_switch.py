"""The kill switch's Redis key against a real Redis: no TTL, read back as written, cleared only for
the stop the operator looked at."""

from __future__ import annotations

import redis

from core import keys
from orchestrator.kill_switch import clear_stop, group_stop, stop_group


def test_stop_is_kept_until_cleared_and_only_for_its_cycle(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert group_stop(client, "main") is None
    first = stop_group(client, "main", "main-1", "cancelled")
    assert client.ttl(keys.group_stopped("main")) == -1
    assert group_stop(client, "main") == first
    assert group_stop(client, "other") is None

    # Another unresolved cycle stopped the group after the operator looked: that stop stays.
    stop_group(client, "main", "main-2", "timeout")
    assert not clear_stop(client, first)
    assert group_stop(client, "main") is not None and group_stop(client, "main").cycle_id == "main-2"  # type: ignore[union-attr]

    second = group_stop(client, "main")
    assert second is not None and clear_stop(client, second)
    assert group_stop(client, "main") is None
    assert clear_stop(client, second), "clearing a stop that is already gone is not an error"
