"""``venues.margin.leverage_update``: which initial-margin fraction the bot sets on a Lighter account
before a cycle (lighter-sdk ``update_leverage``: ``int(10000 / leverage)`` basis points)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from venues.margin import InitialMargin, leverage_fraction, leverage_update

ETH = InitialMargin(base=Decimal("0.05"), lowest=Decimal("0.02"))  # orderBookDetails: 500 / 200 bp


def test_the_sdks_formula() -> None:
    assert [leverage_fraction(Decimal(x)) for x in (50, 20, 3, 1)] == [200, 500, 3333, 10000]


def test_an_untouched_account_at_50x_sizing_is_set_to_the_markets_lowest() -> None:
    assert leverage_update(ETH, None, Decimal(50)) == 200


def test_a_sizing_leverage_the_default_carries_changes_nothing() -> None:
    assert leverage_update(ETH, None, Decimal(3)) is None
    assert leverage_update(ETH, None, Decimal(20)) is None


def test_beyond_the_venues_highest_leverage_sets_its_highest() -> None:
    assert leverage_update(ETH, None, Decimal(100)) == 200


def test_an_account_already_at_a_higher_leverage_is_left_alone() -> None:
    assert leverage_update(ETH, Decimal("0.02"), Decimal(25)) is None  # the bot never lowers the leverage


def test_venues_without_a_settable_fraction_are_never_set() -> None:
    backpack = InitialMargin(base=Decimal("0.02"), factor=Decimal("0.0000935"))
    assert leverage_update(backpack, None, Decimal(50)) is None
    assert leverage_update(None, None, Decimal(50)) is None


@given(leverage=st.decimals(min_value=1, max_value=200, places=2),
       current=st.one_of(st.none(), st.integers(min_value=200, max_value=10000)))
def test_a_set_fraction_only_raises_the_leverage_within_the_venues_range(leverage: Decimal,
                                                                         current: int | None) -> None:
    own = None if current is None else Decimal(current) / 10000
    now = ETH.base if own is None else own
    wanted = leverage_update(ETH, own, leverage)
    if wanted is None:
        # Nothing to set: the account already trades at this leverage or above, or at the venue's highest.
        assert now * 10000 <= max(leverage_fraction(leverage), 200)
    else:
        assert 200 <= wanted < now * 10000
        assert wanted == max(leverage_fraction(leverage), 200)
