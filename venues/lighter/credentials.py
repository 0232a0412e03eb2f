"""Lighter API-key credentials: the original key-file format, env overrides, offline key generation.

Key file, one ``name: value`` per line, names case-insensitive::

    api key index: 4
    public key: <hex>
    private key: <hex>          # the Lighter API key (40 bytes = 80 hex)
    eth private key: 0x...      # ignored: we never derive the account from the L1 key

Nothing here ever formats a private key into a message, a repr or a log line.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_HEX80 = re.compile(r"^(0x)?[0-9a-fA-F]{80}$")
# API key indexes 0..254; 255 is the SDK's "let the nonce manager pick" sentinel.
_MAX_API_KEY_INDEX = 254
#: The first index a user's own key may take: "indexes {0,1,2,3} are reserved for desktop and mobile
#: interfaces" (apidocs.lighter.xyz/docs/api-keys; the production checklist: "a dedicated API key
#: index (4–254)"). Older docs reserved 0–2 only; the simulator refuses 0–3 as the current docs do.
USER_API_KEY_MIN = 4


@dataclass(frozen=True)
class LighterCredentials:
    """One Lighter API key. ``repr``/``str`` show the index and public key only."""

    api_key_index: int
    private_key: str = field(repr=False)
    public_key: str | None = None

    def __repr__(self) -> str:
        pub = f"{self.public_key[:10]}…" if self.public_key else None
        return (f"LighterCredentials(api_key_index={self.api_key_index}, public_key={pub!r}, "
                "private_key=<hidden>)")

    __str__ = __repr__


def _strip_value(raw: str) -> str:
    return raw.strip().strip("'\"").strip()


def _bare_hex(value: str) -> str:
    return value[2:] if value.lower().startswith("0x") else value


def parse_key_file(text: str) -> dict[str, str]:
    """``{normalized name: value}`` from the key-file text; split on the first ':' of each line."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, value = line.split(":", 1)
        fields[" ".join(_strip_value(name).lower().split())] = _strip_value(value)
    return fields


def _check_index(value: int | str, where: str) -> int:
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: api key index is not an integer") from None
    if not 0 <= index <= _MAX_API_KEY_INDEX:
        raise ValueError(f"{where}: api key index {index} out of range 0..{_MAX_API_KEY_INDEX}")
    return index


def _check_private_key(value: str, where: str) -> str:
    if not _HEX80.match(value):
        raise ValueError(f"{where}: private key is not 80 hex characters (a Lighter API key, not an eth key)")
    return _bare_hex(value)


def _read_file(keys_file: Path | None) -> dict[str, str]:
    if keys_file is None:
        return {}
    try:
        return parse_key_file(Path(keys_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(f"Lighter keys file {keys_file}: cannot read ({exc.strerror})") from None


def load_lighter_credentials(keys_file: Path | None, private_key_env: str | None = None,
                             api_key_index: int | None = None) -> LighterCredentials:
    """Credentials from the key file, with the env var (private key) and config (index) winning.

    Raises a one-line ``ValueError`` naming the file or variable (never the value) when something
    is missing or malformed.
    """
    fields = _read_file(keys_file)
    file_label = f"Lighter keys file {keys_file}" if keys_file is not None else "Lighter credentials"
    env_value = os.environ.get(private_key_env, "").strip() if private_key_env else ""
    if env_value:
        private_key = _check_private_key(_strip_value(env_value), f"environment variable {private_key_env}")
    elif fields.get("private key"):
        private_key = _check_private_key(fields["private key"], file_label)
    else:
        missing = "missing or has no 'private key'" if keys_file is not None else "no keys file"
        hint = f" and {private_key_env} is not set" if private_key_env else ""
        raise ValueError(f"{file_label}: {missing}{hint}")
    if api_key_index is not None:
        index = _check_index(api_key_index, "config api_key_index")
    elif fields.get("api key index"):
        index = _check_index(fields["api key index"], file_label)
    else:
        raise ValueError(f"{file_label}: no 'api key index' and none in the config")
    public = fields.get("public key") or None
    return LighterCredentials(index, private_key, _bare_hex(public) if public else None)


def generate_lighter_keys(path: Path, api_key_index: int = USER_API_KEY_MIN) -> LighterCredentials:
    """Generate an API key pair offline (Go signer) and write it in the original format, mode 0600.

    The public key still has to be registered on the account (ChangePubKey) before a real venue
    accepts it; the simulator does not check signatures.
    """
    # The Go library's GenerateAPIKey, as lighter.signer_client.create_api_key, without importing
    # the lighter package: demo and benchmark workers generate their keys in the pool child.
    from venues.lighter import native

    index = _check_index(api_key_index, "api_key_index")
    try:
        private_key, public_key = native.generate_api_key()
    except native.SignerError as exc:
        raise ValueError(f"Lighter key generation failed: {exc}") from None
    creds = LighterCredentials(index, _bare_hex(private_key), _bare_hex(public_key))
    text = (f"api key index: {creds.api_key_index}\npublic key: {creds.public_key}\n"
            f"private key: {creds.private_key}\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write a 0600 temp file and rename it, so the key is never readable by others, even briefly.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("generated Lighter API key index %d into %s", index, path)
    return creds
