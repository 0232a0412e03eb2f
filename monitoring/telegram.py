"""Telegram credentials (the original ``tg_key.txt`` format or env vars) and one ``sendMessage`` call.

The bot token is a secret: it is only ever put into the request URL. Everything that can end up
in a log (URLs, exception texts, urllib3's debug lines) goes through :func:`redact` first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import requests

from core.config import TelegramConfig
from core.errors import XtbError

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
# Key spellings accepted in tg_key.txt (original 2dd23b1 and 567b0f4), compared case-insensitively.
_TOKEN_KEYS = ("bot_token", "token", "telegram_token")
_CHAT_KEYS = ("chat_id", "telegram_chat", "channel")


class CredentialsError(XtbError):
    """Telegram credentials are missing or unreadable; the message says where we looked."""


@dataclass(frozen=True)
class TelegramCredentials:
    chat_id: str
    #: Excluded from repr so an accidental ``log.info("%r", creds)`` cannot leak it.
    bot_token: str = field(repr=False)


def parse_keys_text(text: str) -> dict[str, str]:
    """``key: value`` lines, split on the first ``:``; keys lower-cased; spaces and quotes stripped."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        key = key.strip().strip("\"'").strip().lower()
        value = value.strip().strip("\"'").strip()
        if key and value:
            values[key] = value
    return values


def _first(values: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if values.get(name):
            return values[name]
    return None


def load_credentials(config: TelegramConfig, env: Mapping[str, str] | None = None,
                     base_dir: Path | None = None) -> TelegramCredentials:
    """Env vars (``config.bot_token_env`` / ``chat_id_env``) win over the keys file.

    Without a configured ``keys_file`` the original's ``tg_key.txt`` in ``base_dir`` (default: the
    current directory) is tried, as the original bot did.
    """
    environ = os.environ if env is None else env
    token = environ.get(config.bot_token_env) or None
    chat = environ.get(config.chat_id_env) or None
    path = config.keys_file or (base_dir or Path.cwd()) / "tg_key.txt"
    if token is None or chat is None:
        from_file = _read_keys_file(path, required=config.keys_file is not None)
        token = token or _first(from_file, _TOKEN_KEYS)
        chat = chat or _first(from_file, _CHAT_KEYS)
    missing = [name for name, value in (("bot_token", token), ("chat_id", chat)) if not value]
    if missing or token is None or chat is None:
        raise CredentialsError(
            f"telegram {' and '.join(missing)} not found: set ${config.bot_token_env} and "
            f"${config.chat_id_env}, or put 'bot_token: ...' and 'chat_id: ...' in {path}"
        )
    return TelegramCredentials(chat_id=chat, bot_token=token)


def _read_keys_file(path: Path, *, required: bool) -> dict[str, str]:
    try:
        return parse_keys_text(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise CredentialsError(f"telegram keys file not found: {path}") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read telegram keys file {path}: {exc}") from None


def redact(text: str, secret: str) -> str:
    return text.replace(secret, REDACTED) if secret else text


class RedactingFilter(logging.Filter):
    """Rewrites records that mention the token (urllib3 logs request paths at debug level)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secret:
            return True
        message = record.getMessage()
        if self.secret in message:
            record.msg = redact(message, self.secret)
            record.args = None
        return True


class SendStatus(StrEnum):
    """How one ``sendMessage`` attempt ended."""

    #: Telegram answered ``{"ok": true}``; the message is delivered.
    OK = "ok"
    #: HTTP 429; wait ``retry_after`` seconds before the next attempt.
    RATE_LIMITED = "rate_limited"
    #: 5xx, timeout or connection failure: worth retrying with backoff.
    TRANSIENT = "transient"
    #: 400: this message will never be accepted as it is.
    BAD_REQUEST = "bad_request"
    #: 401/403/404: wrong token or chat; retrying helps only after the operator fixes it.
    REJECTED = "rejected"


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    description: str = ""
    retry_after: float | None = None
    message_id: int | None = None


class TelegramClient:
    """``POST {api_url}/bot<token>/sendMessage``; classifies the answer, never raises for HTTP."""

    def __init__(self, api_url: str, credentials: TelegramCredentials, *, timeout: float = 10.0,
                 session: requests.Session | None = None) -> None:
        self._credentials = credentials
        self._url = f"{api_url.rstrip('/')}/bot{credentials.bot_token}/sendMessage"
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.trust_env = False
        # urllib3 logs "POST /bot<token>/sendMessage" at debug level; scrub it at the source.
        self._filter = RedactingFilter(credentials.bot_token)
        logging.getLogger("urllib3.connectionpool").addFilter(self._filter)

    @property
    def safe_url(self) -> str:
        return redact(self._url, self._credentials.bot_token)

    @property
    def chat_id(self) -> str:
        return self._credentials.chat_id

    def close(self) -> None:
        logging.getLogger("urllib3.connectionpool").removeFilter(self._filter)
        self._session.close()

    def send(self, text: str) -> SendResult:
        body: dict[str, Any] = {"chat_id": self._credentials.chat_id, "text": text, "disable_web_page_preview": True}
        try:
            reply = self._session.post(self._url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            # requests puts the URL (with the token) into exception texts.
            detail = redact(f"{type(exc).__name__}: {exc}", self._credentials.bot_token)
            return SendResult(SendStatus.TRANSIENT, detail)
        return _classify(reply, self._credentials.bot_token)


def _classify(reply: requests.Response, token: str) -> SendResult:
    try:
        payload = reply.json()
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    description = redact(str(payload.get("description") or reply.reason or ""), token)
    if reply.status_code == 200 and payload.get("ok") is True:
        result = payload.get("result") or {}
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return SendResult(SendStatus.OK, description, message_id=message_id)
    if reply.status_code == 429:
        parameters = payload.get("parameters") or {}
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        if retry_after is None:
            retry_after = reply.headers.get("Retry-After")
        try:
            seconds = float(retry_after) if retry_after is not None else None
        except ValueError:
            seconds = None
        return SendResult(SendStatus.RATE_LIMITED, description, retry_after=seconds)
    if reply.status_code == 400:
        return SendResult(SendStatus.BAD_REQUEST, f"HTTP 400 {description}")
    if reply.status_code in (401, 403, 404):
        return SendResult(SendStatus.REJECTED, f"HTTP {reply.status_code} {description}")
    return SendResult(SendStatus.TRANSIENT, f"HTTP {reply.status_code} {description}")
