"""One writer at a time per account: a Redis lease held for the whole of every venue task that acts.

A dedicated queue with ``-c 1`` serialises an account only while exactly one worker consumes
it (``-c 1`` bounds each worker, not the queue). A blue/green deploy or a duplicate unit adds a second consumer, so
every venue task that can change the account (orders, flatten, cancel) also holds
``xtb:lock:account:<name>`` (a snapshot that raises the Lighter leverage holds it around that tx,
:func:`account_lease`). Tasks that only read (``exclusive=False``) do not: a read changes
nothing the lease protects, and a lease around it would order nothing, since whatever is decided
from the reading is decided after the lease is released. When the lease is taken the task does
not block its slot for long: it waits briefly, then retries with a short countdown. The lease
TTL is above the task's hard time limit, so it cannot expire while the task runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

from celery import Task
from redis.exceptions import LockError

from core import keys, lease_clock
from core.policies import LEASE_BUSY
from core.redis_conn import redis_client

log = logging.getLogger(__name__)

#: Hard time limit of every venue task; the lease outlives it, the visibility timeout outlives both.
TASK_TIME_LIMIT = 60
TASK_SOFT_TIME_LIMIT = 50
LEASE_TTL = 75
#: How long a task waits for a busy lease before giving its slot back with a retry.
LEASE_WAIT_SECS = 2.0


_HOST = socket.gethostname()
_BREAK_IF_VALUE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_token() -> str:
    """``host:pid:nonce``: lets a waiter on the same host see that the holder process is gone."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex}"


def holder_is_dead(token: str) -> bool:
    """Whether the lease token names a process of this host that is gone (another host: never known)."""
    host, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False  # another host: only the TTL can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def break_dead_lease(client: Any, key: str) -> bool:
    """Release a lease whose holder died (SIGKILL, OOM) instead of waiting out its TTL."""
    token = client.get(key)
    if token and holder_is_dead(token) and client.eval(_BREAK_IF_VALUE, 1, key, token):
        log.warning("lease %s held by dead process %s broken", key, token.rsplit(":", 1)[0])
        return True
    return False


class AccountLeaseTask(Task):
    """Base class of every task that acts on one account (``account`` keyword argument)."""

    abstract = True
    time_limit = TASK_TIME_LIMIT
    soft_time_limit = TASK_SOFT_TIME_LIMIT
    acks_late = True
    reject_on_worker_lost = True
    lease_ttl: ClassVar[int] = LEASE_TTL
    #: False for read-only tasks: they run without the lease (two Redis round trips fewer).
    exclusive: ClassVar[bool] = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        account = kwargs.get("account")
        if not account:
            raise ValueError(f"{self.name} needs the 'account' keyword argument")
        if not self.exclusive:
            return super().__call__(*args, **kwargs)
        with account_lease(self, account):
            return super().__call__(*args, **kwargs)


@contextlib.contextmanager
def account_lease(task: Task, account: str) -> Iterator[None]:
    """Hold ``account``'s lease; a busy one makes ``task`` retry shortly (a read-only task that
    may have to act takes it only then)."""
    client = redis_client()
    key = keys.account_lock(account)
    ttl = getattr(task, "lease_ttl", LEASE_TTL)
    lock = client.lock(key, timeout=ttl, blocking=True, blocking_timeout=LEASE_WAIT_SECS, thread_local=False)
    requested_at = time.monotonic()
    if not lock.acquire(token=lease_token()) and not (
            break_dead_lease(client, key) and lock.acquire(blocking=False, token=lease_token())):
        log.info("account=%s task=%s lease busy; retrying", account, task.name)
        raise task.retry(countdown=LEASE_BUSY.delay(1), max_retries=LEASE_BUSY.retries)
    # Timed here as well: an order goes out only while the lease surely stands (lease_clock).
    lease_clock.hold(account, ttl, requested_at)
    try:
        yield
    finally:
        lease_clock.drop(account)
        try:
            lock.release()
        except LockError:
            # Expired or taken over: the task outran the TTL, which the time limits prevent.
            log.error("account=%s task=%s lease was lost before release", account, task.name)
