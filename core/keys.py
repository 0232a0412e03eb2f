"""Every Redis key and channel the system uses (namespaced ``xtb:``), in one place."""

from __future__ import annotations

PREFIX = "xtb"

#: Pub/sub channel of heartbeats and the hash of the latest heartbeat per bot.
HEARTBEAT_CHANNEL = f"{PREFIX}:hb"
HEARTBEAT_LAST = f"{PREFIX}:hb:last"
#: Pub/sub channel (live view) and durable stream (Telegram relay) of alerts.
ALERTS_CHANNEL = f"{PREFIX}:alerts"
ALERTS_OUTBOX = f"{PREFIX}:alerts:outbox"
ALERTS_GROUP = "telegram-relay"
#: Set of alert ids already delivered to Telegram (never send twice).
ALERTS_DELIVERED = f"{PREFIX}:alerts:delivered"
#: Stream of alerts Telegram refused for good, and the lock of the one delivering relay.
ALERTS_DEAD = f"{PREFIX}:alerts:dead"
ALERTS_RELAY_LEADER = f"{PREFIX}:alerts:relay:leader"
#: Missing-heartbeat watcher: bots currently missing, and since when.
HEARTBEAT_MISSING = f"{PREFIX}:hb:missing"
HEARTBEAT_MISSING_SINCE = f"{PREFIX}:hb:missing:since"
#: Set of active cycle ids.
CYCLES_ACTIVE = f"{PREFIX}:cycles:active"


def account_lock(account: str) -> str:
    return f"{PREFIX}:lock:account:{account}"


def group_lock(group: str) -> str:
    return f"{PREFIX}:lock:group:{group}"


def group_stopped(group: str) -> str:
    """The kill switch: JSON {cycle_id, reason, stopped_at} of the unresolved exit that stopped the
    group; no TTL, only ``xtb group resume`` clears it (start_cycle refuses while it exists)."""
    return f"{PREFIX}:group:{group}:stopped"


def client_order_counter(account: str) -> str:
    return f"{PREFIX}:coi:{account}"


def account_state(account: str) -> str:
    """Hash of the latest venue facts a worker saw (position, balance, latency) for heartbeats."""
    return f"{PREFIX}:acct:{account}"


def cycle(cycle_id: str) -> str:
    return f"{PREFIX}:cycle:{cycle_id}"


def cycle_history(group: str) -> str:
    return f"{PREFIX}:cycles:{group}"


def cycle_cancel(cycle_id: str) -> str:
    return f"{PREFIX}:cycle:{cycle_id}:cancel"


def leg_outcome(cycle_id: str, leg: str) -> str:
    """List the armed hedge blocks on: the leg's fill (or its failure), pushed once it is final."""
    return f"{PREFIX}:cycle:{cycle_id}:outcome:{leg}"


def cycle_resolving(cycle_id: str) -> str:
    """A watchdog's short claim on an overdue cycle (only one sweeper acts)."""
    return f"{PREFIX}:cycle:{cycle_id}:resolving"


def intent(account: str, client_id: int) -> str:
    """The recorded intent behind a client order id (written before the submit is published)."""
    return f"{PREFIX}:intent:{account}:{client_id}"
