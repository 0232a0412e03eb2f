"""Whether a new cycle of a group may start: one cycle per group at a time (*alone*), however many
orchestrators trigger starts on however many hosts, and none while the group is stopped.

Invariants (the store's ``create`` keeps them, deciding with :func:`refusal`):

* a cycle's record, its place in the active set and its group's lease are written in one atomic
  step, after :func:`refusal` said yes on what that step read (the lease's holder, whether the
  holder is active, the group's stop); a write in between makes the store read and decide again.
  So the lease's holder is active from the moment it holds the lease, and two starts racing (beat,
  the CLI, a second orchestrator) leave one cycle;
* the lease names its cycle until the step that writes the cycle's end (``Finish``) releases it;
  a lease whose holder is no longer active (it ended, or was lost, without releasing) is free;
* a stopped group starts nothing (the kill switch: an exit that could not confirm flat stops its
  group and goes on working, still holding the lease).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class GroupStop:
    """Why a group is stopped: the cycle whose exit turned unresolved, its reason, and when."""

    group: str
    cycle_id: str
    reason: str
    stopped_at: float

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "cycle_id": self.cycle_id, "reason": self.reason, "stopped_at": self.stopped_at}

    @classmethod
    def from_json(cls, group: str, raw: str) -> GroupStop:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # Someone set the key by hand: still a stop (the key is what counts), with what it holds.
            return cls(group, str(raw), "set by hand", 0.0)
        return cls(group, str(data.get("cycle_id") or "?"), str(data.get("reason") or "?"),
                   float(data.get("stopped_at") or 0.0))

    def refusal(self) -> str:
        """The one line a refused start says: the group, the stopped cycle, and how to resume."""
        return (f"Cycle start refused for group {self.group}: the group is stopped since cycle {self.cycle_id} "
                f"turned unresolved ({self.reason}); check the accounts with `xtb status`, flatten them "
                f"(`xtb flatten --group {self.group}`), then run `xtb group resume {self.group}`.")


class Refusal(str, Enum):
    """Why a start was refused."""

    #: Another cycle of the group holds the lease and is active.
    ACTIVE = "active"
    #: The group is stopped until an operator resumes it (``xtb group resume``).
    STOPPED = "stopped"


@dataclass(frozen=True)
class StartRefused:
    """A refused start: why, and the active cycle holding the lease or the group's stop."""

    reason: Refusal
    group: str
    holder: str = ""
    stop: GroupStop | None = None

    def text(self) -> str:
        if self.stop is not None:
            return self.stop.refusal()
        return f"Cycle start refused for group {self.group}: cycle {self.holder} is still active."


def refusal(group: str, stop: GroupStop | None, holder: str | None, holder_active: bool) -> StartRefused | None:
    """Why a cycle of ``group`` may not start now, None when it may: ``stop`` the group's stop,
    ``holder`` the cycle holding the group's lease (None: free), ``holder_active`` whether it is active."""
    if stop is not None:
        return StartRefused(Refusal.STOPPED, group, stop=stop)
    if holder is not None and holder_active:
        return StartRefused(Refusal.ACTIVE, group, holder=holder)
    return None
