"""The HTTP proxy a venue's base URL goes through, read from the environment once per session.

Both HTTP clients can read the proxy variables themselves (``trust_env``), but they do it, and
look for ``~/.netrc``, on every request: on the order path that was 40% of the Lighter event
loop's CPU. The connectors resolve the proxy here when they open a session and pass it on.
"""

from __future__ import annotations

from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY`` unless
    ``NO_PROXY`` covers the host), or None."""
    parts = urlsplit(url)
    if proxy_bypass(parts.hostname or ""):
        return None
    return getproxies().get(parts.scheme)
