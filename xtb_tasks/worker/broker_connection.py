"""The broker connection every process of the app opens: kombu's, with ``collect()`` letting go
of the default channel it tore down, and handing that channel's unacknowledged messages to the
next connection to re-queue.

A worker that loses Redis (a restart, a failover, a cut link) runs ``Connection.collect()`` and
then ``Connection.close()`` on the lost connection before it reconnects. ``collect()`` tries to
close the default channel, which fails on the dead socket and leaves the channel open, and then
releases the transport (its ``client`` becomes None). kombu keeps the default channel regardless,
so ``close()`` closes it a second time: that close re-queues the channel's unacknowledged messages
(a task held for its ETA, or one running when the link dropped), needs connection parameters
from the released transport, and raises ``AttributeError``. That is no connection error, so the
worker stops as if the error were unrecoverable. The same stale channel is what
``Connection.ensure()`` would hand a publisher after its own ``collect()``.

Invariants kept here:

* after ``collect()`` the connection holds no channel of the transport it released, so nothing
  reaches for that transport again; the next use opens a fresh channel on a fresh transport;
* a message the lost channel held unacknowledged is re-queued once, by the first connection of
  the same process to the same broker that reaches it (the worker dropped its own copy when the
  link went: Celery cancels held ETA requests and forgets reserved ones on a connection loss).
  Until then it stays in the broker's unacked index, where the Redis transport wrote it on
  delivery, and the broker's unacked sweep re-queues it after ``visibility_timeout`` if this
  process never reconnects. Re-queueing is one transaction that removes the message from that
  index, so it is never queued twice. A copy that comes back acts only if its cycle is where it
  was (fencing, intents).

Nothing here depends on the transport class, so it holds for ``redis://``, ``rediss://`` and
``sentinel://`` URLs alike, and after kombu switches to an alternate URL.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.app.amqp import AMQP as CeleryAMQP
from kombu import Connection

log = logging.getLogger(__name__)

#: Delivery tags a lost connection could not re-queue, per broker (``broker_key``), for this
#: process's next connection to that broker. A forked child starts with none: the messages are
#: its parent's to re-queue.
_HANDED_OVER: dict[tuple[Any, ...], set[str]] = {}
os.register_at_fork(after_in_child=_HANDED_OVER.clear)


def broker_key(connection: Any) -> tuple[Any, ...]:
    """The broker a connection talks to, the same before and after kombu switches to an alternate
    URL (every sentinel of a ``sentinel://`` list is one broker)."""
    hosts = tuple(connection.alt) or (connection.hostname, connection.port)
    return (hosts, connection.virtual_host, (connection.transport_options or {}).get("global_keyprefix"))


class BrokerConnection(Connection):
    """``kombu.Connection`` whose ``collect()`` also lets go of the default channel."""

    def collect(self, socket_timeout: float | None = None) -> None:
        channel = self._default_channel
        key = broker_key(self)
        super().collect(socket_timeout=socket_timeout)
        if channel is None:
            return
        if self._default_channel is channel:
            self._default_channel = None
        if not getattr(channel, "closed", True):
            tags = release_unacked(channel)
            if tags:
                _HANDED_OVER.setdefault(key, set()).update(tags)
                log.warning("broker connection lost: %d unacknowledged message(s) wait in the broker's unacked "
                            "index for the next connection to re-queue them", len(tags))

    @property
    def default_channel(self) -> Any:
        channel = super().default_channel
        if _HANDED_OVER:
            requeue_handed_over(self, channel)
        return channel


def release_unacked(channel: Any) -> list[str]:
    """The delivery tags ``channel`` holds unacknowledged; the channel will not re-queue them itself.

    The channel's transport is released, so it can no longer reach the broker: a later attempt (a
    close, or the QoS finalizer when the channel is garbage collected) would only raise. Only the
    Redis transports keep an unacked index to re-queue from (``restore_by_tag``); for any other,
    no tags.
    """
    qos = getattr(channel, "_qos", None)
    if qos is None:
        return []
    qos.restore_at_shutdown = False
    if not hasattr(qos, "restore_by_tag"):
        return []
    acked = qos._dirty  # acknowledged, not yet dropped from _delivered
    return [tag for tag in qos._delivered if tag not in acked]


def requeue_handed_over(connection: Any, channel: Any) -> None:
    """Re-queue the messages a lost connection to this broker handed over, through ``channel``.
    A tag whose message is no longer in the unacked index (acknowledged, or re-queued by the
    sweep) re-queues nothing. If the broker is lost again, the rest wait for the next connection."""
    key = broker_key(connection)
    tags = _HANDED_OVER.get(key)
    if not tags:
        return
    done = 0
    for tag in sorted(tags):
        try:
            channel.qos.restore_by_tag(tag)
        except connection.connection_errors as exc:
            log.warning("re-queueing the lost connection's unacknowledged messages failed (%s); %d left for the "
                        "next connection", exc, len(tags))
            return
        tags.discard(tag)
        done += 1
    _HANDED_OVER.pop(key, None)
    log.warning("re-queued %d unacknowledged message(s) of the lost broker connection", done)


class AMQP(CeleryAMQP):
    """Celery's AMQP wiring with :class:`BrokerConnection` for every broker connection of the app."""

    Connection = BrokerConnection
    BrokerConnection = BrokerConnection
