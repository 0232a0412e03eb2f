"""The lease timed by the worker's own clock (core.lease_clock): an order goes out only
while the lease it holds surely stands, whatever the worker's main process enforces."""

from __future__ import annotations

from core import lease_clock
from core.lease_clock import SEND_MARGIN_SECS


def test_a_fresh_lease_may_send_until_its_margin_and_not_after() -> None:
    lease_clock.hold("lighter2", 75, requested_at=1000.0)
    try:
        assert lease_clock.remaining("lighter2", now=1000.0) == 75
        assert lease_clock.may_send("lighter2", now=1000.0 + 75 - SEND_MARGIN_SECS)
        assert not lease_clock.may_send("lighter2", now=1000.0 + 75 - SEND_MARGIN_SECS + 0.01)
        assert not lease_clock.may_send("lighter2", now=1000.0 + 90)  # expired in Redis long ago
    finally:
        lease_clock.drop("lighter2")


def test_a_healthy_task_never_meets_the_margin_before_its_hard_time_limit() -> None:
    from xtb_tasks.worker.lease import LEASE_TTL, TASK_TIME_LIMIT

    assert LEASE_TTL - TASK_TIME_LIMIT >= SEND_MARGIN_SECS


def test_without_a_lease_in_this_process_nothing_is_timed() -> None:
    lease_clock.drop("backpack")
    assert lease_clock.remaining("backpack") is None
    assert lease_clock.may_send("backpack")


def test_a_released_lease_is_forgotten_and_accounts_are_apart() -> None:
    lease_clock.hold("lighter1", 75, requested_at=0.0)
    lease_clock.hold("lighter2", 75, requested_at=500.0)
    lease_clock.drop("lighter1")
    assert lease_clock.remaining("lighter1", now=100.0) is None
    assert lease_clock.remaining("lighter2", now=510.0) == 65
    lease_clock.drop("lighter2")
