"""Backpack error bodies → :class:`VenueError` with the right :class:`ReasonCode`.

Errors are ``{"code": "<ApiErrorCode>", "message": ...}`` with a string code, or plain text
for request parse failures. The classification looks at the HTTP status,
then the code, then the message, because the venue reuses ``INVALID_CLIENT_REQUEST`` for
signature, expiry and validation failures alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from venues.base import ReasonCode, VenueError

_AUTH_CODES = {"INVALID_SIGNATURE", "UNAUTHORIZED", "FORBIDDEN", "ACCOUNT_DEACTIVATED"}
_AUTH_WORDS = ("signature", "expired", "api key", "x-api-key", "x-timestamp", "x-window", "unauthorized")
_UNAVAILABLE_CODES = {"SERVER_ERROR", "MAINTENANCE", "TIMEOUT", "TRADING_PAUSED"}
_MARKET_CODES = {"INVALID_MARKET", "INVALID_SYMBOL"}
_MARKET_WORDS = ("invalid market symbol", "marketsymbol", "market not found")
_NOT_FOUND_WORDS = ("not found",)


@dataclass(frozen=True)
class ErrorBody:
    status: int
    code: str | None
    message: str

    @property
    def not_found(self) -> bool:
        """404 or "... not found" (cancel of a closed order answers 400 "Order not found")."""
        return self.status == 404 or self.code == "RESOURCE_NOT_FOUND" or any(
            w in self.message.lower() for w in _NOT_FOUND_WORDS)


def parse_error_body(status: int, text: str) -> ErrorBody:
    """Read ``{"code","message"}`` or keep plain text (one line, truncated)."""
    code: Any = None
    message = text
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        code = data.get("code")
        message = str(data.get("message") or data.get("error") or "")
    elif isinstance(data, str):
        message = data
    message = " ".join(message.split())[:200]
    return ErrorBody(status, None if code is None else str(code), message)


def classify(err: ErrorBody) -> ReasonCode:
    code, msg = err.code or "", err.message.lower()
    if err.status == 429 or code == "TOO_MANY_REQUESTS":
        return ReasonCode.RATE_LIMITED
    if err.status >= 500 or code in _UNAVAILABLE_CODES:
        return ReasonCode.UNAVAILABLE
    if err.status == 401 or code in _AUTH_CODES or any(w in msg for w in _AUTH_WORDS):
        return ReasonCode.AUTH
    if code in _MARKET_CODES or any(w in msg for w in _MARKET_WORDS):
        return ReasonCode.UNKNOWN_MARKET
    if "client id already exists" in msg:
        return ReasonCode.DUPLICATE_CLIENT_ID
    if err.code is None and "parse" in msg:
        # Plain-text serde failures: our request was malformed, not refused on its merits.
        return ReasonCode.INVALID_REQUEST
    return ReasonCode.REJECTED


class BackpackHttpError(VenueError):
    """A non-2xx answer; ``not_found`` tells a missing order from other refusals."""

    def __init__(self, reason: ReasonCode, message: str, *, status: int, code: str | None,
                 not_found: bool) -> None:
        super().__init__(reason, message, status=status, code=code)
        self.not_found = not_found


def venue_error(status: int, text: str, what: str) -> BackpackHttpError:
    """The error for a non-2xx answer to ``what`` (e.g. ``"POST /api/v1/order"``)."""
    body = parse_error_body(status, text)
    detail = f"{what} -> HTTP {status}" + (f" {body.code}" if body.code else "") + f": {body.message}"
    return BackpackHttpError(classify(body), detail, status=status, code=body.code, not_found=body.not_found)


def is_not_found(error: VenueError) -> bool:
    return isinstance(error, BackpackHttpError) and error.not_found


def is_no_position(error: VenueError) -> bool:
    """A JSON 404 to GET /api/v1/position: the venue's "no position" (the venue's API spec
    lists 404 and perp-dex-tools reads it as "no position"; whether a flat account without
    ``symbol`` gets ``[]`` or this 404 is UNCONFIRMED, so both mean flat). A plain-text 404 is an
    unknown path, never a flat account: reading it as flat would hide a wrong URL as zero exposure."""
    return isinstance(error, BackpackHttpError) and error.status == 404 and error.code is not None
