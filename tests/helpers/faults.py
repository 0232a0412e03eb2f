"""Helpers for the fault-injection and security suites: precise kill points, resolution checks,
alert lookups, secrets of a generated config, and a printable crash-matrix table.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from tests.helpers.harness import Deployment
from tests.helpers.support import wait_until

STEP = Decimal("0.0001")
WORKERS = ("backpack", "lighter1", "lighter2", "orchestrator")


def poll(predicate: Callable[[], object], *, timeout: float, interval: float = 0.02) -> bool:
    """True as soon as ``predicate()`` is truthy, False after ``timeout`` (never raises)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def kill_and_restart(dep: Deployment, name: str) -> float:
    """SIGKILL ``name`` (main process and pool), start a fresh one; monotonic time it is ready."""
    dep.kill_worker(name)
    dep.restart_worker(name)
    return time.monotonic()


def venue_flat(dep: Deployment) -> bool:
    return all(abs(q) < STEP for q in dep.positions().values())


def venue_hedged(dep: Deployment) -> bool:
    positions = dep.positions()
    return abs(sum(positions.values())) <= STEP and any(abs(q) >= STEP for q in positions.values())


def cycle_alerts(dep: Deployment, cycle_id: str, kind: str | None = None) -> list[dict[str, str]]:
    out = []
    for alert in dep.alerts():
        fields = json.loads(alert.get("fields") or "{}")
        if fields.get("cycle_id") == cycle_id and (kind is None or alert.get("kind") == kind):
            out.append(alert)
    return out


def raised_alerts(dep: Deployment, cycle_id: str, kind: str, timeout: float = 30) -> list[dict[str, str]]:
    """The cycle's ``kind`` alerts once there is one. ``cycle_completed`` trails the record's ``done``:
    the report task raises it just after it records the PnL split (xtb_tasks/worker/report_tasks.py)."""
    wait_until(lambda: cycle_alerts(dep, cycle_id, kind), timeout=timeout, what=f"the {kind} alert of {cycle_id}")
    return cycle_alerts(dep, cycle_id, kind)


def safe_state(dep: Deployment, cycle_id: str, since_wall: float) -> str | None:
    """``flat`` (done, flat outcome, venue flat), ``hedged`` (monitoring from reads taken after
    ``since_wall``, venue hedged), ``unresolved`` (done but not flat) or None (not yet)."""
    data = dep.record(cycle_id)
    stage = data.get("stage")
    if stage == "done":
        if data.get("outcome") == "flat" and venue_flat(dep):
            return "flat"
        return "unresolved" if data.get("outcome") != "flat" else None
    if stage == "monitoring":
        read_at = float((data.get("positions") or {}).get("read_at") or 0)
        if read_at > since_wall and venue_hedged(dep):
            return "hedged"
    return None


@dataclass
class CrashCell:
    worker: str
    boundary: str
    killed_at_stage: str
    outcome: str
    secs: float | None
    duplicates: int
    alert_ok: bool
    note: str = ""

    @property
    def safe(self) -> bool:
        return self.outcome in ("flat", "hedged") and self.secs is not None and self.secs <= 60.0 \
            and self.duplicates == 0 and self.alert_ok


def matrix_lines(cells: list[CrashCell]) -> list[str]:
    head = f"{'worker':<13}{'boundary':<18}{'killed in':<16}{'outcome':<12}{'secs':>6}  {'dups':>4}  alert  safe"
    lines = ["", "crash matrix (SIGKILL + restart; resolution measured from the restart)", head, "-" * len(head)]
    for c in cells:
        secs = "-" if c.secs is None else f"{c.secs:.1f}"
        lines.append(f"{c.worker:<13}{c.boundary:<18}{c.killed_at_stage:<16}{c.outcome:<12}{secs:>6}  "
                     f"{c.duplicates:>4}  {'ok' if c.alert_ok else 'MISS':<5}  {'yes' if c.safe else 'NO'}"
                     + (f"  ({c.note})" if c.note else ""))
    safe = sum(c.safe for c in cells)
    lines.append(f"crash matrix: {safe}/{len(cells)} safe")
    return lines


# ---- secrets ---------------------------------------------------------------------------------

_SECRET_LINE = re.compile(r"^\s*(api secret|private key|bot_token|api key)\s*:\s*(.+?)\s*$", re.I | re.M)


def key_file_secrets(keys_dir: Path) -> dict[str, str]:
    """Secret values from every key file a config generated (``<file>:<field>`` → value)."""
    found: dict[str, str] = {}
    for path in sorted(keys_dir.glob("*.txt")):
        for match in _SECRET_LINE.finditer(path.read_text()):
            field = match.group(1).lower()
            if field == "api key":  # the Backpack API key is public (it names the account)
                continue
            value = match.group(2).strip().strip('"').strip("'")
            if value.startswith("0x"):
                value = value[2:]
            found[f"{path.name}:{field}"] = value
    return found


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    lowered = text.lower()
    return [name for name, value in secrets.items() if value and value.lower() in lowered]
