"""A Telegram Bot API stand-in: ``POST /bot<token>/sendMessage`` answered like api.telegram.org.

Every delivered message is recorded so tests can prove exactly-once, in-order delivery; faults
(HTTP 429 with ``retry_after``, HTTP 500, a hang) are armed for the next N sends through the
admin API under ``/_sim/``:

* ``GET /_sim/messages`` → ``{"messages": [{chat_id, text, message_id, date, token_hash}, ...]}``
* ``POST /_sim/reset`` → forget messages and faults (``{"faults_only": true}``: only the faults)
* ``POST /_sim/fail`` ``{"kind": "http_429"|"http_500"|"hang", "count": N, "retry_after": S,
  "seconds": S}`` → arm a fault for the next N ``sendMessage`` requests

The real bot token is never recorded (only a short hash of it), so a test dump of the messages
cannot leak a secret. Nothing here imports Celery.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


class TelegramFault(StrEnum):
    """Faults the admin API can arm for the next N ``sendMessage`` requests."""

    #: Answer HTTP 429 ``Too Many Requests: retry after S`` with ``parameters.retry_after``.
    HTTP_429 = "http_429"
    #: Answer HTTP 500 ``Internal Server Error``.
    HTTP_500 = "http_500"
    #: Hold the request for ``seconds`` (default 30) and then answer normally (the client times out).
    HANG = "hang"


@dataclass(frozen=True)
class ArmedFault:
    kind: TelegramFault
    retry_after: int = 1
    seconds: float = 30.0


class TelegramState:
    """Messages delivered so far and faults armed for the next requests; thread-safe.

    Tests and the admin API run on other threads than the aiohttp loop, so every access goes
    through one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._faults: deque[ArmedFault] = deque()
        self._next_id = 1
        #: Every sendMessage request seen, including failed ones (for retry assertions).
        self.requests = 0

    # -- faults ---------------------------------------------------------------------------

    def arm(self, kind: TelegramFault | str, count: int = 1, *, retry_after: int = 1,
            seconds: float = 30.0) -> None:
        """Make the next ``count`` sendMessage requests fail with ``kind``."""
        fault = ArmedFault(TelegramFault(kind), retry_after=int(retry_after), seconds=float(seconds))
        with self._lock:
            self._faults.extend([fault] * int(count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self) -> ArmedFault | None:
        with self._lock:
            self.requests += 1
            return self._faults.popleft() if self._faults else None

    # -- messages -------------------------------------------------------------------------

    def record(self, chat_id: int | str, text: str, token: str) -> dict[str, Any]:
        with self._lock:
            message = {
                "chat_id": chat_id,
                "text": text,
                "message_id": self._next_id,
                "date": int(time.time()),
                "token_hash": hashlib.sha256(token.encode()).hexdigest()[:12],
            }
            self._next_id += 1
            self._messages.append(message)
            return dict(message)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """A copy of every delivered message, oldest first."""
        with self._lock:
            return [dict(m) for m in self._messages]

    def texts(self) -> list[str]:
        with self._lock:
            return [m["text"] for m in self._messages]

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self._faults.clear()
            self._next_id = 1
            self.requests = 0


def _error(status: int, description: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    body.update(extra)
    return web.json_response(body, status=status)


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Bot API accepts JSON, form data or query parameters; so do we."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("can't parse JSON") from None
        if not isinstance(body, dict):
            raise ValueError("JSON object expected")
        params.update(body)
    elif request.can_read_body:
        params.update(dict(await request.post()))
    return params


def _chat_id(raw: Any) -> int | str:
    if isinstance(raw, bool) or not isinstance(raw, int | str) or raw == "":
        raise ValueError("chat_id is empty")
    if isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if not text.startswith("@"):
            raise ValueError("chat not found")
        return text
    return raw


def _chat_type(chat_id: int | str) -> str:
    # Telegram: positive ids are users, negative ids groups/channels, @names public channels.
    return "private" if isinstance(chat_id, int) and chat_id > 0 else "channel"


async def _apply_fault(fault: ArmedFault | None) -> web.Response | None:
    if fault is None:
        return None
    if fault.kind is TelegramFault.HTTP_429:
        return _error(429, f"Too Many Requests: retry after {fault.retry_after}",
                      parameters={"retry_after": fault.retry_after})
    if fault.kind is TelegramFault.HTTP_500:
        return _error(500, "Internal Server Error")
    await asyncio.sleep(fault.seconds)
    return None


STATE_KEY = web.AppKey("telegram_state", TelegramState)


def _message_params(params: dict[str, Any]) -> tuple[int | str, str]:
    """(chat_id, text) as Telegram validates them; ValueError carries its description."""
    if "chat_id" not in params:
        raise ValueError("chat_id is empty")
    chat_id = _chat_id(params["chat_id"])
    text = params.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("message text is empty")
    if len(text) > 4096:
        raise ValueError("message is too long")
    return chat_id, text


async def _send_message(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    token = request.match_info["token"]
    if not token:
        return _error(404, "Not Found")
    failed = await _apply_fault(state.take_fault())
    if failed is not None:
        return failed
    if request.transport is None or request.transport.is_closing():
        # The client gave up during a hang: model a request lost in transit (never delivered),
        # so "killed mid-delivery" tests are deterministic.
        raise ConnectionResetError("client went away")
    try:
        chat_id, text = _message_params(await _read_params(request))
    except ValueError as exc:
        return _error(400, f"Bad Request: {exc}")
    message = state.record(chat_id, text, token)
    result = {
        "message_id": message["message_id"],
        "date": message["date"],
        "chat": {"id": chat_id, "type": _chat_type(chat_id)},
        "text": text,
    }
    return web.json_response({"ok": True, "result": result})


async def _get_messages(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"messages": state.messages, "requests": state.requests})


async def _reset(request: web.Request) -> web.Response:
    try:
        body = await request.json() if request.can_read_body else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {}
    if isinstance(body, dict) and body.get("faults_only"):
        request.app[STATE_KEY].clear_faults()
    else:
        request.app[STATE_KEY].reset()
    return web.json_response({"status": "ok"})


async def _fail(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        request.app[STATE_KEY].arm(body["kind"], int(body.get("count", 1)),
                                   retry_after=int(body.get("retry_after", 1)),
                                   seconds=float(body.get("seconds", 30.0)))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        kinds = ", ".join(k.value for k in TelegramFault)
        error = f"expected kind in {kinds}: {exc}"
        return web.json_response({"status": "error", "error": error}, status=400)
    return web.json_response({"status": "ok"})


def create_telegram_app(state: TelegramState) -> web.Application:
    """The aiohttp application; run it with :class:`aiohttp.web.AppRunner` on any loop."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_post("/bot{token}/sendMessage", _send_message)
    app.router.add_get("/_sim/messages", _get_messages)
    app.router.add_post("/_sim/reset", _reset)
    app.router.add_post("/_sim/fail", _fail)
    return app


class TelegramServer:
    """The stand-in on its own event loop in a daemon thread (tests and standalone use).

    ``SimulatorServer`` runs the app next to the venue simulators; this is for code that wants
    only Telegram. ``port=0`` picks a free port; ``url`` is the ``api_url`` to configure.
    """

    def __init__(self, state: TelegramState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state or TelegramState()
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="telegram-sim", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> TelegramServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        log.info("telegram simulator listening on %s", self.url)
        return self

    async def _start(self) -> None:
        # A short shutdown timeout: a request held by a "hang" fault must not delay stop().
        self._runner = web.AppRunner(create_telegram_app(self.state), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> TelegramServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
