"""What an exit attempt concludes from its last read and the cycle's record (pure functions): flat or
not, dust, whether the cycle's own fills agree with the reads, which alert the end raises, and the
next cycle of a ``max_cycles`` run. The writes that follow (the outcome, the kill switch, the group
lock, the alerts, the history reads) are ``orchestrator.exits.finish_exit``'s.

The inputs are the record's decoded fields and the attempt's results, keyed by the roles' short
names ("BP", "L1", "L2"), as the record stores them.

A leftover below the venue's minimum order size is dust: no order can close it (the venue refuses
the order), so it is flat for the outcome and reported as such.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from core.config_schema import Direction, GroupConfig, HedgeParams
from core.cycle_fields import ExitReason
from core.legs import parse_leg
from monitoring.alert_texts import AlertKind, fmt_amount
from orchestrator.cycle.state import DEFAULT_STEP, ROLES

log = logging.getLogger(__name__)

#: The roles' short names in the order every report lists them.
ROLE_ORDER = tuple(role.short for role in ROLES)
#: Reasons after which a multi-cycle run continues (the hedge did its job); failures stop it.
CONTINUE_AFTER = {ExitReason.LIGHTER1_ZERO.value, ExitReason.LIGHTER2_ZERO.value, ExitReason.TIMEOUT.value}


def results_by_role(results: list[dict[str, Any]], accounts: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Each exit result under the role of the account it names (``accounts``: account -> role).

    A chord's results are not keyed by anything; zipping them with the roles by position would
    drop or swap a role without a word. A result naming an unknown or repeated account is left out
    (and logged), so that role counts as not confirmed flat.
    """
    by_role: dict[str, dict[str, Any]] = {}
    for result in results:
        account = str(result.get("account", ""))
        role = accounts.get(account)
        if role is None or role in by_role:
            log.error("exit result for an unexpected or repeated account %r left out", account)
            continue
        by_role[role] = result
    return by_role


def exit_dust(by_role: Mapping[str, Mapping[str, Any]], minimums: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Roles whose flatten did not end flat but whose final fresh read is a leftover below the venue's
    minimum order size: nothing can close it (the venue refuses the order), so it is dust, not open."""
    dust: dict[str, Decimal] = {}
    for role, result in by_role.items():
        quantity = (result.get("final_position") or {}).get("quantity")
        if result.get("flat") or quantity in (None, "") or role not in minimums:
            continue
        if abs(Decimal(str(quantity))) < minimums[role]:
            dust[role] = Decimal(str(quantity))
    return dust


def exit_is_flat(by_role: Mapping[str, Mapping[str, Any]], minimums: Mapping[str, Decimal] | None = None) -> bool:
    """Every role reported, and every report says flat (or, given the venues' minimums, dust)."""
    dust = exit_dust(by_role, minimums) if minimums else {}
    return set(by_role) == set(ROLE_ORDER) and all(r.get("flat") or role in dust for role, r in by_role.items())


def completion_kind(reason: str, flat: bool) -> AlertKind:
    """``cycle_completed`` for the normal end (a Lighter leg liquidated, or the timeout, then a flat
    exit); every other end (a failure, a cancel, an exit not confirmed flat) is an ``emergency_exit``."""
    return AlertKind.CYCLE_COMPLETED if flat and reason in CONTINUE_AFTER else AlertKind.EMERGENCY_EXIT


def exit_minimums(data: Mapping[str, Any]) -> dict[str, Decimal]:
    """Each role's smallest closable size from the rules recorded at planning (dust is below it)."""
    bp = data.get("bp_rules") or {}
    lighter = data.get("l_rules") or {}
    l_min = max(Decimal(str(lighter.get("min_quantity") or 0)), Decimal(str(data.get("l_step") or 0)))
    bp_min = max(Decimal(str(bp.get("min_quantity") or 0)), Decimal(str(bp.get("step_size") or 0)))
    return {"BP": bp_min, "L1": l_min, "L2": l_min}


def shown_positions(finals: Mapping[str, Any], dust: Mapping[str, Decimal]) -> dict[str, Any]:
    """The positions as the alerts show them: a dust leftover reads "flat, dust X", every other role
    its final quantity."""
    return {role: f"flat, dust {fmt_amount(dust[role], signed=True)}" if role in dust else finals.get(role)
            for role in ROLE_ORDER if role in finals}


def expected_positions(data: Mapping[str, Any], accounts: Mapping[str, str]) -> dict[str, Decimal]:
    """Positions the cycle's own fills imply (baseline + legs + flatten orders), for the roles whose
    record is complete; a role with a leg still in flight, or any unreported exit attempt, is left out."""
    plan = data.get("plan") or {}
    baselines = plan.get("baselines") or {}
    expected = {role: Decimal(str(baselines[role])) for role in ROLE_ORDER if role in baselines}
    reported = [k for k in data if k.startswith("exit_results:")]
    if len(reported) < int(data.get("exit_attempts") or 0):
        return {}  # an exit attempt died without reporting its orders: no complete ledger
    for key, value in data.items():
        if not key.startswith("leg:"):
            continue
        leg = parse_leg(value)
        account = leg.account if leg else (value.get("account", "") if isinstance(value, dict) else "")
        role = accounts.get(account)
        if role is None or role not in expected:
            continue
        if leg is None or not leg.state.final:
            expected.pop(role)  # outcome unknown to the record: the venue read is all there is
            continue
        expected[role] += leg.signed_fill
    for key in reported:
        for role, result in results_by_role(data[key] or [], accounts).items():
            for order in result.get("orders") or []:
                if role in expected:
                    expected[role] += Decimal(str(order["filled"])) * (1 if order["side"] == "buy" else -1)
    return expected


def fills_disagree(data: Mapping[str, Any], accounts: Mapping[str, str], steps: Mapping[str, Decimal], *,
                   reason: str) -> list[str]:
    """Roles that read flat while the cycle's own fills say they are not, by a step or more: a read
    can be stale, and a stale flat read must not end the cycle flat. A liquidated leg is not checked
    (the venue closed it, and no fill the cycle recorded says so)."""
    liquidated = {ExitReason.LIGHTER1_ZERO.value: "L1", ExitReason.LIGHTER2_ZERO.value: "L2"}.get(reason)
    return [f"{role} fills imply {quantity}" for role, quantity in expected_positions(data, accounts).items()
            if role != liquidated and abs(quantity) >= steps.get(role, DEFAULT_STEP)]


def next_cycle(groups: Mapping[str, GroupConfig], data: Mapping[str, Any], reason: str,
               flat: bool) -> dict[str, Any] | None:
    """The kwargs of the next cycle of a ``max_cycles`` run, or None: a run goes on after a flat exit
    for a hedge reason, from the group's configuration now (``groups``) with the run's overrides,
    and flips the direction after a timeout when ``reverse_on_timeout`` asks it to."""
    group = groups.get(str(data.get("group", "")))
    if group is None or not flat or reason not in CONTINUE_AFTER:
        return None
    overrides = dict(data.get("overrides") or {})
    params = HedgeParams.from_mapping(overrides, base=group.params)
    index = int(data.get("cycle_index") or 0) + 1
    if index >= params.max_cycles:
        return None
    if reason == ExitReason.TIMEOUT.value and params.reverse_on_timeout:
        flipped = Direction.SHORT_BACKPACK if params.direction is Direction.LONG_BACKPACK else Direction.LONG_BACKPACK
        overrides["direction"] = flipped.value
    return {"group": group.name, "cycle_index": index, **overrides}
