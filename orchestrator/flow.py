"""What the entry and exit tasks still share: the group's lease, a cycle's group and parameters, PnL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

import redis

from core import keys
from core.config import GroupConfig, HedgeParams, Role, Settings
from core.cycle_record import CycleRecord, CycleView
from venues.base import MarketRules


def bp_rules_from_record(record: CycleRecord | CycleView) -> MarketRules:
    return MarketRules.from_json(record.get("bp_rules") or {})


def group_and_params(settings: Settings, record: CycleRecord | CycleView) -> tuple[GroupConfig, HedgeParams]:
    grp = settings.group(record.get("group"))
    params = HedgeParams.from_mapping(record.get("overrides") or {}, base=grp.params)
    return grp, params


def take_group_lock(client: redis.Redis, group: str, cycle_id: str) -> str | None:
    """Hold the group lease for ``cycle_id``; returns the active cycle holding it instead, if any."""
    key = keys.group_lock(group)
    if client.set(key, cycle_id, nx=True):
        return None
    holder = cast(str | None, client.get(key))
    if holder and client.sismember(keys.CYCLES_ACTIVE, holder):
        return holder
    # A stale lease (its cycle finished or was lost without releasing): take it over atomically.
    if client.set(key, cycle_id, xx=True, get=True) == holder:
        return None
    return cast(str | None, client.get(key))


def release_group_lock(client: redis.Redis, group: str, cycle_id: str) -> None:
    key = keys.group_lock(group)
    if client.get(key) == cycle_id:
        client.delete(key)


def pnl(start: dict[str, Any], end: dict[str, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for role in (r.short for r in Role):
        a, b = start.get(role), end.get(role)
        out[role] = None if a in (None, "") or b in (None, "") else str(Decimal(str(b)) - Decimal(str(a)))
    return out
