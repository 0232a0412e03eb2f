"""Apply Backpack WebSocket events to the order book and the position cache.

Fills are counted once per trade id ``t`` whichever channel saw them first, and never twice
when the REST answer already reported the cumulative fill: a WS fill whose ``l`` would push the
local total past the venue's cumulative ``z`` is already counted.
WebSocket positions are kept with their receipt time; :meth:`StreamState.fresh_position`
hands one out only while it is young, the socket is up, and nothing was ordered since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

from venues.backpack.parsing import WsFrame, WsOrderEvent, WsPosition, bad, parse_ws_order, parse_ws_position
from venues.base import OrderState, PositionReading
from venues.orders import OrderBook, OrderTracker

log = logging.getLogger(__name__)

#: Trade ids remembered for de-duplication (bounded: ids only matter for minutes).
SEEN_TRADES = 10_000


@dataclass(frozen=True)
class CachedPosition:
    position: WsPosition
    received_mono: float
    received_at: float


def final_reason(state: OrderState, status: str, expiry_reason: str | None) -> str | None:
    if not state.final or state is OrderState.FILLED:
        return None
    return expiry_reason or status


class StreamState:
    """What the private streams told us; shared with the connector under ``lock``."""

    def __init__(self, account: str, book: OrderBook, lock: threading.RLock) -> None:
        self.account = account
        self.book = book
        self.lock = lock
        self.connected = False
        self._positions: dict[str, CachedPosition] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    # ---- dispatch ----------------------------------------------------------------------------
    def on_frame(self, frame: WsFrame) -> None:
        stream = frame.stream or ""
        if stream.startswith("account.orderUpdate"):
            self.apply_order(parse_ws_order(frame.data))
        elif stream.startswith("account.positionUpdate"):
            self.apply_position(parse_ws_position(frame.data))

    def on_state(self, connected: bool) -> None:
        with self.lock:
            self.connected = connected
            if not connected:
                # Positions pushed before a gap may have changed unseen (flat ones are not re-pushed).
                self._positions.clear()

    # ---- orders ------------------------------------------------------------------------------
    def apply_order(self, ev: WsOrderEvent) -> None:
        with self.lock:
            if ev.trade_id is not None and not self._first_sighting(ev.trade_id):
                return
            tracker = self.book.get(ev.client_id) if ev.client_id is not None else None
            if tracker is not None and tracker.symbol != ev.symbol:
                tracker = None
            if tracker is None:
                self._untracked(ev)
                return
            if ev.order_id and not tracker.venue_order_id:
                tracker.venue_order_id = ev.order_id
            if ev.trade_id is not None:
                self._apply_fill(tracker, ev, ev.trade_id)
            self.book.update_state(tracker.client_id, ev.state,
                                   reason=final_reason(ev.state, ev.status, ev.expiry_reason))

    def _first_sighting(self, trade_id: str) -> bool:
        if trade_id in self._seen:
            return False
        self._seen[trade_id] = None
        while len(self._seen) > SEEN_TRADES:
            self._seen.popitem(last=False)
        return True

    def _apply_fill(self, tracker: OrderTracker, ev: WsOrderEvent, trade_id: str) -> None:
        quantity, price = ev.fill_quantity, ev.fill_price
        if quantity is None or price is None:  # parse_ws_order reads both whenever ``t`` is set
            raise bad(f"fill {trade_id} without its quantity or price")
        if tracker.filled + quantity <= ev.cumulative:
            self.book.apply_fill(tracker.client_id, trade_id, quantity, price)
        else:
            # The REST answer already counted this fill in its executedQuantity.
            tracker.trade_ids.add(trade_id)
        tracker.apply_cumulative(ev.cumulative, ev.cumulative_quote)  # closes gaps from missed frames

    def _untracked(self, ev: WsOrderEvent) -> None:
        """Orders we did not send from this process (another run, liquidation, ADL): log their fills."""
        if ev.trade_id is not None:
            log.info("account=%s fill %s %s %s on %s not sent by this process (cid=%s origin=%s)", self.account,
                     ev.side.value, ev.fill_quantity, ev.fill_price, ev.symbol, ev.client_id, ev.origin)

    # ---- positions ---------------------------------------------------------------------------
    def apply_position(self, pos: WsPosition) -> None:
        with self.lock:
            self._positions[pos.symbol] = CachedPosition(pos, time.monotonic(), time.time())

    def fresh_position(self, symbol: str, max_age: float, after_mono: float | None = None,
                       after_venue_us: int | None = None) -> PositionReading | None:
        """The WS position if the socket is up, it is younger than ``max_age`` s, and it is newer
        than our last order on the symbol: received after its answer (``after_mono``, monotonic)
        and stamped after its venue ``createdAt`` (``after_venue_us``). The second test catches a
        frame of an earlier fill that reached us late; when in doubt, REST answers."""
        with self.lock:
            cached = self._positions.get(symbol) if self.connected else None
        if cached is None or time.monotonic() - cached.received_mono > max_age:
            return None
        if after_mono is not None and cached.received_mono <= after_mono:
            return None
        stamp = cached.position.event_time_us
        if after_venue_us is not None and (stamp is None or stamp <= after_venue_us):
            return None
        pos = cached.position
        return PositionReading(self.account, symbol, Decimal(pos.quantity), cached.received_at, "ws",
                               entry_price=pos.entry_price, mark_price=pos.mark_price)
