"""The entry: the Backpack entry with Lighter1's hedge armed on its fill, the entry's balance, then
Lighter2's entry after the random wait.

Invariants:
- A thin Lighter book can fill the IOC hedge in part. The hedge is done at :data:`FULL_FILL` of the
  Backpack fill, or after one top-up of the remainder sent at once; whatever Lighter1 still lacks is
  taken off Backpack (reduce-only), so the group's net during the wait is within one Backpack step.
- Lighter2 mirrors Lighter1's actual fill, not the Backpack fill, so the two Lighter legs are equal.
- The balance runs at most :data:`LAST_ROUND` order rounds; the round after them publishes the rest of
  the entry whatever the legs hold (the control loop rebalances what is left).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_DOWN, ROUND_HALF_UP, Decimal

import msgspec

from core.config_schema import Role
from core.cycle_fields import Stage
from core.legs import Leg
from orchestrator.cycle.commands import (
    ConfirmPosition,
    Decision,
    EnterFirstLegs,
    EnterRest,
    EntryOrder,
    SendOrder,
    Step,
    StepName,
)
from orchestrator.cycle.planning import CyclePlan
from orchestrator.cycle.runner import Call, Opening, StepSpec
from orchestrator.cycle.state import CycleState, LegName
from venues.base import MarketRules, Side

#: A hedge leg filled to this fraction of its target is done (no top-up for the last percent).
FULL_FILL = Decimal("0.99")
#: Rounds of the balance that may send an order: a top-up, then a Backpack reduction.
LAST_ROUND = 2
#: Where the cycle may be while each entry step runs: the first two legs run side by side, each
#: entering its stage as it sends; a confirmation moves the cycle on, so its copy must not run again.
FIRST_LEGS = (Stage.PLANNING, Stage.BP_ENTRY, Stage.L1_HEDGE)
L1_CONFIRMATION = (Stage.BP_ENTRY, Stage.L1_HEDGE)
L2_LEG = (Stage.WAIT, Stage.L2_ENTRY)
L2_CONFIRMATION = (Stage.L2_ENTRY,)


class EntryIncomplete(RuntimeError):
    """The first two legs are not both final when their group completed (never expected)."""


def mirror_quantity(rules: MarketRules, filled: Decimal) -> Decimal:
    """The hedge size for a fill: the fill on this venue's grid, never below its minimum."""
    return max(rules.quantize_size(filled, rounding=ROUND_HALF_UP), rules.min_quantity)


class EntryBalance(msgspec.Struct, frozen=True):
    """The next order of the entry's balance, at most one of them; neither when balanced.

    Fields:
      topup       Lighter1 quantity still to hedge (sent once, at once)
      bp_reduce   Backpack reduce-only quantity that brings it to Lighter1's fill
    """

    topup: Decimal | None = None
    bp_reduce: Decimal | None = None


def balance_entry(bp_filled: Decimal, l1_filled: Decimal, l_rules: MarketRules, bp_rules: MarketRules, *,
                  topped_up: bool) -> EntryBalance:
    """What to send next, from the two legs' recorded fills (unsigned quantities)."""
    target = mirror_quantity(l_rules, bp_filled)  # what the armed hedge was sized to
    remainder = l_rules.quantize_size(target - l1_filled, rounding=ROUND_DOWN)
    if (not topped_up and l1_filled < target * FULL_FILL and remainder >= l_rules.min_quantity
            and remainder >= l_rules.step_size):
        return EntryBalance(topup=remainder)
    # Backpack holds more than Lighter1 hedges: take the difference off, to the Backpack grid point
    # nearest Lighter1 (a tie staying put), and only when that strictly reduces the gap.
    excess = bp_filled - l1_filled
    quantity = bp_rules.quantize_size(max(excess, Decimal(0)), rounding=ROUND_HALF_DOWN)
    if quantity >= bp_rules.step_size and quantity >= bp_rules.min_quantity and abs(excess - quantity) < abs(excess):
        return EntryBalance(bp_reduce=quantity)
    return EntryBalance()


def _balance_step(balance_round: int) -> Step:
    return Step(StepName.BALANCE_ENTRY, {"balance_round": balance_round})


def enter(state: CycleState, plan: CyclePlan) -> EnterFirstLegs:
    """The first two legs: Lighter1's hedge armed on the Backpack fill, and the Backpack entry."""
    params, ids = state.params, state.client_ids
    hedge = EntryOrder(role=Role.L1, side=plan.l1_side, leg=LegName.L1_HEDGE, client_ids=ids.get(LegName.L1_HEDGE, []),
                       fence=FIRST_LEGS, quantity_from_leg=LegName.BP_ENTRY, expected_quantity=plan.bp_size,
                       max_slippage=params.lighter_max_slippage or None,
                       retry_delay_secs=params.lighter_retry_delay_secs)
    entry = EntryOrder(role=Role.BP, side=plan.bp_side, leg=LegName.BP_ENTRY, client_ids=ids.get(LegName.BP_ENTRY, []),
                       fence=FIRST_LEGS, quantity=plan.bp_size, announce_fill=True,
                       max_slippage=params.backpack_max_slippage or None,
                       retry_delay_secs=params.backpack_retry_delay_secs)
    return EnterFirstLegs(hedge, entry, _balance_step(0))


def _filled(leg: Leg | None) -> Decimal:
    return leg.filled if leg is not None else Decimal(0)


def decide_balance(state: CycleState, *, balance_round: int) -> Decision:
    """One round of the entry's balance: top Lighter1 up once, or bring Backpack down to it, or, once
    balanced (or out of rounds), publish the rest of the entry with Lighter2 sized from Lighter1's fill."""
    plan = state.plan
    bp, l1 = state.legs.get(LegName.BP_ENTRY.value), state.legs.get(LegName.L1_HEDGE.value)
    if plan is None or bp is None or l1 is None or not (bp.state.final and l1.state.final):
        raise EntryIncomplete(f"cycle {state.cycle_id}: bp_entry or l1_hedge not final after their group completed")
    bp_held = bp.filled - _filled(state.legs.get(LegName.BP_BALANCE.value))
    l1_total = l1.filled + _filled(state.legs.get(LegName.L1_TOPUP.value))
    l_rules, bp_rules = state.rules[Role.L1], state.rules[Role.BP]
    balance = (balance_entry(bp_held, l1_total, l_rules, bp_rules, topped_up=balance_round > 0)
               if balance_round < LAST_ROUND else EntryBalance())
    params, after = state.params, _balance_step(balance_round + 1)
    if balance.topup is not None:
        note = f"Lighter1 filled {l1_total} of {mirror_quantity(l_rules, bp_held)}: topping up {balance.topup}"
        send = SendOrder(Role.L1, plan.l1_side, balance.topup, LegName.L1_TOPUP.value, then=after,
                         max_slippage=params.lighter_max_slippage or None, fence_stages=L1_CONFIRMATION)
        return Decision(state=state, commands=(send,), events=(note,), result={"topup": str(balance.topup)})
    if balance.bp_reduce is not None:
        note = f"Lighter1 hedges {l1_total} of Backpack's {bp_held}: reducing Backpack by {balance.bp_reduce}"
        send = SendOrder(Role.BP, plan.bp_side.opposite, balance.bp_reduce, LegName.BP_BALANCE.value, then=after,
                         reduce_only=True, max_slippage=params.backpack_max_slippage or None,
                         fence_stages=L1_CONFIRMATION)
        return Decision(state=state, commands=(send,), events=(note,), result={"bp_reduce": str(balance.bp_reduce)})
    l2_quantity = mirror_quantity(l_rules, l1_total)
    note = f"entry balanced: Backpack {bp_held}, Lighter1 {l1_total}; Lighter2 will enter {l2_quantity}"
    return Decision(state=state, commands=(rest(state, plan, l2_quantity),), events=(note,),
                    result={"balanced": True, "l2_quantity": str(l2_quantity)})


def rest(state: CycleState, plan: CyclePlan, l2_quantity: Decimal) -> EnterRest:
    """Confirm Lighter1 → (random wait) Lighter2 enters ``l2_quantity`` → confirm it → the control loop."""
    params, baselines = state.params, state.baselines

    def confirm(role: Role, leg: LegName, side: Side, next_stage: Stage, fence: tuple[Stage, ...]) -> ConfirmPosition:
        return ConfirmPosition(role=role, leg=leg, baseline=baselines.get(role) or Decimal(0), expected_sign=side.sign,
                               next_stage=next_stage, fence=fence, min_fraction=params.confirmation_min_fraction,
                               timeout_secs=params.confirmation_timeout_secs, poll_secs=params.confirmation_poll_secs)

    entry = EntryOrder(role=Role.L2, side=plan.l2_side, leg=LegName.L2_ENTRY, client_ids=state.client_ids[LegName.L2_ENTRY],
                       fence=L2_LEG, quantity=l2_quantity, max_slippage=params.lighter_max_slippage or None,
                       retry_delay_secs=params.lighter_retry_delay_secs, after_secs=float(plan.wait_secs or 0))
    return EnterRest(confirm(Role.L1, LegName.L1_HEDGE, plan.l1_side, Stage.WAIT, L1_CONFIRMATION), entry,
                     confirm(Role.L2, LegName.L2_ENTRY, plan.l2_side, Stage.REBALANCE, L2_CONFIRMATION),
                     Step(StepName.REBALANCE, {"attempt": 0, "step": 0}))


# ---- the entry's steps ------------------------------------------------------------------------------

def _balance(state: CycleState, now: float, call: Call) -> Decision:
    return decide_balance(state, balance_round=call.number("balance_round"))


#: The entry's steps on the ``orchestrator`` queue; a balance round runs once (its claim).
STEPS: dict[StepName, StepSpec] = {
    StepName.BALANCE_ENTRY: StepSpec(Opening((Stage.BP_ENTRY, Stage.L1_HEDGE), label="entry balance"), _balance,
                                     claim=lambda call: f"entry_balance:{call.number('balance_round')}"),
}
