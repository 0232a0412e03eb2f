"""Request signing for the Backpack REST API and private WebSocket streams.

The signed string is ``instruction=<ins>&<params sorted by key>&timestamp=<ms>&window=<ms>``,
signed with ED25519 over the UTF-8 bytes, base64 in ``X-Signature``. The same parameter
values (formatted by :func:`wire_value`) go on the wire and into the signed string, so the
two can never disagree.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from venues.backpack.credentials import BackpackCredentials

#: The venue's default and maximum ``X-Window``.
DEFAULT_WINDOW_MS = 5000
MAX_WINDOW_MS = 60000


def wire_value(value: Any) -> str:
    """The text of one parameter in the signed string.

    Booleans are lowercase, integers plain digits, decimals fixed-point strings. Floats and
    ``None`` are refused: decimals travel as strings and optional keys are omitted, not null.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str):
        return value
    raise TypeError(f"unsupported Backpack parameter type {type(value).__name__}")


def signing_string(instruction: str, params: Mapping[str, Any] | None, timestamp_ms: int,
                   window_ms: int = DEFAULT_WINDOW_MS) -> str:
    """The exact string to sign; ``window`` is always present."""
    parts = [f"instruction={instruction}"]
    for key in sorted(params or {}):
        parts.append(f"{key}={wire_value(params[key])}")  # type: ignore[index]
    parts.append(f"timestamp={timestamp_ms}")
    parts.append(f"window={window_ms}")
    return "&".join(parts)


class Signer:
    """Holds the decoded key of one account; never exposes the seed."""

    def __init__(self, credentials: BackpackCredentials) -> None:
        self.api_key = credentials.api_key
        self._key = credentials.signing_key()

    def __repr__(self) -> str:
        return f"Signer(api_key={self.api_key!r})"

    def sign(self, message: str) -> str:
        """Base64 of the 64-byte ED25519 signature of ``message``."""
        return base64.b64encode(self._key.sign(message.encode("utf-8")).signature).decode("ascii")

    def headers(self, instruction: str, params: Mapping[str, Any] | None, timestamp_ms: int,
                window_ms: int = DEFAULT_WINDOW_MS, *, broker_id: str | None = None) -> dict[str, str]:
        """Authentication headers of one REST request."""
        message = signing_string(instruction, params, timestamp_ms, window_ms)
        headers = {
            "X-API-Key": self.api_key,
            "X-Signature": self.sign(message),
            "X-Timestamp": str(timestamp_ms),
            "X-Window": str(window_ms),
            "Content-Type": "application/json; charset=utf-8",
        }
        if broker_id:
            headers["X-Broker-Id"] = broker_id
        return headers

    def ws_signature(self, timestamp_ms: int, window_ms: int = DEFAULT_WINDOW_MS) -> list[str]:
        """The ``signature`` array of a private SUBSCRIBE frame: four strings."""
        sig = self.sign(signing_string("subscribe", None, timestamp_ms, window_ms))
        return [self.api_key, sig, str(timestamp_ms), str(window_ms)]
