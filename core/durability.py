"""Writes that must survive a failover wait until a replica holds them (``WAIT 1 <ms>``).

Redis replicates asynchronously: a primary that dies a moment after an intent was written can be
replaced by a replica that never received it, and the order the intent announced would then be
unknown to every later step (sent twice, or never unwound). So, when the primary has replicas, the
writes below are followed by ``WAIT 1 replica_wait_ms`` after a marker write that carries that
connection's replication offset past everything written before it (the replication stream is one
ordered log, so a replica that acknowledged the marker holds them all), and a token written with
them is read back (``durable_execute``).
A Sentinel promotes the replica with the most data, so one acknowledgement is enough.

What a timeout means is the caller's ``required``:

- required (an intent before an order that opens or adds exposure: the plan's intents, an armed
  hedge, an order's SENDING intent): :class:`ReplicaTimeout` is raised before the venue is touched;
  the venue task retries it like a venue that did not answer, so the order goes out only once a
  replica holds its intent, or once the primary no longer counts the replica as connected.
- not required (exit intents, step claims, the kill switch): logged as a warning and the step goes
  on. These reduce exposure or stop trading; holding them back would keep a position open longer
  than the risk they cover (an exit re-reads the venues at every step, and its orders are reduce-only).

What was written before a durable write is covered by it (one ordered stream): the group lock, the
cycle record and the client id counters are written before the plan, so the plan's acknowledgement
holds them too, and an id counter is never behind an intent a replica holds.

With no replica connected (a single Redis, or the survivor of a failover until the old primary
rejoins) nothing waits: there is nothing to wait for, and the single server's AOF is what persists.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from core.errors import XtbError

log = logging.getLogger(__name__)

MARK_KEY = "xtb:replication:mark"
#: Seconds a token key lives: long enough to be read back right after its write.
TOKEN_TTL_SECS = 60

class ReplicaTimeout(XtbError, RuntimeError):
    """A write that must survive a failover was not acknowledged by a replica in time."""

    reason = "replica_timeout"
    label = "redis"


def connected_replicas(client: redis.Redis) -> int:
    """The primary's connected replicas (INFO replication), asked afresh every time: a count kept
    from before a replica (re)joined would skip the wait while that replica does not yet hold the
    write, and a failover in that moment would promote it without the intent."""
    return int(client.info("replication").get("connected_slaves", 0))


def durable_execute(pipe: Any, client: redis.Redis, what: str, *, required: bool,
                    timeout_ms: int | None = None) -> list[Any]:
    """Execute ``pipe`` (a pipeline of ``client``, transactional or not) so that its writes survive a
    failover (see the module doc); its results, without the token write this adds.

    A token key is written last in the pipeline; once a replica acknowledged the writes, the token
    is read back. A token that is gone means the pipeline ran on a primary that died before a
    replica received it (the client then retried the next command on the promoted replica): the
    writes are lost, which is treated as a timeout."""
    token = f"{MARK_KEY}:{os.getpid()}:{time.time_ns()}"
    pipe.set(token, 1, ex=TOKEN_TTL_SECS)
    # The replica count travels with the writes (no round trip of its own), read where they ran.
    pipe.info("replication")
    *results, _token_set, replication = pipe.execute()
    sentinel = isinstance(client.connection_pool, SentinelConnectionPool)
    replicas = int(replication.get("connected_slaves", 0))
    if replicas == 0 and not sentinel:
        return results
    timeout = timeout_ms if timeout_ms is not None else _default_timeout_ms()
    check = client.pipeline(transaction=False)
    check.set(MARK_KEY, token)  # moves this connection's replication offset past the token
    if replicas:
        check.execute_command("WAIT", 1, timeout)
    check.exists(token)
    outcome = check.execute()
    kept = bool(outcome[-1])
    acked = int(outcome[1]) if replicas else 0
    if kept and (acked >= 1 or replicas == 0 or connected_replicas(client) == 0):
        return results
    problem = ("lost in a failover (the primary died before a replica had it)" if not kept
               else f"not acknowledged by a replica within {timeout} ms")
    if required:
        raise ReplicaTimeout(f"{what} {problem}; nothing sent")
    log.warning("%s %s; going on (it reduces exposure or stops trading)", what, problem)
    return results


def _default_timeout_ms() -> int:
    from core.redis_conn import redis_access

    return redis_access().replica_wait_ms
