"""The Lighter WebSocket of one worker: the account's positions and orders and
the watched markets' books, cached with their receipt time.

One connection to ``/stream`` on the connector's loop, subscribed to ``account_all/<index>`` (no
auth, as the SDK's WsClient sends none) and ``order_book/<market>`` per watched market. Requests
name channels with a slash and replies with a colon. A (re)connect's ``subscribed/...`` snapshot
replaces the cache; ``update/...`` messages merge into it (positions per market, orders per client
order index, book levels per price string, a level of size 0 removed). aiohttp's heartbeat pings
every :attr:`LighterStream.heartbeat` seconds and drops a connection that stops answering, so an
open socket with its snapshots in is current: the cache is *live*. Anything else (connecting, a
gap, a lost snapshot) is not, and the connector reads REST instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import aiohttp

from venues.base import VenueError
from venues.lighter.parsing import CANCEL_PREFIXES, as_dict, signed_position
from venues.proxy import env_proxy

log = logging.getLogger(__name__)

#: Orders remembered by client order index (a cycle needs a handful; ids only matter for minutes).
REMEMBERED_ORDERS = 2_000
StateSink = Callable[[dict[str, Any]], None]


def order_final(order: Mapping[str, Any] | None) -> bool:
    """Whether a pushed ``Order`` is final (filled, or any ``canceled-*`` status)."""
    status = str((order or {}).get("status") or "").strip().lower()
    return status == "filled" or status.startswith(CANCEL_PREFIXES)


class StreamState(StrEnum):
    """Where the connection is; only ``LIVE`` lets the cache answer."""

    #: Not started, or stopped with the connector.
    IDLE = "idle"
    #: Opening the socket or waiting for the account snapshot.
    CONNECTING = "connecting"
    #: Socket open, snapshots in: cached values are current.
    LIVE = "live"
    #: The socket closed or failed; reconnecting after a backoff.
    DOWN = "down"


@dataclass(frozen=True)
class StreamPosition:
    """A position as the stream last pushed it.

    Fields:
      quantity        signed size (``sign × position``)
      entry_price     average entry price, None when flat or not sent
      received_at     wall-clock receipt time (``time.time()``)
      received_mono   monotonic receipt time
    """

    quantity: Decimal
    entry_price: Decimal | None
    received_at: float
    received_mono: float


@dataclass(frozen=True)
class StreamTop:
    """Best bid and ask of a watched market from the streamed book, with its receipt time."""

    bid: Decimal | None
    ask: Decimal | None
    received_at: float


class _Book:
    def __init__(self) -> None:
        self.asks: dict[str, Decimal] = {}
        self.bids: dict[str, Decimal] = {}
        self.received_at = 0.0

    def apply(self, body: Mapping[str, Any], snapshot: bool) -> None:
        if snapshot:
            self.asks.clear()
            self.bids.clear()
        for side, levels in ((self.asks, body.get("asks")), (self.bids, body.get("bids"))):
            for level in levels or []:
                # Levels merge by their exact price string, as the SDK's client does.
                price, size = str(level["price"]), Decimal(str(level["size"]))
                if size == 0:
                    side.pop(price, None)
                else:
                    side[price] = size
        self.received_at = time.time()

    def top(self) -> StreamTop:
        bid = max((Decimal(p) for p in self.bids), default=None)
        ask = min((Decimal(p) for p in self.asks), default=None)
        return StreamTop(bid, ask, self.received_at)


class LighterStream:
    """One reconnecting ``/stream`` connection and its cache; every method runs on the connector loop."""

    #: Seconds between WebSocket pings; a ping unanswered for half of it closes the socket.
    heartbeat = 5.0
    #: Backoff between reconnects: doubles per failed attempt, resets after a healthy connection.
    backoff_initial = 0.2
    backoff_max = 15.0
    healthy_after_secs = 5.0

    def __init__(self, account: str, url: str, account_index: int, *, on_state: StateSink | None = None) -> None:
        self.account = account
        self.url = url
        self.account_index = int(account_index)
        self.state = StreamState.IDLE
        self.connects = 0
        self.last_message_at: float | None = None
        #: Bumped by every applied message; waiters compare against it.
        self.version = 0
        self._on_state = on_state
        self._markets: set[int] = set()
        self._positions: dict[int, StreamPosition] = {}
        self._orders: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._books: dict[int, _Book] = {}
        self._account_ready = False
        self.snapshot_at = self.snapshot_mono = 0.0
        self._changed = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- control -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"lighter-stream-{self.account}")

    def watch_market(self, market_id: int) -> None:
        """Subscribe to ``market_id``'s book (now if connected, else on the next connect)."""
        if market_id in self._markets:
            return
        self._markets.add(market_id)
        if self._ws is not None and not self._ws.closed:
            task = asyncio.get_running_loop().create_task(self._subscribe(self._ws, f"order_book/{market_id}"))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(StreamState.IDLE)

    # ---- cache -------------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.state is StreamState.LIVE and self._ws is not None and not self._ws.closed

    def position(self, market_id: int) -> StreamPosition | None:
        """The pushed position of ``market_id`` while live (flat when the snapshot lists none)."""
        if not (self.live and self._account_ready):
            return None
        cached = self._positions.get(market_id)
        if cached is None:  # the snapshot lists every market the account ever traded
            return StreamPosition(Decimal(0), None, self.snapshot_at, self.snapshot_mono)
        return cached

    def top(self, market_id: int) -> StreamTop | None:
        book = self._books.get(market_id)
        return book.top() if self.live and book is not None else None

    def order(self, client_id: int) -> dict[str, Any] | None:
        """The venue's last pushed ``Order`` for ``client_id`` (live or not: an order record does not go stale)."""
        return self._orders.get(int(client_id))

    def set_position(self, market_id: int, quantity: Decimal, entry_price: Decimal | None) -> None:
        """Put a REST reading in the cache (a reconciliation that disagreed: REST wins)."""
        self._positions[market_id] = StreamPosition(quantity, entry_price, time.time(), time.monotonic())
        self._bump()

    async def wait_change(self, since: int, timeout: float) -> int:
        """Wait until :attr:`version` passes ``since`` or ``timeout``; the version then."""
        if self.version == since and timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while self.version == since:
                        await self._changed.wait()
        return self.version

    def status(self) -> dict[str, Any]:
        """Fields for the account state hash (``xtb status``, heartbeats); never secrets."""
        return {"stream_state": self.state.value, "stream_connects": self.connects,
                "stream_heard_at": "" if self.last_message_at is None else round(self.last_message_at, 3)}

    # ---- connection --------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.backoff_initial
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                started = time.monotonic()
                self._set_state(StreamState.CONNECTING)
                try:
                    await self._connect_once(session)
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, OSError, TimeoutError, VenueError, ValueError, KeyError) as exc:
                    log.warning("account=%s lighter stream failed: %s: %s", self.account, type(exc).__name__,
                                str(exc)[:160])
                except Exception:  # the stream must outlive anything one connection trips over
                    log.exception("account=%s lighter stream failed", self.account)
                finally:
                    self._ws = None
                self._set_state(StreamState.DOWN)
                if time.monotonic() - started >= self.healthy_after_secs:
                    delay = self.backoff_initial
                log.info("account=%s lighter stream down; reconnecting in %.1f s", self.account, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def _connect_once(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self.url, heartbeat=self.heartbeat, proxy=env_proxy(self.url),
                                      timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                                      max_msg_size=8 << 20) as ws:
            self._ws = ws
            self.connects += 1
            self._account_ready = False
            self._books = {}
            await self._subscribe(ws, f"account_all/{self.account_index}")
            for market_id in sorted(self._markets):
                await self._subscribe(ws, f"order_book/{market_id}")
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._on_text(ws, msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break
            log.info("account=%s lighter stream closed (code=%s)", self.account, ws.close_code)

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse, channel: str) -> None:
        await ws.send_str(json.dumps({"type": "subscribe", "channel": channel}))

    async def _on_text(self, ws: aiohttp.ClientWebSocketResponse, data: str) -> None:
        self.last_message_at = time.time()
        try:
            msg = as_dict(json.loads(data, parse_float=Decimal))
        except (ValueError, VenueError):
            log.warning("account=%s lighter stream: not a JSON object: %r", self.account, data[:120])
            return
        kind = str(msg.get("type") or "")
        if kind == "ping":  # the venue's application-level keepalive
            await ws.send_str('{"type":"pong"}')
        elif kind.endswith("/account_all"):
            self._apply_account(msg, snapshot=kind.startswith("subscribed/"))
        elif kind.endswith("/order_book"):
            self._apply_book(msg, snapshot=kind.startswith("subscribed/"))
        elif "error" in msg:
            log.warning("account=%s lighter stream error: %s", self.account, msg["error"])

    # ---- applying messages -------------------------------------------------------------------
    def _apply_account(self, msg: Mapping[str, Any], snapshot: bool) -> None:
        if str(msg.get("account")) != str(self.account_index):
            return
        now, mono = time.time(), time.monotonic()
        raw = msg.get("positions") or {}
        rows = raw.values() if isinstance(raw, Mapping) else raw
        positions = {}
        for row in rows:
            entry = as_dict(row)
            quantity = signed_position(entry)
            entry_price = entry.get("avg_entry_price")
            positions[int(entry["market_id"])] = StreamPosition(
                quantity, Decimal(str(entry_price)) if quantity and entry_price not in (None, "") else None, now, mono)
        if snapshot:
            self._positions = positions
            self.snapshot_at, self.snapshot_mono = now, mono
            self._account_ready = True
        else:
            self._positions.update(positions)
        for rows in (msg.get("orders") or {}).values():
            for row in rows or []:
                order = as_dict(row)
                cid = int(order.get("client_order_index") or 0)
                if cid:
                    self._orders[cid] = order
                    self._orders.move_to_end(cid)
        while len(self._orders) > REMEMBERED_ORDERS:
            self._orders.popitem(last=False)
        if snapshot and self.state is not StreamState.LIVE:
            self._set_state(StreamState.LIVE)
        self._bump()

    def _apply_book(self, msg: Mapping[str, Any], snapshot: bool) -> None:
        channel = str(msg.get("channel") or "")
        market_id = int(channel.partition(":")[2])
        book = self._books.get(market_id)
        if book is None:
            if not snapshot:
                return  # a diff before its snapshot cannot be applied
            book = self._books[market_id] = _Book()
        book.apply(as_dict(msg.get("order_book")), snapshot)
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _set_state(self, state: StreamState) -> None:
        if state is self.state:
            return
        log.info("account=%s lighter stream %s -> %s", self.account, self.state.value, state.value)
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(self.status())
            except Exception:
                log.exception("account=%s lighter stream state sink failed", self.account)
