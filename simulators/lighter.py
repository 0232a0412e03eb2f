"""Simulated Lighter (zkLighter) venue speaking the wire protocol of the official lighter-sdk 1.1.8.

``create_lighter_app(exchange, rules)`` returns the aiohttp app (``rules``: lighter_rules.py): the
REST surface the SDK calls,
the WebSocket at ``/stream`` (see ``lighter_ws``) and one admin route only this venue
needs, ``POST /_sim/lighter/apikey``. Run it on its own event loop/thread: the Go signer's
synchronous HTTP calls deadlock if the server shares the caller's loop.

Choices where the real venue leaves room (documented for the connector):

* **HTTP status of rejections.** A malformed or out-of-range tx is HTTP 400 ``{"code", "message"}``
  (21501 invalid tx info, 21505 unsupported tx type, 21602 market, 217xx fields). A wrong nonce is
  HTTP 400 ``{"code":21104,"message":"invalid nonce"}``, which is what triggers the SDK's own
  resync. A *well-formed tx refused because of venue state* is **HTTP 200** with the code in the
  body: **21728** duplicate client_order_index, 21700/21709 cancel of an unknown/inactive order,
  21508 an UpdateLeverage (tx type 20) that would leave open positions below initial margin.
  The SDK then returns ``(tx, RespSendTx(code=21728, message=...), None)`` so the connector reads
  a structured code, and in both cases the SDK rolls its optimistic nonce back, which is right
  because a rejected tx never consumes a nonce here.
* **Reduce-only** is enforced at execution, as on Lighter: the tx is accepted (HTTP 200,
  nonce bumped, audited) and the order ends ``canceled-reduce-only`` with nothing filled when it
  would increase or open a position; one larger than the position fills up to the position and
  the rest is canceled with the same status. 21732 is never sent.
* **Market/IOC orders** fill up to ``Price``, the worst acceptable price; the rest is canceled as
  ``canceled-too-much-slippage`` (book liquidity lay beyond the price) or
  ``canceled-not-enough-liquidity`` (depth ran out, or a ``partial_fill`` fault).
  Margin refusals end ``canceled-margin-not-allowed`` (captured status).
* **Accounts and keys.** Any account index is created on first use with the exchange's starting
  collateral. API key indexes 0–3 belong to the venue's own apps, so with
  ``LighterRules.reserve_api_keys`` a tx signed at one of them is HTTP 400 ``{"code":21108,"message":
  "invalid PublicKey, please run changePubKey"}`` (the venue's documented code for a key not registered
  at that index; that the venue answers a reserved index with it is UNCONFIRMED) and the admin route
  refuses to register one. Signatures (Poseidon/Schnorr) cannot be checked, so a tx from any
  ``(AccountIndex, ApiKeyIndex)`` is accepted if its nonce is right. ``GET /api/v1/apikeys``
  serves only keys registered through ``POST /_sim/lighter/apikey``; an unregistered key gives
  an empty list, so ``SignerClient.check_client()`` fails with "no api key returned" until the
  test/demo registers the public key (the honest answer: the venue does not know that key).
* **Unknown account on /account** cannot happen for ``by=index`` (created on first use);
  ``by=l1_address`` with an address the simulator did not hand out answers HTTP 200
  ``{"code":21100,"message":"account not found"}`` as captured.

Faults (``exchange.take_fault("lighter", op, account=str(account_index))``): op ``order``
(sendTx/sendTxBatch), ``nonce`` (nextNonce), ``position`` (/account), ``orders`` (order, trade and
tx lookups), ``apikeys``, ``market`` (public data; only faults armed for all accounts) and ``ws``
(the socket ticker, drop_ws only). Kinds: http_429, http_500, hang (``seconds``, default 30),
timeout_after_accept (apply, then hold ``seconds``), invalid_nonce (21104, nothing applied),
partial_fill (``fraction``; market/IOC creates), stale_position (inside
``Exchange.position_quantity``), drop_ws.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from simulators import lighter_money
from simulators.admin import POSITION_HOOK
from simulators.lighter_http import (
    IOC_ORDER_FAULTS,
    ORDER_FAULTS,
    FaultGate,
    json_response,
    partial_fraction,
    qreq,
    rate_limited,
    venue_middleware,
)
from simulators.lighter_model import (
    MAX_48,
    ORDER_TYPE_MARKET,
    TIF_IOC,
    VENUE,
    CreateOrderTx,
    LighterError,
    ParsedTx,
)
from simulators.lighter_reads import LighterReads
from simulators.lighter_rules import RESERVED_API_KEYS, LighterRules
from simulators.lighter_state import LighterState, now_ms
from simulators.lighter_tx import INVALID_TX_INFO, info_text, parse_batch, parse_tx, parse_tx_type
from simulators.lighter_ws import LighterWsHub
from simulators.market import Exchange

logger = logging.getLogger(__name__)

STATE_KEY = web.AppKey("lighter_state", LighterState)
HUB_KEY = web.AppKey("lighter_ws_hub", LighterWsHub)
#: Captured sendTx success carries this message (ccxt createOrder comment).
SEND_TX_MESSAGE = '{"ratelimit": "didn\'t use volume quota"}'
VOLUME_QUOTA = 1000
PUBLIC_KEY_HEX_CHARS = 80
#: Lighter's troubleshooting page: "invalid PublicKey, please run changePubKey (21108)".
INVALID_PUBKEY = 21108


def create_lighter_app(exchange: Exchange, rules: LighterRules | None = None) -> web.Application:
    """The Lighter venue app on ``exchange`` (accounts keyed ``("lighter", str(account_index))``)."""
    state = LighterState(exchange, rules)
    hub = LighterWsHub(state)
    gate = FaultGate(exchange, hub)
    app = web.Application(middlewares=[venue_middleware(exchange, state)])
    app[STATE_KEY] = state
    app[HUB_KEY] = hub
    txs = _TxRoutes(state, gate)
    app.router.add_get("/api/v1/nextNonce", txs.next_nonce)
    app.router.add_post("/api/v1/sendTx", txs.send_tx)
    app.router.add_post("/api/v1/sendTxBatch", txs.send_tx_batch)
    app.router.add_post("/_sim/lighter/apikey", txs.register_api_key)
    app.router.add_post("/_sim/lighter/clock", txs.advance_clock)
    app.router.add_post("/_sim/lighter/limits/reset", txs.reset_limits)
    app.router.add_get("/stream", hub.handle)
    app[POSITION_HOOK] = hub.position_hook
    LighterReads(state, gate).register(app)
    lighter_money.register(app, state, gate)  # funding history, liquidation trades (profile.py rules)
    app.cleanup_ctx.append(hub.ticker_ctx)
    app.on_shutdown.append(hub.close_all)
    return app


def _order_faults(tx: ParsedTx) -> tuple[Any, ...]:
    ioc = isinstance(tx, CreateOrderTx) and (tx.order_type == ORDER_TYPE_MARKET or tx.time_in_force == TIF_IOC)
    return IOC_ORDER_FAULTS if ioc else ORDER_FAULTS


def _sent(tx_hash: str | list[str]) -> dict[str, Any]:
    return {"code": 200, "message": SEND_TX_MESSAGE, "tx_hash": tx_hash,
            "predicted_execution_time_ms": now_ms(), "volume_quota_remaining": VOLUME_QUOTA}


async def _form(request: web.Request) -> Any:
    """The urlencoded (or multipart) body; undecodable garbage is a 21501, never a crash."""
    try:
        return await request.post()
    except web.HTTPException:
        raise
    except Exception:
        raise LighterError(400, INVALID_TX_INFO, "invalid tx info: unreadable form") from None


class _TxRoutes:
    def __init__(self, state: LighterState, gate: FaultGate) -> None:
        self.state = state
        self.gate = gate

    async def next_nonce(self, request: web.Request) -> web.Response:
        account = qreq(request, "account_index", 0, MAX_48)
        api_key = qreq(request, "api_key_index", 0, 254)
        # Go's signer needs "code":200 next to the nonce, or it fails to read it.
        return await self.gate.read("nonce", account, lambda: {
            "code": 200, "nonce": self.state.next_nonce(account, api_key)})

    def _admit(self, txs: list[ParsedTx], tx_types: list[int], endpoint: str) -> None:
        """Key-index and rate rules of parsed txs, before any state or fault is touched."""
        rules, limiter = self.state.rules, self.state.limiter
        for tx in txs:
            if rules.reserve_api_keys and tx.api_key < RESERVED_API_KEYS:
                raise LighterError(400, INVALID_PUBKEY, "invalid PublicKey, please run changePubKey")
        # A signed tx is authenticated: only its L1 address counts, as Lighter documents for sendTx.
        account = txs[0].account
        l1 = self.state.l1_address(account)
        allowed = limiter is None or (limiter.allow_send(l1, rules.tier(account))
                                      and all(limiter.allow_tx_type(l1, kind) for kind in tx_types))
        self.state.exchange.count_request(VENUE, f"account:{account}", endpoint, limited=not allowed)
        if not allowed:
            raise rate_limited()

    async def send_tx(self, request: web.Request) -> web.Response:
        form = await _form(request)
        raw_type, raw_info = form.get("tx_type"), form.get("tx_info")
        tx = parse_tx(raw_type, raw_info, self.state.markets)
        self._admit([tx], [parse_tx_type(raw_type)], "sendTx")
        fault = self.gate.take("order", tx.account, _order_faults(tx))
        early = await self.gate.before(fault, tx.account)
        if early is not None:
            return early
        tx_hash = self.state.submit(tx, parse_tx_type(raw_type), info_text(raw_info), partial_fraction(fault))
        await self.gate.after(fault)
        return json_response(_sent(tx_hash))

    async def send_tx_batch(self, request: web.Request) -> web.Response:
        form = await _form(request)
        txs = parse_batch(form.get("tx_types"), form.get("tx_infos"), self.state.markets)
        self._admit([t for t, _, _ in txs], [kind for _, kind, _ in txs], "sendTxBatch")
        account = txs[0][0].account
        fault = self.gate.take("order", account, ORDER_FAULTS)
        early = await self.gate.before(fault, account)
        if early is not None:
            return early
        hashes = self.state.submit_batch(txs)
        await self.gate.after(fault)
        return json_response(_sent(hashes))

    async def register_api_key(self, request: web.Request) -> web.Response:
        """Admin: make ``/api/v1/apikeys`` serve a public key so ``check_client()`` passes."""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        try:
            account, api_key, public_key = _parse_key_registration(body)
        except ValueError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        if self.state.rules.reserve_api_keys and api_key < RESERVED_API_KEYS:
            return web.json_response({"ok": False, "error": f"api_key_index 0..{RESERVED_API_KEYS - 1} are "
                                      "reserved for the venue's own apps"}, status=400)
        self.state.register_key(account, api_key, public_key)
        logger.info("lighter: registered api key %d for account %d", api_key, account)
        return web.json_response({"ok": True, "account_index": account, "api_key_index": api_key,
                                  "public_key": public_key})


    async def advance_clock(self, request: web.Request) -> web.Response:
        """Admin: move the venue's clock ``{"advance_secs": s}`` ahead (history window, rate windows)."""
        try:
            body = await request.json()
            secs = float(body["advance_secs"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            return web.json_response({"ok": False, "error": "body must be {\"advance_secs\": <seconds>}"}, status=400)
        if not 0 <= secs <= 10 * 365 * 86400:
            return web.json_response({"ok": False, "error": "advance_secs must be 0..10 years"}, status=400)
        self.state.clock_offset_ms += secs * 1000
        return web.json_response({"ok": True, "offset_secs": self.state.clock_offset_ms / 1000})

    async def reset_limits(self, _request: web.Request) -> web.Response:
        """Admin: every rate-limit window emptied, as a minute without requests would leave them (the
        venue's clock stays where it is); answers ``{"ok": true, "buckets": n}``, the windows dropped."""
        dropped = 0 if self.state.limiter is None else self.state.limiter.reset()
        return web.json_response({"ok": True, "buckets": dropped})


def _parse_key_registration(body: object) -> tuple[int, int, str]:
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    account, api_key, public_key = body.get("account_index"), body.get("api_key_index"), body.get("public_key")
    if isinstance(account, str) and account.isascii() and account.isdigit():
        account = int(account)
    if isinstance(api_key, str) and api_key.isascii() and api_key.isdigit():
        api_key = int(api_key)
    if type(account) is not int or not 0 <= account <= MAX_48:
        raise ValueError("account_index must be an integer in 0..2^48-1")
    if type(api_key) is not int or not 0 <= api_key <= 254:
        raise ValueError("api_key_index must be an integer in 0..254")
    if not isinstance(public_key, str):
        raise ValueError("public_key must be a hex string")
    # check_client compares against bare hex, so store it without 0x.
    key = public_key[2:] if public_key[:2].lower() == "0x" else public_key
    if len(key) != PUBLIC_KEY_HEX_CHARS or not all(c in "0123456789abcdefABCDEF" for c in key):
        raise ValueError("public_key must be 40 bytes of hex")
    return account, api_key, key.lower()

