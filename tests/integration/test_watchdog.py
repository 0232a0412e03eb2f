"""The watchdog's grace on a real Redis: the store writes a step's deadline with the grace of the
stage it leaves the cycle in, and the sweep reads the same grace, so an exit quiet for the exit's
grace (``core.policies.EXIT_STEP_GRACE_SECS``) is retried while a monitoring loop quiet as long is
left alone until the deployment's step grace has passed."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import msgspec
import pytest
import redis

from core import keys
from core.cycle_fields import ExitReason, Stage
from core.cycle_record import CycleRecord, step_grace
from core.policies import watchdog_grace
from orchestrator.cycle.commands import Command, Decision, RunLater, StepName
from orchestrator.cycle.exit import start_exit
from orchestrator.cycle.state import CycleState
from orchestrator.recovery import sweep
from orchestrator.store import RedisCycleStore
from tests.helpers.cycle_states import cycle_state


class Published:
    """The scheduler port, keeping what the watchdog published."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def publish(self, state: CycleState, commands: Sequence[Command]) -> None:
        self.commands.extend(commands)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def written_at(client: redis.Redis, cycle_id: str, decision: Decision, at: float) -> CycleRecord:
    """A new cycle whose last step (``decision``, from planning) wrote its record at ``at``."""
    store = RedisCycleStore(client)
    planning = msgspec.structs.replace(decision.state, cycle_id=cycle_id, stage=Stage.PLANNING)
    store.create(planning, trigger_task="test")
    store.save(planning, msgspec.structs.replace(decision, state=msgspec.structs.replace(decision.state,
                                                                                          cycle_id=cycle_id)), at)
    record = CycleRecord(client, cycle_id)
    client.hset(record.key, "updated_at", json.dumps(at))  # nothing wrote it since
    return record


def test_an_exit_quiet_for_its_grace_is_retried_and_a_loop_as_quiet_is_not(client: redis.Redis) -> None:
    client.delete(keys.CYCLES_ACTIVE)
    exit_grace = watchdog_grace(Stage.EMERGENCY_EXIT, step_grace())
    assert exit_grace < step_grace()
    quiet_since = time.time() - exit_grace - 1.0
    monitoring = cycle_state(stage=Stage.MONITORING)
    exiting = written_at(client, "c-exit", start_exit(monitoring, ExitReason.TIMEOUT, 0), quiet_since)
    looping = written_at(client, "c-loop", Decision(state=monitoring, next_within=0.0), quiet_since)
    assert exiting.get("next_deadline") == pytest.approx(quiet_since + exit_grace)
    assert looping.get("next_deadline") == pytest.approx(quiet_since + step_grace())

    published = Published()
    actions = sweep(client, published)
    assert [(a["cycle_id"], a["action"]) for a in actions] == [("c-exit", "retry_exit")]
    (retry,) = published.commands
    assert isinstance(retry, RunLater) and retry.step.name is StepName.EMERGENCY_EXIT
    assert retry.step.kwargs == {"reason": "timeout", "attempt": 1}
    # The claim and the next deadline last the exit's grace: a second sweep now does nothing.
    assert exiting.get("next_deadline") == pytest.approx(time.time() + exit_grace, abs=1.0)
    assert 0 < client.ttl(keys.cycle_resolving("c-exit")) <= exit_grace
    assert sweep(client, published) == []
