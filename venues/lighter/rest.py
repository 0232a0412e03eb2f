"""Raw JSON reads from the Lighter REST API, on the connector's loop.

Reads use our own aiohttp session instead of the SDK's generated API classes: the SDK would wrap
bodies in unvalidated models (lighter-sdk.md §2 "Types are not coerced") and give every request a
300 s timeout (§5). Raw dicts are exactly what the fixtures hold, numbers are parsed as
``Decimal`` from their text, and every request has our timeout. Transactions still go through the
SDK's ``SignerClient`` (signing needs it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal
from typing import Any

import aiohttp

from venues.base import ReasonCode, VenueError
from venues.lighter.parsing import error_from_body

log = logging.getLogger(__name__)


def decode_json(text: str) -> Any:
    """JSON with decimals kept as written (``0.00009599999999999999`` stays exact)."""
    return json.loads(text, parse_float=Decimal)


class LighterRest:
    """GET helper bound to one base URL and one aiohttp session (created inside the loop)."""

    def __init__(self, base_url: str, timeout: float, account: str) -> None:
        self.base_url = base_url.rstrip("/")  # a trailing slash makes //api/v1/... (lighter-sdk.md §5)
        self.timeout = timeout
        self.account = account
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env like the SDK's own session, so both honour the same proxy settings.
            self._session = aiohttp.ClientSession(trust_env=True)
        return self._session

    async def get(self, path: str, params: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> Any:
        """The decoded body of a 200 answer; VenueError for anything else (no ``code`` check here)."""
        url = f"{self.base_url}{path}"
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            status, text = await asyncio.wait_for(self._fetch(url, clean, headers), self.timeout)
        except TimeoutError:
            raise VenueError(ReasonCode.UNAVAILABLE, f"GET {path}: no answer within {self.timeout}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise VenueError(ReasonCode.UNAVAILABLE, f"GET {path}: {type(exc).__name__}: {exc}") from None
        try:
            body: Any = decode_json(text)
        except ValueError:
            body = text
        if status != 200:
            raise error_from_body(body, status, f"GET {path}")
        if not isinstance(body, dict):
            raise VenueError(ReasonCode.BAD_RESPONSE, f"GET {path}: not a JSON object: {text[:120]!r}")
        return body

    async def _fetch(self, url: str, params: dict[str, str], headers: dict[str, str] | None) -> tuple[int, str]:
        async with self._sess().get(url, params=params, headers=headers) as resp:
            return resp.status, await resp.text()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
