"""The telemetry dashboard (``xtb dashboard``): the original ``server.js`` API plus a live page.

Compatible routes (``deploy/server.js``):

* ``POST /ingest/<bot>``: store a heartbeat; with a token configured, ``x-auth-token`` must match
  (else 401 ``{"status": "unauthorized"}``); body limit 256 kB; ``{"status": "ok"}``.
* ``GET /api/status``: ``{now, bots: [{name, online, last_update_ms_ago, payload}]}``, no-store.
* ``POST /admin/prune?older_ms=N``: token-checked; ``{status: "ok", removed, total}``.

Additions: ``GET /`` (the page), ``GET /api/overview`` (groups, net delta, cycles, alerts; what the
page polls), ``GET /metrics`` (Prometheus). With ``private`` the read routes need the token too.

State is Redis (``xtb:hb:last``; the workers' own heartbeats land there as well), so a restart
loses nothing, unlike the original's in-memory map. Fixed from the original: the token is never
printed, only ``static/`` is served, and the page builds its DOM with ``textContent``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import tornado.httpserver
import tornado.netutil
import tornado.web

from core.config import Settings
from monitoring import metrics, overview
from monitoring.heartbeat import record_heartbeat

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 256 * 1024
# No inline script or style anywhere: even a payload that slipped into the DOM could not run.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class DashboardOptions:
    """``token`` empty means no auth (as ``server.js`` with an empty ``TELEMETRY_TOKEN``)."""

    token: str = field(default="", repr=False)
    #: Also require the token for ``/api/status``, ``/api/overview`` and ``/metrics``.
    private: bool = False
    default_interval: float = 10.0


@dataclass(frozen=True)
class DashboardContext:
    redis: redis.Redis
    settings: Settings | None
    options: DashboardOptions


class BaseHandler(tornado.web.RequestHandler):
    ctx: DashboardContext

    def initialize(self, ctx: DashboardContext) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", CSP)

    def token_ok(self) -> bool:
        expected = self.ctx.options.token
        if not expected:
            return True
        given = self.request.headers.get("x-auth-token", "")
        return hmac.compare_digest(given.encode(), expected.encode())

    def reject_unless_authorized(self, *, read: bool = False) -> bool:
        """True when the request may go on; otherwise a 401 has been written."""
        if read and not self.ctx.options.private:
            return True
        if self.token_ok():
            return True
        self.send_json({"status": "unauthorized"}, status=401)
        return False

    def send_json(self, body: Any, status: int = 200, *, no_store: bool = True) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if no_store:
            self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body, default=str, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json({"status": "error", "error": self._reason}, status=status_code)


class IngestHandler(BaseHandler):
    def post(self, bot: str) -> None:
        if not self.reject_unless_authorized():
            return
        if len(self.request.body) > MAX_BODY_BYTES:
            self.send_json({"status": "error", "error": "payload too large"}, status=413)
            return
        try:
            payload = json.loads(self.request.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.send_json({"status": "error", "error": "invalid JSON"}, status=400)
            return
        if not isinstance(payload, dict) or not bot or len(bot) > 200:
            self.send_json({"status": "error", "error": "expected a JSON object"}, status=400)
            return
        # server.js keys freshness on arrival time; keep it next to the sender's own timestamp.
        payload.update({"bot": bot, "received_at": round(time.time(), 3)})
        record_heartbeat(self.ctx.redis, payload)
        self.send_json({"status": "ok"})


class StatusHandler(BaseHandler):
    def get(self) -> None:
        if self.reject_unless_authorized(read=True):
            self.send_json(overview.status_document(self.ctx.redis, default_interval=self.ctx.options.default_interval))


class PruneHandler(BaseHandler):
    def post(self) -> None:
        if not self.reject_unless_authorized():
            return
        try:
            older_ms = int(self.get_query_argument("older_ms", "0") or 0)
        except ValueError:
            self.send_json({"status": "error", "error": "older_ms must be an integer"}, status=400)
            return
        result = overview.prune(self.ctx.redis, older_ms, default_interval=self.ctx.options.default_interval)
        log.info("pruned %d bot(s), %d remain", result["removed"], result["total"])
        self.send_json(result)


class OverviewHandler(BaseHandler):
    def get(self) -> None:
        if self.reject_unless_authorized(read=True):
            document = overview.overview_document(self.ctx.redis, self.ctx.settings)
            document["auth"] = {"token_required": bool(self.ctx.options.token), "private": self.ctx.options.private}
            self.send_json(document)


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        if not self.reject_unless_authorized(read=True):
            return
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(metrics.render_metrics(self.ctx.redis, self.ctx.settings))


class PageHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish((STATIC_DIR / "index.html").read_bytes())


class StaticHandler(tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", CSP)


def make_app(r: redis.Redis, settings: Settings | None, options: DashboardOptions) -> tornado.web.Application:
    ctx = {"ctx": DashboardContext(r, settings, options)}
    return tornado.web.Application([
        (r"/", PageHandler, ctx),
        (r"/ingest/([^/]+)", IngestHandler, ctx),
        (r"/api/status", StatusHandler, ctx),
        (r"/api/overview", OverviewHandler, ctx),
        (r"/admin/prune", PruneHandler, ctx),
        (r"/metrics", MetricsHandler, ctx),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
    ], compress_response=True)


def serve(app: tornado.web.Application, host: str, port: int) -> None:
    """Listen until SIGTERM/SIGINT."""
    asyncio.run(_serve(app, host, port))


async def _serve(app: tornado.web.Application, host: str, port: int) -> None:
    server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY_BYTES + 1024)
    sockets = tornado.netutil.bind_sockets(port, address=host)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = sockets[0].getsockname()[1]
    log.info("dashboard on http://%s:%d/", host, bound)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
