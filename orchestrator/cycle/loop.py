"""The control loop's decisions: rebalance Backpack to its own-delta target after the entry, then
monitor until a Lighter leg is liquidated or the cycle times out.

Invariants:
- *in step*: Backpack is driven to ``base_bp - (own l1 + own l2)``, so the group's own net stays
  within one Backpack step; an order is sent only when it strictly reduces the drift.
- *once*: one loop per cycle. A deciding step runs only after the store moved the loop token
  (``step_seq``) from the token it was issued under, and everything it publishes carries the new one.
- unknown is never zero: a position that could not be read is never traded on; reads that stay
  unknown are alerted every ``unknown_reads_alert`` monitor reads.
- a Lighter leg whose own delta reads zero (or dust) is re-read fast and confirmed before the exit;
  nothing is rebalanced toward it meanwhile (rebalancing toward a liquidated leg only to sell it
  back in the exit costs two taker fees and the spread on the whole size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_DOWN, Decimal
from typing import Any

import msgspec

from core.config_schema import Role
from core.cycle_fields import ExitReason, Stage
from core.legs import Leg
from monitoring.alert_texts import AlertKind, format_cycle_hedged
from orchestrator.cycle.commands import Alert, Decision, ReadPositions, RunLater, SendOrder, StartExit, Step, StepName
from orchestrator.cycle.runner import Call, Opening, StepSpec
from orchestrator.cycle.state import LIGHTER_ROLES, LOOP_STAGES, CycleState, LoopState, Positions, numbered_leg
from venues.base import MarketRules, Side

#: The loop's two modes: after the entry (``hedge``: entering monitoring once hedged) and from a
#: monitor read that found Backpack drifted (``monitor``: staying in monitoring).
AFTER_ENTRY = "hedge"
FROM_MONITOR = "monitor"
#: Leg names of the rebalance orders, numbered by ``LoopState.rebalances``.
REBALANCE_LEG = "bp_rebalance_"


class RebalanceOrder(msgspec.Struct, frozen=True):
    """A Backpack order that moves ``bp`` toward its own-delta ``target``."""

    side: Side
    quantity: Decimal
    target: Decimal


def positions_of(readings: Sequence[Mapping[str, Any]], state: CycleState) -> Positions:
    """The three roles' positions from reads keyed by the account each names (not by their place
    in the chord's results); a role with no read, or two, is unknown."""
    found: dict[Role, list[Mapping[str, Any]]] = {}
    for reading in readings:
        role = state.role_of(str(reading.get("account")))
        if role is not None:
            found.setdefault(role, []).append(reading)

    def value(role: Role) -> Decimal | None:
        reads = found.get(role, [])
        quantity = reads[0].get("quantity") if len(reads) == 1 else None
        return None if quantity is None else Decimal(str(quantity))

    return Positions(value(Role.BP), value(Role.L1), value(Role.L2))


def backpack_target(positions: Positions, baselines: Positions) -> Decimal | None:
    """Where Backpack must stand so the cycle's own deltas sum to zero: ``base_bp - (own l1 + own l2)``
    (``-(l1 + l2)`` from flat accounts); None while a Lighter position is unknown. A position held
    before the cycle is neither hedged nor sold."""
    own = positions.own(baselines)
    if own.l1 is None or own.l2 is None:
        return None
    return (baselines.bp or Decimal(0)) - (own.l1 + own.l2)


def rebalance_order(positions: Positions, bp_rules: MarketRules, baselines: Positions) -> RebalanceOrder | None:
    """The Backpack order toward the target; None when no order strictly reduces the drift (within
    half a step, or below the venue minimum: as hedged as the Backpack grid allows) or a position is
    unknown."""
    target = backpack_target(positions, baselines)
    if target is None or positions.bp is None:
        return None
    delta = target - positions.bp
    # The grid point nearest the target, a tie staying put: Lighter's step can be finer than
    # Backpack's, and rounding half a step up would overshoot by half a step, which the next
    # decision rounds back the other way: sell, buy, sell until the attempts run out.
    quantity = bp_rules.quantize_size(abs(delta), rounding=ROUND_HALF_DOWN)
    if quantity < bp_rules.step_size or quantity < bp_rules.min_quantity or abs(abs(delta) - quantity) >= abs(delta):
        return None
    return RebalanceOrder(Side.BUY if delta > 0 else Side.SELL, quantity, target)


def backpack_from_fills(state: CycleState) -> Decimal | None:
    """Backpack's position as the cycle's recorded fills put it (baseline plus every Backpack leg);
    None while one of its legs is still in flight (the read is all there is then)."""
    account = state.group.account_for(Role.BP)
    legs: list[Leg] = [leg for leg in state.legs.values() if leg.account == account]
    if any(not leg.state.final for leg in legs):
        return None
    return (state.baselines.bp or Decimal(0)) + sum((leg.signed_fill for leg in legs), Decimal(0))


def decide_on(positions: Positions, state: CycleState) -> tuple[Positions | None, str | None]:
    """The positions to rebalance on: Backpack as the fills put it, the read only cross-checking it
    (a read can lag the last fill; trading on the lagging read orders the same quantity twice).

    (positions, None) to decide on, or (None, why) when read and fills disagree by a step or more:
    read again rather than trade on either.
    """
    from_fills = backpack_from_fills(state)
    if from_fills is None:
        return positions, None
    if positions.bp is not None and abs(positions.bp - from_fills) >= state.step_of(Role.BP):
        return None, f"Backpack read {positions.bp} but the cycle's fills put it at {from_fills}"
    return msgspec.structs.replace(positions, bp=from_fills), None


def liquidated_below(state: CycleState) -> Decimal:
    """The |own delta| under which a Lighter leg counts as liquidated: below one step, or below the
    venue's minimum order, since a leftover that small can be neither traded nor closed (dust): a
    partial liquidation that leaves it has done what a full one does."""
    return max(state.step_of(Role.L1), state.minimum_of(Role.L1))


def zero_streaks(previous: Mapping[Role, int], positions: Positions, state: CycleState) -> dict[Role, int]:
    """Consecutive fresh reads per Lighter leg whose own delta is zero or dust; an unknown read
    neither counts nor resets."""
    own = positions.own(state.baselines)
    threshold = liquidated_below(state)
    streaks = {role: previous.get(role, 0) for role in LIGHTER_ROLES}
    for role in LIGHTER_ROLES:
        value = own.get(role)
        if value is not None:
            streaks[role] = streaks[role] + 1 if abs(value) < threshold else 0
    return streaks


def observed(loop: LoopState, positions: Positions, state: CycleState, now: float) -> LoopState:
    """The loop state after one more read: the worst own net and the time beyond one step."""
    net = positions.own(state.baselines).net
    if net is None:
        return msgspec.structs.replace(loop, last_read=positions)
    return msgspec.structs.replace(loop, last_read=positions,
                                   exposure=loop.exposure.observe(net, state.step_of(Role.BP), now))


def _loop_step(name: StepName, **kwargs: Any) -> Step:
    return Step(name, kwargs)


def exit_for(state: CycleState, reason: ExitReason, **result: Any) -> Decision:
    return Decision(state=state, commands=(StartExit(reason),), result={"exit": reason.value, **result})


def start_rebalance(state: CycleState, *, attempt: int, then: str, token: int) -> Decision:
    """Read the three positions, then :func:`decide_rebalance`; entering ``rebalance`` after the entry."""
    entering = then == AFTER_ENTRY
    read = ReadPositions(_loop_step(StepName.REBALANCE_DECIDE, attempt=attempt, then=then, step=token))
    return Decision(state=msgspec.structs.replace(state, stage=Stage.REBALANCE) if entering else state,
                    commands=(read,), next_within=0.0 if entering else None)


def decide_rebalance(state: CycleState, positions: Positions, *, attempt: int, then: str, token: int,
                     now: float) -> Decision:
    """From a fresh read: confirm a zero leg, go on hedged, send one Backpack order, read again, or
    give up into the exit. ``token`` is the loop token this step moved the loop to."""
    params = state.params
    loop = msgspec.structs.replace(observed(state.loop, positions, state, now), step_seq=token)
    state = msgspec.structs.replace(state, loop=loop)
    reading = (f"rebalance_{attempt}", positions)
    zeros = [role for role, n in zero_streaks({}, positions, state).items() if n] if positions.known else []
    if zeros:
        names = "/".join(role.short for role in zeros)
        note = f"{names} read zero while rebalancing: no rebalance, confirming with fast re-reads"
        return _to_monitoring(state, then, now, params.zero_reread_secs, reading=reading, events=(note,),
                              result={"hedged": False, "zero": [role.short for role in zeros]})
    decide, doubt = decide_on(positions, state)
    order = None
    if decide is not None and decide.known:
        order = rebalance_order(decide, state.rules[Role.BP], state.baselines)
        if order is None:
            return _hedged(state, decide, then, now, reading)
    if attempt >= params.rebalance_max_attempts:
        why = doubt or ("positions unknown" if order is None else f"Backpack still {positions.bp} vs target {order.target}")
        return Decision(state=state, reading=reading, commands=(StartExit(ExitReason.REBALANCE_FAILED),),
                        events=(f"rebalance gave up after {attempt} attempts: {why}",), result={"hedged": False})
    again = _loop_step(StepName.REBALANCE, attempt=attempt + 1, then=then, step=token)
    if order is None:  # unknown, or a read that disagrees with the fills: read again shortly
        return Decision(state=state, reading=reading, commands=(RunLater(again, params.rebalance_retry_delay_secs),),
                        events=(f"rebalance read again: {doubt}",) if doubt else (),
                        result={"hedged": False, "unknown": True, "doubt": doubt})
    number = state.loop.rebalances + 1
    send = SendOrder(Role.BP, order.side, order.quantity, numbered_leg(REBALANCE_LEG, number), then=again,
                     max_slippage=params.backpack_max_slippage or None, fence_step=token)
    return Decision(state=msgspec.structs.replace(state, loop=msgspec.structs.replace(loop, rebalances=number)),
                    reading=reading, commands=(send,),
                    events=(f"rebalance {order.side.value} {order.quantity} toward Backpack target {order.target}",),
                    result={"hedged": False, "order": {"side": order.side.value, "quantity": str(order.quantity)}})


def _hedged(state: CycleState, positions: Positions, then: str, now: float,
            reading: tuple[str | None, Positions]) -> Decision:
    alert: tuple[Alert, ...] = ()
    if then == AFTER_ENTRY:
        text = format_cycle_hedged(state.group.name, state.cycle_id,
                                   {"BP": positions.bp, "L1": positions.l1, "L2": positions.l2})
        alert = (Alert(AlertKind.CYCLE_HEDGED, text),)
    decided = _to_monitoring(state, then, now, state.params.poll_interval_secs, reading=reading,
                             result={"hedged": True})
    return msgspec.structs.replace(decided, commands=(*alert, *decided.commands))


def _to_monitoring(state: CycleState, then: str, now: float, after_secs: float, *, reading: tuple[str | None, Positions],
                   events: tuple[str, ...] = (), result: dict[str, Any]) -> Decision:
    # After the entry the cycle enters monitoring (its timeout counts from now); from a monitor
    # read it stays there. Either way the next monitor tick runs under the new token.
    tick = RunLater(_loop_step(StepName.MONITOR_TICK, step=state.loop.step_seq), after_secs)
    if then != AFTER_ENTRY:
        return Decision(state=state, reading=reading, commands=(tick,), events=events, result=result)
    loop = msgspec.structs.replace(state.loop, monitoring_started_at=now)
    entered = msgspec.structs.replace(state, stage=Stage.MONITORING, loop=loop)
    return Decision(state=entered, reading=reading, commands=(tick,), events=events, next_within=after_secs,
                    result=result)


def monitor_tick(state: CycleState, *, token: int, now: float) -> Decision:
    """One short check: the cycle's timeout, then a read of the three positions."""
    started = state.loop.monitoring_started_at if state.loop.monitoring_started_at is not None else now
    if now - started >= state.params.timeout_secs:
        return exit_for(state, ExitReason.TIMEOUT, after_secs=round(now - started, 1))
    read = ReadPositions(_loop_step(StepName.MONITOR_DECIDE, step=token))
    return Decision(state=state, commands=(read,), next_within=state.params.poll_interval_secs)


def decide_monitor(state: CycleState, positions: Positions, *, token: int, now: float) -> Decision:
    """From a monitoring read: a Lighter leg confirmed liquidated starts the exit; a leg read zero is
    re-read fast; Backpack drifted beyond the tolerance is rebalanced; otherwise look again."""
    params = state.params
    streaks = zero_streaks(state.loop.zero_streaks, positions, state)
    unknown = 0 if positions.known else state.loop.unknown_reads + 1
    loop = msgspec.structs.replace(observed(state.loop, positions, state, now), step_seq=token,
                                   zero_streaks=streaks, unknown_reads=unknown)
    state = msgspec.structs.replace(state, loop=loop)
    reading = (None, positions)
    alerts = (_unknown_alert(state, positions, unknown),) if unknown and unknown % params.unknown_reads_alert == 0 else ()
    for role, reason in ((Role.L1, ExitReason.LIGHTER1_ZERO), (Role.L2, ExitReason.LIGHTER2_ZERO)):
        if streaks[role] >= params.zero_confirmations:
            return Decision(state=state, reading=reading, commands=(*alerts, StartExit(reason)),
                            events=(f"{role.short} returned to zero on {streaks[role]} fresh reads",),
                            result={"exit": reason.value})
    tick = _loop_step(StepName.MONITOR_TICK, step=token)
    if any(streaks.values()):
        return Decision(state=state, reading=reading, commands=(*alerts, RunLater(tick, params.zero_reread_secs)),
                        result={"confirming_zero": {r.short: n for r, n in streaks.items()}})
    order = rebalance_order(positions, state.rules[Role.BP], state.baselines) if positions.known else None
    if order is not None and positions.bp is not None and abs(order.target - positions.bp) > params.liquidation_tolerance:
        rebalance = _loop_step(StepName.REBALANCE, attempt=0, then=FROM_MONITOR, step=token)
        return Decision(state=state, reading=reading, commands=(*alerts, RunLater(rebalance)),
                        result={"rebalance": str(abs(order.target - positions.bp))})
    return Decision(state=state, reading=reading, commands=(*alerts, RunLater(tick, params.poll_interval_secs)),
                    result={"known": positions.known})


def _unknown_alert(state: CycleState, positions: Positions, count: int) -> Alert:
    # Unknown is never traded on, so a venue whose reads keep failing leaves the cycle unwatched:
    # say so every unknown_reads_alert reads instead of staying quiet for hours.
    roles = [role.short for role in positions.unknown_roles()]
    text = (f"Cycle {state.cycle_id} ({state.group.name}): {'/'.join(roles)} position unknown on {count} monitor "
            "reads in a row; nothing is traded on unknown reads. Check the venue and the worker (xtb status).")
    return Alert(AlertKind.POSITIONS_UNKNOWN, text, {"unknown_reads": count, "roles": roles})


# ---- the loop's steps ------------------------------------------------------------------------------

def _rebalance(state: CycleState, now: float, call: Call) -> Decision:
    return start_rebalance(state, attempt=call.number("attempt"), then=call.text("then", AFTER_ENTRY),
                                token=call.token)


def _rebalance_decide(state: CycleState, now: float, call: Call) -> Decision:
    return decide_rebalance(state, positions_of(call.observed, state), attempt=call.number("attempt"),
                                 then=call.text("then", AFTER_ENTRY), token=call.token + 1, now=now)


def _monitor_tick(state: CycleState, now: float, call: Call) -> Decision:
    return monitor_tick(state, token=call.token, now=now)


def _monitor_decide(state: CycleState, now: float, call: Call) -> Decision:
    return decide_monitor(state, positions_of(call.observed, state), token=call.token + 1, now=now)


#: The loop's steps: each one's opening and decision (``orchestrator.cycle.steps`` collects every phase's).
STEPS: dict[StepName, StepSpec] = {
    StepName.REBALANCE: StepSpec(Opening(LOOP_STAGES, token=True, label="rebalance"), _rebalance),
    StepName.REBALANCE_DECIDE: StepSpec(Opening(LOOP_STAGES, advance=True, label="rebalance decision"),
                                        _rebalance_decide),
    StepName.MONITOR_TICK: StepSpec(Opening((Stage.MONITORING,), token=True, label="monitor tick"), _monitor_tick),
    StepName.MONITOR_DECIDE: StepSpec(Opening((Stage.MONITORING,), advance=True, label="monitor decision"),
                                      _monitor_decide),
}
