"""MarketRules.to_json / from_json: the one shape rules take in snapshots and the cycle record.

The rules leave the venue worker as JSON (the account snapshot) and come back from Redis (the
cycle record's ``bp_rules``); every field must survive both, and a shape missing one is refused.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.cycle.planning import AccountSnapshot
from tests.helpers.fixtures import fixture_path
from venues.backpack.parsing import parse_market
from venues.base import MarketRules
from venues.lighter import parsing as lighter_parsing
from venues.lighter.rest import decode_json


def _through_json(rules: MarketRules) -> MarketRules:
    # As it travels: serialised to text (Celery result, Redis hash field) and parsed back.
    return MarketRules.from_json(json.loads(json.dumps(rules.to_json())))


def _backpack_rules() -> MarketRules:
    raw = json.loads(fixture_path("backpack.json").read_text(), parse_float=Decimal)
    return parse_market(raw["market_perp_SOL_USDC_PERP_official_client"]["body"])


def _lighter_rules() -> MarketRules:
    raw = decode_json(fixture_path("lighter.json").read_text())
    return lighter_parsing.parse_market_rules(raw["orderBookDetails_ETH_ccxt_static"]["body"], "ETH")


@pytest.mark.parametrize("make", [_backpack_rules, _lighter_rules], ids=["backpack", "lighter"])
def test_both_venues_rules_round_trip_with_every_field(make: Any) -> None:
    rules = make()
    back = _through_json(rules)
    assert back == rules
    # The amounts' text is kept too: quantizing uses the tick's and step's exponent.
    assert back.to_json() == rules.to_json()
    assert (back.price_decimals, back.size_decimals) == (rules.price_decimals, rules.size_decimals)


def test_the_initial_margin_rule_travels_and_a_shape_missing_a_field_is_refused() -> None:
    for rules in (_backpack_rules(), _lighter_rules()):
        assert rules.initial_margin is not None
        assert _through_json(rules).initial_margin == rules.initial_margin
    for field in ("initial_margin", "market_id", "min_notional"):
        partial = {k: v for k, v in _lighter_rules().to_json().items() if k != field}
        with pytest.raises(KeyError):
            MarketRules.from_json(partial)


def test_lighter_market_id_zero_is_kept_not_dropped() -> None:
    # ETH is market 0 on Lighter: a falsy id that a careless `or None` would lose.
    rules = _lighter_rules()
    assert rules.market_id == 0 and rules.min_notional == Decimal(10)
    assert _through_json(rules).market_id == 0


_amount = st.decimals(min_value=Decimal("1e-12"), max_value=Decimal("1e9"), allow_nan=False, allow_infinity=False)


@given(symbol=st.text(min_size=1, max_size=20), tick=_amount, step=_amount, min_qty=_amount,
       min_notional=st.one_of(st.just(Decimal(0)), _amount),
       market_id=st.one_of(st.none(), st.integers(min_value=0, max_value=2**31)))
def test_any_rules_round_trip(symbol: str, tick: Decimal, step: Decimal, min_qty: Decimal, min_notional: Decimal,
                              market_id: int | None) -> None:
    rules = MarketRules(symbol=symbol, tick_size=tick, step_size=step, min_quantity=min_qty,
                        min_notional=min_notional, market_id=market_id)
    assert _through_json(rules) == rules
    assert _through_json(rules).to_json() == rules.to_json()


def test_snapshots_carry_the_rules_whole() -> None:
    snapshot = {"account": "lighter1", "bid": "100", "ask": "100.1", "equity": "50", "collateral": "50",
                "available": "50", "position": "0", "position_error": None}
    rules = _lighter_rules()
    assert AccountSnapshot.from_json({**snapshot, "rules": rules.to_json()}).rules == rules
