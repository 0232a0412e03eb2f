"""The leg confirmation rule: the position moved the expected way by more than
``confirmation_min_fraction`` of the request; an unknown read never confirms."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from venues.base import PositionReading
from xtb_tasks.execution.venue_ops import confirmation


def read(quantity: Decimal | None) -> PositionReading:
    return PositionReading(account="l1", symbol="ETH", quantity=quantity, read_at=1.0,
                           error=None if quantity is not None else "timeout")


def test_a_move_of_more_than_the_fraction_confirms() -> None:
    assert confirmation(read(Decimal("0.21")), Decimal(0), 1, Decimal(1), Decimal("0.2"))["confirmed"] is True
    assert confirmation(read(Decimal("-0.3")), Decimal(0), -1, Decimal(1), Decimal("0.2"))["confirmed"] is True


def test_exactly_the_fraction_or_the_wrong_way_does_not_confirm() -> None:
    assert confirmation(read(Decimal("0.2")), Decimal(0), 1, Decimal(1), Decimal("0.2"))["confirmed"] is False
    assert confirmation(read(Decimal("-1")), Decimal(0), 1, Decimal(1), Decimal("0.2"))["confirmed"] is False


def test_an_unknown_read_never_confirms() -> None:
    out = confirmation(read(None), Decimal(0), 1, Decimal(1), Decimal("0.2"))
    assert out["confirmed"] is False and out["position"] is None and out["error"] == "timeout"


amounts = st.decimals(min_value=Decimal("-1000"), max_value=Decimal("1000"), places=4)


@settings(max_examples=500, deadline=None)
@given(baseline=amounts, moved=amounts, sign=st.sampled_from([1, -1]),
       requested=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1000"), places=4),
       fraction=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1"), places=2))
def test_confirmed_exactly_when_moved_the_expected_way_beyond_the_fraction(
        baseline: Decimal, moved: Decimal, sign: int, requested: Decimal, fraction: Decimal) -> None:
    out = confirmation(read(baseline + moved), baseline, sign, requested, fraction)
    assert out["confirmed"] is (moved * sign > max(requested * fraction, Decimal("0.000001")))
    assert Decimal(out["delta"]) == moved
    # the rule is symmetric: mirroring the move and the expected sign gives the same answer
    mirrored = confirmation(read(baseline - moved), baseline, -sign, requested, fraction)
    assert mirrored["confirmed"] is out["confirmed"]


@settings(max_examples=200, deadline=None)
@given(baseline=amounts, sign=st.sampled_from([1, -1]),
       requested=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1000"), places=4))
def test_an_unchanged_position_never_confirms(baseline: Decimal, sign: int, requested: Decimal) -> None:
    assert confirmation(read(baseline), baseline, sign, requested, Decimal("0.01"))["confirmed"] is False
