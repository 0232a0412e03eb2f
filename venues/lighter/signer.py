"""One account's Lighter transactions: Go-signed (:mod:`.native`), posted over our REST session.

This replaces ``lighter.SignerClient`` (lighter-sdk 1.1.8), whose import alone costs a worker
+31..59 MB, and does exactly what it did for the calls the connector makes:

* **Client.** ``CreateClient(url, key, chain_id, api_key_index, account_index)`` once, before the
  first signature; ``chain_id`` by URL substring. The Go library
  keeps clients in a process-global map, so one OS process serves one Lighter account.
* **Nonces** as the OPTIMISTIC manager: the first tx fetches ``GET /api/v1/nextNonce`` and stores
  ``n - 1``; each tx adds 1 locally; HTTP 200 with ``code != 200`` (or a signing error, or any
  other HTTP 400) rolls the nonce back by one; an HTTP 400 "invalid nonce" hard-refreshes it. Any
  other failure (429, 5xx, timeout, reset) may have consumed the nonce at the venue, so we resync
  before the next tx (the SDK left that to the caller). One lock around nonce, signature and send,
  as the SDK's per-key lock. nextNonce lags an accepted tx (Lighter's nonce documentation: it "will
  NOT update right away on the server side"), so a read is never taken below the highest nonce the
  venue accepted from this signer.
* **Send.** ``POST /api/v1/sendTx`` with the form fields ``tx_type`` and ``tx_info``.
* **Retry.** :meth:`send` resyncs and retries ONCE on invalid nonce, with the same arguments.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from venues.base import ReasonCode, VenueError
from venues.lighter import native
from venues.lighter.credentials import LighterCredentials
from venues.lighter.parsing import check_ok, error_from_text, send_tx_error
from venues.lighter.rest import LighterRest

log = logging.getLogger(__name__)

#: Signs one tx with the given nonce; raises ``native.SignerError``.
SignFn = Callable[[int], native.SignedTx]


@dataclass(frozen=True)
class Presigned:
    """A tx signed ahead of its send for ``nonce`` (an armed hedge's order)."""

    nonce: int
    tx: native.SignedTx

# After an invalid-nonce refusal, nextNonce is read up to this many times this far apart while it
# still shows the refused nonce (its lag is undocumented; the simulator's is 200 ms).
_LAG_REREADS = 5
_LAG_REREAD_SECS = 0.1
# Auth tokens are valid for 10 minutes (create_auth_token_with_expiry default); renew at half-life.
_AUTH_RENEW_SECS = native.AUTH_TOKEN_SECS / 2


class LighterSigner:
    """Signs and sends one account's transactions; used from the connector's event loop only."""

    def __init__(self, base_url: str, account_index: int, credentials: LighterCredentials,
                 timeout: float, account: str, rest: LighterRest) -> None:
        self.base_url = base_url.rstrip("/")
        self.account_index = account_index
        self.api_key_index = credentials.api_key_index
        self.chain_id = native.chain_id_for(self.base_url)
        self._credentials = credentials
        self.timeout = timeout
        self.account = account
        self._rest = rest
        self._client_ready = False
        #: The last nonce used (the SDK's optimistic ``nonce[key]``); None until fetched.
        self._nonce: int | None = None
        #: The highest nonce the venue accepted from us: a lagging nextNonce read cannot go below it.
        self._accepted: int | None = None
        self._lock: asyncio.Lock | None = None
        self._auth: tuple[str, float] | None = None

    # ---- Go client ---------------------------------------------------------------------------
    def _ensure_client(self) -> None:
        """Register our key with the Go library (no network I/O), once."""
        if self._client_ready:
            return
        try:
            native.create_client(self.base_url, self._credentials.private_key, self.chain_id,
                                 self.api_key_index, self.account_index)
        except native.SignerError as exc:
            raise VenueError(ReasonCode.AUTH,
                             f"signer rejected api key {self.api_key_index}: {self._hide_key(str(exc))}") from None
        self._client_ready = True
        log.info("account=%s lighter signer ready: account_index=%d api_key_index=%d chain_id=%d url=%s",
                 self.account, self.account_index, self.api_key_index, self.chain_id, self.base_url)

    def _hide_key(self, text: str) -> str:
        key = self._credentials.private_key
        return re.sub(re.escape(key), "<hidden>", text, flags=re.IGNORECASE) if key else text

    # ---- nonce -------------------------------------------------------------------------------
    def nonce_state(self) -> str:
        """What the optimistic counter holds: the next nonce to use, or 'unfetched'."""
        return "unfetched" if self._nonce is None else f"next={self._nonce + 1}"

    def forget_nonce(self) -> None:
        """Drop the cached nonce; it is fetched again before the next tx."""
        self._nonce = None

    async def _fetch_next_nonce(self) -> int:
        params = {"account_index": self.account_index, "api_key_index": self.api_key_index}
        body = check_ok(await self._rest.get("/api/v1/nextNonce", params), "nextNonce")
        try:
            shown = int(str(body["nonce"]))
        except (KeyError, ValueError):
            raise VenueError(ReasonCode.BAD_RESPONSE, f"nextNonce without a nonce: {body!r:.120}") from None
        if self._accepted is not None and shown <= self._accepted:
            log.info("account=%s api_key_index=%d nextNonce %d lags our accepted nonce %d; using %d",
                     self.account, self.api_key_index, shown, self._accepted, self._accepted + 1)
            return self._accepted + 1
        return shown

    async def _hard_refresh(self) -> None:
        """``async_hard_refresh_nonce``: the venue's next nonce becomes ours (stored as n - 1)."""
        self._nonce = await self._fetch_next_nonce() - 1

    async def resync_nonce(self, why: str) -> None:
        """Re-read the venue's next nonce (falls back to forgetting it if the read fails)."""
        try:
            await asyncio.wait_for(self._hard_refresh(), self.timeout)
        except (TimeoutError, VenueError) as exc:
            self.forget_nonce()
            log.warning("account=%s api_key_index=%d nonce resync after %s failed (%s); will refetch",
                        self.account, self.api_key_index, why, type(exc).__name__)
            return
        log.info("account=%s api_key_index=%d nonce resynced after %s: %s",
                 self.account, self.api_key_index, why, self.nonce_state())

    def _rollback(self) -> None:
        """``acknowledge_failure``: the venue refused the tx, so its nonce is still free."""
        if self._nonce is not None:
            self._nonce -= 1

    # ---- auth --------------------------------------------------------------------------------
    def auth_token(self) -> str:
        """An auth token for private reads (``authorization`` header), renewed at half-life."""
        now = time.time()
        if self._auth is None or now - self._auth[1] > _AUTH_RENEW_SECS:
            self._ensure_client()
            try:
                token = native.create_auth_token(int(now) + native.AUTH_TOKEN_SECS, self.api_key_index,
                                                 self.account_index)
            except native.SignerError as exc:
                raise VenueError(ReasonCode.AUTH, f"auth token for api key {self.api_key_index}: "
                                                  f"{self._hide_key(str(exc))}") from None
            self._auth = (token, now)
        return self._auth[0]

    # ---- typed transactions ------------------------------------------------------------------
    async def send_create_order(self, market_index: int, client_order_index: int, base_amount: int, price: int,
                                is_ask: bool, *, reduce_only: bool = False,
                                order_type: int = native.ORDER_TYPE_MARKET,
                                time_in_force: int = native.ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL,
                                trigger_price: int = native.NIL_TRIGGER_PRICE,
                                order_expiry: int = native.DEFAULT_IOC_EXPIRY, what: str | None = None,
                                presigned: Presigned | None = None) -> str | None:
        """Create an order (default: MARKET/IOC, no expiry, as ``create_market_order``); the tx hash.

        ``presigned`` (from :meth:`presign_create_order` with the same arguments) is sent as is when
        its nonce is still the next one; otherwise the order is signed again.
        """
        def sign(nonce: int) -> native.SignedTx:
            if presigned is not None and presigned.nonce == nonce:
                return presigned.tx
            return native.sign_create_order(
                market_index, client_order_index, base_amount, price, is_ask, order_type, time_in_force,
                reduce_only, trigger_price, order_expiry, nonce=nonce, api_key_index=self.api_key_index,
                account_index=self.account_index)

        return await self.send(what or f"order client_id={client_order_index}", sign)

    async def presign_create_order(self, market_index: int, client_order_index: int, base_amount: int, price: int,
                                   is_ask: bool, *, reduce_only: bool = False) -> Presigned:
        """Sign a MARKET/IOC order with the next nonce without sending it or using the nonce up."""
        self._ensure_client()
        async with self._tx_lock():
            if self._nonce is None:
                self._nonce = await self._fetch_next_nonce() - 1
            nonce = self._nonce + 1
        try:
            tx = native.sign_create_order(
                market_index, client_order_index, base_amount, price, is_ask, native.ORDER_TYPE_MARKET,
                native.ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL, reduce_only, native.NIL_TRIGGER_PRICE,
                native.DEFAULT_IOC_EXPIRY, nonce=nonce, api_key_index=self.api_key_index,
                account_index=self.account_index)
        except native.SignerError as exc:
            raise error_from_text(self._hide_key(str(exc))) from None
        return Presigned(nonce, tx)

    async def send_cancel_order(self, market_index: int, order_index: int, *, what: str | None = None) -> str | None:
        """Cancel one order by the venue's ``order_index``; the tx hash."""
        def sign(nonce: int) -> native.SignedTx:
            return native.sign_cancel_order(market_index, order_index, nonce=nonce,
                                            api_key_index=self.api_key_index, account_index=self.account_index)

        return await self.send(what or f"cancel order_index={order_index}", sign)

    async def send_cancel_all(self, market_index: int, *, what: str | None = None) -> str | None:
        """Cancel every order in one market now (TIF immediate, time 0); the tx hash."""
        def sign(nonce: int) -> native.SignedTx:
            return native.sign_cancel_all_orders(native.CANCEL_ALL_TIF_IMMEDIATE, 0, market_index, nonce=nonce,
                                                 api_key_index=self.api_key_index, account_index=self.account_index)

        return await self.send(what or f"cancel_all market={market_index}", sign)

    async def send_update_leverage(self, market_index: int, fraction_bp: int, *, what: str) -> str | None:
        """Set the account's initial-margin fraction on one market, cross margin; the tx hash."""
        def sign(nonce: int) -> native.SignedTx:
            return native.sign_update_leverage(market_index, fraction_bp, native.CROSS_MARGIN_MODE, nonce=nonce,
                                               api_key_index=self.api_key_index, account_index=self.account_index)

        return await self.send(what, sign)

    # ---- one tx ------------------------------------------------------------------------------
    async def send(self, what: str, sign: SignFn) -> str | None:
        """Sign and send one tx; on invalid nonce resync and retry ONCE (same arguments).

        Returns the venue's tx hash. Raises VenueError; ``outcome_unknown`` errors mean the tx may
        have been executed (the nonce was resynced already, so the caller can look the order up
        straight away).
        """
        self._ensure_client()
        attempt = 0
        while True:
            attempt += 1
            log.info("account=%s send %s attempt=%d api_key_index=%d nonce %s",
                     self.account, what, attempt, self.api_key_index, self.nonce_state())
            try:
                async with asyncio.timeout(self.timeout):  # not wait_for: no extra task on the order path
                    resp = await self._attempt(sign)
            except asyncio.CancelledError:
                self.forget_nonce()  # cancelled mid-send: the nonce may be consumed
                raise
            except (TimeoutError, _Unknown) as exc:
                cause = exc.error if isinstance(exc, _Unknown) else VenueError(
                    ReasonCode.UNAVAILABLE, f"{what}: no answer within {self.timeout}s")
                await self.resync_nonce(f"{what} {cause.reason.value}")
                raise cause from None
            except VenueError as exc:
                error = exc
            else:
                log.info("account=%s %s accepted: tx_hash=%s nonce %s", self.account, what,
                         resp.get("tx_hash"), self.nonce_state())
                return None if resp.get("tx_hash") is None else str(resp["tx_hash"])
            log.warning("account=%s %s refused (attempt %d): %s", self.account, what, attempt, error)
            if error.reason is not ReasonCode.INVALID_NONCE:
                raise error
            # _attempt rolled back (code != 200) or hard-refreshed (HTTP 400); make sure we hold the
            # venue's value either way before the one retry (or before giving up after it).
            await self.resync_nonce(what)
            if attempt == 2:
                raise error

    def _tx_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()  # created on the connector loop, on first use
        return self._lock

    async def _attempt(self, sign: SignFn) -> dict[str, Any]:
        """``process_api_key_and_nonce`` around ``send_tx``: the accepted body, else why not.

        Raises VenueError for a refusal (nonce already rolled back or refreshed) and ``_Unknown``
        when the tx may have reached the venue (nonce left consumed; :meth:`send` resyncs).
        """
        async with self._tx_lock():
            last = self._nonce
            if last is None:
                try:
                    last = await self._fetch_next_nonce() - 1
                except VenueError as exc:
                    raise _Unknown(exc) from None  # nothing sent; the resync retries the read
            self._nonce = last + 1
            try:
                tx = sign(self._nonce)
            except native.SignerError as exc:
                self._rollback()
                raise error_from_text(self._hide_key(str(exc))) from None
            return await self._post(tx)

    async def _post(self, tx: native.SignedTx) -> dict[str, Any]:
        try:
            body = await self._rest.post_form("/api/v1/sendTx", {"tx_type": str(tx.tx_type), "tx_info": tx.tx_info})
        except VenueError as exc:
            if exc.status != 400:
                raise _Unknown(exc) from None  # 429/5xx/transport: the SDK propagates these, nonce consumed
            if exc.reason is ReasonCode.INVALID_NONCE:
                await self._refresh_after_refusal()
            else:
                self._rollback()
            raise
        error = send_tx_error(body, None)
        if error is not None:  # HTTP 200 with a business code: nothing applied, nonce unused
            self._rollback()
            raise error
        self._accepted = self._nonce
        return body

    async def _refresh_after_refusal(self) -> None:
        # The venue refused our nonce as used (another writer, or a tx whose outcome we could not
        # know), so its next nonce is past it: a nextNonce at or below it is still lagging; read again.
        refused = self._nonce
        try:
            for _ in range(_LAG_REREADS):
                shown = await self._fetch_next_nonce()
                self._nonce = shown - 1
                if refused is None or shown > refused:
                    return
                await asyncio.sleep(_LAG_REREAD_SECS)
            log.warning("account=%s api_key_index=%d nextNonce still shows %d after refusing %d",
                        self.account, self.api_key_index, shown, refused)
        except VenueError:
            self.forget_nonce()

    async def close(self) -> None:
        """Drop per-connection state; the Go client stays registered (the library cannot remove it)."""
        self._nonce = None
        self._auth = None
        self._lock = None


class _Unknown(Exception):
    """A send whose outcome is unknown (the nonce may be consumed); carries the VenueError to raise."""

    def __init__(self, error: VenueError) -> None:
        super().__init__(str(error))
        self.error = error
