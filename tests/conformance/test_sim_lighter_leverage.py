"""The Lighter simulator's UpdateLeverage (tx type 20) over real HTTP: the account's own initial-margin
fraction per market, as the venue reports it and as its margin rule applies it.

Sources: lighter-sdk 1.1.8 ``update_leverage`` sends ``InitialMarginFraction = int(10000 / leverage)``
and ``MarginMode``; orderBookDetails publishes ``default_initial_margin_fraction``
500 and ``min_initial_margin_fraction`` 200 for ETH; account fixtures report the account's fraction
in percent (``"initial_margin_fraction": "5.00"``), also for a market held at position 0.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
import requests

from simulators.profile import SimProfile
from simulators.server import SimulatorServer

KEY = 4
ETH = 0
_accounts = itertools.count(7001)
_cois = itertools.count(1)


@contextmanager
def serve(*, enforce_initial: bool = True, collateral: Decimal = Decimal(1000)) -> Iterator[str]:
    default = SimProfile()
    profile = replace(default, margin=replace(default.margin, enforce_initial=enforce_initial))
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None,
                         profile=profile, starting_collateral=collateral) as sim:
        yield sim.urls["lighter"]


def _common(account: int, nonce: int) -> dict[str, Any]:
    return {"AccountIndex": account, "ApiKeyIndex": KEY, "ExpiredAt": int(time.time() * 1000) + 599_000,
            "Nonce": nonce, "Sig": "c2ln", "L2TxAttributes": None}


def leverage(url: str, account: int, nonce: int, fraction: int, mode: int = 0) -> requests.Response:
    info = {**_common(account, nonce), "MarketIndex": ETH, "InitialMarginFraction": fraction, "MarginMode": mode}
    return requests.post(url + "/api/v1/sendTx", data={"tx_type": "20", "tx_info": json.dumps(info)}, timeout=10)


def buy(url: str, account: int, nonce: int, base_amount: int) -> requests.Response:
    """A MARKET/IOC buy of ``base_amount`` (4 decimals: 10000 = 1 ETH) up to $10000."""
    info = {**_common(account, nonce), "MarketIndex": ETH, "ClientOrderIndex": next(_cois),
            "BaseAmount": base_amount, "Price": 1_000_000, "IsAsk": 0, "Type": 1, "TimeInForce": 0,
            "ReduceOnly": 0, "TriggerPrice": 0, "OrderExpiry": 0}
    return requests.post(url + "/api/v1/sendTx", data={"tx_type": "14", "tx_info": json.dumps(info)}, timeout=10)


def eth_entry(url: str, account: int) -> dict[str, Any] | None:
    body = requests.get(url + "/api/v1/account", params={"by": "index", "value": account}, timeout=10).json()
    return next((p for p in body["accounts"][0]["positions"] if p["market_id"] == ETH), None)


def position(url: str, account: int) -> Decimal:
    entry = eth_entry(url, account)
    return Decimal(0) if entry is None else Decimal(entry["position"]) * entry["sign"]


def test_update_leverage_is_listed_at_position_zero_in_percent() -> None:
    with serve() as url:
        account = next(_accounts)
        assert eth_entry(url, account) is None
        sent = leverage(url, account, 0, 200)  # 50x
        assert sent.status_code == 200 and sent.json()["code"] == 200, sent.text
        entry = eth_entry(url, account)
        assert entry is not None and entry["initial_margin_fraction"] == "2.00" and entry["position"] == "0.0000"


def test_the_margin_rule_applies_the_accounts_own_fraction() -> None:
    # $1000 of collateral: 1 ETH (~$3000) needs $150 at the default 5 % and $60 at 2 %; 7 ETH needs
    # ~$1050 at 5 % (refused) and ~$420 at 2 % (filled).
    with serve() as url:
        account = next(_accounts)
        assert buy(url, account, 0, 70000).json()["code"] == 200
        assert position(url, account) == 0, "7 ETH on $1000 at 20x must be refused by initial margin"
        assert leverage(url, account, 1, 200).json()["code"] == 200
        assert buy(url, account, 2, 70000).json()["code"] == 200
        assert position(url, account) == Decimal(7)


def test_lowering_the_leverage_of_a_held_position_below_its_margin_is_refused() -> None:
    with serve() as url:
        account = next(_accounts)
        leverage(url, account, 0, 200)
        buy(url, account, 1, 70000)
        refused = leverage(url, account, 2, 500)  # 7 ETH at 5 % needs ~$1050 of $1000
        assert (refused.status_code, refused.json()["code"]) == (200, 21508), refused.text
        assert eth_entry(url, account)["initial_margin_fraction"] == "2.00"  # type: ignore[index]


@pytest.mark.parametrize(("fraction", "mode"), [(199, 0), (10001, 0), (500, 1)])
def test_a_fraction_below_the_markets_minimum_or_isolated_margin_is_refused(fraction: int, mode: int) -> None:
    with serve() as url:
        account = next(_accounts)
        refused = leverage(url, account, 0, fraction, mode)
        assert (refused.status_code, refused.json()["code"]) == (400, 21501), refused.text
        assert eth_entry(url, account) is None
        # A refused tx uses no nonce: the next tx still takes nonce 0.
        assert leverage(url, account, 0, 300).json()["code"] == 200
