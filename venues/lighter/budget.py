"""Lighter's REST rate limits as a shared :class:`~venues.budget.RateBudget`, counted as the venue counts.

Lighter documents (https://apidocs.lighter.xyz/docs/rate-limits): "These limits apply to both IP address and L1 address… To
bypass IP-based rate limits, clients can authenticate each request so that only L1-based rate limits
apply". So:

* sendTx/sendTxBatch (signed, so authenticated) count against the L1 address: on Standard in its 60
  requests a minute, on Premium in their own 4000-a-minute bucket at weight 1.
* Any other authenticated request counts against the L1 address only: Standard 1 unit of 60,
  Premium the endpoint's weight of 24,000.
* An unauthenticated request counts against the IP, budgeted as Standard (an IP has no account
  type; UNCONFIRMED, the simulator's reading too).

Every account of one L1 address shares its budget (the tier belongs to the address), and every
worker on one host shares the IP's, so the buckets are named by address and IP, not by worker.
"""

from __future__ import annotations

from venues.budget import BudgetBucket, RateBudget, RequestPriority
from venues.lighter.limits import (
    PREMIUM_SEND_TX,
    PREMIUM_WEIGHT,
    STANDARD_REQUESTS,
    TX_ENDPOINTS,
    TX_TYPE_PER_MINUTE,
    Tier,
    endpoint_name,
    endpoint_weight,
    standard_endpoint_limit,
)


class LighterBudget:
    """The buckets one Lighter account's requests are charged to.

    ``tier`` is the L1 address's account type; ``l1_key`` names the address (buckets
    ``lighter:l1:<l1_key>`` and, on Premium, ``lighter:send:<l1_key>``); ``ip_key`` names the
    public IP the requests leave from (bucket ``lighter:ip:<ip_key>``).
    """

    def __init__(self, rate_budget: RateBudget, tier: Tier, l1_key: str, ip_key: str) -> None:
        self.rate_budget = rate_budget
        self.tier = tier
        self.l1_key = l1_key
        self.ip_key = ip_key
        l1_limit = PREMIUM_WEIGHT if tier is Tier.PREMIUM else STANDARD_REQUESTS
        self.l1 = BudgetBucket(f"lighter:l1:{l1_key}", l1_limit)
        self.ip = BudgetBucket(f"lighter:ip:{ip_key}", STANDARD_REQUESTS)
        self.send = BudgetBucket(f"lighter:send:{l1_key}", PREMIUM_SEND_TX)

    def charges(self, endpoint: str, *, authenticated: bool,
                tx_types: tuple[int, ...] = ()) -> list[tuple[BudgetBucket, int]]:
        """The ``(bucket, units)`` one request to ``endpoint`` (``sendTx`` or ``/api/v1/sendTx``) costs.

        ``tx_types``: for sendTx/sendTxBatch, the type of each tx carried; each also counts in the
        venue's per-user, per-type limit (40 a minute, every tier; bucket ``lighter:type:<l1_key>:<type>``).
        """
        name = endpoint_name(endpoint)
        if name in TX_ENDPOINTS:
            # Signed, so counted at the L1 address whatever the caller says.
            sent = [(self.send, 1)] if self.tier is Tier.PREMIUM else [(self.l1, 1)]
            return sent + [(BudgetBucket(f"lighter:type:{self.l1_key}:{kind}", TX_TYPE_PER_MINUTE), 1)
                           for kind in tx_types]
        bucket, tier = (self.l1, self.tier) if authenticated else (self.ip, Tier.STANDARD)
        if tier is Tier.PREMIUM:
            return [(bucket, endpoint_weight(name))]
        charges = [(bucket, 1)]
        heavy = standard_endpoint_limit(name)
        if heavy is not None:
            # Standard is unweighted, but a heavy endpoint keeps Premium's share of it (trades: 40).
            charges.append((BudgetBucket(f"{bucket.key}:{name}", heavy), 1))
        return charges

    async def spend(self, endpoint: str, *, authenticated: bool, priority: RequestPriority, max_wait: float,
                    tx_types: tuple[int, ...] = ()) -> float:
        """Wait until one request to ``endpoint`` fits every bucket it counts in, charge it and return
        the seconds waited; :class:`~venues.budget.BudgetExhausted` past ``max_wait``."""
        charges = self.charges(endpoint, authenticated=authenticated, tx_types=tx_types)
        return await self.rate_budget.acquire(charges, priority, max_wait=max_wait)

    def buckets(self) -> list[BudgetBucket]:
        """The account's standing buckets, for a status display (per-endpoint and per-type ones aside)."""
        if self.tier is Tier.PREMIUM:
            return [self.l1, self.send, self.ip]
        return [self.l1, self.ip]
