"""Alert kinds and their texts: one line of facts, plain English, the same way from every producer.

Pure (no Redis): the cycle's decisions build alert texts; ``monitoring.alerts`` sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any


class AlertKind(StrEnum):
    """What happened; the relay sends every kind, dashboards may filter by it."""

    #: A hedge cycle was planned and its first order is about to go out.
    CYCLE_STARTED = "cycle_started"
    #: All three legs are in and Backpack is rebalanced; the cycle is being monitored.
    CYCLE_HEDGED = "cycle_hedged"
    #: A cycle ended (any outcome) and all legs are flat, with per-venue PnL.
    CYCLE_FINISHED = "cycle_finished"
    #: A cycle ended the normal way (a Lighter leg liquidated, or the timeout, then a flat exit): reason,
    #: duration, per-venue realised PnL split into trading, fees and funding, dust, worst net exposure.
    CYCLE_COMPLETED = "cycle_completed"
    #: Everything was unwound after a failure, a cancel, or an exit not confirmed flat (the normal end is
    #: ``cycle_completed``).
    EMERGENCY_EXIT = "emergency_exit"
    #: A bot (venue worker or orchestrator) stopped sending heartbeats.
    HEARTBEAT_MISSING = "heartbeat_missing"
    #: A bot that was reported missing is sending heartbeats again.
    HEARTBEAT_BACK = "heartbeat_back"
    #: A worker process or task died unexpectedly and needs a look.
    WORKER_CRASH = "worker_crash"
    #: A cycle's monitor has read a position as unknown many times in a row (nothing is traded on unknown).
    POSITIONS_UNKNOWN = "positions_unknown"
    #: A venue's stream and its REST answer disagreed on a position beyond a push in flight (REST was used).
    STREAM_DISAGREEMENT = "stream_disagreement"
    #: Kill switch: a group is stopped after an unresolved exit (and each cycle start refused meanwhile).
    GROUP_STOPPED = "group_stopped"
    #: An operator resumed a stopped group once its accounts read flat.
    GROUP_RESUMED = "group_resumed"


Amount = Decimal | float | int | str | None


def fmt_amount(value: Amount, *, signed: bool = False) -> str:
    """``unknown`` for None (unknown is not zero), otherwise the number without float noise."""
    if value is None:
        return "unknown"
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return str(value)  # already words ("flat, dust 0.003")
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    if signed and number > 0:
        text = "+" + text
    return text


def _per_venue(values: Mapping[str, Amount], *, signed: bool) -> str:
    return ", ".join(f"{name} {fmt_amount(v, signed=signed)}" for name, v in values.items()) or "none"


def format_cycle_started(group: str, cycle_id: str, direction: str, size: Amount) -> str:
    return f"Cycle {cycle_id} started in group {group}: {direction}, Backpack size {fmt_amount(size)}."


def format_cycle_hedged(group: str, cycle_id: str, positions: Mapping[str, Amount]) -> str:
    net = _net(positions.values())
    return (f"Cycle {cycle_id} ({group}) hedged; positions: {_per_venue(positions, signed=True)}; "
            f"net {fmt_amount(net, signed=True)}.")


def format_cycle_finished(group: str, cycle_id: str, outcome: str, pnl: Mapping[str, Amount],
                          duration_secs: float | None = None) -> str:
    took = f" after {_duration(duration_secs)}" if duration_secs is not None else ""
    total = _net(pnl.values())
    return (f"Cycle {cycle_id} ({group}) finished{took}: {outcome}; PnL {_per_venue(pnl, signed=True)}; "
            f"total {fmt_amount(total, signed=True)}.")


def format_emergency_exit(group: str, cycle_id: str, reason: str, pnl: Mapping[str, Amount],
                          positions: Mapping[str, Amount]) -> str:
    return (f"EMERGENCY EXIT of cycle {cycle_id} ({group}): {reason}; "
            f"PnL {_per_venue(pnl, signed=True)}; positions {_per_venue(positions, signed=True)}.")


def _venue_split(role: str, equity_pnl: Amount, split: Mapping[str, Any] | None) -> str:
    if not split or split.get("error"):
        why = f"; split unknown: {split['error']}" if split and split.get("error") else ""
        return f"{role} {fmt_amount(equity_pnl, signed=True)} (equity{why})"
    parts = ", ".join(f"{part} {fmt_amount(split.get(part), signed=True)}" for part in ("trading", "fees", "funding"))
    left = f", {fmt_amount(split['open'], signed=True)} still open" if split.get("open") else ""
    return f"{role} {fmt_amount(split.get('net'), signed=True)} ({parts}{left})"


def format_cycle_completed(group: str, cycle_id: str, reason: str, duration_secs: float | None,
                           pnl: Mapping[str, Amount], split: Mapping[str, Mapping[str, Any]],
                           positions: Mapping[str, Any], worst_net: Mapping[str, Any] | None = None) -> str:
    """``pnl``: each venue's equity change; ``split``: role -> {trading, fees, funding, net} or {error}."""
    took = f" after {_duration(duration_secs)}" if duration_secs is not None else ""
    venues = "; ".join(_venue_split(role, pnl.get(role), split.get(role)) for role in pnl) or "unknown"
    nets = [(split.get(role) or {}).get("net") for role in pnl]
    total = _net(nets) if nets and all(not (split.get(r) or {}).get("error") for r in pnl) else None
    shown = _per_venue(positions, signed=True)
    text = (f"Cycle completed: {cycle_id} ({group}) ended {reason}{took}; PnL {venues}; "
            f"total {fmt_amount(total, signed=True)}; positions {shown}.")
    if worst_net and worst_net.get("worst_net") is not None:
        beyond = worst_net.get("beyond_step_secs")
        text += (f" Worst net {fmt_amount(worst_net['worst_net'])}"
                 + (f", {_duration(float(beyond))} beyond one step." if beyond is not None else "."))
    return text


def format_group_stopped(group: str, cycle_id: str, reason: str) -> str:
    return (f"Group {group} STOPPED: cycle {cycle_id} could not confirm flat ({reason}) and is unresolved; its exit "
            f"goes on. No cycle starts until an operator checks `xtb status`, flattens the accounts and runs "
            f"`xtb group resume {group}`.")


def format_group_resumed(group: str, cycle_id: str, positions: Mapping[str, Amount]) -> str:
    return (f"Group {group} resumed by an operator after cycle {cycle_id}; positions read "
            f"{_per_venue(positions, signed=True)}.")


def format_heartbeat_missing(bot: str, silent_secs: float, interval_secs: float) -> str:
    return (f"Heartbeat missing from {bot}: silent for {_duration(silent_secs)} "
            f"(expected every {_duration(interval_secs)}).")


def format_heartbeat_back(bot: str, silent_secs: float | None) -> str:
    gap = f" after {_duration(silent_secs)} of silence" if silent_secs is not None else ""
    return f"Heartbeat back from {bot}{gap}."


def format_worker_crash(worker: str, detail: str) -> str:
    return f"Worker {worker} crashed: {detail}."


def _net(values: Any) -> Decimal | None:
    total = Decimal(0)
    for value in values:
        if value is None:
            return None
        total += value if isinstance(value, Decimal) else Decimal(str(value))
    return total


def _duration(secs: float) -> str:
    if secs < 10:
        return f"{secs:.1f}s"
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    return f"{secs / 3600:.1f}h"
