"""Backpack API credentials: loading, validation and generation.

The key file keeps the original XTradingBot format::

    api key: <base64 ED25519 verifying key>
    api secret: <base64 32-byte ED25519 seed>

Errors name the file or environment variable that is wrong, never the value in it.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path

from nacl.signing import SigningKey

_KEY_NAMES = {"api key": "api_key", "api secret": "api_secret"}


@dataclass(frozen=True)
class BackpackCredentials:
    """An API key (base64 verifying key) and its secret (base64 32-byte seed).

    ``repr``/``str`` never show the secret: credentials end up in tracebacks and log lines.
    """

    api_key: str
    api_secret: str = field(repr=False)

    def __str__(self) -> str:
        return f"BackpackCredentials(api_key={self.api_key!r})"

    def signing_key(self) -> SigningKey:
        """The pynacl key for the seed."""
        return SigningKey(_decode_32(self.api_secret, "api secret"))


def _decode_32(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) != 32:
        # The Rust SDK rejects anything but a 32-byte seed; so do we (ccxt silently truncates).
        raise ValueError(f"{what} must decode to 32 bytes, got {len(raw)}")
    return raw


def _validated(api_key: str | None, api_secret: str, source: str) -> BackpackCredentials:
    """Check the pair and derive the API key from the seed when it is missing."""
    try:
        seed = _decode_32(api_secret, "api secret")
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    derived = base64.b64encode(bytes(SigningKey(seed).verify_key)).decode()
    if api_key is None:
        return BackpackCredentials(derived, api_secret)
    try:
        _decode_32(api_key, "api key")
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if api_key != derived:
        raise ValueError(f"{source}: api key is not the public key of the api secret")
    return BackpackCredentials(api_key, api_secret)


def _clean(value: str) -> str:
    return value.strip().strip("'\"").strip()


def _read_key_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot read Backpack key file {path}: {reason}") from None
    found: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        name, value = line.split(":", 1)
        attr = _KEY_NAMES.get(" ".join(_clean(name).lower().split()))
        if attr is not None and _clean(value):
            found[attr] = _clean(value)
    return found


def _from_env(name: str | None) -> str | None:
    if not name:
        return None
    value = os.environ.get(name)
    return _clean(value) if value and _clean(value) else None


def load_backpack_credentials(keys_file: Path | None, api_key_env: str | None = None,
                              api_secret_env: str | None = None) -> BackpackCredentials:
    """Credentials from the environment (when the variables are named and set) or the key file.

    Environment variables win over the file, each on its own. A missing API key is derived from
    the secret; a key that does not belong to the secret is an error (every request would fail).
    """
    env_key, env_secret = _from_env(api_key_env), _from_env(api_secret_env)
    from_file: dict[str, str] = {}
    if keys_file is not None and (env_key is None or env_secret is None):
        from_file = _read_key_file(Path(keys_file))
    secret = env_secret or from_file.get("api_secret")
    key = env_key or from_file.get("api_key")
    if secret is None:
        places = [p for p in (api_secret_env and f"${api_secret_env}", keys_file and str(keys_file)) if p]
        where = " or ".join(places) if places else "no key file or environment variable given"
        raise ValueError(f"Backpack api secret not found ({where})")
    source = f"${api_secret_env}" if env_secret else str(keys_file)
    if env_key:
        source = f"{source} with ${api_key_env}"
    return _validated(key, secret, source)


def generate_backpack_keys(path: Path) -> BackpackCredentials:
    """Write a fresh key pair to ``path`` (mode 0600, parents created) in the original format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sk = SigningKey.generate()
    creds = BackpackCredentials(
        api_key=base64.b64encode(bytes(sk.verify_key)).decode(),
        api_secret=base64.b64encode(bytes(sk)).decode(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        fh.write(f"api key: {creds.api_key}\napi secret: {creds.api_secret}\n")
    return creds
