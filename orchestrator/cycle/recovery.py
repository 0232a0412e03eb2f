"""What the watchdog does with a cycle whose next step is overdue (a lost message, a chord that
never fired, a dead worker): resume where that is safe, unwind otherwise.

The step that resumes reads venue truth again. Monitoring and rebalancing resume under the loop's
current token: if the loop was only slow, not lost, the two copies meet at its compare-and-set and
one of them stops. An exit already under way is retried as its next attempt. An entry half done is
not worth guessing about: it is unwound.
"""

from __future__ import annotations

from core.cycle_fields import ExitReason, Stage
from orchestrator.cycle.commands import Command, RunLater, StartExit, Step, StepName
from orchestrator.cycle.state import CycleState


def resume(state: CycleState) -> tuple[str, tuple[Command, ...]]:
    """The action's name and its commands for an overdue cycle (``forgotten``: a finished cycle left
    in the active set, nothing to run)."""
    token = state.loop.step_seq
    if state.stage is Stage.DONE:
        return "forgotten", ()
    if state.stage is Stage.MONITORING:
        return "resume_monitoring", (RunLater(Step(StepName.MONITOR_TICK, {"step": token})),)
    if state.stage is Stage.REBALANCE:
        return "resume_rebalance", (RunLater(Step(StepName.REBALANCE, {"attempt": 0, "then": "hedge", "step": token})),)
    if state.stage is Stage.EMERGENCY_EXIT:
        reason = state.exit_reason or ExitReason.RECOVERED_UNWIND
        # ``exit_attempts`` counts the attempts launched, so it numbers the next one.
        attempt = max(state.exit_attempts, 1)
        return "retry_exit", (RunLater(Step(StepName.EMERGENCY_EXIT, {"reason": reason.value, "attempt": attempt})),)
    return "unwind", (StartExit(ExitReason.RECOVERED_UNWIND),)


def cancel(state: CycleState) -> tuple[Command, ...]:
    """Unwind the cycle now, as cancelled (``xtb recover --unwind``, a demo restarting)."""
    return (RunLater(Step(StepName.EMERGENCY_EXIT, {"reason": ExitReason.CANCELLED.value,
                                                   "attempt": state.exit_attempts})),)
