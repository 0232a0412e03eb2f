"""The start of a cycle against a real Redis (``RedisCycleStore.create``): the record, the active
set and the group's lease in one transaction, so starts racing from several processes leave one
cycle; a lease whose cycle ended is free; a stopped group starts nothing."""

from __future__ import annotations

import threading

import msgspec
import redis

from core import keys
from core.cycle_fields import Stage
from orchestrator.cycle.start import Refusal, StartRefused
from orchestrator.kill_switch import stop_group
from orchestrator.store import RedisCycleStore
from tests.helpers.cycle_states import cycle_state

STARTERS = 6
ROUNDS = 20


def _start(redis_url: str, cycle_id: str) -> StartRefused | None:
    # Each starter its own connection, as each orchestrator process has.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    state = msgspec.structs.replace(cycle_state(stage=Stage.PLANNING), cycle_id=cycle_id)
    return RedisCycleStore(client).create(state, trigger_task="t")


def _racing(redis_url: str, cycle_id: str, barrier: threading.Barrier, answers: dict[str, StartRefused | None]) -> None:
    barrier.wait()
    answers[cycle_id] = _start(redis_url, cycle_id)


def test_starts_racing_from_several_processes_leave_one_cycle(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    group = cycle_state().group.name
    for round_ in range(ROUNDS):
        barrier = threading.Barrier(STARTERS)
        answers: dict[str, StartRefused | None] = {}
        threads = [threading.Thread(target=_racing, args=(redis_url, f"r{round_}-s{n}", barrier, answers))
                   for n in range(STARTERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        started = [cid for cid, refused in answers.items() if refused is None]
        assert len(started) == 1, answers
        assert client.get(keys.group_lock(group)) == started[0]
        assert client.smembers(keys.CYCLES_ACTIVE) == {started[0]}
        assert all(r.reason is Refusal.ACTIVE and r.holder == started[0] for r in answers.values() if r), answers
        assert sorted(c for c in answers if client.exists(keys.cycle(c))) == started, "a refused start wrote a record"
        # The cycle ends (the store's finish leaves the active set; the lease is left behind, as a
        # cycle lost without releasing leaves it): the next round's start takes it over.
        client.srem(keys.CYCLES_ACTIVE, started[0])


def test_a_stopped_group_starts_nothing_and_the_refusal_names_the_stop(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    group = cycle_state().group.name
    stop_group(client, group, "unresolved-1", "timeout")
    refused = _start(redis_url, "after-stop")
    assert refused is not None and refused.reason is Refusal.STOPPED
    assert "stopped since cycle unresolved-1" in refused.text() and f"xtb group resume {group}" in refused.text()
    assert not client.exists(keys.cycle("after-stop")) and client.get(keys.group_lock(group)) is None
    client.delete(keys.group_stopped(group))
    assert _start(redis_url, "after-resume") is None
