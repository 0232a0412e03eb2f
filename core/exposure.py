"""The worst net exposure of a cycle and how long it stayed beyond one Backpack step: reported at the
end of every cycle.

Pure: the rebalance and monitor decisions feed the cycle's own net (``orchestrator.flow.own_net``: each
position relative to the baseline recorded at planning) of every fully known read to
:meth:`NetExposure.observe`; the record keeps the result as ``net_exposure``, and ``xtb cycle status``
and the dashboard show :func:`worst_net_report`. Here, below both, because both read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class NetExposure:
    """What the reads saw of the cycle's net position.

    ``beyond_secs`` counts closed breaches from the first read beyond one step to the first read back
    within it (so it errs long by at most one poll interval: the reads are all there is);
    ``beyond_since`` is the first read of a breach still open.
    """

    worst: Decimal = Decimal(0)
    worst_at: float | None = None
    beyond_secs: float = 0.0
    beyond_since: float | None = None
    reads: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> NetExposure:
        if not data:
            return cls()
        since, at = data.get("beyond_since"), data.get("worst_at")
        return cls(worst=Decimal(str(data.get("worst") or 0)), worst_at=None if at is None else float(at),
                   beyond_secs=float(data.get("beyond_secs") or 0.0),
                   beyond_since=None if since is None else float(since), reads=int(data.get("reads") or 0))

    def to_json(self) -> dict[str, Any]:
        return {"worst": str(self.worst), "worst_at": self.worst_at, "beyond_secs": round(self.beyond_secs, 3),
                "beyond_since": self.beyond_since, "reads": self.reads}

    def observe(self, net: Decimal, step: Decimal, now: float) -> NetExposure:
        """This record after one more read whose own net is ``net`` at ``now``."""
        seen = replace(self, reads=self.reads + 1)
        if abs(net) > self.worst:
            seen = replace(seen, worst=abs(net), worst_at=now)
        beyond = abs(net) > step
        if beyond and self.beyond_since is None:
            return replace(seen, beyond_since=now)
        if not beyond and self.beyond_since is not None:
            return replace(seen, beyond_secs=self.beyond_secs + max(0.0, now - self.beyond_since), beyond_since=None)
        return seen

    def beyond_secs_until(self, now: float) -> float:
        """Seconds beyond one step, counting a breach still open up to ``now``."""
        open_secs = max(0.0, now - self.beyond_since) if self.beyond_since is not None else 0.0
        return self.beyond_secs + open_secs


def worst_net_report(data: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """The worst |net| of the cycle for ``xtb cycle status`` and the dashboard: the larger of what the
    rebalance/monitor reads saw (``net_exposure``) and the exit's own (``exit_worst_net`` /
    ``exit_worst_net_at``, when the exit records them), with the time beyond one Backpack step."""
    seen = NetExposure.from_json(data.get("net_exposure") if isinstance(data.get("net_exposure"), Mapping) else None)
    worst, worst_at, source = seen.worst, seen.worst_at, "reads"
    exit_worst = data.get("exit_worst_net")
    if exit_worst not in (None, "") and abs(Decimal(str(exit_worst))) > worst:
        worst, worst_at, source = abs(Decimal(str(exit_worst))), data.get("exit_worst_net_at"), "exit"
    until = now if now is not None else float(data.get("finished_at") or data.get("updated_at") or 0.0)
    return {"worst_net": str(worst), "worst_net_at": worst_at, "worst_net_source": source,
            "beyond_step_secs": round(seen.beyond_secs_until(until), 3) if seen.reads else None,
            "reads": seen.reads}
