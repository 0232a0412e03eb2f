"""HTTP transport for one Backpack account: signing, timeouts, error mapping.

One ``requests.Session`` per connector keeps connections alive rather than paying a
TLS handshake per call. Every request has an explicit (connect, read) timeout. A transport failure after the
request may have left raises ``VenueError(UNAVAILABLE)``: the outcome is unknown and the
caller must look the order up, never blindly resend.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests

from venues.backpack.errors import venue_error
from venues.backpack.parsing import loads
from venues.backpack.signing import Signer, wire_value
from venues.base import ReasonCode, VenueError
from venues.proxy import env_proxy

log = logging.getLogger(__name__)

#: Connecting is quick or hopeless; the read timeout is the caller's.
CONNECT_TIMEOUT = 3.0


class BackpackRest:
    """Signed and public calls against ``base_url``; returns decoded JSON (or None for no body)."""

    def __init__(self, account: str, base_url: str, signer: Signer, *, window_ms: int, timeout: float,
                 broker_id: str | None = None) -> None:
        self.account = account
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self.window_ms = window_ms
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self.broker_id = broker_id
        self.session = requests.Session()
        # The environment's proxy, read once (venues.proxy) instead of on every request.
        self.session.trust_env = False
        proxy = env_proxy(self.base_url)
        if proxy:
            self.session.proxies = {urlsplit(self.base_url).scheme: proxy}
        #: Round-trip time of the last answered request, for heartbeats.
        self.last_latency_ms: float | None = None

    def close(self) -> None:
        self.session.close()

    def public_get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        headers = {"X-Broker-Id": self.broker_id} if self.broker_id else {}
        query = {k: wire_value(v) for k, v in (params or {}).items()}
        return self._send("GET", path, query, None, headers, idempotent=True)

    def signed(self, method: str, path: str, instruction: str,
               params: Mapping[str, Any] | None = None) -> Any:
        """A signed call: query parameters for GET, a JSON body otherwise."""
        params = dict(params or {})
        headers = self.signer.headers(instruction, params, int(time.time() * 1000), self.window_ms,
                                      broker_id=self.broker_id)
        if method == "GET":
            return self._send(method, path, {k: wire_value(v) for k, v in params.items()}, None, headers,
                              idempotent=True)
        body = json.dumps({k: _jsonable(v) for k, v in params.items()}, separators=(",", ":"))
        return self._send(method, path, None, body.encode(), headers, idempotent=False)

    def _send(self, method: str, path: str, query: dict[str, str] | None, body: bytes | None,
              headers: dict[str, str], *, idempotent: bool) -> Any:
        what = f"{method} {path}"
        attempts = 2 if idempotent else 1
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            try:
                resp = self.session.request(method, self.base_url + path, params=query, data=body,
                                            headers=headers, timeout=self.timeout)
            except requests.ConnectionError as exc:
                if attempt < attempts and not isinstance(exc, requests.ConnectTimeout):
                    # A kept-alive connection the server had closed: one retry is safe for reads only.
                    log.info("account=%s %s connection lost (%s), retrying once", self.account, what,
                             type(exc).__name__)
                    continue
                raise self._transport_error(what, exc) from None
            except requests.RequestException as exc:
                raise self._transport_error(what, exc) from None
            return self._answer(resp, what, started)
        raise AssertionError("unreachable")

    def _transport_error(self, what: str, exc: Exception) -> VenueError:
        kind = "timeout" if isinstance(exc, requests.Timeout) else "connection error"
        log.warning("account=%s %s %s: %s", self.account, what, kind, type(exc).__name__)
        # The exception text holds the URL and no secrets; keep only its type to stay one line.
        return VenueError(ReasonCode.UNAVAILABLE, f"{what}: {kind} ({type(exc).__name__}), outcome unknown")

    def _answer(self, resp: requests.Response, what: str, started: float) -> Any:
        self.last_latency_ms = (time.monotonic() - started) * 1000
        log.debug("account=%s %s -> %s in %.0f ms", self.account, what, resp.status_code,
                  self.last_latency_ms)
        if not 200 <= resp.status_code < 300:
            error = venue_error(resp.status_code, resp.text, what)
            # Refusals of a request (a 404 lookup, a rejected order) are routine; the venue failing
            # us (5xx, 429, auth) is not.
            routine = error.reason not in (ReasonCode.UNAVAILABLE, ReasonCode.RATE_LIMITED, ReasonCode.AUTH)
            log.log(logging.INFO if routine else logging.WARNING, "account=%s %s", self.account, error)
            raise error
        text = resp.text
        if not text.strip():
            return None  # 202 "accepted, not yet executed" on cancels
        try:
            return loads(text)
        except ValueError:
            raise VenueError(ReasonCode.BAD_RESPONSE, f"{what}: HTTP {resp.status_code} body is not JSON",
                             status=resp.status_code) from None


def _jsonable(value: Any) -> Any:
    """Body values: decimals as strings, ints and bools as JSON numbers/bools."""
    if isinstance(value, (bool, int, str)):
        return value
    return wire_value(value)
