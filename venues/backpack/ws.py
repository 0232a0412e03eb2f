"""Private WebSocket streams of one Backpack account.

A daemon thread runs ``websocket-client``; every (re)connect sends a freshly signed SUBSCRIBE
(the signature carries a timestamp, so it cannot be reused across reconnects) and
reconnects with exponential backoff. No acknowledgement exists for a subscribe, so
"connected" means "socket open and subscribe sent". Frames go to one callback; a bad frame is
logged and skipped, never allowed to kill the thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

import websocket

from venues.backpack.parsing import WsFrame, parse_ws_frame
from venues.backpack.signing import Signer
from venues.base import VenueError

log = logging.getLogger(__name__)

FrameHandler = Callable[[WsFrame], None]
StateHandler = Callable[[bool], None]


def private_streams(symbols: Iterable[str]) -> list[str]:
    """Per-symbol order and position streams."""
    names: list[str] = []
    for symbol in sorted(set(symbols)):
        names += [f"account.orderUpdate.{symbol}", f"account.positionUpdate.{symbol}"]
    return names


class BackpackStream:
    """One reconnecting private WebSocket connection."""

    #: Backoff between reconnects: doubles per failed attempt, resets after a healthy connection.
    backoff_initial = 0.2
    backoff_max = 15.0
    #: A connection that stayed open this long counts as healthy.
    healthy_after_secs = 5.0

    def __init__(self, account: str, url: str, signer: Signer, window_ms: int,
                 on_frame: FrameHandler, on_state: StateHandler) -> None:
        self.account = account
        self.url = url
        self._signer = signer
        self._window_ms = window_ms
        self._on_frame = on_frame
        self._on_state = on_state
        self._symbols: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._app: websocket.WebSocketApp | None = None
        self.connected = False
        #: How many times a connection opened (tests and diagnostics watch reconnects).
        self.connects = 0
        self.last_message_at: float | None = None

    # ---- control -----------------------------------------------------------------------------
    def start(self, symbols: Iterable[str]) -> None:
        """Subscribe to ``symbols`` (added to any already subscribed); starts the thread once."""
        new = set(symbols)
        with self._lock:
            added = new - self._symbols
            self._symbols |= new
            app, running = self._app, self._thread is not None
            if not running:
                self._thread = threading.Thread(target=self._run, name=f"bp-ws-{self.account}", daemon=True)
                self._thread.start()
        if running and added and self.connected and app is not None:
            self._subscribe(app, added)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            app, thread = self._app, self._thread
        if app is not None:
            app.keep_running = False
            raw = app.sock.sock if app.sock is not None else None
            if raw is not None:
                # Shut the socket down rather than close it: websocket-client's reader sits in
                # select() on the fd, which a close from this thread does not wake (it would wait
                # for ping_timeout); a shutdown makes the fd readable (EOF) at once.
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._thread = None

    # ---- thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff_initial
        while not self._stop.is_set():
            app = websocket.WebSocketApp(self.url, on_open=self._opened, on_message=self._message,
                                         on_error=self._error, on_close=self._closed)
            with self._lock:
                self._app = app
            started = time.monotonic()
            try:
                app.run_forever(ping_interval=20, ping_timeout=10)
            except Exception:
                log.exception("account=%s websocket loop failed", self.account)
            self._set_connected(False)
            if self._stop.is_set():
                break
            if time.monotonic() - started >= self.healthy_after_secs:
                delay = self.backoff_initial
            log.info("account=%s websocket closed; reconnecting in %.1f s", self.account, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max)
        log.info("account=%s websocket stopped", self.account)

    def _subscribe(self, app: websocket.WebSocketApp, symbols: Iterable[str]) -> None:
        streams = private_streams(symbols)
        if not streams:
            return
        signature = self._signer.ws_signature(int(time.time() * 1000), self._window_ms)
        frame = {"method": "SUBSCRIBE", "params": streams, "signature": signature}
        try:
            app.send(json.dumps(frame))
        except Exception as exc:  # the socket died under us; the run loop reconnects
            log.warning("account=%s subscribe failed: %s", self.account, type(exc).__name__)
            return
        log.info("account=%s subscribed to %s", self.account, ",".join(streams))

    def _opened(self, app: websocket.WebSocketApp) -> None:
        self.connects += 1
        with self._lock:
            symbols = set(self._symbols)
        self._subscribe(app, symbols)
        self._set_connected(True)

    def _message(self, app: websocket.WebSocketApp, message: str | bytes) -> None:
        self.last_message_at = time.time()
        try:
            frame = parse_ws_frame(message)
            if frame.error is not None:
                log.warning("account=%s websocket error frame: %s", self.account, frame.error)
            self._on_frame(frame)
        except VenueError as exc:
            log.warning("account=%s bad websocket frame skipped: %s", self.account, exc)
        except Exception:
            log.exception("account=%s websocket frame handler failed", self.account)

    def _error(self, app: websocket.WebSocketApp, error: Exception) -> None:
        if not self._stop.is_set():
            log.warning("account=%s websocket error: %s %s", self.account, type(error).__name__,
                        str(error)[:120])

    def _closed(self, app: websocket.WebSocketApp, code: int | None, reason: str | None) -> None:
        log.info("account=%s websocket closed (code=%s)", self.account, code)

    def _set_connected(self, value: bool) -> None:
        if self.connected == value:
            return
        self.connected = value
        try:
            self._on_state(value)
        except Exception:
            log.exception("account=%s websocket state handler failed", self.account)
