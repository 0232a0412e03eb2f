"""Backpack WebSocket (``/ws``): subscriptions, private account streams, market data.

Frames are ``{"stream", "data"}`` envelopes; a successful (UN)SUBSCRIBE gets **no** acknowledgement;
errors are ``{"id": null, "error": {"code", "message"}}``. The server pings every
``ping_secs`` (60 s like the real one) and drops a peer that does not answer.

A market-data pump (every ``pump_secs``) publishes ``depth``/``bookTicker`` deltas when the shared
price moves, ``markPrice`` once a second, fills resting limit orders the move crosses, and carries
out armed ``drop_ws`` faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from decimal import Decimal
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from simulators.backpack_auth import ApiError, Authenticator, check_window, signing_string
from simulators.backpack_engine import BackpackEngine
from simulators.backpack_model import MarketRules, fmt, now_us
from simulators.backpack_views import mark_price, open_positions, position_ws
from simulators.market import FaultKind

logger = logging.getLogger(__name__)

VENUE = "backpack"
PRIVATE_KINDS = ("orderUpdate", "positionUpdate")
PUBLIC_KINDS = ("depth", "bookTicker", "markPrice", "trade")
DEPTH_WINDOWS = ("200ms", "600ms", "1000ms")
QUEUE_LIMIT = 10_000
#: Simulator choice: the reply to a bad WS signature is UNCONFIRMED; the code is invented.
SIGNATURE_ERROR_CODE = 4003


def _error(code: int, message: str) -> dict[str, Any]:
    return {"id": None, "error": {"code": code, "message": message}}


class Conn:
    """One client connection: its account (once a signed subscribe succeeded) and streams."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.account: str | None = None
        self.streams: set[str] = set()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_LIMIT)

    def send(self, frame: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(json.dumps(frame))
        except asyncio.QueueFull:  # a consumer this slow is cut off, as a real server would
            self.queue = asyncio.Queue(1)
            self.queue.put_nowait(None)


class WsHub:
    def __init__(self, engine: BackpackEngine, auth: Authenticator, *, ping_secs: float = 60.0,
                 pump_secs: float = 0.1) -> None:
        self.engine = engine
        self.auth = auth
        self.ping_secs = ping_secs
        self.pump_secs = pump_secs
        self.conns: set[Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._pump: asyncio.Task[None] | None = None
        self._last_book: dict[str, tuple[int, dict[Decimal, Decimal], dict[Decimal, Decimal]]] = {}
        self._last_mark = 0.0
        engine.publish = self.publish_account
        engine.publish_public = self.publish_public
        engine.listening = lambda account: any(c.account == account for c in self.conns)
        engine.public_listening = lambda stream: any(stream in c.streams for c in self.conns)

    # ---- fan-out ------------------------------------------------------------------------------
    def _deliver(self, targets: list[tuple[Conn, dict[str, Any]]]) -> None:
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            # Engine calls from another thread (a test poking the exchange) hop onto the loop.
            self._loop.call_soon_threadsafe(self._deliver, targets)
            return
        for conn, frame in targets:
            conn.send(frame)

    def publish_account(self, account: str, kind: str, symbol: str, data: dict[str, Any]) -> None:
        names = (f"account.{kind}", f"account.{kind}.{symbol}")
        targets = [(c, {"stream": n, "data": data}) for c in self.conns if c.account == account
                   for n in names if n in c.streams]
        if targets:
            self._deliver(targets)

    def publish_public(self, stream: str, data: dict[str, Any]) -> None:
        targets = [(c, {"stream": stream, "data": data}) for c in self.conns if stream in c.streams]
        if targets:
            self._deliver(targets)

    # ---- connection ---------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self.ping_secs, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = Conn(ws)
        self.conns.add(conn)
        writer = asyncio.get_running_loop().create_task(self._writer(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    conn.send(_error(4002, "Parse error"))
        finally:
            self.conns.discard(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    async def _writer(self, conn: Conn) -> None:
        while True:
            text = await conn.queue.get()
            if text is None or conn.ws.closed:
                await conn.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow consumer")
                return
            try:
                await conn.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    def _on_text(self, conn: Conn, text: str) -> None:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            msg = None
        if not isinstance(msg, dict):
            conn.send(_error(4002, "Parse error"))
            return
        method, params = msg.get("method"), msg.get("params")
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list) or \
                not all(isinstance(p, str) for p in params):
            conn.send(_error(4002, "Parse error"))
            return
        for stream in params:
            problem = self._classify(stream)
            if problem is not None:
                conn.send(_error(*problem))
                return
        if method == "UNSUBSCRIBE":
            conn.streams.difference_update(params)
            return
        private = [p for p in params if p.startswith("account.")]
        if private and not self._authorise(conn, msg.get("signature")):
            return
        new = [p for p in params if p not in conn.streams]
        conn.streams.update(params)
        for stream in new:
            # A private stream got here only through _authorise, which set the account.
            if stream.startswith("account.positionUpdate") and conn.account is not None:
                self._position_snapshot(conn, conn.account, stream)

    def _classify(self, stream: str) -> tuple[int, str] | None:
        """None if the stream name is valid; unknown symbols are silently accepted."""
        parts = stream.split(".")
        if parts[0] == "account":
            return None if len(parts) in (2, 3) and parts[1] in PRIVATE_KINDS else (4006, "Invalid stream")
        if parts[0] not in PUBLIC_KINDS or len(parts) not in (2, 3):
            return 4006, "Invalid stream"
        if len(parts) == 3:
            if parts[0] != "depth":
                return 4006, "Invalid stream"
            if parts[1] not in DEPTH_WINDOWS:
                return 4008, "Invalid depth window"
        return None

    def _authorise(self, conn: Conn, signature: Any) -> bool:
        """``signature`` = [api key, sig of instruction=subscribe&timestamp&window, ts, window]."""
        if not isinstance(signature, list) or len(signature) != 4 or \
                not all(isinstance(s, str) for s in signature):
            conn.send(_error(SIGNATURE_ERROR_CODE, "Missing or malformed signature"))
            return False
        key, sig, ts, window = signature
        if not (ts.isascii() and ts.isdigit() and window.isascii() and window.isdigit()) or len(ts + window) > 30:
            conn.send(_error(SIGNATURE_ERROR_CODE, "Invalid signature"))
            return False
        try:
            check_window(int(ts), int(window))
        except ApiError as exc:
            conn.send(_error(SIGNATURE_ERROR_CODE, exc.message))
            return False
        if not self.auth.check(key, sig, signing_string("subscribe", [], int(ts), int(window))):
            conn.send(_error(SIGNATURE_ERROR_CODE, "Invalid signature"))
            return False
        conn.account = key
        self.engine.exchange.account(VENUE, key)
        return True

    def _position_snapshot(self, conn: Conn, account: str, stream: str) -> None:
        """On subscribe the open positions are pushed WITHOUT ``e``."""
        symbol = stream.split(".", 2)[2] if stream.count(".") == 2 else None
        with self.engine.exchange.lock:
            rows = [position_ws(self.engine, account, rules, qty, None)
                    for rules, qty in open_positions(self.engine, account)
                    if symbol is None or rules.symbol == symbol]
        for data in rows:
            conn.send({"stream": stream, "data": data})

    # ---- lifecycle and market data --------------------------------------------------------------
    async def start(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        for rules in self.engine.markets.values():
            update_id, (bids, asks) = self.engine.book(rules)
            self._last_book[rules.base] = (update_id, dict(bids), dict(asks))
        self._pump = self._loop.create_task(self._run_pump())

    async def stop(self, app: web.Application) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self.close_all()

    async def close_all(self, account: str | None = None, code: int = WSCloseCode.GOING_AWAY) -> int:
        doomed = [c for c in self.conns if account is None or c.account == account]
        for conn in doomed:
            self.conns.discard(conn)
            with contextlib.suppress(Exception):
                await conn.ws.close(code=code, message=b"closed by simulator")
        return len(doomed)

    async def _run_pump(self) -> None:
        while True:
            await asyncio.sleep(self.pump_secs)
            try:
                await self._pump_once()
            except Exception:  # the pump must survive anything a test does to the exchange
                logger.exception("backpack market-data pump failed")

    async def _pump_once(self) -> None:
        moved = False
        for rules in self.engine.markets.values():
            moved |= self._publish_book(rules)
        if moved:
            self.engine.match_resting()
        if time.monotonic() - self._last_mark >= 1.0:
            self._last_mark = time.monotonic()
            for rules in self.engine.markets.values():
                data = mark_price(self.engine, rules)
                self.publish_public(f"markPrice.{rules.symbol}", {
                    "e": "markPrice", "E": now_us(), "s": rules.symbol, "p": data["markPrice"],
                    "f": data["fundingRate"], "i": data["indexPrice"], "n": data["nextFundingTimestamp"],
                    "T": now_us()})
        await self._drop_ws()

    def _publish_book(self, rules: MarketRules) -> bool:
        """``depth`` deltas (absolute sizes, "0" deletes; U = previous u + 1) and ``bookTicker``."""
        last_id, old_bids, old_asks = self._last_book[rules.base]
        update_id, (bids, asks) = self.engine.book(rules)
        if update_id == last_id:
            return False
        new_bids, new_asks = dict(bids), dict(asks)
        self._last_book[rules.base] = (update_id, new_bids, new_asks)
        now = now_us()
        data = {"e": "depth", "E": now, "s": rules.symbol, "a": _delta(old_asks, new_asks),
                "b": _delta(old_bids, new_bids), "U": last_id + 1, "u": update_id, "T": now - 1}
        for name in [f"depth.{rules.symbol}"] + [f"depth.{w}.{rules.symbol}" for w in DEPTH_WINDOWS]:
            self.publish_public(name, data)
        if bids and asks:
            self.publish_public(f"bookTicker.{rules.symbol}", {
                "e": "bookTicker", "E": now, "s": rules.symbol, "a": fmt(asks[0][0]), "A": str(asks[0][1]),
                "b": fmt(bids[-1][0]), "B": str(bids[-1][1]), "u": update_id, "T": now - 1})
        return True

    async def _drop_ws(self) -> None:
        """Carry out armed ``drop_ws`` faults (op ``ws``): close the account's connections."""
        accounts = {c.account or "" for c in self.conns}
        for account in accounts:
            fault = self.engine.exchange.take_fault(VENUE, "ws", account, kinds=(FaultKind.DROP_WS,))
            if fault is not None:
                closed = await self.close_all(None if fault.account is None else account)
                logger.info("drop_ws fault closed %d backpack connection(s)", closed)


def _delta(old: dict[Decimal, Decimal], new: dict[Decimal, Decimal]) -> list[list[str]]:
    rows = [[fmt(p), "0"] for p in old if p not in new]
    rows += [[fmt(p), str(q)] for p, q in new.items() if old.get(p) != q]
    return sorted(rows, key=lambda r: Decimal(r[0]))
