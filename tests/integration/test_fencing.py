"""The control loop's token on a real Redis: of many copies of one step, exactly one moves it on."""

from __future__ import annotations

import threading

import pytest
import redis

from core.cycle_record import create_cycle
from orchestrator.store import RedisCycleStore


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_the_token_moves_one_step_per_decision_and_reads_back_as_an_integer(client: redis.Redis) -> None:
    record = create_cycle(client, "c-fence", "main")
    assert RedisCycleStore(client).advance_step("c-fence", 0)
    assert not RedisCycleStore(client).advance_step("c-fence", 0)  # a copy of the step just decided
    assert RedisCycleStore(client).advance_step("c-fence", 1)
    assert not RedisCycleStore(client).advance_step("c-fence", 5)  # a token from the future is not current either
    assert record.get("step_seq") == 2


def test_of_concurrent_copies_of_one_step_exactly_one_goes_on(client: redis.Redis, redis_url: str) -> None:
    create_cycle(client, "c-race", "main")
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def decide() -> None:
        own = redis.Redis.from_url(redis_url, decode_responses=True)  # one connection per copy, as in workers
        barrier.wait()
        wins.append(RedisCycleStore(own).advance_step("c-race", 0))

    threads = [threading.Thread(target=decide) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]
