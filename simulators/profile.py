"""The market rules of the simulators, as one frozen profile passed when the Exchange is built.

Every rule that makes the simulated venues as hard as the real ones is a field here, with its
source and its default. ``SimProfile()`` is what ``xtb sim``, ``make test`` and ``make bench`` get:
the venues as they behave. A test that needs the kind venue of earlier rounds for one rule switches
it with ``dataclasses.replace``, or takes :meth:`SimProfile.easy` (every rule off); the demo runs
the defaults on a tuned price path (``xtb_tasks/cli/demo.py``).

On by default:

* **Depth**: a multi-level book per market, 20 levels of 5 base units each side, 1 bp apart.
  100 ETH a side is thick next to the demo's ~13 ETH, so a hedge walks two levels and never leaves
  a remainder; a thin profile (``DepthProfile(levels=3, level_size=Decimal("0.5"))``) does.
* **Fees**: Backpack Tier 1 futures 0.02 % maker / 0.05 % taker; Lighter standard account 0 / 0 (its
  default tier), premium is :data:`LIGHTER_PREMIUM`. Planning leaves room for them
  (``backpack_taker_fee``, ``lighter_taker_fee`` in the margin check).
* **Funding**: hourly, at the venues' captured rates.
* **Initial margin**: an order whose positions would need more than the equity is refused with the
  venue's answer; Lighter at the account's own fraction (UpdateLeverage), else the market default.
* **Liquidation engine**: an account the mark (or funding) pushes below maintenance is closed.
* **Reduce-only expiry**: a Backpack reduce-only order that would not reduce expires with
  ``ReduceOnlyNotReduced`` (what the venue answers) instead of a 400.
* **Backpack rate limit**: 2000 requests a minute per API key.

Off by default: jumps in the price path (a test asks for them), and the Lighter tier rate limits and
nextNonce lag (``lighter_rules.py``): a Standard account's 60 requests a minute do not carry a cycle
until the workers read state from the venues' streams (the streaming issue).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal


@dataclass(frozen=True)
class DepthProfile:
    """The synthetic order book of every market (both venues quote it around their own mid).

    Fields (defaults):
      levels = 20            price levels per side
      level_size = 5         base units at the best level (ETH, BTC, ...)
      size_growth = 0        each deeper level holds ``(1 + size_growth)`` times the one above
      size_jitter = 0        seeded ± fraction applied to each level's size (0 = identical levels)
      level_step = 0.0001    distance between levels as a fraction of mid (1 bp)
      half_spread = 0.0002   best bid/ask distance from mid as a fraction of mid
      seed = 7               seed of the jitter (same seed, same book)
    """

    levels: int = 20
    level_size: Decimal = Decimal(5)
    size_growth: Decimal = Decimal(0)
    size_jitter: Decimal = Decimal(0)
    level_step: Decimal = Decimal("0.0001")
    half_spread: Decimal = Decimal("0.0002")
    seed: int = 7

    def __post_init__(self) -> None:
        if self.levels < 1 or self.level_size <= 0 or not 0 <= self.size_jitter < 1 or self.size_growth < 0:
            raise ValueError("depth: levels >= 1, level_size > 0, 0 <= size_jitter < 1, size_growth >= 0")


@dataclass(frozen=True)
class FeeSchedule:
    """Fee rates of one venue as fractions of notional.

    Fields: maker (resting order filled), taker (order that took liquidity).
    """

    maker: Decimal
    taker: Decimal

    def rate(self, maker: bool) -> Decimal:
        return self.maker if maker else self.taker


#: Backpack futures Tier 1 (0 BP staked, $0 volume): 0.02 % maker, 0.05 % taker
#: (support.backpack.exchange/exchange/programs/backpack-vip-program, "Fee Schedule").
BACKPACK_TIER1 = FeeSchedule(Decimal("0.0002"), Decimal("0.0005"))
#: Lighter Standard Account, the default tier: 0 % maker, 0 % taker (apidocs.lighter.xyz/docs/account-types).
LIGHTER_STANDARD = FeeSchedule(Decimal(0), Decimal(0))
#: Lighter Premium Account with no LIT staked: 0.0040 % maker, 0.0280 % taker (same page). Trades report
#: these as integer parts per million: the captured 196/28 are the 500k-LIT row, 0.0196 % / 0.0028 %.
LIGHTER_PREMIUM = FeeSchedule(Decimal("0.00004"), Decimal("0.00028"))


@dataclass(frozen=True)
class FeeProfile:
    """Trading fees, charged on every fill to the account's collateral and shown in its fill records.

    Fields (defaults):
      enabled = True                    False: fills report a zero fee
      backpack = BACKPACK_TIER1         Backpack maker/taker rates
      lighter = LIGHTER_STANDARD        Lighter maker/taker rates
    """

    enabled: bool = True
    backpack: FeeSchedule = BACKPACK_TIER1
    lighter: FeeSchedule = LIGHTER_STANDARD

    def rate(self, venue: str, maker: bool) -> Decimal:
        if not self.enabled:
            return Decimal(0)
        return (self.lighter if venue == "lighter" else self.backpack).rate(maker)


@dataclass(frozen=True)
class FundingProfile:
    """Periodic funding payments on open positions: a long pays ``rate × notional`` at the mark each
    interval when the rate is positive, a short receives it (and the reverse when it is negative).

    Fields (defaults):
      enabled = True                    False: no funding payments
      interval_secs = 3600              Backpack perps settle hourly (``fundingInterval`` 3600000 ms);
                                        Lighter funding is hourly as well
      backpack_rate = 0.0000125         per interval (the simulator's ``markPrices`` figure)
      lighter_rate = 0.000096           per interval (captured ``funding-rates`` ETH rate, lighter.json)
    """

    enabled: bool = True
    interval_secs: float = 3600.0
    backpack_rate: Decimal = Decimal("0.0000125")
    lighter_rate: Decimal = Decimal("0.000096")

    def rate(self, venue: str) -> Decimal:
        return self.lighter_rate if venue == "lighter" else self.backpack_rate


@dataclass(frozen=True)
class MarginProfile:
    """Initial and maintenance margin, and the liquidation engine.

    Backpack fractions are the market's ``imfFunction``/``mmfFunction`` (``max(base, factor × √|q|)``);
    Lighter's are orderBookDetails' basis points (captured ETH market:
    default IMF 500 = 5 %, maintenance 120 = 1.2 %).

    Fields (defaults):
      enforce_initial = True    refuse an order whose resulting positions need more initial margin than the
                                equity (Backpack 400 INSUFFICIENT_MARGIN, Lighter canceled-margin-not-allowed).
                                False keeps the simulator's old rule: at most 50x the equity on the mark.
      liquidate = True          when the mark moves an account's equity below its maintenance margin, its
                                positions are closed at the mark with the venue's records
      lighter_imf = 0.05        Lighter initial margin fraction (0.02 = the market's minimum, 50x)
      lighter_mmf = 0.012       Lighter maintenance margin fraction
    """

    enforce_initial: bool = True
    liquidate: bool = True
    lighter_imf: Decimal = Decimal("0.05")
    lighter_mmf: Decimal = Decimal("0.012")


@dataclass(frozen=True)
class PricePath:
    """The seeded price process behind every mark: a random walk with jumps, one step per tick.

    Fields (defaults):
      volatility = 0.0005       standard deviation of one step's return (Gaussian)
      drift = 0                 mean return of one step
      jump_probability = 0      chance per step of a jump on top of the walk (0 = no jumps)
      jump_size = 0.05          size of a jump as a fraction of the price
      jump_direction = 0        -1 jumps down, +1 up, 0 either way at random
      seed = None               seed of the walk; None uses the exchange's ``seed``
    """

    volatility: Decimal = Decimal("0.0005")
    drift: Decimal = Decimal(0)
    jump_probability: Decimal = Decimal(0)
    jump_size: Decimal = Decimal("0.05")
    jump_direction: int = 0
    seed: int | None = None


@dataclass(frozen=True)
class BackpackProfile:
    """Backpack-only rules.

    Fields (defaults):
      rate_limit = True                 429 TOO_MANY_REQUESTS past the limit; False: no limit
      requests_per_minute = 2000        per API key (subaccount) over the REST endpoints, per client
                                        address for public ones (Backpack's support FAQ)
      reduce_only_expires = True        a reduce-only order that would not reduce comes back ``Expired`` with
                                        ``ReduceOnlyNotReduced`` (OpenAPI ``OrderExpiryReason``); False keeps
                                        the old 400 INVALID_ORDER
      flat_position_404 = False         what ``GET /api/v1/position`` (no ``symbol``) answers for a flat account:
                                        ``[]`` (False, the likelier reading) or the JSON 404
                                        "Position not found" the spec lists (True). No capture settles it, so
                                        the connector reads both as flat; with ``symbol`` it is always the 404
    """

    rate_limit: bool = True
    requests_per_minute: int = 2000
    reduce_only_expires: bool = True
    flat_position_404: bool = False


@dataclass(frozen=True)
class SimProfile:
    """Every market rule of the simulators (see the module docstring for what is on and why).

    Fields (defaults): depth = DepthProfile(), fees = FeeProfile(), funding = FundingProfile(),
    margin = MarginProfile(), price_path = PricePath(), backpack = BackpackProfile().
    """

    depth: DepthProfile = field(default_factory=DepthProfile)
    fees: FeeProfile = field(default_factory=FeeProfile)
    funding: FundingProfile = field(default_factory=FundingProfile)
    margin: MarginProfile = field(default_factory=MarginProfile)
    price_path: PricePath = field(default_factory=PricePath)
    backpack: BackpackProfile = field(default_factory=BackpackProfile)

    @classmethod
    def strict(cls) -> SimProfile:
        """Every rule on, as the real venues behave: the defaults (fees, hourly funding, margin,
        liquidation, Backpack's rate limit)."""
        return cls()

    @classmethod
    def easy(cls) -> SimProfile:
        """Every rule off but the book: no fees, funding, margin refusals, liquidations or rate limit
        (the simulators of earlier rounds), for a test about something else that must not meet them."""
        base = cls()
        return replace(base, fees=replace(base.fees, enabled=False), funding=replace(base.funding, enabled=False),
                       margin=replace(base.margin, enforce_initial=False, liquidate=False),
                       backpack=replace(base.backpack, rate_limit=False))

    @property
    def needs_clock(self) -> bool:
        """Whether time-driven rules (funding, liquidation) need the server's clock task."""
        return self.funding.enabled or self.margin.liquidate
