"""The rate budget of a configured Lighter account (``[rate_budget]`` and the account's tier and address)."""

from __future__ import annotations

import socket

from core.config import AccountConfig, Settings, Venue
from core.redis_conn import budget_client, resolve_redis_url
from venues.budget import RateBudget
from venues.lighter.budget import LighterBudget
from venues.lighter.limits import Tier


def lighter_budget(cfg: AccountConfig, settings: Settings) -> LighterBudget | None:
    """The budget ``cfg``'s requests are charged to; None for a Backpack account or with the budget off."""
    conf = settings.rate_budget
    if cfg.venue is not Venue.LIGHTER or not conf.enabled:
        return None
    shared = RateBudget(budget_client(resolve_redis_url(settings), settings.redis_access), read_share=conf.read_share)
    # Without an address each account is its own; the IP defaults to this host's name.
    return LighterBudget(shared, Tier(cfg.tier.value), cfg.l1_address or f"account-{cfg.account_index}",
                         conf.egress or socket.gethostname())


def budget_used(budget: LighterBudget) -> dict[str, dict[str, int]] | None:
    """``{bucket key: {"used", "limit"}}`` in the current window, or None when Redis cannot say."""
    import redis

    try:
        return budget.rate_budget.snapshot(budget.buckets())
    except redis.RedisError:
        return None
