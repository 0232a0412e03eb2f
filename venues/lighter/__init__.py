"""Lighter (zkLighter) connector package.

``credentials`` and ``parsing`` are light; ``connector`` brings aiohttp and (on first use) the
lighter-sdk Go signer library, so it is loaded only when :class:`LighterConnector` is first used.
No module here imports the ``lighter`` package itself (see :mod:`.native`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from venues.lighter.credentials import LighterCredentials, generate_lighter_keys, load_lighter_credentials

if TYPE_CHECKING:
    from venues.lighter.connector import LighterConnector

__all__ = ["LighterConnector", "LighterCredentials", "generate_lighter_keys", "load_lighter_credentials"]


def __getattr__(name: str) -> Any:
    if name == "LighterConnector":
        from venues.lighter.connector import LighterConnector

        return LighterConnector
    raise AttributeError(name)
