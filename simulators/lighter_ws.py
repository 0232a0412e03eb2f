"""Lighter WebSocket at ``/stream``.

Protocol: the server greets with ``{"type":"connected"}``; clients send
``{"type":"subscribe","channel":"order_book/0"}`` (slash) and replies name the channel with a
colon (``"order_book:0"``) because the SDK does ``channel.split(":")[1]``. Channels:

* ``order_book/<market>``: ``subscribed/order_book`` snapshot, then ``update/order_book`` diffs
  (a level whose size is ``"0.0000"`` is removed; the SDK merges levels by exact price string).
* ``account_all/<account>`` (no auth, as the SDK's WsClient sends none): positions, orders and
  trades, pushed on every change of that account.
* ``account_all_orders/<a>``, ``account_all_trades/<a>``, ``account_all_positions/<a>``: need an
  ``"auth"`` token of the form ``<deadline>:<account>:<key>:<hex>``.

A ticker task (every :data:`TICK_SECS`) fills crossed resting orders, pushes book diffs and
position changes made elsewhere (admin liquidation), and executes armed ``drop_ws`` faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from simulators.lighter_model import MAX_48, VENUE, LighterMarket, LighterOrder, auth_token_valid
from simulators.lighter_state import LighterState, now_ms
from simulators.lighter_views import book_sides, positions_map
from simulators.market import FaultKind

logger = logging.getLogger(__name__)

TICK_SECS = 0.1
#: A client that stops reading is cut off instead of buffering without bound.
MAX_QUEUED = 10_000
ACCOUNT_KINDS = ("account_all", "account_all_orders", "account_all_trades", "account_all_positions")
RECENT_TRADES = 50
ERR_INVALID_MESSAGE = 30000
#: Code and message format of the captured "Invalid Channel" error (ccxt pro/lighter.ts).
ERR_INVALID_CHANNEL = 30005
ERR_INVALID_AUTH = 20013

Book = tuple[dict[str, str], dict[str, str]]


class _Conn:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUED)
        self.books: set[int] = set()
        self.accounts: dict[int, set[str]] = {}

    def send(self, payload: str) -> bool:
        try:
            self.queue.put_nowait(payload)
            return True
        except asyncio.QueueFull:
            return False

    def send_json(self, body: dict[str, Any]) -> bool:
        return self.send(json.dumps(body))


def _group(items: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        out.setdefault(str(item[key]), []).append(item)
    return out


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class LighterWsHub:
    def __init__(self, state: LighterState) -> None:
        self.state = state
        self.conns: set[_Conn] = set()
        self._books: dict[int, Book] = {}
        self._offset = itertools.count(1)
        self._signatures: dict[int, tuple[Any, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        state.listeners.append(self.on_account_event)

    # ---- connection lifecycle ---------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # A short close timeout: a dropped or shut-down client must not hold the loop for 10 s.
        ws = web.WebSocketResponse(max_msg_size=1 << 20, timeout=2.0)
        await ws.prepare(request)
        conn = _Conn(ws)
        self.conns.add(conn)
        sender = asyncio.create_task(self._sender(conn))
        conn.send_json({"type": "connected", "session_id": str(uuid.uuid4())})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    conn.send_json(_error(ERR_INVALID_MESSAGE, "Invalid message"))
        finally:
            self.conns.discard(conn)
            sender.cancel()
        return ws

    async def _sender(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not conn.ws.closed:
                await conn.ws.send_str(await conn.queue.get())

    def _close(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        task = asyncio.get_running_loop().create_task(conn.ws.close(code=1001, message=b"dropped"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def position_hook(self, venue: str, account: str, _base: str) -> None:
        """admin.POSITION_HOOK: push at once after ``/_sim/liquidate`` instead of on the next tick."""
        if venue == VENUE and account.isascii() and account.isdigit():
            self.on_account_event(int(account), [], [])

    def drop(self, account: str | None) -> int:
        """Close the WebSocket connections subscribed to ``account`` (every connection for None)."""
        hit = [c for c in self.conns if account is None or (account.isdigit() and int(account) in c.accounts)]
        for conn in hit:
            self._close(conn)
        logger.info("lighter ws: dropped %d connection(s) for account %s", len(hit), account)
        return len(hit)

    async def close_all(self, _app: web.Application | None = None) -> None:
        for conn in list(self.conns):
            self.conns.discard(conn)
            await conn.ws.close(code=1001, message=b"server shutdown")

    # ---- inbound ----------------------------------------------------------------------------
    def _on_text(self, conn: _Conn, data: str) -> None:
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):
            msg = None
        if not isinstance(msg, dict):
            conn.send_json(_error(ERR_INVALID_MESSAGE, "Invalid message"))
            return
        kind = msg.get("type")
        if kind == "ping":
            conn.send_json({"type": "pong"})
        elif kind == "pong":
            return
        elif kind in ("subscribe", "unsubscribe"):
            self._subscription(conn, kind, msg.get("channel"), msg.get("auth"))
        else:
            conn.send_json(_error(ERR_INVALID_MESSAGE, "Invalid message type"))

    def _subscription(self, conn: _Conn, kind: str, channel: object, auth: object) -> None:
        parsed = _parse_channel(channel)
        if parsed is None or (parsed[0] == "order_book" and parsed[1] not in self.state.markets):
            conn.send_json(_error(ERR_INVALID_CHANNEL, f"Invalid Channel:  ({channel})"))
            return
        name, ident = parsed
        if kind == "unsubscribe":
            if name == "order_book":
                conn.books.discard(ident)
            elif name in conn.accounts.get(ident, ()):
                conn.accounts[ident].discard(name)
                if not conn.accounts[ident]:
                    del conn.accounts[ident]
            conn.send_json({"type": "unsubscribed", "channel": f"{name}:{ident}"})
        elif name == "order_book":
            self._refresh_book(self.state.markets[ident])
            conn.books.add(ident)
            conn.send_json(self._book_message("subscribed/order_book", ident, self._books[ident], snapshot=True))
        elif name != "account_all" and not auth_token_valid(auth if isinstance(auth, str) else None, ident,
                                                               int(time.time())):
            conn.send_json(_error(ERR_INVALID_AUTH, "invalid auth"))
        else:
            self.state.ensure_account(ident)
            conn.accounts.setdefault(ident, set()).add(name)
            self._signatures[ident] = self._signature(ident)
            orders = [o.to_json() for o in self.state.active_orders(ident)]
            trades = [t for t in self.state.trades if ident in (t["ask_account_id"], t["bid_account_id"])]
            for payload in self._account_payloads(ident, {name}, orders, trades[-RECENT_TRADES:], True).values():
                conn.send(payload)

    # ---- order books ------------------------------------------------------------------------
    def _current_book(self, market: LighterMarket) -> Book:
        asks, bids = book_sides(self.state, market)
        return dict(asks), dict(bids)

    def _refresh_book(self, market: LighterMarket) -> None:
        """Bring the shared snapshot up to date, sending the diff to current subscribers."""
        mid, cur = market.market_id, self._current_book(market)
        last = self._books.get(mid)
        self._books[mid] = cur
        if last is None or last == cur:
            return
        zero = market.size_str(Decimal(0))
        diff = tuple({**{p: zero for p in old if p not in new}, **{p: s for p, s in new.items() if old.get(p) != s}}
                     for old, new in zip(last, cur, strict=True))
        payload = json.dumps(self._book_message("update/order_book", mid, (diff[0], diff[1]), snapshot=False))
        for conn in list(self.conns):
            if mid in conn.books and not conn.send(payload):
                self._close(conn)

    def _book_message(self, kind: str, mid: int, book: Book, *, snapshot: bool) -> dict[str, Any]:
        offset = next(self._offset)
        asks = [{"price": p, "size": s} for p, s in book[0].items()]
        bids = [{"price": p, "size": s} for p, s in book[1].items()]
        if snapshot:  # snapshots list asks ascending and bids descending; diffs are unordered
            asks.sort(key=lambda lv: float(lv["price"]))
            bids.sort(key=lambda lv: -float(lv["price"]))
        return {"type": kind, "channel": f"order_book:{mid}", "offset": offset,
                "order_book": {"code": 0, "asks": asks, "bids": bids, "offset": offset, "nonce": offset,
                               "begin_nonce": offset - 1},
                "timestamp": now_ms()}

    # ---- accounts ---------------------------------------------------------------------------
    def on_account_event(self, account: int, orders: list[LighterOrder], trades: list[dict[str, Any]]) -> None:
        subs = [c for c in self.conns if account in c.accounts]
        if not subs:
            return
        self._signatures[account] = self._signature(account)
        if self.state.exchange.take_fault(VENUE, "ws", account=str(account), kinds=(FaultKind.MISS_PUSH,)):
            return  # and the ticker sees no change to push later: the update is lost
        kinds = set().union(*(c.accounts[account] for c in subs))
        payloads = self._account_payloads(account, kinds, [o.to_json() for o in orders], trades, False)
        for conn in subs:
            for kind in sorted(conn.accounts[account] & payloads.keys()):
                if not conn.send(payloads[kind]):
                    self._close(conn)
                    break

    def _account_payloads(self, account: int, kinds: set[str], orders: list[dict[str, Any]],
                          trades: list[dict[str, Any]], initial: bool) -> dict[str, str]:
        """channel kind → JSON message, for the kinds that have something to say."""
        prefix = "subscribed/" if initial else "update/"
        positions = positions_map(self.state, account) if kinds & {"account_all", "account_all_positions"} else {}
        out: dict[str, str] = {}
        for kind in sorted(kinds):
            body: dict[str, Any] = {"type": prefix + kind, "channel": f"{kind}:{account}", "account": account}
            if kind == "account_all":
                body |= {"positions": positions, "orders": _group(orders, "market_index"),
                         "trades": _group(trades, "market_id"), "funding_histories": {}, "shares": []}
            elif kind == "account_all_orders":
                if not (initial or orders):
                    continue
                body["orders"] = _group(orders, "market_index")
            elif kind == "account_all_trades":
                if not (initial or trades):
                    continue
                body["trades"] = _group(trades, "market_id")
            else:
                body |= {"positions": positions, "shares": []}
            out[kind] = json.dumps(body)
        return out

    def _signature(self, account: int) -> tuple[Any, ...]:
        ex = self.state.exchange
        with ex.lock:
            acct = ex.account(VENUE, str(account))
            return (acct.collateral, *sorted((b, p.quantity, p.entry_price) for b, p in acct.positions.items()))

    # ---- ticker -----------------------------------------------------------------------------
    def tick(self) -> None:
        self._take_drop_faults()
        self.state.sweep()
        for mid in sorted({m for c in self.conns for m in c.books}):
            self._refresh_book(self.state.markets[mid])
        for account in sorted({a for c in self.conns for a in c.accounts}):
            if self._signature(account) != self._signatures.get(account):
                self.on_account_event(account, [], [])

    def _take_drop_faults(self) -> None:
        # One drop per tick per account: a count of N cuts the connections N times, each time the
        # client has reconnected (a stream down for a while), not N times in one tick.
        if not self.conns:
            return  # keep the fault armed until there is a connection to drop
        ex = self.state.exchange
        for key in [str(a) for a in sorted({a for c in self.conns for a in c.accounts})] + [""]:
            fault = ex.take_fault(VENUE, "ws", account=key, kinds=(FaultKind.DROP_WS,))
            if fault is not None:
                self.drop(fault.account)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECS)
            try:
                self.tick()
            except Exception:  # the ticker must survive anything a tick trips over
                logger.exception("lighter ws tick failed")

    async def ticker_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _parse_channel(channel: object) -> tuple[str, int] | None:
    """``"order_book/0"`` → ("order_book", 0); None for anything else."""
    if not isinstance(channel, str):
        return None
    name, sep, ident = channel.partition("/")
    if not sep or name not in ("order_book", *ACCOUNT_KINDS):
        return None
    if not (ident.isascii() and ident.isdigit() and len(ident) <= 15) or int(ident) > MAX_48:
        return None
    return name, int(ident)
