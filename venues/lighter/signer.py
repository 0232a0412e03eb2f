"""The lighter-sdk ``SignerClient`` of one account, with nonce recovery around every transaction.

Rules from lighter-sdk.md:
* §1: ``SignerClient(url, account_index, api_private_keys={idx: key}, OPTIMISTIC)`` must be built
  inside the running loop; the SDK's default timeout is 300 s, so every tx is ``wait_for``-wrapped.
* §2 "Parsing and error behaviour": HTTP 200 with ``code != 200`` comes back as ``(tx, resp, None)``
  (check ``resp.code``); a 400 "invalid nonce" is hard-refreshed by the SDK and returned as ``err``;
  any other exception (429, 5xx, timeout, connection reset) propagates **with the nonce consumed**,
  so we resync before the next tx.
* The Go signer keeps process-global clients keyed by api key index (§1, original bug §8.12):
  production runs one OS process per Lighter account (one Celery worker per account queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import lighter
import pydantic
from lighter.exceptions import ApiException, OpenApiException
from lighter.nonce_manager import NonceManagerType

from venues.base import ReasonCode, VenueError
from venues.lighter.credentials import LighterCredentials
from venues.lighter.parsing import error_from_body, send_tx_error
from venues.lighter.rest import decode_json

log = logging.getLogger(__name__)

TxCall = Callable[[lighter.SignerClient], Awaitable[tuple[Any, Any, str | None]]]
#: Exceptions after which a sent tx may or may not have reached the venue.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError, aiohttp.ClientError, OSError, OpenApiException, pydantic.ValidationError,
)
# Auth tokens are valid for 10 minutes (create_auth_token_with_expiry default); renew at half-life.
_AUTH_RENEW_SECS = 300.0


def transport_error(exc: BaseException, what: str, timeout: float) -> VenueError:
    """Classify an exception raised by an SDK call (the venue may or may not have acted)."""
    if isinstance(exc, ApiException) and exc.status:
        body: Any = exc.body or ""
        with contextlib.suppress(ValueError):
            body = decode_json(body) if isinstance(body, str) and body else body
        return error_from_body(body, int(exc.status), what)
    if isinstance(exc, TimeoutError):
        return VenueError(ReasonCode.UNAVAILABLE, f"{what}: no answer within {timeout}s")
    return VenueError(ReasonCode.UNAVAILABLE, f"{what}: {type(exc).__name__}: {str(exc)[:200]}")


class LighterSigner:
    """Owns the ``SignerClient``; call :meth:`start` from inside the connector's running loop."""

    def __init__(self, base_url: str, account_index: int, credentials: LighterCredentials,
                 timeout: float, account: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.account_index = account_index
        self.api_key_index = credentials.api_key_index
        self._credentials = credentials
        self.timeout = timeout
        self.account = account
        self._client: lighter.SignerClient | None = None
        self._auth: tuple[str, float] | None = None

    @property
    def client(self) -> lighter.SignerClient:
        if self._client is None:
            self._client = self._build()
        return self._client

    def _build(self) -> lighter.SignerClient:
        asyncio.get_running_loop()  # the SDK's aiohttp connector needs one (lighter-sdk.md §1)
        keys = {self.api_key_index: self._credentials.private_key}
        try:
            client = lighter.SignerClient(self.base_url, self.account_index, api_private_keys=keys,
                                          nonce_management_type=NonceManagerType.OPTIMISTIC)
        except Exception as exc:  # the Go signer raises bare Exception on a bad key
            text = str(exc).replace(self._credentials.private_key, "<hidden>")
            raise VenueError(ReasonCode.AUTH, f"signer rejected api key {self.api_key_index}: {text}") from None
        log.info("account=%s lighter signer ready: account_index=%d api_key_index=%d url=%s",
                 self.account, self.account_index, self.api_key_index, self.base_url)
        return client

    # ---- nonce -------------------------------------------------------------------------------
    def nonce_state(self) -> str:
        """What the optimistic manager holds: the last nonce used, or 'unfetched'."""
        if self._client is None:
            return "unfetched"
        last = self._client.nonce_manager.nonce.get(self.api_key_index)
        return "unfetched" if last is None else f"next={last + 1}"

    def forget_nonce(self) -> None:
        """Drop the cached nonce; the manager fetches it again before the next tx."""
        if self._client is not None:
            self._client.nonce_manager.nonce.pop(self.api_key_index, None)

    async def resync_nonce(self, why: str) -> None:
        """Re-read the venue's next nonce (falls back to forgetting it if the read fails)."""
        try:
            await asyncio.wait_for(self.client.nonce_manager.async_hard_refresh_nonce(self.api_key_index),
                                   self.timeout)
        except (*TRANSPORT_ERRORS, VenueError) as exc:
            self.forget_nonce()
            log.warning("account=%s api_key_index=%d nonce resync after %s failed (%s); will refetch",
                        self.account, self.api_key_index, why, type(exc).__name__)
            return
        log.info("account=%s api_key_index=%d nonce resynced after %s: %s",
                 self.account, self.api_key_index, why, self.nonce_state())

    # ---- auth --------------------------------------------------------------------------------
    def auth_token(self) -> str:
        """An auth token for private reads (``authorization`` header), renewed at half-life."""
        now = time.time()
        if self._auth is None or now - self._auth[1] > _AUTH_RENEW_SECS:
            token, err = self.client.create_auth_token_with_expiry(api_key_index=self.api_key_index)
            if err or not token:
                raise VenueError(ReasonCode.AUTH, f"auth token for api key {self.api_key_index}: {err}")
            self._auth = (token, now)
        return self._auth[0]

    # ---- transactions ------------------------------------------------------------------------
    async def send(self, what: str, call: TxCall) -> None:
        """Sign and send one tx; on invalid nonce resync and retry ONCE (same arguments).

        Raises VenueError; ``outcome_unknown`` errors mean the tx may have been executed (the nonce
        was resynced already, so the caller can look the order up straight away).
        """
        for attempt in (1, 2):
            log.info("account=%s send %s attempt=%d api_key_index=%d nonce %s",
                     self.account, what, attempt, self.api_key_index, self.nonce_state())
            try:
                _tx, resp, err = await asyncio.wait_for(call(self.client), self.timeout)
            except asyncio.CancelledError:
                self.forget_nonce()  # cancelled mid-send: the nonce may be consumed
                raise
            except TRANSPORT_ERRORS as exc:
                await self.resync_nonce(f"{what} {type(exc).__name__}")
                raise transport_error(exc, what, self.timeout) from None
            error = send_tx_error(resp, err)
            if error is None:
                log.info("account=%s %s accepted: tx_hash=%s nonce %s", self.account, what,
                         getattr(resp, "tx_hash", None), self.nonce_state())
                return
            log.warning("account=%s %s refused (attempt %d): %s", self.account, what, attempt, error)
            if error.reason is not ReasonCode.INVALID_NONCE:
                raise error
            # The SDK rolls back (code != 200) or hard-refreshes (HTTP 400); make sure we hold the
            # venue's value either way before the one retry.
            await self.resync_nonce(what)
        raise error

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
