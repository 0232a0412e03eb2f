"""How long the account lease this process holds has left, by this process's own clock.

The lease's TTL runs in Redis (``xtb_tasks.worker.lease``). A worker cut from Redis cannot see it
run out, and the task hard time limit that stops a task before the TTL is enforced by the worker's
main process, which a broker connection hanging on a dead network can hold up past the TTL
(``tests/system/test_partitions.py`` cuts a worker in the middle of a task). So each lease is also timed here, from just
before it was requested: an order is sent only while the lease has :data:`SEND_MARGIN_SECS` left,
enough for the request to reach the venue while the lease still stands.
"""

from __future__ import annotations

import time

#: The least lease time an order may be sent with (a venue request's timeout is below it). With the
#: TTL at 75 s this allows sends for 60 s, the task hard time limit, so a healthy worker never meets it.
SEND_MARGIN_SECS = 15.0

_taken: dict[str, tuple[float, float]] = {}


def hold(account: str, ttl: float, requested_at: float) -> None:
    """Note that this process holds ``account``'s lease of ``ttl`` seconds, requested at ``requested_at``
    (``time.monotonic()``, read before the request: the lease can only be younger)."""
    _taken[account] = (requested_at, ttl)


def drop(account: str) -> None:
    _taken.pop(account, None)


def remaining(account: str, now: float | None = None) -> float | None:
    """Seconds the lease on ``account`` has left at the latest; None when this process holds none
    (an operator's in-process order: nothing to time)."""
    held = _taken.get(account)
    if held is None:
        return None
    requested_at, ttl = held
    return requested_at + ttl - (time.monotonic() if now is None else now)


def may_send(account: str, now: float | None = None) -> bool:
    """Whether an order may go out on ``account``'s lease now."""
    left = remaining(account, now)
    return left is None or left >= SEND_MARGIN_SECS
