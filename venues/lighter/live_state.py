"""When the Lighter stream may answer a read instead of REST, and how REST keeps it honest.

A pushed position answers while the stream is live, every order this connector sent on the
market has been seen final on the stream (or a snapshot or REST read came after it), and the last
REST reconciliation is younger than ``reconcile_secs``. Otherwise the connector reads REST, and
that reading is compared with the cache: a difference that the stream does not close within
:data:`CONVERGE_SECS` (a push in flight) is logged, reported to ``on_disagreement`` and settled in
favour of REST.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from venues.lighter.reconcile import DEFAULT_RECONCILE_SECS
from venues.lighter.stream import LighterStream, StreamPosition, order_final

log = logging.getLogger(__name__)

#: How long a REST/stream difference may take to close by itself before it counts.
CONVERGE_SECS = 0.5
Disagreement = Callable[[str], None]


class LiveState:
    """The read policy over one account's :class:`LighterStream`; runs on the connector loop."""

    def __init__(self, stream: LighterStream, *, reconcile_secs: float = DEFAULT_RECONCILE_SECS,
                 on_disagreement: Disagreement | None = None) -> None:
        self.stream = stream
        self.reconcile_secs = reconcile_secs
        self.on_disagreement = on_disagreement
        #: market → {client id: monotonic time its send returned} not yet seen final on the stream.
        self._unseen: dict[int, dict[int, float]] = {}
        self._reconciled_mono: dict[int, float] = {}
        self.disagreements = 0

    def position(self, market_id: int) -> StreamPosition | None:
        """The pushed position if it may answer now, else None (read REST)."""
        cached = self.stream.position(market_id)
        if cached is None:
            return None
        if time.monotonic() - self._reconciled_mono.get(market_id, float("-inf")) > self.reconcile_secs:
            return None
        return cached if not self._pending(market_id) else None

    def sent(self, market_id: int, client_id: int) -> None:
        """An order's send returned (accepted, or outcome unknown): its fill must reach the cache first."""
        self._unseen.setdefault(market_id, {})[client_id] = time.monotonic()

    def _pending(self, market_id: int) -> bool:
        unseen = self._unseen.get(market_id)
        if not unseen:
            return False
        snapshot = self.stream.snapshot_mono
        for cid, sent_at in list(unseen.items()):
            # A snapshot taken after the send returned already holds that order's fills.
            if order_final(self.stream.order(cid)) or snapshot > sent_at:
                del unseen[cid]
        return bool(unseen)

    async def reconcile(self, market_id: int, quantity: Decimal, entry_price: Decimal | None,
                        started_mono: float) -> None:
        """Compare a REST position read (begun at ``started_mono``) with the cache; REST wins."""
        unseen = self._unseen.get(market_id, {})
        for cid in [c for c, sent_at in unseen.items() if sent_at < started_mono]:
            del unseen[cid]  # the read began after the send returned: it holds the fills
        self._reconciled_mono[market_id] = time.monotonic()
        if self.stream.position(market_id) is None or unseen:
            return
        since = self.stream.version
        deadline = time.monotonic() + CONVERGE_SECS
        while (cached := self.stream.position(market_id)) is not None and cached.quantity != quantity:
            left = deadline - time.monotonic()
            if left <= 0:
                self._disagree(market_id, cached.quantity, quantity)
                self.stream.set_position(market_id, quantity, entry_price)
                return
            since = await self.stream.wait_change(since, left)

    def _disagree(self, market_id: int, streamed: Decimal, rest: Decimal) -> None:
        self.disagreements += 1
        text = (f"{self.stream.account}: the Lighter stream says market {market_id} position {streamed}, "
                f"REST says {rest}; using REST")
        log.warning("account=%s %s", self.stream.account, text)
        if self.on_disagreement is not None:
            try:
                self.on_disagreement(text)
            except Exception:
                log.exception("account=%s disagreement report failed", self.stream.account)

    async def final_order(self, client_id: int, deadline: float) -> dict[str, Any] | None:
        """Wait (until the monotonic ``deadline``) for the stream to push ``client_id`` final; the
        order, or None when the stream is not live, went down, or the deadline passed."""
        while self.stream.live:
            order = self.stream.order(client_id)
            if order_final(order):
                return order
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self.stream.wait_change(self.stream.version, left)
        return None
