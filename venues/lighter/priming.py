"""What an armed hedge prepared before its size was known: the book and the signed order.

Signing costs ~1 ms and a top-of-book read another venue round trip; both sit between the entry's
fill and the hedge's send unless they are done while the hedge waits. Each prepared item is used
at most once and only while fresh: a price read too long ago is read again, and a signature for
another size, price or nonce is made again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

from venues.base import Side, TopOfBook
from venues.lighter.signer import Presigned

#: How old a primed book may be when the order is priced off it (the entry fills within milliseconds).
PRIMED_MAX_AGE_SECS = 1.0


@dataclass(frozen=True)
class PrimedOrder:
    """The order the hedge expects to send, signed for the next nonce."""

    symbol: str
    side: Side
    size: Decimal
    price: Decimal
    reduce_only: bool
    presigned: Presigned


@dataclass
class Primed:
    """Prepared books (by symbol) and orders (by client id), each taken once."""

    books: dict[str, tuple[float, TopOfBook]] = field(default_factory=dict)
    orders: dict[int, PrimedOrder] = field(default_factory=dict)

    def put_book(self, symbol: str, book: TopOfBook) -> None:
        self.books[symbol] = (time.monotonic(), book)

    def take_book(self, symbol: str) -> TopOfBook | None:
        primed = self.books.pop(symbol, None)
        if primed is None or time.monotonic() - primed[0] > PRIMED_MAX_AGE_SECS:
            return None
        return primed[1]

    def take_order(self, client_id: int, symbol: str, side: Side, size: Decimal, price: Decimal,
                   reduce_only: bool) -> Presigned | None:
        """The presigned tx of exactly this order, if one was prepared."""
        order = self.orders.pop(client_id, None)
        if order is None or order != PrimedOrder(symbol, side, size, price, reduce_only, order.presigned):
            return None
        return order.presigned
