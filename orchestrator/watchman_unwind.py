"""The watchman's own unwind of a group: the exit in step of :mod:`orchestrator.cycle.in_step`, run in
one process with the watchman's own keys, straight against the venues (no Redis, no worker).

Each step starts from a fresh read of the three positions (baselines zero: the watchman cannot
always read a cycle's record, so it unwinds the accounts to flat) and sends what
:func:`~orchestrator.cycle.in_step.next_step` decides: a catch-up when the net is a Backpack step or more off zero,
else reduce-only capped closes of the open Lighter legs, whose fills Backpack then takes back off
the net before the next read. An order whose outcome the venue did not tell is looked up by its
client id before anything else is sent; while it stays unknown nothing is sent.

Client ids: Lighter ids are taken from ``[2^47, 2^48)``, a range the workers' counters (seeded from
the clock in milliseconds, about 1.8e12 today) do not reach for thousands of years. Backpack ids
share the workers' 32-bit range, so each is drawn at random and used only after the venue confirms
it has no order with it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from core.client_ids import BACKPACK_MAX_CLIENT_ID
from core.config import GroupConfig, HedgeParams, Role
from orchestrator.cycle.commands import ExitOrder
from orchestrator.cycle.in_step import ROLE_BY_SHORT, ExitState, ExitStepKind, SlippageLadder, catch_up, next_step
from venues.base import MarketRules, OrderReport, PositionReading, ReasonCode, Side, VenueConnector, VenueError

log = logging.getLogger(__name__)

#: The watchman keys its connectors and reads by the roles' short names ("BP", "L1", "L2").
ROLE_OF = ROLE_BY_SHORT
ROLES = tuple(ROLE_OF)
_LIGHTER_ID_BASE = 2**47


class UnknownOutcome(Exception):
    """An order of the watchman's may or may not have reached the venue; nothing more is sent."""


@dataclass
class WatchmanIds:
    """Client ids for the watchman's own orders (see the module docstring for the ranges)."""

    _last_lighter: int = 0

    def lighter(self) -> int:
        now_us = time.time_ns() // 1000 % _LIGHTER_ID_BASE
        self._last_lighter = max(self._last_lighter + 1, _LIGHTER_ID_BASE + now_us)
        return self._last_lighter

    @staticmethod
    def backpack(connector: VenueConnector, symbol: str) -> int:
        for _ in range(5):
            candidate = 1 + secrets.randbelow(BACKPACK_MAX_CLIENT_ID - 1)
            if connector.find_order(symbol, candidate) is None:  # raises when the venue cannot say
                return candidate
        raise VenueError(ReasonCode.INVALID_REQUEST, "no free Backpack client id in 5 draws")


@dataclass
class GroupVenues:
    """One group's three accounts as the watchman reaches them: its own connectors, by role."""

    group: GroupConfig
    connectors: dict[str, VenueConnector]
    ids: WatchmanIds = field(default_factory=WatchmanIds)
    #: Orders sent whose outcome is unknown: (role, client id); looked up before anything is sent.
    unknown: list[tuple[str, int]] = field(default_factory=list)

    def symbol(self, role: str) -> str:
        return self.group.symbol_for(ROLE_OF[role])

    def read(self) -> dict[str, PositionReading | None]:
        """A fresh REST read of each role; None where the venue could not be read (unknown)."""
        out: dict[str, PositionReading | None] = {}
        for role in ROLES:
            try:
                reading = self.connectors[role].get_position(self.symbol(role))
            except VenueError as exc:
                log.warning("watchman group=%s %s position unreadable: %s", self.group.name, role, exc)
                reading = None
            out[role] = reading if reading is not None and reading.known else None
        return out

    def rules(self) -> dict[str, MarketRules]:
        return {role: self.connectors[role].market_rules(self.symbol(role)) for role in ROLES}

    def send(self, order: ExitOrder) -> OrderReport:
        """One capped order under a fresh client id of the watchman's (reduce-only unless it is
        Backpack's offset of the net)."""
        role = order.role.short
        connector, symbol = self.connectors[role], self.symbol(role)
        client_id = self.ids.backpack(connector, symbol) if order.role is Role.BP else self.ids.lighter()
        log.info("watchman group=%s %s %s %s reduce_only=%s cap %.4f client_id=%d", self.group.name, role,
                 order.side.value, order.quantity, order.reduce_only, order.max_slippage, client_id)
        try:
            return connector.submit_market_order(symbol, client_id, order.side, order.quantity,
                                                 reduce_only=order.reduce_only,
                                                 max_slippage=order.max_slippage)
        except VenueError as exc:
            if exc.outcome_unknown:
                self.unknown.append((role, client_id))
                raise UnknownOutcome(f"{role} order {client_id}: {exc}") from None
            raise

    def resolve_unknown(self) -> None:
        """Look every order of unknown outcome up; raises UnknownOutcome while one stays unknown."""
        for role, client_id in list(self.unknown):
            try:
                self.connectors[role].find_order(self.symbol(role), client_id)
            except VenueError as exc:
                raise UnknownOutcome(f"{role} order {client_id} still unknown: {exc}") from None
            self.unknown.remove((role, client_id))  # found or confirmed absent: the next read tells the rest

    def close(self) -> None:
        for connector in self.connectors.values():
            try:
                connector.close()
            except Exception:
                log.exception("watchman closing %s failed", connector.account)


@dataclass(frozen=True)
class UnwindResult:
    """How the watchman's unwind ended: flat (dust allowed), or not, with the last read."""

    flat: bool
    steps: int
    positions: dict[str, Decimal | None]
    detail: str

    def describe(self) -> str:
        shown = ", ".join(f"{r}={'unknown' if q is None else q}" for r, q in self.positions.items())
        return f"{'flat' if self.flat else 'NOT flat'} after {self.steps} step(s) ({shown}){self.detail}"


def _signed(report: OrderReport) -> Decimal:
    return report.filled if report.side is Side.BUY else -report.filled


def _run_step(venues: GroupVenues, state: ExitState, number: int, lighter: SlippageLadder,
              backpack: SlippageLadder) -> bool:
    """Send one step's orders; False when the step had nothing to send (the unwind is done)."""
    step = next_step(state, number, lighter, backpack)
    if step.done:
        return False
    fills: dict[Role, Decimal] = {}
    for order in step.orders:
        report = venues.send(order)
        fills[order.role] = fills.get(order.role, Decimal(0)) + _signed(report)
    if step.kind is ExitStepKind.LIGHTER_CLOSE:
        # What the Lighter closes filled comes off the net at once, before the next read.
        match = catch_up(state.with_fills(fills), backpack.cap(number), lighter.cap(number))
        if match is not None:
            venues.send(match)
    return True


def unwind(venues: GroupVenues, params: HedgeParams, *, sleep: Callable[[float], None] = time.sleep,
           retry_secs: float = 1.0) -> UnwindResult:
    """Unwind the group in step until a fresh read says there is nothing left to send."""
    lighter = SlippageLadder(params.exit_start_slippage, params.exit_slippage_step, params.exit_max_slippage)
    backpack = SlippageLadder(params.backpack_max_slippage, params.exit_slippage_step, params.exit_max_slippage)
    rules = venues.rules()
    positions: dict[str, Decimal | None] = {role: None for role in ROLES}
    for number in range(params.exit_max_steps):
        try:
            venues.resolve_unknown()
            readings = venues.read()
            positions = {r: (x.quantity if x is not None else None) for r, x in readings.items()}
            known = {r: q for r, q in positions.items() if q is not None}
            if len(known) < len(ROLES):
                log.warning("watchman group=%s step %d: a position is unknown; reading again", venues.group.name,
                            number)
                sleep(retry_secs)
                continue
            state = ExitState({ROLE_OF[r]: q for r, q in known.items()}, {},
                              {ROLE_OF[r]: x for r, x in rules.items()})
            if not _run_step(venues, state, number, lighter, backpack):
                dust = {r: str(q) for r, q in known.items() if q != 0}
                flat = all(state.tradable(ROLE_OF[r], abs(q)) == 0 for r, q in known.items())
                return UnwindResult(flat, number, positions, f", dust {dust}" if dust else "")
        except (UnknownOutcome, VenueError) as exc:
            log.warning("watchman group=%s step %d: %s", venues.group.name, number, exc)
            sleep(retry_secs)
    return UnwindResult(False, params.exit_max_steps, positions, "")
