"""The Redis rate budget (venues/budget.py) and Lighter's policy on it (venues/lighter/budget.py),
against the session's real redis-server."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers.support import free_port
from venues.base import ReasonCode
from venues.budget import BudgetBucket, BudgetExhausted, RateBudget, RequestPriority
from venues.lighter.budget import LighterBudget
from venues.lighter.limits import Tier

ORDER, READ = RequestPriority.ORDER, RequestPriority.READ


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def fill(budget: RateBudget, bucket: BudgetBucket, priority: RequestPriority, weight: int = 1) -> int:
    granted = 0
    while budget.try_acquire([(bucket, weight)], priority) == 0:
        granted += 1
        assert granted <= bucket.limit, "granted past the venue's limit"
    return granted


def test_a_bucket_grants_its_headroom_then_waits_for_the_oldest_entry(client: redis.Redis) -> None:
    budget = RateBudget(client)
    bucket = BudgetBucket("test:headroom", 100)
    assert budget.try_acquire([(bucket, 1)], ORDER) == 0
    first = time.monotonic()
    time.sleep(0.2)
    assert fill(budget, bucket, ORDER) == 94  # floor(100 * 0.95) = 95 in all
    wait = budget.try_acquire([(bucket, 1)], ORDER)
    expected = 60.0 - (time.monotonic() - first)
    assert expected - 0.05 < wait <= expected + 0.05
    assert budget.used(bucket) == 95
    assert budget.snapshot([bucket]) == {"test:headroom": {"used": 95, "limit": 100}}


def test_a_heavy_charge_waits_until_enough_weight_has_left(client: redis.Redis) -> None:
    budget = RateBudget(client, window_secs=10.0, headroom=1.0)
    bucket = BudgetBucket("test:weighted", 9)
    stamps = []
    for _ in range(3):
        assert budget.try_acquire([(bucket, 3)], ORDER) == 0
        stamps.append(time.monotonic())
        time.sleep(0.2)
    # 9 of 9 used: 4 more units need the first two charges (3 + 3) gone, so the second one's expiry.
    wait = budget.try_acquire([(bucket, 4)], ORDER)
    expected = stamps[1] + 10.0 - time.monotonic()
    assert expected - 0.05 < wait <= expected + 0.05
    assert budget.used(bucket) == 9


def test_reads_stop_at_their_share_and_orders_still_go(client: redis.Redis) -> None:
    budget = RateBudget(client)
    bucket = BudgetBucket("test:share", 100)
    assert budget.cap(bucket, READ) == 80 and budget.cap(bucket, ORDER) == 95
    assert fill(budget, bucket, READ) == 80
    assert budget.try_acquire([(bucket, 1)], READ) > 0
    assert fill(budget, bucket, ORDER) == 15
    assert budget.used(bucket) == 95


def test_a_charge_to_several_buckets_is_all_or_nothing(client: redis.Redis) -> None:
    budget = RateBudget(client)
    small, large = BudgetBucket("test:small", 10), BudgetBucket("test:large", 1000)
    assert fill(budget, small, ORDER) == 9
    assert budget.try_acquire([(large, 5), (small, 1)], ORDER) > 0
    assert budget.snapshot([small, large]) == {"test:small": {"used": 9, "limit": 10},
                                               "test:large": {"used": 0, "limit": 1000}}
    other = BudgetBucket("test:other", 10)
    assert budget.try_acquire([(large, 5), (other, 2)], ORDER) == 0
    assert budget.used(large) == 5 and budget.used(other) == 2
    # One bucket named twice in a charge is checked as the sum: 9 + 2 does not fit 9.
    assert fill(budget, other, ORDER, weight=7) == 1
    assert budget.try_acquire([(other, 1), (other, 1)], ORDER) > 0 and budget.used(other) == 9


def _race(url: str, ready: Any, start: Any, attempts: int) -> int:
    budget = RateBudget(redis.Redis.from_url(url))
    bucket = BudgetBucket("test:race", 100)
    budget.used(bucket)  # connected and the scripts loaded before the start
    ready.put(None)
    start.wait(30)
    return sum(budget.try_acquire([(bucket, 1)], ORDER) == 0 for _ in range(attempts))


def test_two_processes_racing_on_one_bucket_never_pass_its_limit(redis_url: str, client: redis.Redis) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        ready, start = manager.Queue(), manager.Event()
        results = [pool.apply_async(_race, (redis_url, ready, start, 150)) for _ in range(2)]
        for _ in results:
            ready.get(timeout=30)
        start.set()
        granted = [r.get(timeout=30) for r in results]
    assert sum(granted) == 95, granted
    assert all(g > 0 for g in granted), f"one process ran alone, nothing raced: {granted}"
    assert RateBudget(client).used(BudgetBucket("test:race", 100)) == 95


def test_acquire_waits_for_the_window_then_charges(client: redis.Redis) -> None:
    budget = RateBudget(client, window_secs=1.0)
    bucket = BudgetBucket("test:acquire", 5)
    assert fill(budget, bucket, ORDER) == 4
    waited = asyncio.run(budget.acquire([(bucket, 1)], ORDER, max_wait=3.0))
    assert 0.8 < waited < 1.5
    assert budget.used(bucket) == 1


def test_acquire_raises_when_the_wait_passes_max_wait(client: redis.Redis) -> None:
    budget = RateBudget(client, window_secs=1.0)
    bucket = BudgetBucket("test:exhausted", 5)
    fill(budget, bucket, ORDER)
    started = time.monotonic()
    with pytest.raises(BudgetExhausted) as caught:
        asyncio.run(budget.acquire([(bucket, 1)], ORDER, max_wait=0.3))
    assert time.monotonic() - started < 0.3  # it knows at once that no wait under 0.3 s can fit
    assert caught.value.reason is ReasonCode.RATE_LIMITED and caught.value.bucket_key == "test:exhausted"
    assert "test:exhausted" in str(caught.value) and caught.value.wait > 0.3
    assert budget.used(bucket) == 4


def test_an_unreachable_redis_fails_open_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    budget = RateBudget(dead)
    with caplog.at_level(logging.WARNING, logger="venues.budget"):
        assert budget.try_acquire([(BudgetBucket("test:dead", 10), 1)], ORDER) == 0
        assert asyncio.run(budget.acquire([(BudgetBucket("test:dead", 10), 1)], READ, max_wait=0)) < 0.5
    warnings = [r for r in caplog.records if r.name == "venues.budget"]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    assert "test:dead" in warnings[0].getMessage()


def test_a_weight_past_the_cap_is_refused_as_a_mistake(client: redis.Redis) -> None:
    budget = RateBudget(client)
    with pytest.raises(ValueError, match="weight 81"):
        budget.try_acquire([(BudgetBucket("test:mistake", 100), 81)], READ)


def test_lighter_standard_counts_requests_in_the_l1_or_the_ip_bucket(client: redis.Redis) -> None:
    rate = RateBudget(client)
    lighter = LighterBudget(rate, Tier.STANDARD, "0xabc", "203.0.113.7")
    l1, ip = lighter.buckets()
    assert (l1.key, l1.limit, ip.key, ip.limit) == ("lighter:l1:0xabc", 60, "lighter:ip:203.0.113.7", 60)

    async def run() -> None:
        await lighter.spend("accountOrders", authenticated=True, priority=READ, max_wait=0)
        await lighter.spend("/api/v1/orderBooks", authenticated=False, priority=READ, max_wait=0)
        await lighter.spend("sendTx", authenticated=True, priority=ORDER, max_wait=0)
        await lighter.spend("sendTxBatch", authenticated=False, priority=ORDER, max_wait=0, tx_types=(14, 14))
        await lighter.spend("trades", authenticated=False, priority=READ, max_wait=0)

    asyncio.run(run())
    assert rate.snapshot(lighter.buckets()) == {"lighter:l1:0xabc": {"used": 3, "limit": 60},
                                                "lighter:ip:203.0.113.7": {"used": 2, "limit": 60}}
    # trades weighs 600: 24,000 / 600 = 40 a minute even on Standard, counted beside the 60.
    assert rate.used(BudgetBucket("lighter:ip:203.0.113.7:trades", 40)) == 1
    assert rate.used(BudgetBucket("lighter:type:0xabc:14", 40)) == 2
    assert not client.exists("xtb:budget:lighter:send:0xabc")


def test_lighter_premium_charges_weights_and_its_own_send_bucket(client: redis.Redis) -> None:
    rate = RateBudget(client)
    lighter = LighterBudget(rate, Tier.PREMIUM, "0xdef", "203.0.113.8")

    async def run() -> None:
        await lighter.spend("accountOrders", authenticated=True, priority=READ, max_wait=0)  # default weight 300
        await lighter.spend("nextNonce", authenticated=True, priority=READ, max_wait=0)  # 6
        await lighter.spend("sendTx", authenticated=True, priority=ORDER, max_wait=0)
        await lighter.spend("/api/v1/sendTxBatch", authenticated=True, priority=ORDER, max_wait=0)
        await lighter.spend("trades", authenticated=False, priority=READ, max_wait=0)  # the IP is Standard

    asyncio.run(run())
    assert rate.snapshot(lighter.buckets()) == {"lighter:l1:0xdef": {"used": 306, "limit": 24_000},
                                                "lighter:send:0xdef": {"used": 2, "limit": 4000},
                                                "lighter:ip:203.0.113.8": {"used": 1, "limit": 60}}


def test_the_simulator_counts_with_the_same_venue_facts() -> None:
    from simulators import lighter_rules
    from venues.lighter import limits

    assert lighter_rules.Tier is limits.Tier and lighter_rules.endpoint_weight is limits.endpoint_weight
    assert (lighter_rules.STANDARD_REQUESTS, lighter_rules.PREMIUM_WEIGHT, lighter_rules.PREMIUM_SEND_TX) == (60, 24_000, 4000)
    assert limits.endpoint_weight("/api/v1/trades") == 600 and limits.standard_endpoint_limit("trades") == 40
    assert limits.standard_endpoint_limit("accountOrders") is None
