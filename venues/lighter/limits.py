"""Lighter's REST rate limits as the venue documents them
(https://apidocs.lighter.xyz/docs/rate-limits; the quotes below are from that page).

The venue's facts only, shared by the production budget (:mod:`venues.lighter.budget`) and the
simulator (``simulators/lighter_rules.py`` re-exports every name here), so both count alike.
Wording the sources do not give is marked UNCONFIRMED.
"""

from __future__ import annotations

from enum import Enum

#: The rolling window of every REST limit ("per rolling minute").
WINDOW_SECS = 60.0
#: The venue: "Rate Limit Exceeding Behavior: You will receive HTTP 429". The body's code and
#: message are the venue's error table as ccxt lighter.ts carries it ('23000': "Too Many Requests!");
#: that the 429 carries exactly this body is UNCONFIRMED (no capture of a 429 body was found).
RATE_LIMITED_CODE = 23000
RATE_LIMITED_MESSAGE = "Too Many Requests!"
RATE_LIMITED_STATUS = 429


class Tier(str, Enum):
    """Lighter account types; the tier is tied to the L1 address."""

    #: The default: 60 requests per rolling minute, unweighted.
    STANDARD = "standard"
    #: Opt-in: 24,000 weighted requests per rolling minute; sendTx/sendTxBatch in their own bucket.
    PREMIUM = "premium"


#: Standard accounts: "60 requests per rolling minute".
STANDARD_REQUESTS = 60
#: Premium accounts: "24,000 weighted requests per rolling minute".
PREMIUM_WEIGHT = 24_000
#: Premium sendTx/sendTxBatch bucket with 0 LIT staked: 4000 per minute, L1 address only.
PREMIUM_SEND_TX = 4000
#: Endpoint weights (the page's "Weights" table); every other endpoint weighs 300.
WEIGHTS: dict[str, int] = {
    "sendTx": 6, "sendTxBatch": 6, "nextNonce": 6, "publicPools": 50, "txFromL1TxHash": 50,
    "accountInactiveOrders": 100, "deposit/latest": 100, "apikeys": 150, "transferFeeInfo": 500,
    "trades": 600, "recentTrades": 600, "changeAccountTier": 3000,
}
DEFAULT_WEIGHT = 300
#: The endpoints that carry signed txs: counted against the L1 address, and on Premium in their own
#: PREMIUM_SEND_TX bucket.
TX_ENDPOINTS = frozenset({"sendTx", "sendTxBatch"})
#: "Transaction Type Limits (per user)… apply to all account types: Default 40 requests / minute"
#: The simulator's tx types (create, cancel, cancel-all) are all "Default"; one
#: budget per tx type is UNCONFIRMED (the table is keyed by type, not said to be shared).
TX_TYPE_PER_MINUTE = 40


def endpoint_name(path: str) -> str:
    """``/api/v1/<endpoint>`` or ``<endpoint>`` → ``<endpoint>``."""
    return path.removeprefix("/api/v1/")


def endpoint_weight(path: str) -> int:
    """The weight of ``/api/v1/<endpoint>``."""
    return WEIGHTS.get(endpoint_name(path), DEFAULT_WEIGHT)


def standard_endpoint_limit(path: str) -> int | None:
    """A Standard account's own per-minute cap on one heavy endpoint, or None when only the 60 apply.

    The venue: "whenever premium/weight < 60, the former limit is applied", so ``trades``
    (weight 600) is capped at 24,000 / 600 = 40 requests a minute even on Standard.
    """
    cap = PREMIUM_WEIGHT // endpoint_weight(path)
    return cap if cap < STANDARD_REQUESTS else None
