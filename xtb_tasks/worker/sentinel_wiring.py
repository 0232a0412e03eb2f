"""The Celery broker and result backend on Sentinel, with connections that ask the Sentinels where
the primary is on every reconnect (``core.redis_target.PrimaryConnection`` says why
redis-py's own do not).

kombu's Sentinel channel and Celery's Sentinel result backend build their pools with redis-py's
connection class; these subclasses only swap that class, so a message published or a result
stored while a failover cuts the connection is retried on the promoted primary, never on a
restarted old one whose resync would discard it. ``celery_app.redis_settings`` selects them for
a Sentinel target: the ``sentinel`` transport alias (kombu re-resolves the URL's scheme whenever
it switches to the next Sentinel, so a ``broker_transport`` setting would not last) and the
``<class>+sentinel://`` result backend URL.
"""

from __future__ import annotations

from typing import Any

import kombu.transport
import redis
from celery.backends.redis import SentinelBackend
from kombu.transport import redis as kombu_redis

from core.redis_target import PrimaryConnection, PrimarySSLConnection

#: What the ``sentinel`` transport alias and the result backend URL's prefix name.
TRANSPORT = "xtb_tasks.worker.sentinel_wiring:PrimarySentinelTransport"
BACKEND = "xtb_tasks.worker.sentinel_wiring:PrimarySentinelBackend"


class PrimarySentinelChannel(kombu_redis.SentinelChannel):
    connection_class = PrimaryConnection
    connection_class_ssl = PrimarySSLConnection  # type: ignore[assignment]  # kombu types its own SSL class


class PrimarySentinelTransport(kombu_redis.SentinelTransport):
    Channel = PrimarySentinelChannel


class PrimarySentinelBackend(SentinelBackend):
    connection_class_ssl = PrimarySSLConnection

    def _get_sentinel_instance(self, **params: Any) -> Any:
        tls = issubclass(params.get("connection_class", object), redis.SSLConnection)
        params["connection_class"] = PrimarySSLConnection if tls else PrimaryConnection
        return super()._get_sentinel_instance(**params)


def use_primary_connections() -> None:
    """Make kombu's ``sentinel`` transport alias name :class:`PrimarySentinelTransport` in this process."""
    kombu.transport.TRANSPORT_ALIASES["sentinel"] = TRANSPORT
    kombu.transport._transport_cache.pop("sentinel", None)  # resolved before: resolve it again
