"""Shared market model behind the Backpack and Lighter simulators.

One seeded price process per base asset drives both venues (Lighter quotes a configurable
spread away from Backpack). Accounts hold collateral and signed positions per base asset;
fills move them and realise PnL. Every accepted order goes to an audit log so tests can prove
that no client id produced two orders. Faults are armed for the next N matching requests.

The model is venue-neutral and synchronous; the servers call it under one lock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from enum import Enum
from typing import Any

from simulators import margin
from simulators.book import Level, PriceModel, walk
from simulators.funding import FundingPayment, settle
from simulators.margin import Liquidation
from simulators.profile import SimProfile

#: What the market tells the venues about: a position closed by the engine or admin, a funding payment.
MarketEvent = Liquidation | FundingPayment
MarketListener = Callable[[MarketEvent], None]


class FaultKind(str, Enum):
    """Faults the admin API can arm for the next N matching requests."""

    #: Answer HTTP 429 in the venue's error shape.
    HTTP_429 = "http_429"
    #: Answer HTTP 500 in the venue's error shape.
    HTTP_500 = "http_500"
    #: Hold the request for ``seconds`` (default 30) before answering normally.
    HANG = "hang"
    #: Accept and execute the order, then hold the response for ``seconds`` (client times out).
    TIMEOUT_AFTER_ACCEPT = "timeout_after_accept"
    #: Close the account's WebSocket connections.
    DROP_WS = "drop_ws"
    #: Lighter: the next account push is never sent (the socket stays up; a lost update).
    MISS_PUSH = "miss_push"
    #: Lighter: answer ``{"code":21104,"message":"invalid nonce"}`` with HTTP 400.
    INVALID_NONCE = "invalid_nonce"
    #: Fill only ``fraction`` (default 0.5) of the next market order.
    PARTIAL_FILL = "partial_fill"
    #: Position reads return the position as it was when the fault was armed.
    STALE_POSITION = "stale_position"


@dataclass
class Fault:
    kind: FaultKind
    venue: str
    remaining: int
    #: Which operations it matches ("order", "position", "any", ...); see each simulator.
    op: str = "any"
    account: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Position:
    quantity: Decimal = Decimal(0)
    entry_price: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)
    #: Funding received (+) or paid (−) since the position opened (profile.FundingProfile).
    cumulative_funding: Decimal = Decimal(0)
    #: Trading fees paid on this position's fills (profile.FeeProfile).
    fees_paid: Decimal = Decimal(0)


@dataclass
class SimAccount:
    venue: str
    key: str
    collateral: Decimal
    positions: dict[str, Position] = field(default_factory=dict)
    #: Lighter: the account's own initial-margin fraction per base, set by UpdateLeverage (tx type 20);
    #: a base without one trades at the profile's ``lighter_imf`` (the market default).
    initial_fractions: dict[str, Decimal] = field(default_factory=dict)

    def position(self, base: str) -> Position:
        return self.positions.setdefault(base, Position())


@dataclass(frozen=True)
class AuditEntry:
    ts: float
    venue: str
    account: str
    client_id: int | None
    order_id: str
    base: str
    side: str
    quantity: str
    filled: str
    avg_price: str | None
    reduce_only: bool
    status: str

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Exchange:
    """The shared state of both simulated venues."""

    def __init__(self, *, seed: int = 7, starting_collateral: Decimal = Decimal(10000),
                 prices: dict[str, Decimal] | None = None, audit_limit: int = 100_000,
                 profile: SimProfile | None = None) -> None:
        self.lock = threading.RLock()
        self.profile = profile if profile is not None else SimProfile()
        path_seed = self.profile.price_path.seed
        self.rng = random.Random(seed if path_seed is None else path_seed)
        self.starting_collateral = starting_collateral
        self.prices = {b: PriceModel(b, p, self.profile.depth)
                       for b, p in (prices or {"ETH": Decimal(3000), "BTC": Decimal(60000)}).items()}
        self.accounts: dict[tuple[str, str], SimAccount] = {}
        self.audit: deque[AuditEntry] = deque(maxlen=audit_limit)
        self.faults: list[Fault] = []
        self.latency_ms: float = 0.0
        self._order_seq = 4_227_700_000
        self._stale: dict[tuple[str, str, str], Decimal] = {}
        #: Every funding payment, oldest first (both venues' funding history endpoints read it).
        self.funding_log: deque[FundingPayment] = deque(maxlen=audit_limit)
        self.liquidations: deque[Liquidation] = deque(maxlen=audit_limit)
        #: Venue apps subscribe to liquidations and funding to write their own records and push events.
        self.listeners: list[MarketListener] = []
        self._funding_seq = 1
        self._next_funding: float | None = None
        #: (venue, who, endpoint) → [requests, of which answered 429]: the venues' REST requests as
        #: their rate limits count them (who: ``account:<index>`` when authenticated, ``ip:<address>``).
        self.requests: dict[tuple[str, str, str], list[int]] = {}

    def count_request(self, venue: str, who: str, endpoint: str, *, limited: bool) -> None:
        with self.lock:
            counts = self.requests.setdefault((venue, who, endpoint), [0, 0])
            counts[0] += 1
            counts[1] += int(limited)

    def request_log(self, venue: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [{"venue": v, "who": w, "endpoint": e, "count": c, "limited": n}
                    for (v, w, e), (c, n) in sorted(self.requests.items()) if venue in (None, v)]

    def request_totals(self, venue: str) -> dict[str, dict[str, int]]:
        """One venue's requests per ``who`` (its rate-limit bucket), all endpoints: total and 429s."""
        out: dict[str, dict[str, int]] = {}
        for row in self.request_log(venue):
            counts = out.setdefault(row["who"], {"requests": 0, "limited": 0})
            counts["requests"] += row["count"]
            counts["limited"] += row["limited"]
        return out

    # ---- accounts ---------------------------------------------------------------------------
    def account(self, venue: str, key: str, collateral: Decimal | None = None) -> SimAccount:
        with self.lock:
            acct = self.accounts.get((venue, key))
            if acct is None:
                acct = SimAccount(venue, key, self.starting_collateral if collateral is None else collateral)
                self.accounts[(venue, key)] = acct
            return acct

    def next_order_id(self) -> str:
        with self.lock:
            self._order_seq += 1
            return str(self._order_seq)

    def equity(self, acct: SimAccount) -> Decimal:
        with self.lock:
            total = acct.collateral
            for base, pos in acct.positions.items():
                if pos.quantity:
                    total += (self.mark(acct.venue, base) - pos.entry_price) * pos.quantity
            return total

    def mark(self, venue: str, base: str) -> Decimal:
        return self.prices[base].venue_mid(venue)

    def position_quantity(self, venue: str, key: str, base: str) -> Decimal:
        """The position as reads see it (a STALE_POSITION fault freezes it)."""
        with self.lock:
            frozen = self._stale.get((venue, key, base))
            if frozen is not None:
                return frozen
            return self.account(venue, key).position(base).quantity

    # ---- prices -----------------------------------------------------------------------------
    def set_price(self, base: str, price: Decimal) -> None:
        with self.lock:
            self.prices[base].mid = price

    def step_prices(self, volatility: Decimal | None = None) -> None:
        """One seeded step of the price path (called by the servers' ticker): a Gaussian return with
        the profile's volatility and drift, plus a jump with probability ``jump_probability``.
        With liquidation on, accounts the move pushed below maintenance are closed at the new mark."""
        path = self.profile.price_path
        sigma = path.volatility if volatility is None else volatility
        with self.lock:
            for model in self.prices.values():
                shock = Decimal(str(self.rng.gauss(0, 1))) * sigma + path.drift
                if path.jump_probability and self.rng.random() < float(path.jump_probability):
                    direction = path.jump_direction or (1 if self.rng.random() < 0.5 else -1)
                    shock += direction * path.jump_size
                model.mid = model.mid * (1 + shock)
            if self.profile.margin.liquidate:
                self.check_liquidations()

    def book(self, venue: str, base: str) -> tuple[list[Level], list[Level]]:
        with self.lock:
            return self.prices[base].book(venue)

    # ---- execution --------------------------------------------------------------------------
    def fee(self, venue: str, notional: Decimal, maker: bool) -> Decimal:
        """The fee the profile charges on a fill of ``notional`` (what fill records report)."""
        return abs(notional) * self.profile.fees.rate(venue, maker)

    def execute_market(self, venue: str, key: str, base: str, side: str, quantity: Decimal, *,
                       step: Decimal, worst_price: Decimal | None = None, reduce_only: bool = False,
                       fill_fraction: Decimal | None = None,
                       maker: bool = False) -> tuple[Decimal, Decimal | None, str | None]:
        """Fill an order against the book: (filled, avg_price, reject_reason).

        ``reject_reason`` is ``"reduce_only"`` when a reduce-only order would increase or flip the
        position (nothing filled) and ``"margin"`` when collateral cannot carry it. The fill's fee
        (maker or taker rate of the venue) is taken from the collateral.
        """
        with self.lock:
            acct = self.account(venue, key)
            pos = acct.position(base)
            sign = 1 if side == "buy" else -1
            if reduce_only:
                if pos.quantity == 0 or (pos.quantity > 0) == (sign > 0):
                    return Decimal(0), None, "reduce_only"
                quantity = min(quantity, abs(pos.quantity))
            if fill_fraction is not None:
                quantity = (quantity * fill_fraction / step).to_integral_value(rounding=ROUND_DOWN) * step
            bids, asks = self.book(venue, base)
            filled, notional = walk(asks if sign > 0 else bids, quantity, sign, worst_price)
            if filled <= 0:
                return Decimal(0), None, None
            fee = self.fee(venue, notional, maker)
            if not reduce_only and not margin.order_allowed(self, acct, base, pos.quantity + sign * filled, fee):
                return Decimal(0), None, "margin"
            self._apply_fill(acct, pos, sign * filled, notional / filled)
            acct.collateral -= fee
            pos.fees_paid += fee
            return filled, notional / filled, None

    @staticmethod
    def _apply_fill(acct: SimAccount, pos: Position, signed: Decimal, price: Decimal) -> None:
        old = pos.quantity
        new = old + signed
        if old == 0 or (old > 0) == (signed > 0):
            pos.entry_price = ((pos.entry_price * abs(old)) + price * abs(signed)) / abs(new) if new else Decimal(0)
        else:
            closed = min(abs(signed), abs(old))
            pnl = (price - pos.entry_price) * closed * (1 if old > 0 else -1)
            pos.realized_pnl += pnl
            acct.collateral += pnl
            if (old > 0) != (new > 0) and new != 0:
                pos.entry_price = price
            elif new == 0:
                # A closed position starts its next life with no funding or fee history.
                pos.entry_price = Decimal(0)
                pos.cumulative_funding = pos.fees_paid = Decimal(0)
        pos.quantity = new

    def liquidate(self, venue: str, key: str, base: str, cause: str = "admin", leave: Decimal = Decimal(0)) -> Decimal:
        """Force the position to zero at the mark (what the hedge's monitor watches for), or with
        ``leave`` down to that size on the same side (a partial liquidation, as venues close only what
        restores the margin); the venues hear of it through :attr:`listeners` and write their
        liquidation records of the closed part."""
        with self.lock:
            acct = self.account(venue, key)
            pos = acct.position(base)
            before = pos.quantity
            kept = min(abs(leave), abs(before)) * (1 if before > 0 else -1)
            closed = before - kept
            if closed:
                price = self.mark(venue, base)
                self._apply_fill(acct, pos, -closed, price)
                self._publish(Liquidation(venue, key, base, closed, price, int(time.time() * 1000), cause))
            self._stale.pop((venue, key, base), None)
            return before

    def check_liquidations(self) -> list[Liquidation]:
        """Close every position of each account whose equity fell below maintenance (margin.py)."""
        closed: list[Liquidation] = []
        with self.lock:
            for acct in list(self.accounts.values()):
                if margin.below_maintenance(self, acct):
                    for base, pos in acct.positions.items():
                        if pos.quantity:
                            self.liquidate(acct.venue, acct.key, base, cause="engine")
                            closed.append(self.liquidations[-1])
        return closed

    def clock(self, now: float | None = None) -> None:
        """Time-driven rules, called by the server's clock task: funding when an interval has passed,
        then the liquidation check (funding can push an account under maintenance too)."""
        now = time.time() if now is None else now
        with self.lock:
            if self.profile.funding.enabled:
                if self._next_funding is None:
                    self._next_funding = now + self.profile.funding.interval_secs
                while now >= self._next_funding:
                    self._next_funding += self.profile.funding.interval_secs
                    for payment in settle(self, int(now * 1000), self._funding_seq):
                        self._funding_seq += 1
                        self._publish(payment)
            if self.profile.margin.liquidate:
                self.check_liquidations()

    def _publish(self, event: MarketEvent) -> None:
        if isinstance(event, Liquidation):
            self.liquidations.append(event)
        else:
            self.funding_log.append(event)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a venue's record-keeping must never undo the market's move
                logging.getLogger(__name__).exception("market listener failed on %s", event)

    def record(self, entry: AuditEntry) -> None:
        with self.lock:
            self.audit.append(entry)

    # ---- faults -----------------------------------------------------------------------------
    def arm_fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)
            if fault.kind is FaultKind.STALE_POSITION:
                for (venue, key), acct in self.accounts.items():
                    if venue == fault.venue and (fault.account is None or fault.account == key):
                        for base, pos in acct.positions.items():
                            self._stale[(venue, key, base)] = pos.quantity

    def take_fault(self, venue: str, op: str, account: str | None = None,
                   kinds: tuple[FaultKind, ...] | None = None) -> Fault | None:
        """Consume one matching armed fault, if any."""
        with self.lock:
            for fault in self.faults:
                if fault.venue != venue or fault.remaining <= 0:
                    continue
                if fault.op not in ("any", op):
                    continue
                if fault.account is not None and account is not None and fault.account != account:
                    continue
                if kinds is not None and fault.kind not in kinds:
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                    if fault.kind is FaultKind.STALE_POSITION:
                        self._stale = {k: v for k, v in self._stale.items() if k[0] != venue}
                return fault
            return None

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self._stale.clear()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "now": time.time(),
                "latency_ms": self.latency_ms,
                "prices": {b: str(m.mid) for b, m in self.prices.items()},
                "accounts": [
                    {"venue": a.venue, "account": a.key, "collateral": str(a.collateral),
                     "equity": str(self.equity(a)),
                     "positions": {b: {"quantity": str(p.quantity), "entry_price": str(p.entry_price),
                                       "realized_pnl": str(p.realized_pnl), "fees_paid": str(p.fees_paid),
                                       "cumulative_funding": str(p.cumulative_funding)}
                                   for b, p in a.positions.items()}}
                    for a in self.accounts.values()
                ],
                "faults": [{"kind": f.kind.value, "venue": f.venue, "op": f.op, "remaining": f.remaining,
                            "account": f.account, "params": f.params} for f in self.faults],
                "audit_size": len(self.audit),
            }
