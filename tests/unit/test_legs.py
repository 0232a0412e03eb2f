"""The leg record: every state a writer uses round-trips, final states agree with the venue's."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.legs import Leg, LegState, parse_leg
from venues.base import OrderReport, OrderState, Side

sizes = st.integers(0, 10**8).map(lambda n: Decimal(n).scaleb(-4))
legs = st.builds(
    Leg, account=st.sampled_from(["backpack1", "lighter1"]), symbol=st.sampled_from(["ETH_USDC_PERP", "ETH"]),
    side=st.sampled_from(Side), client_id=st.integers(1, 2**48 - 1), requested=sizes, filled=sizes,
    state=st.sampled_from(LegState), avg_price=st.none() | sizes, venue_order_id=st.none() | st.text(max_size=12),
    reduce_only=st.booleans(), reason=st.none() | st.text(max_size=40), existing=st.booleans(),
    filled_at=st.none() | st.floats(1e9, 2e9))


@settings(max_examples=200, deadline=None)
@given(legs)
def test_a_leg_reads_back_as_it_was_written(leg: Leg) -> None:
    assert Leg.from_json(leg.to_json()) == leg


@pytest.mark.parametrize("state", list(OrderState))
def test_a_reported_order_state_maps_to_a_leg_state_with_the_same_finality(state: OrderState) -> None:
    report = OrderReport(7, "ETH", Side.SELL, Decimal("2"), Decimal("1.5"), state, avg_price=Decimal("2500.1"))
    leg = Leg.from_report("lighter1", report)
    assert leg.state.final is state.final
    assert leg.signed_fill == Decimal("-1.5") and leg.settled
    assert not Leg.from_report("lighter1", report, settled=False).settled


def test_only_filled_cancelled_and_failed_are_final() -> None:
    assert {s for s in LegState if s.final} == {LegState.FILLED, LegState.CANCELLED, LegState.FAILED}


def test_a_leg_in_flight_is_not_settled_and_has_filled_nothing() -> None:
    leg = Leg.in_flight("lighter1", "ETH", Side.BUY, 3, Decimal("0.5"), LegState.ARMED)
    assert not leg.settled and leg.filled == 0 and not leg.state.final
    assert "filled_at" not in leg.to_json()


@pytest.mark.parametrize("value", [None, "filled", [], {}, {"account": "a", "state": "filled"},
                                   {**Leg.in_flight("a", "ETH", Side.BUY, 1, Decimal(1)).to_json(), "state": "sending"},
                                   {**Leg.in_flight("a", "ETH", Side.BUY, 1, Decimal(1)).to_json(), "filled": "x"}])
def test_anything_that_is_not_a_leg_record_parses_as_unknown(value: object) -> None:
    assert parse_leg(value) is None
