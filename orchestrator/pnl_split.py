"""A finished cycle's realised PnL per venue, split into trading, fees and funding.

Pure: from the cycle record and each account's fill and funding records (``venues.ledger``).

* **Which fills count**: the cycle's own, known by client id (every id planned for its entry legs,
  each rebalance leg's, every exit attempt's ids and the orders the exit reports), plus the venue's
  system fills (liquidation, deleverage) on the account's symbol in the cycle's window: a liquidation
  of the cycle's leg is how that leg closed, and it carries no client id. Anything else on the
  account (an operator's order, another tool) is not the cycle's.
* **trading** = −Σ signed quantity × price of those fills: the cash the round trips left. It is
  realised only when the fills net to zero (within the venue step); otherwise it is unknown (None)
  and ``open`` says what is left, because unknown is never zero.
* **fees** = −Σ fee (a cost is negative); unknown when a fee came in another asset.
* **funding** = Σ payments on the symbol between the cycle's start and its end (+ received).
* **net** = trading + fees + funding, unknown when any part is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from venues.ledger import AccountHistory, FillRecord

ENTRY_LEG_ROLES = {"bp_entry": "BP", "l1_hedge": "L1", "l2_entry": "L2"}


def cycle_client_ids(data: Mapping[str, Any], accounts: Mapping[str, str]) -> dict[str, set[int]]:
    """Every client id the cycle used or planned, per role (``accounts``: account -> role)."""
    ids: dict[str, set[int]] = {role: set() for role in accounts.values()}
    for leg, planned in (data.get("client_ids") or {}).items():
        role = ENTRY_LEG_ROLES.get(leg)
        if role in ids:
            ids[role].update(int(i) for i in planned or [])
    for key, value in data.items():
        if key.startswith("leg:") and isinstance(value, dict) and accounts.get(str(value.get("account"))) in ids:
            ids[accounts[str(value["account"])]].add(int(value["client_id"]))
        elif key.startswith("exit_ids:") and isinstance(value, dict):
            for role, planned in value.items():
                if role in ids:
                    ids[role].update(int(i) for i in planned or [])
        elif key.startswith("exit_results:") and isinstance(value, list):
            for result in value:
                role = accounts.get(str(result.get("account"))) if isinstance(result, dict) else None
                if role in ids:
                    ids[role].update(int(o["client_id"]) for o in result.get("orders") or [] if "client_id" in o)
    return ids


def own_fills(history: AccountHistory, client_ids: Iterable[int]) -> list[FillRecord]:
    wanted = set(client_ids)
    return [f for f in history.fills if f.system or (f.client_id is not None and f.client_id in wanted)]


#: Quote amounts are shown to the quote asset's precision (USDC: 6 decimals); fee rates in ppm give more.
QUOTE_PLACES = Decimal("0.000001")


def _text(value: Decimal | None) -> str | None:
    if value is None:
        return None
    rounded = value.quantize(QUOTE_PLACES).normalize()
    return format(rounded, "f") if rounded else "0"


def venue_split(history: AccountHistory, client_ids: Iterable[int], step: Decimal) -> dict[str, Any]:
    """One account's split (see the module docstring); amounts as decimal text, None when unknown."""
    fills = own_fills(history, client_ids)
    left = sum((f.signed_quantity for f in fills), Decimal(0))
    trading = -sum((f.signed_notional for f in fills), Decimal(0)) if abs(left) < step else None
    fee_values = [f.fee for f in fills]
    fees = None if None in fee_values else -sum((v for v in fee_values if v is not None), Decimal(0))
    funding = sum((p.amount for p in history.funding), Decimal(0))
    parts = (trading, fees, funding)
    net = None if None in parts else sum((p for p in parts if p is not None), Decimal(0))
    out: dict[str, Any] = {"trading": _text(trading), "fees": _text(fees), "funding": _text(funding), "net": _text(net),
                           "fills": len(fills), "system_fills": sum(1 for f in fills if f.system),
                           "funding_payments": len(history.funding)}
    if trading is None:
        out["open"] = _text(left)
    return out


def cycle_split(data: Mapping[str, Any], accounts: Mapping[str, str], histories: Iterable[Mapping[str, Any]],
                steps: Mapping[str, Decimal]) -> dict[str, dict[str, Any]]:
    """Per role: the split, or ``{"error": ...}`` when its history could not be read (unknown, not zero).

    ``histories`` are the ``account_history`` task results, keyed by the account each names; a role
    with none, or two, is unknown.
    """
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for result in histories:
        role = accounts.get(str(result.get("account")))
        if role is not None:
            by_role.setdefault(role, []).append(result)
    ids = cycle_client_ids(data, accounts)
    out: dict[str, dict[str, Any]] = {}
    for role in accounts.values():
        found = by_role.get(role, [])
        if len(found) != 1 or found[0].get("error") or "fills" not in found[0]:
            out[role] = {"error": str(found[0].get("error")) if len(found) == 1 else "no history read"}
            continue
        out[role] = venue_split(AccountHistory.from_json(found[0]), ids.get(role, set()),
                                steps.get(role, Decimal("0.0001")))
    return out
