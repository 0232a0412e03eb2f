"""Raw JSON requests to the Lighter REST API, on the connector's loop.

Everything uses our own aiohttp session instead of the SDK's generated API classes: the SDK would
wrap bodies in unvalidated models, give every request a
300 s timeout, and importing it costs a worker tens of MB. Raw dicts are exactly what the
fixtures hold, numbers are parsed as ``Decimal`` from their text, and every request has our
timeout. Transactions are signed by the SDK's Go library (:mod:`.native`) and posted here
(``POST /api/v1/sendTx``, a urlencoded form, as ``TransactionApi.send_tx`` does).

With ``auth`` (the signer's token, :meth:`LighterSigner.auth_token`) every GET is authenticated, public
endpoints too: Lighter's rate-limit page says "To bypass IP-based rate limits, clients can authenticate each
request so that only L1-based rate limits apply", so the Lighter workers of one host do not share
the IP's budget at all. With a :class:`~venues.lighter.budget.LighterBudget`, every request first takes its share of the
account's rate budget (shared through Redis by every worker of the L1 address and the IP) and
waits while the budget is spent; :data:`REQUEST_PRIORITY` says whether it is an order's
(``ORDER``: the whole budget) or a read's (``READ``: leaves the orders' reserve).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp

from venues.base import ReasonCode, VenueError
from venues.budget import RequestPriority
from venues.lighter.budget import LighterBudget
from venues.lighter.parsing import error_from_body
from venues.proxy import env_proxy

log = logging.getLogger(__name__)

#: The priority of the requests a coroutine makes (a task inherits its creator's value).
REQUEST_PRIORITY: ContextVar[RequestPriority] = ContextVar("lighter_request_priority", default=RequestPriority.READ)

_FORM_HEADERS = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}


def decode_json(text: str) -> Any:
    """JSON with decimals kept as written (``0.00009599999999999999`` stays exact)."""
    return json.loads(text, parse_float=Decimal)


class LighterRest:
    """GET/POST helper bound to one base URL and one aiohttp session (created inside the loop)."""

    def __init__(self, base_url: str, timeout: float, account: str, budget: LighterBudget | None = None) -> None:
        self.base_url = base_url.rstrip("/")  # a trailing slash makes //api/v1/...
        self.timeout = timeout
        self.account = account
        self.budget = budget
        #: The account's auth token for every GET (set by the connector once its signer exists).
        self.auth: Callable[[], str] | None = None
        #: Seconds spent waiting for the rate budget (diagnostics and the bench).
        self.budget_waited = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # The environment's proxy, read once (venues.proxy); not trust_env, the SDK's choice.
            self._proxy = env_proxy(self.base_url)
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def get(self, path: str, params: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> Any:
        """The decoded body of a 200 answer; VenueError for anything else (no ``code`` check here)."""
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None}
        if headers is None and self.auth is not None:
            headers = {"authorization": self.auth()}
        await self._spend(path, authenticated=bool(headers and headers.get("authorization")) or "auth" in clean)
        return await self._request("GET", path, self._fetch(f"{self.base_url}{path}", clean, headers))

    async def post_form(self, path: str, form: dict[str, str]) -> Any:
        """POST ``form`` urlencoded (the SDK's ``sendTx`` encoding); same answers as :meth:`get`.

        A non-200 answer raises the venue's error with ``status`` set; a transport failure or
        timeout raises ``UNAVAILABLE`` with ``status=None`` (the request may have been applied).
        """
        await self._spend(path, authenticated=True, tx_types=_tx_types(form))
        return await self._request("POST", path, self._post(f"{self.base_url}{path}", form))

    async def _spend(self, path: str, *, authenticated: bool, tx_types: tuple[int, ...] = ()) -> None:
        if self.budget is None:
            return
        waited = await self.budget.spend(path, authenticated=authenticated, priority=REQUEST_PRIORITY.get(),
                                         max_wait=self.timeout, tx_types=tx_types)
        if waited > 0.05:
            self.budget_waited += waited
            log.info("account=%s %s waited %.2fs for the rate budget", self.account, path, waited)

    async def _request(self, method: str, path: str, exchange: Coroutine[Any, Any, tuple[int, str]]) -> Any:
        try:
            # asyncio.timeout, not wait_for: no extra task and loop turn on the order path.
            async with asyncio.timeout(self.timeout):
                status, text = await exchange
        except TimeoutError:
            raise VenueError(ReasonCode.UNAVAILABLE, f"{method} {path}: no answer within {self.timeout}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise VenueError(ReasonCode.UNAVAILABLE, f"{method} {path}: {type(exc).__name__}: {exc}") from None
        try:
            body: Any = decode_json(text)
        except ValueError:
            body = text
        if status != 200:
            raise error_from_body(body, status, f"{method} {path}")
        if not isinstance(body, dict):
            raise VenueError(ReasonCode.BAD_RESPONSE, f"{method} {path}: not a JSON object: {text[:120]!r}")
        return body

    async def _fetch(self, url: str, params: dict[str, str], headers: dict[str, str] | None) -> tuple[int, str]:
        async with self._sess().get(url, params=params, headers=headers, proxy=self._proxy) as resp:
            return resp.status, await resp.text()

    async def _post(self, url: str, form: dict[str, str]) -> tuple[int, str]:
        # Encoded here rather than through aiohttp's FormData: the same urlencoded bytes, less work
        # on the order path. Accept as the SDK sends it.
        body = urlencode(form).encode()
        async with self._sess().post(url, data=body, headers=_FORM_HEADERS, proxy=self._proxy) as resp:
            return resp.status, await resp.text()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _tx_types(form: dict[str, str]) -> tuple[int, ...]:
    # sendTx names one type; sendTxBatch a JSON list of them.
    if "tx_type" in form:
        return (int(form["tx_type"]),)
    try:
        return tuple(int(t) for t in json.loads(form.get("tx_types") or "[]"))
    except (ValueError, TypeError):
        return ()
