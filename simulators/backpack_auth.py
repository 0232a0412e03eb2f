"""Backpack request errors and ED25519 request verification.

The simulator rebuilds the signing string from the parameters it actually received, as the venue
verifies them, so a client that signs anything else than what it sends is caught here.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from multidict import CIMultiDictProxy
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

#: (method, path) -> the instruction the venue expects signed for it.
INSTRUCTIONS: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/order"): "orderExecute",
    ("DELETE", "/api/v1/order"): "orderCancel",
    ("GET", "/api/v1/order"): "orderQuery",
    ("GET", "/api/v1/orders"): "orderQueryAll",
    ("DELETE", "/api/v1/orders"): "orderCancelAll",
    ("GET", "/api/v1/position"): "positionQuery",
    ("GET", "/api/v1/capital"): "balanceQuery",
    ("GET", "/api/v1/capital/collateral"): "collateralQuery",
    ("GET", "/api/v1/account"): "accountQuery",
    ("GET", "/wapi/v1/history/fills"): "fillHistoryQueryAll",
    ("GET", "/wapi/v1/history/orders"): "orderHistoryQueryAll",
    # Funding payments (OpenAPI "Get funding payments"; the instruction as bpx clients sign it).
    ("GET", "/wapi/v1/history/funding"): "fundingHistoryQueryAll",
}

DEFAULT_WINDOW_MS = 5000  # used (and signed) when no X-Window header is sent
MAX_WINDOW_MS = 60000


class ApiError(Exception):
    """An error answered as JSON ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class PlainError(Exception):
    """An error answered as plain text, as the real server does for parse failures."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def render_value(value: Any) -> str:
    """A parameter value as it appears in the signing string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if value is None:
        return "null"  # nulls UNCONFIRMED; the Rust SDK would print JSON `null` unquoted
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def signing_string(instruction: str, params: Iterable[tuple[str, Any]], timestamp: int, window: int) -> str:
    """``instruction=..&<sorted k=v>&timestamp=..&window=..``."""
    parts = [f"instruction={instruction}"]
    parts.extend(f"{k}={render_value(v)}" for k, v in sorted(params, key=lambda kv: kv[0]))
    parts.append(f"timestamp={timestamp}&window={window}")
    return "&".join(parts)


def _decode_b64(text: str, size: int) -> bytes | None:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return raw if len(raw) == size else None


def _int_header(headers: CIMultiDictProxy[str], name: str) -> int | None:
    text = headers.get(name)
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ApiError(400, "INVALID_CLIENT_REQUEST", f"Invalid {name} header")
    return int(text)


class Authenticator:
    """Verifies signed requests; caches one VerifyKey per API key (signing is on the hot path)."""

    def __init__(self) -> None:
        self._keys: dict[str, VerifyKey] = {}
        #: A second API key of an existing account (the venue lets an account hold several keys): key → account.
        self.aliases: dict[str, str] = {}
        #: Signed requests per (aliased key, instruction): what a second key did on its account.
        self.alias_uses: Counter[tuple[str, str]] = Counter()

    def verify_key(self, api_key: str) -> VerifyKey | None:
        key = self._keys.get(api_key)
        if key is None:
            raw = _decode_b64(api_key, 32)
            if raw is None:
                return None
            try:
                key = VerifyKey(raw)
            except Exception:  # pynacl rejects some 32-byte strings; treat as an unknown key
                return None
            if len(self._keys) < 100_000:  # fuzzed keys must not grow the cache without bound
                self._keys[api_key] = key
        return key

    def check(self, api_key: str, signature: str, message: str) -> bool:
        key = self.verify_key(api_key)
        sig = _decode_b64(signature, 64)
        if key is None or sig is None:
            return False
        try:
            key.verify(message.encode("utf-8"), sig)
        except BadSignatureError:
            return False
        return True

    def authenticate(self, headers: CIMultiDictProxy[str], instruction: str,
                     params: Iterable[tuple[str, Any]], now_ms: int | None = None) -> str:
        """Verify a REST request; returns the API key (the account) or raises ApiError."""
        api_key, signature = headers.get("X-API-Key"), headers.get("X-Signature")
        timestamp = _int_header(headers, "X-Timestamp")
        window = _int_header(headers, "X-Window")
        if not api_key or not signature or timestamp is None:
            missing = "X-API-Key" if not api_key else "X-Signature" if not signature else "X-Timestamp"
            # Simulator choice: the real status/message for a missing header was not captured.
            raise ApiError(401, "INVALID_CLIENT_REQUEST", f"Missing {missing} header")
        check_window(timestamp, DEFAULT_WINDOW_MS if window is None else window, now_ms)
        window = DEFAULT_WINDOW_MS if window is None else window
        message = signing_string(instruction, params, timestamp, window)
        if self.verify_key(api_key) is None:
            raise ApiError(401, "INVALID_CLIENT_REQUEST", "Invalid X-API-Key header")
        if not self.check(api_key, signature, message):
            # The venue's FAQ gives "Invalid signature"; the status (400 or 401) is UNCONFIRMED, 401 chosen.
            raise ApiError(401, "INVALID_CLIENT_REQUEST", "Invalid signature")
        if api_key in self.aliases:
            self.alias_uses[(api_key, instruction)] += 1
            return self.aliases[api_key]
        return api_key


def check_window(timestamp: int, window: int, now_ms: int | None = None) -> None:
    """Reject oversized windows and requests older than their window."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if window > MAX_WINDOW_MS or window <= 0:
        # Simulator choice: an oversized window is rejected rather than clamped (UNCONFIRMED).
        raise ApiError(400, "INVALID_CLIENT_REQUEST", "Invalid X-Window header")
    if now > timestamp + window:
        raise ApiError(401, "INVALID_CLIENT_REQUEST", "Request has expired")
    if timestamp > now + window:
        # Simulator choice: the real future-skew rule is UNCONFIRMED; allow one window.
        raise ApiError(400, "INVALID_CLIENT_REQUEST", "Request timestamp is in the future")
