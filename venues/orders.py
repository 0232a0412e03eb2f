"""Order state machine with fill de-duplication.

``NEW → SUBMITTING → OPEN → PARTIALLY_FILLED → FILLED | CANCELLED | FAILED``. A tracker never
moves backwards and never leaves a final state, so a late WebSocket status cannot overwrite
FILLED. Fills are counted once per trade id, whichever channel reports them first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal

from venues.base import OrderReport, OrderState, Side

_RANK = {
    OrderState.NEW: 0,
    OrderState.SUBMITTING: 1,
    OrderState.OPEN: 2,
    OrderState.PARTIALLY_FILLED: 3,
    OrderState.FILLED: 4,
    OrderState.CANCELLED: 4,
    OrderState.FAILED: 4,
}


@dataclass
class OrderTracker:
    """Local view of one order, keyed by client id."""

    client_id: int
    symbol: str
    side: Side
    requested: Decimal
    reduce_only: bool = False
    state: OrderState = OrderState.NEW
    venue_order_id: str | None = None
    filled: Decimal = Decimal(0)
    filled_quote: Decimal = Decimal(0)
    reason: str | None = None
    trade_ids: set[str] = field(default_factory=set)

    def transition(self, new: OrderState, reason: str | None = None) -> bool:
        """Move to ``new`` if that is forward; returns whether the state changed."""
        if self.state.final or _RANK[new] < _RANK[self.state] or new is self.state:
            return False
        if new is OrderState.FAILED and self.filled > 0:
            # A "failed" order that filled something is a cancelled remainder, not a failure.
            new = OrderState.CANCELLED
        self.state = new
        if reason:
            self.reason = reason
        return True

    def apply_fill(self, trade_id: str, quantity: Decimal, price: Decimal) -> bool:
        """Count a fill once; returns False for a trade id already seen."""
        if trade_id in self.trade_ids:
            return False
        self.trade_ids.add(trade_id)
        self.filled += quantity
        self.filled_quote += quantity * price
        if not self.state.final:
            self.transition(OrderState.FILLED if self.filled >= self.requested else OrderState.PARTIALLY_FILLED)
        return True

    def apply_cumulative(self, filled: Decimal, filled_quote: Decimal | None = None) -> None:
        """Apply a venue-reported cumulative fill (only ever grows)."""
        if filled > self.filled:
            self.filled = filled
            if filled_quote is not None:
                self.filled_quote = filled_quote
            if not self.state.final:
                self.transition(OrderState.FILLED if filled >= self.requested else OrderState.PARTIALLY_FILLED)

    @property
    def avg_price(self) -> Decimal | None:
        return (self.filled_quote / self.filled) if self.filled > 0 and self.filled_quote > 0 else None

    def report(self, *, existing: bool = False) -> OrderReport:
        return OrderReport(
            client_id=self.client_id, symbol=self.symbol, side=self.side, requested=self.requested,
            filled=self.filled, state=self.state, venue_order_id=self.venue_order_id,
            avg_price=self.avg_price, reduce_only=self.reduce_only, reason=self.reason, existing=existing,
        )


class OrderBook:
    """Trackers of one connector; thread-safe (WebSocket threads feed it)."""

    def __init__(self, account: str, max_trackers: int = 1000) -> None:
        self.account = account
        self._trackers: dict[int, OrderTracker] = {}
        self._lock = threading.RLock()
        self._max = max_trackers

    def track(self, tracker: OrderTracker) -> OrderTracker:
        with self._lock:
            # A client id is never reused, so a new tracker for it replaces nothing useful;
            # evict the oldest final trackers to bound memory (live ones are never evicted).
            self._trackers[tracker.client_id] = tracker
            if len(self._trackers) > self._max:
                for cid in [c for c, t in self._trackers.items() if t.state.final][: len(self._trackers) - self._max]:
                    del self._trackers[cid]
            return tracker

    def get(self, client_id: int) -> OrderTracker | None:
        with self._lock:
            return self._trackers.get(client_id)

    def update_state(self, client_id: int, state: OrderState, *, reason: str | None = None,
                     venue_order_id: str | None = None) -> OrderTracker | None:
        with self._lock:
            tracker = self._trackers.get(client_id)
            if tracker is None:
                return None
            if venue_order_id and not tracker.venue_order_id:
                tracker.venue_order_id = venue_order_id
            tracker.transition(state, reason)
        return tracker

    def apply_fill(self, client_id: int, trade_id: str, quantity: Decimal, price: Decimal) -> OrderTracker | None:
        with self._lock:
            tracker = self._trackers.get(client_id)
            if tracker is not None:
                tracker.apply_fill(trade_id, quantity, price)
            return tracker
