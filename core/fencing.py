"""Fencing tokens: a task acts only while its cycle is still where the task was sent from.

A message can outlive the step that sent it: a venue task redelivered after its worker was
SIGKILLed (the broker's visibility timeout), a countdown held by a dead orchestrator, a watchdog
resume racing the loop it resumes. Each task carries a :class:`Fence` naming the stages its cycle
may be in and, in the control loop and the exit, the token it was issued under. Before it acts
it reads the record and refuses when the cycle has moved on. The control loop
(rebalance, monitoring) has one token, ``step_seq``: a deciding step moves it from the value it
carries to the next with a compare-and-set (``orchestrator.store.RedisCycleStore.advance_step``),
so of two copies of one step exactly one goes on and a cycle never runs two monitoring loops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.cycle_fields import Stage

#: The record fields a fence is checked against, read in one HMGET.
FENCE_FIELDS = ("stage", "step_seq", "exit_attempts", "exit_reported_at")



@dataclass(frozen=True)
class Fence:
    """Where a task's cycle must still be for the task to act.

    Fields:
      stages        the stages the cycle may be in (those of the step that sent the task)
      step          the control loop's token (``step_seq``) the task was issued under; None = not checked
      exit_attempt  the emergency-exit attempt a flatten belongs to; None = not checked
      missing_ok    act when the cycle has no record at all (the defaults for tasks sent without a
                    fence: an operator's or a probe's order naming an id that is no cycle)
    """

    stages: tuple[Stage, ...]
    step: int | None = None
    exit_attempt: int | None = None
    missing_ok: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"stages": [s.value for s in self.stages], "step": self.step, "exit_attempt": self.exit_attempt,
                "missing_ok": self.missing_ok}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fence:
        return cls(tuple(Stage(s) for s in data.get("stages") or ()), data.get("step"), data.get("exit_attempt"),
                   bool(data.get("missing_ok")))

    def refusal(self, fields: Mapping[str, Any]) -> str | None:
        """Why a task under this fence must not act on a record holding ``fields`` (decoded values of
        :data:`FENCE_FIELDS`); None when it may."""
        stage = fields.get("stage")
        if stage is None and self.missing_ok:
            return None
        if stage not in {s.value for s in self.stages}:
            return f"cycle is in stage {stage}, the task was sent for {'/'.join(s.value for s in self.stages)}"
        current_step = int(fields.get("step_seq") or 0)
        if self.step is not None and current_step != self.step:
            return f"control step {current_step} has moved past the task's token {self.step}"
        if self.exit_attempt is not None:
            current = int(fields.get("exit_attempts") or 0) - 1
            if current != self.exit_attempt:
                return f"exit attempt {current} is current, the task belongs to attempt {self.exit_attempt}"
            if fields.get("exit_reported_at"):
                return "the exit was already reported"
        return None
