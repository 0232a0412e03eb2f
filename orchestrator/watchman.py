"""The watchman: a dead-man switch outside the cluster (``xtb watchman``).

Every ``interval_secs`` it reads each watched group's three positions straight from the venues with
its own keys, and looks at the cluster's heartbeats in Redis when it can. Two triggers, judged on
positions alone (the watchman cannot always read a cycle's baselines, so the group's net is the sum
of its three accounts' positions; a group run with ``allow_existing_positions`` on accounts that
did not start flat is not in step by this rule):

* **out of step**: every position known and the net beyond one Backpack step for ``out_of_step_secs``;
* **cluster gone**: a position open (or unknown) while Redis is unreachable, or the heartbeat of the
  orchestrator or of one of the group's three workers has not changed, for ``silent_secs``.

A trigger alerts at once (repeated every ``alert_repeat_secs`` while it lasts) through the
watchman's own Telegram path. With ``unwind = true``, when a trigger has lasted ``unwind_delay_secs``
more, the watchman unwinds the group in step itself (:mod:`orchestrator.watchman_unwind`) until a
fresh read says there is nothing left, and reports. With no trigger it never trades: a group in step
with its cluster alive is never touched. When every trigger has cleared it says so once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from core.config import GroupConfig
from core.watchman_config import WatchmanConfig
from orchestrator.watchman_io import ClusterProbe, Pager, group_bots
from orchestrator.watchman_unwind import ROLES, GroupVenues, UnwindResult, unwind
from venues.base import MarketRules, VenueError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupRead:
    """One read of a group: each role's position (None: unknown) and each role's market rules."""

    positions: dict[str, Decimal | None]
    rules: dict[str, MarketRules]

    @property
    def net(self) -> Decimal | None:
        """The sum of the three positions; a Lighter leftover below the venue's minimum order size
        counts as zero, as the cycle counts it (no order can trade it)."""
        if any(q is None for q in self.positions.values()):
            return None
        return sum((self._tradable(r, q) for r, q in self.positions.items() if q is not None), Decimal(0))

    def _tradable(self, role: str, quantity: Decimal) -> Decimal:
        return Decimal(0) if role != "BP" and abs(quantity) < self.rules[role].min_quantity else quantity

    @property
    def out_of_step(self) -> bool:
        net = self.net
        return net is not None and abs(net) > self.rules["BP"].step_size

    @property
    def open(self) -> bool:
        """A position an order could still trade, or one that cannot be read (unknown is not zero)."""
        for role, q in self.positions.items():
            rules = self.rules[role]
            if q is None or (abs(q) >= rules.step_size and abs(q) >= rules.min_quantity):
                return True
        return False

    def describe(self) -> str:
        return ", ".join(f"{r}={'unknown' if q is None else q}" for r, q in self.positions.items())


@dataclass
class Verdict:
    """What one tick decided for a group: the alerts to send and whether to unwind now."""

    alerts: list[str]
    unwind: bool


class GroupWatch:
    """The triggers of one group over time (pure: the caller passes reads, silences and the clock)."""

    def __init__(self, group: GroupConfig, config: WatchmanConfig) -> None:
        self.group = group
        self.config = config
        self.out_of_step_since: float | None = None
        self.triggered_at: float | None = None
        self.alerted_at: float | None = None
        self.unwinding_done = False
        #: Unwinds started since the trigger began (the first one is announced).
        self.unwind_attempts = 0

    def judge(self, read: GroupRead, silent: dict[str, float], redis_error: str | None, now: float) -> Verdict:
        if read.out_of_step:
            self.out_of_step_since = self.out_of_step_since if self.out_of_step_since is not None else now
        else:
            self.out_of_step_since = None
        reasons = self._reasons(read, silent, redis_error, now)
        if not reasons:
            cleared = self.alerted_at is not None
            self.triggered_at = self.alerted_at = None
            self.unwinding_done = False
            self.unwind_attempts = 0
            return Verdict([f"WATCHMAN group {self.group.name}: no trigger left; positions {read.describe()}"] if cleared else [],
                           False)
        self.triggered_at = self.triggered_at if self.triggered_at is not None else now
        alerts = []
        if self.alerted_at is None or now - self.alerted_at >= self.config.alert_repeat_secs:
            self.alerted_at = now
            alerts.append(self._text(reasons, read, now))
        due = self.config.unwind and now - self.triggered_at >= self.config.unwind_delay_secs
        return Verdict(alerts, due and read.open and not self.unwinding_done)

    def _reasons(self, read: GroupRead, silent: dict[str, float], redis_error: str | None, now: float) -> list[str]:
        reasons = []
        if self.out_of_step_since is not None and now - self.out_of_step_since >= self.config.out_of_step_secs:
            reasons.append(f"net {read.net} beyond one step ({read.rules['BP'].step_size}) for "
                           f"{now - self.out_of_step_since:.0f} s")
        quiet = {bot: age for bot, age in silent.items() if age >= self.config.silent_secs}
        if read.open and quiet:
            cause = f"Redis unreachable ({redis_error})" if redis_error else "no heartbeat from " + ", ".join(
                f"{bot} for {age:.0f} s" for bot, age in sorted(quiet.items()))
            reasons.append(f"cluster gone with positions open: {cause}")
        return reasons

    def _text(self, reasons: list[str], read: GroupRead, now: float) -> str:
        assert self.triggered_at is not None
        if self.config.unwind:
            left = max(0.0, self.config.unwind_delay_secs - (now - self.triggered_at))
            plan = f"unwinding in step in {left:.0f} s"
        else:
            plan = "not unwinding (unwind = false): act now"
        return f"WATCHMAN group {self.group.name}: {'; '.join(reasons)}. Positions {read.describe()}; {plan}"


class Watchman:
    """The loop: read, judge, alert, unwind when due; one thread, until ``stop`` is set."""

    def __init__(self, config: WatchmanConfig, venues: list[GroupVenues], probe: ClusterProbe, pager: Pager,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.venues = venues
        self.watches = {v.group.name: GroupWatch(v.group, config) for v in venues}
        self.probe = probe
        self.pager = pager
        self.clock = clock
        self._rules: dict[str, dict[str, MarketRules]] = {}

    def run(self, stop: threading.Event) -> None:
        log.info("watchman: watching %s every %.1f s (out of step %.0f s, silent %.0f s, unwind %s)",
                 ", ".join(self.watches), self.config.interval_secs, self.config.out_of_step_secs,
                 self.config.silent_secs, f"after {self.config.unwind_delay_secs:.0f} s" if self.config.unwind else "off")
        while not stop.is_set():
            started = self.clock()
            self.tick()
            stop.wait(max(0.0, self.config.interval_secs - (self.clock() - started)))

    def check(self) -> dict[str, Any]:
        """One read of every watched group and of Redis, judged by nothing (``xtb watchman --once``)."""
        self.probe.poll()
        groups: dict[str, Any] = {}
        for venues in self.venues:
            read = self._read(venues)
            groups[venues.group.name] = None if read is None else {
                "positions": {r: None if q is None else str(q) for r, q in read.positions.items()},
                "net": None if read.net is None else str(read.net), "out_of_step": read.out_of_step}
        return {"redis": self.probe.error or "ok", "groups": groups}

    def tick(self) -> None:
        self.probe.poll()
        self.pager.flush()
        for venues in self.venues:
            try:
                self._watch(venues)
            except Exception:
                # The one process that watches must outlive any one group's failure; the next tick reads again.
                log.exception("watchman group=%s: this tick failed", venues.group.name)

    def _watch(self, venues: GroupVenues) -> None:
        read = self._read(venues)
        if read is None:
            return
        now = self.clock()
        watch = self.watches[venues.group.name]
        verdict = watch.judge(read, self.probe.silent_for(group_bots(venues.group), now), self.probe.error, now)
        for text in verdict.alerts:
            self.pager.send(text)
        if verdict.unwind:
            self._unwind(venues, watch)

    def _read(self, venues: GroupVenues) -> GroupRead | None:
        try:
            rules = self._rules.get(venues.group.name) or venues.rules()
        except VenueError as exc:
            log.warning("watchman group=%s market rules unreadable: %s", venues.group.name, exc)
            return None
        self._rules[venues.group.name] = rules
        readings = venues.read()
        return GroupRead({r: (readings[r].quantity if readings[r] is not None else None)  # type: ignore[union-attr]
                          for r in ROLES}, rules)

    def _unwind(self, venues: GroupVenues, watch: GroupWatch) -> None:
        name = venues.group.name
        if watch.unwind_attempts == 0:
            self.pager.send(f"WATCHMAN group {name}: unwinding in step now with the watchman's own keys")
        watch.unwind_attempts += 1
        try:
            result: UnwindResult = unwind(venues, venues.group.params, retry_secs=min(1.0, self.config.interval_secs))
        except VenueError as exc:  # the market rules could not be read: nothing was sent
            self.pager.send(f"WATCHMAN group {name}: unwind could not start ({exc}); trying again after the next read")
            return
        watch.unwinding_done = result.flat
        self.pager.send(f"WATCHMAN group {name}: unwind {result.describe()}"
                        + ("" if result.flat else "; trying again after the next read"))
