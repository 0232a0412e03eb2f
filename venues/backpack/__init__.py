"""Backpack perpetuals connector: credentials, signing, parsers, REST + private WebSocket."""

from __future__ import annotations

from venues.backpack.connector import BackpackConnector
from venues.backpack.credentials import BackpackCredentials, generate_backpack_keys, load_backpack_credentials

__all__ = ["BackpackConnector", "BackpackCredentials", "generate_backpack_keys", "load_backpack_credentials"]
