"""HTTP plumbing shared by the Lighter simulator's routes: params, auth, faults, middlewares."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from simulators.lighter_model import VENUE, LighterError, auth_token_valid
from simulators.lighter_rules import RATE_LIMITED_CODE, RATE_LIMITED_MESSAGE, RATE_LIMITED_STATUS, Tier
from simulators.lighter_state import LighterState
from simulators.lighter_ws import LighterWsHub
from simulators.market import Exchange, Fault, FaultKind

logger = logging.getLogger(__name__)

INVALID_PARAM = 20001
INVALID_AUTH = 20013
RATE_LIMITED = RATE_LIMITED_CODE
#: Paths whose budget is checked once the tx names its account (lighter.py), not by the middleware.
TX_PATHS = frozenset({"/api/v1/sendTx", "/api/v1/sendTxBatch"})
DEFAULT_HOLD_SECS = 30.0
DEFAULT_PARTIAL_FRACTION = Decimal("0.5")

#: Faults any request can be given; stale_position is read through Exchange.position_quantity.
READ_FAULTS = (FaultKind.HTTP_429, FaultKind.HTTP_500, FaultKind.HANG, FaultKind.TIMEOUT_AFTER_ACCEPT,
               FaultKind.DROP_WS)
ORDER_FAULTS = (*READ_FAULTS, FaultKind.INVALID_NONCE)
IOC_ORDER_FAULTS = (*ORDER_FAULTS, FaultKind.PARTIAL_FILL)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def bad_param(name: str) -> LighterError:
    return LighterError(400, INVALID_PARAM, f"invalid param: {name}")


def qint(request: web.Request, name: str, lo: int, hi: int, *, default: int | None = None) -> int | None:
    """An integer query parameter in [lo, hi]; anything else is ``20001 invalid param``."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
        raise bad_param(name)
    value = int(text)
    if not lo <= value <= hi:
        raise bad_param(name)
    return value


def qreq(request: web.Request, name: str, lo: int, hi: int) -> int:
    """A required integer query parameter in [lo, hi]; absent is ``20001 invalid param`` too."""
    value = qint(request, name, lo, hi)
    if value is None:
        raise bad_param(name)
    return value


def qchoice(request: web.Request, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise bad_param(name)
    return raw


def rate_limited() -> LighterError:
    """The venue's answer past a budget (lighter_rules.py: HTTP 429, code 23000)."""
    return LighterError(RATE_LIMITED_STATUS, RATE_LIMITED, RATE_LIMITED_MESSAGE)


def token_owner(request: web.Request) -> int | None:
    """The account of a valid auth token on the request, else None (an unauthenticated request)."""
    token = request.headers.get("authorization") or request.query.get("auth")
    parts = token.split(":") if isinstance(token, str) else []
    if len(parts) != 4 or not (parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 20):
        return None
    owner = int(parts[1])
    return owner if auth_token_valid(token, owner, int(time.time())) else None


def check_rate(state: LighterState, request: web.Request) -> None:
    """Count a REST request against its bucket; 429 past the budget, as Lighter documents.

    "These limits apply to both IP address and L1 address… To bypass IP-based rate limits, clients
    can authenticate each request so that only L1-based rate limits apply": an authenticated request
    counts against its account's L1 address (with that account's tier) and not the IP; any other
    counts against the IP. An IP has no account type, so its budget is Standard's (UNCONFIRMED).
    """
    if not request.path.startswith("/api/v1/") or request.path in TX_PATHS:
        return
    limiter = state.limiter
    endpoint = request.path.removeprefix("/api/v1/")
    owner = token_owner(request)
    if limiter is None:
        allowed = True
    elif owner is None:
        allowed = limiter.allow(f"ip:{request.remote}", Tier.STANDARD, endpoint)
    else:
        allowed = limiter.allow(f"l1:{state.l1_address(owner)}", state.rules.tier(owner), endpoint)
    who = f"ip:{request.remote}" if owner is None else f"account:{owner}"
    state.exchange.count_request(VENUE, who, endpoint, limited=not allowed)
    if not allowed:
        raise rate_limited()


def require_auth(request: web.Request, account: int) -> None:
    """Private reads carry the token in the ``authorization`` header (the SDK) or ``auth`` (lighter-go)."""
    token = request.headers.get("authorization") or request.query.get("auth")
    if not auth_token_valid(token, account, int(time.time())):
        raise LighterError(400, INVALID_AUTH, "invalid auth")


def _seconds(fault: Fault) -> float:
    try:
        value = float(fault.params.get("seconds", DEFAULT_HOLD_SECS))
    except (TypeError, ValueError):
        return DEFAULT_HOLD_SECS
    return value if math.isfinite(value) and value >= 0 else DEFAULT_HOLD_SECS


def partial_fraction(fault: Fault | None) -> Decimal | None:
    if fault is None or fault.kind is not FaultKind.PARTIAL_FILL:
        return None
    try:
        value = Decimal(str(fault.params.get("fraction", DEFAULT_PARTIAL_FRACTION)))
    except (InvalidOperation, ValueError):
        return DEFAULT_PARTIAL_FRACTION
    return value if value.is_finite() and 0 <= value <= 1 else DEFAULT_PARTIAL_FRACTION


class FaultGate:
    """Consumes armed faults for one request and plays them out."""

    def __init__(self, exchange: Exchange, hub: LighterWsHub) -> None:
        self.exchange = exchange
        self.hub = hub

    def take(self, op: str, account: int | None, kinds: tuple[FaultKind, ...]) -> Fault | None:
        # Public requests pass "" so only faults armed for every account match them.
        key = "" if account is None else str(account)
        return self.exchange.take_fault(VENUE, op, account=key, kinds=kinds)

    async def before(self, fault: Fault | None, account: int | None) -> web.Response | None:
        """An early answer for the fault, or None to go on (after any hang)."""
        if fault is None:
            return None
        logger.info("lighter fault %s on op %s account %s", fault.kind.value, fault.op, account)
        if fault.kind is FaultKind.HTTP_429:
            return json_response(rate_limited().body(), RATE_LIMITED_STATUS)
        if fault.kind is FaultKind.HTTP_500:
            return json_response({"code": 500, "message": "internal server error"}, 500)
        if fault.kind is FaultKind.INVALID_NONCE:
            return json_response({"code": 21104, "message": "invalid nonce"}, 400)
        if fault.kind is FaultKind.HANG:
            await asyncio.sleep(_seconds(fault))
        elif fault.kind is FaultKind.DROP_WS:
            self.hub.drop(fault.account if fault.account is not None else
                          (str(account) if account is not None else None))
        return None

    async def after(self, fault: Fault | None) -> None:
        if fault is not None and fault.kind is FaultKind.TIMEOUT_AFTER_ACCEPT:
            await asyncio.sleep(_seconds(fault))

    async def read(self, op: str, account: int | None, build: Callable[[], dict[str, Any]]) -> web.Response:
        """A read with faults: consume, maybe answer early, build the body, maybe hold it."""
        fault = self.take(op, account, READ_FAULTS)
        early = await self.before(fault, account)
        if early is not None:
            return early
        body = build()
        await self.after(fault)
        return json_response(body)


def venue_middleware(exchange: Exchange, state: LighterState | None = None) -> Any:
    """Latency, the rate limit, then the handler; every failure leaves in the venue's
    ``{"code","message"}`` shape.

    One middleware rather than two: this wraps the sendTx hot path.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Venue routes only: the admin API and the socket handshake answer at once.
        if exchange.latency_ms > 0 and request.path.startswith("/api/"):
            await asyncio.sleep(exchange.latency_ms / 1000)
        try:
            if state is not None:
                check_rate(state, request)
            return await handler(request)
        except LighterError as exc:
            return json_response(exc.body(), exc.http_status)
        except web.HTTPException as exc:
            if exc.status < 400 or request.path.startswith("/_sim/"):
                raise
            return json_response({"code": exc.status, "message": exc.reason}, exc.status)
        except Exception:
            logger.exception("lighter simulator: unhandled error on %s %s", request.method, request.path)
            return json_response({"code": 500, "message": "internal server error"}, 500)

    return middleware
