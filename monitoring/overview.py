"""What the dashboard shows, computed from Redis: bot status (the original ``/api/status``), hedge
groups with their net delta and active cycle, recent alerts.

Pure reads; no venue calls. A bot is online while its latest beat is younger than two of its own
intervals (``server.js``: ``now - ts < telemetry_interval_secs * 2000``, interval default 10 s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import redis

from core import keys
from core.config import HedgeParams, Role, Settings
from core.exposure import worst_net_report
from monitoring.alerts import recent_alerts
from monitoring.heartbeat import beat_interval, last_seen, load_last_beats
from monitoring.relay import pending_delivery
from monitoring.watcher import MISSING_SET

ROLES = tuple(role.short for role in Role)  # ("BP", "L1", "L2")
#: Cycle record fields the page may show (the record also holds plans and events it does not need).
CYCLE_FIELDS = ("cycle_id", "group", "stage", "outcome", "reason", "created_at", "stage_started_at",
                "finished_at", "updated_at", "direction")
#: Object fields of the end-of-cycle report (``exit_worst_net*``: the exit's own worst net, when recorded).
REPORT_FIELDS = ("pnl", "pnl_split", "dust", "net_exposure", "exit_worst_net", "exit_worst_net_at")


@dataclass(frozen=True)
class BotStatus:
    name: str
    online: bool
    age_ms: int
    payload: dict[str, Any] = field(default_factory=dict)

    def to_status(self) -> dict[str, Any]:
        """One entry of ``/api/status`` exactly as ``server.js`` shaped it."""
        return {"name": self.name, "online": self.online, "last_update_ms_ago": self.age_ms,
                "payload": self.payload}


def bot_statuses(beats: Mapping[str, Mapping[str, Any]], now: float, default_interval: float = 10.0
                 ) -> list[BotStatus]:
    out: list[BotStatus] = []
    for name in sorted(beats):
        payload = dict(beats[name])
        seen = last_seen(payload)
        age = max(0.0, now - seen) if seen is not None else float("inf")
        online = age < 2 * beat_interval(payload, default_interval)
        out.append(BotStatus(name, online, int(age * 1000) if age != float("inf") else 2**53, payload))
    return out


def status_document(r: redis.Redis, now: float | None = None, default_interval: float = 10.0) -> dict[str, Any]:
    now = time.time() if now is None else now
    bots = bot_statuses(load_last_beats(r), now, default_interval)
    return {"now": int(now * 1000), "bots": [b.to_status() for b in bots]}


def prune(r: redis.Redis, older_ms: int, now: float | None = None, default_interval: float = 10.0
          ) -> dict[str, Any]:
    """``server.js`` prune: drop offline bots, and with ``older_ms > 0`` any bot at least that old."""
    now = time.time() if now is None else now
    bots = bot_statuses(load_last_beats(r), now, default_interval)
    doomed = [b.name for b in bots if not b.online or (older_ms > 0 and b.age_ms >= older_ms)]
    if doomed:
        pipe = r.pipeline(transaction=True)
        pipe.hdel(keys.HEARTBEAT_LAST, *doomed)
        # A pruned bot is gone on purpose: the watcher must not report it "back" or missing.
        pipe.srem(MISSING_SET, *doomed)
        pipe.execute()
    return {"status": "ok", "removed": len(doomed), "total": len(bots) - len(doomed)}


# --------------------------------------------------------------------------------------------
# Overview for the page


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def bot_view(status: BotStatus) -> dict[str, Any]:
    p = status.payload
    position = p.get("position") if p.get("position") is not None else p.get("position_base")
    return {
        "name": status.name, "online": status.online, "age_ms": status.age_ms,
        "role": p.get("role"), "group": p.get("group") or p.get("group_id"), "account": p.get("account"),
        "venue": p.get("venue"), "symbol": p.get("symbol"), "direction": p.get("direction"),
        "position": None if position is None else str(position),
        "position_stale": bool(p.get("position_stale")), "last_known_position": p.get("last_known_position"),
        "position_age_secs": p.get("position_age_secs"),
        "balance": p.get("balance") if p.get("balance") is not None else p.get("balance_total"),
        "latency_ms": p.get("latency_ms"), "cycle_id": p.get("cycle_id"), "stage": p.get("stage"),
        "interval": beat_interval(p), "host": p.get("host"), "active_cycles": p.get("active_cycles"),
        "stream_state": p.get("stream_state"), "stream_age_secs": p.get("stream_age_secs"),
        "rate_budget": p.get("rate_budget"),
    }


def net_delta(members: Mapping[str, dict[str, Any] | None]) -> Decimal | None:
    """bp + l1 + l2 when all three are online with a fresh position; otherwise unknown."""
    total = Decimal(0)
    for role in ROLES:
        view = members.get(role)
        if view is None or not view["online"]:
            return None
        position = _decimal(view["position"])
        if position is None:
            return None
        total += position
    return total


def load_cycles(r: redis.Redis, ids: Iterable[str]) -> list[dict[str, Any]]:
    ids = list(ids)
    pipe = r.pipeline(transaction=False)
    for cycle_id in ids:
        pipe.hmget(keys.cycle(cycle_id), [*CYCLE_FIELDS, *REPORT_FIELDS])
    cycles = []
    for cycle_id, values in zip(ids, pipe.execute(), strict=True):
        if not any(values):
            continue
        record = {name: _json_or_text(v) for name, v in zip(CYCLE_FIELDS, values[:len(CYCLE_FIELDS)], strict=True)}
        record["cycle_id"] = record.get("cycle_id") or cycle_id
        record["report"] = cycle_report(dict(zip(REPORT_FIELDS, values[len(CYCLE_FIELDS):], strict=True)),
                                        record)
        cycles.append(record)
    return cycles


def cycle_report(raw: Mapping[str, str | None], record: Mapping[str, Any]) -> dict[str, Any]:
    """Realised PnL per venue (trading, fees, funding), dust and the worst net exposure of one cycle."""
    data: dict[str, Any] = {"finished_at": record.get("finished_at"), "updated_at": record.get("updated_at")}
    for name, text in raw.items():
        try:
            data[name] = json.loads(text) if text is not None else None
        except ValueError:
            data[name] = None
    split = data.get("pnl_split") if isinstance(data.get("pnl_split"), dict) else None
    live = None if record.get("finished_at") else time.time()
    return {"pnl": data.get("pnl"), "pnl_split": split, "dust": data.get("dust") or {},
            "worst_net": worst_net_report(data, live)}


def _json_or_text(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, str | int | float | bool) else raw


def group_names(settings: Settings | None, views: Iterable[dict[str, Any]]) -> list[str]:
    names = list(settings.groups) if settings is not None else []
    for view in views:
        if view["group"] and view["role"] in ROLES and view["group"] not in names:
            names.append(str(view["group"]))
    return names


def _tolerance(settings: Settings | None, group: str) -> Decimal:
    if settings is not None and group in settings.groups:
        return settings.groups[group].params.liquidation_tolerance
    return HedgeParams().liquidation_tolerance


def group_members(group: str, settings: Settings | None, views: list[dict[str, Any]]) -> dict[str, Any]:
    """Role → freshest bot view; bots claim a role by payload (group, role), or by account name."""
    accounts: dict[str, str] = {}
    if settings is not None and group in settings.groups:
        accounts = {role.short: settings.groups[group].account_for(role) for role in Role}
    members: dict[str, dict[str, Any] | None] = dict.fromkeys(ROLES)
    for view in sorted(views, key=lambda v: -v["age_ms"]):
        for role in ROLES:
            if (view["group"] == group and view["role"] == role) or view["name"] == accounts.get(role):
                members[role] = view
    return {"members": members, "accounts": accounts}


def group_view(r: redis.Redis, group: str, settings: Settings | None, views: list[dict[str, Any]],
               active: list[dict[str, Any]]) -> dict[str, Any]:
    found = group_members(group, settings, views)
    members = found["members"]
    net = net_delta(members)
    tolerance = _tolerance(settings, group)
    history = load_cycles(r, [str(i) for i in r.lrange(keys.cycle_history(group), 0, 4)])
    current = next((c for c in active if c.get("group") == group), None)
    return {
        "name": group, "roles": members, "accounts": found["accounts"],
        "net_delta": None if net is None else str(net), "tolerance": str(tolerance),
        "net_delta_breach": net is not None and abs(net) > tolerance,
        "all_online": all(m is not None and m["online"] for m in members.values()),
        "cycle": current, "recent_cycles": history,
    }


def overview_document(r: redis.Redis, settings: Settings | None, now: float | None = None,
                      alerts: int = 15) -> dict[str, Any]:
    now = time.time() if now is None else now
    views = [bot_view(s) for s in bot_statuses(load_last_beats(r), now)]
    active = load_cycles(r, sorted(str(i) for i in r.smembers(keys.CYCLES_ACTIVE)))
    groups = [group_view(r, name, settings, views, active) for name in group_names(settings, views)]
    placed = {m["name"] for g in groups for m in g["roles"].values() if m is not None}
    delivered = recent_alerts(r, alerts)
    flags = r.smismember(keys.ALERTS_DELIVERED, [a.alert_id for a in delivered]) if delivered else []
    return {
        "now": int(now * 1000),
        "groups": groups,
        "others": [v for v in views if v["name"] not in placed],
        "alerts": [{**a.to_json(), "delivered": bool(f)} for a, f in zip(delivered, flags, strict=True)],
        "relay": pending_delivery(r),
        "missing": sorted(r.smembers(MISSING_SET)),
    }
