"""The cycle record stores JSON always, reads every field back as its declared type, and refuses
what its schema (``core/cycle_fields.py``) does not declare."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
import redis

from core import keys
from core.cycle_fields import CycleFieldTypeError, UndeclaredCycleField
from core.cycle_record import EVENTS_KEPT, CycleRecord, ExitReason, Outcome, Stage, create_cycle
from core.legs import Leg, LegState
from orchestrator.recovery import sweep
from venues.base import Side
from xtb_tasks.worker.cycle_task import CeleryScheduler


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_text_that_looks_like_a_number_reads_back_as_text(client: redis.Redis) -> None:
    # A group named "123" used to come back as the int 123 and fail every cycle at planning.
    record = create_cycle(client, "c-123", "123", trigger_task="42")
    assert record.get("group") == "123"
    assert record.all()["trigger_task"] == "42"
    assert record.view("group").get("group") == "123"


def test_values_keep_their_types(client: redis.Redis) -> None:
    record = CycleRecord(client, "c-types")
    leg = Leg("backpack1", "ETH_USDC_PERP", Side.BUY, 7, Decimal("1.5"), Decimal("1.5"), LegState.FILLED,
              avg_price=Decimal("2500.5"), filled_at=1.0e9)
    record.update(exit_attempts=3, pnl={"BP": Decimal("1.50")}, net_delta="0", cycle_index=0, events=[])
    record.record_leg("bp_entry", leg)
    record.set_stage(Stage.MONITORING)
    assert record.leg("bp_entry") == leg
    assert (record.get("exit_attempts"), record.get("net_delta"), record.get("events")) == (3, "0", [])
    assert record.get("pnl") == {"BP": "1.50"}  # Decimals inside a value travel as text, quantized as written
    assert record.stage is Stage.MONITORING and record.view().stage is Stage.MONITORING
    # set_stage writes ``deadline or 0``: a JSON int, read back as the number type it is declared with.
    assert record.get("next_deadline") == 0.0 and type(record.get("next_deadline")) is float


def test_a_finished_record_reads_back_whole(client: redis.Redis) -> None:
    record = create_cycle(client, "c-done", "main", overrides={"size": "0.01"}, cycle_index=1,
                          direction="long_backpack", params={}, next_deadline=0.0, trigger_task="")
    record.set_stage(Stage.EMERGENCY_EXIT, reason=ExitReason.TIMEOUT.value, exit_attempts=1,
                     **{"exit_ids:0": {"BP": [1]}})
    record.update({"exit_results:0": [{"account": "bp", "flat": True}]})
    record.record_positions("exit", {"BP": "0", "L1": None, "L2": "0"})
    record.add_event("exit confirmed")
    record.touch_deadline(0)
    record.finish(Outcome.FLAT, ExitReason.TIMEOUT.value)
    data = record.all()
    assert (data["stage"], data["outcome"], data["reason"]) == ("done", "flat", "timeout")
    assert data["positions:exit"] == data["positions"] == {"BP": "0", "L1": None, "L2": "0"}
    assert {"t:planning", "t:emergency_exit", "t:done", "exit_ids:0", "exit_results:0"} <= set(data)
    assert not client.sismember(keys.CYCLES_ACTIVE, "c-done")


def test_an_undeclared_field_is_refused_and_nothing_is_written(client: redis.Redis) -> None:
    record = create_cycle(client, "c-strict", "main")
    before = client.hgetall(record.key)
    with pytest.raises(UndeclaredCycleField, match="'attempts' is not a cycle record field"):
        record.update(stage=Stage.BP_ENTRY.value, attempts=3)
    with pytest.raises(UndeclaredCycleField, match="'leg:bp_entyr'"):
        record.record_leg("bp_entyr", Leg.in_flight("backpack1", "ETH_USDC_PERP", Side.BUY, 1, Decimal(1)))
    with pytest.raises(CycleFieldTypeError, match="'leg:bp_entry' must be a leg record"):
        record.update({"leg:bp_entry": {"filled": "1", "state": "sending"}})
    with pytest.raises(CycleFieldTypeError, match="'net_delta' must be a string, not Decimal"):
        record.update(net_delta=Decimal("0.5"))
    with pytest.raises(CycleFieldTypeError, match="'next_deadline' must be a number"):
        record.touch_deadline("soon")  # type: ignore[arg-type]
    with pytest.raises(CycleFieldTypeError, match="'stage' must be one of"):
        record.update(stage="finished")
    pipe = client.pipeline(transaction=False)
    with pytest.raises(UndeclaredCycleField):
        record.update(via=pipe, bogus=1)
    assert len(pipe) == 0  # nothing queued either
    assert client.hgetall(record.key) == before  # not even updated_at moved


def test_create_cycle_refuses_an_undeclared_field_and_creates_nothing(client: redis.Redis) -> None:
    with pytest.raises(UndeclaredCycleField, match="'size'"):
        create_cycle(client, "c-bad", "main", size="1")
    assert not client.exists(keys.cycle("c-bad"))
    assert not client.sismember(keys.CYCLES_ACTIVE, "c-bad")
    assert "c-bad" not in client.lrange(keys.cycle_history("main"), 0, -1)


def test_a_stored_value_of_the_wrong_type_is_an_error_on_read(client: redis.Redis) -> None:
    record = create_cycle(client, "c-raw", "main")
    client.hset(record.key, "exit_attempts", json.dumps("1"))  # written around the schema
    for read in (lambda: record.get("exit_attempts"), record.all, lambda: record.view("exit_attempts")):
        with pytest.raises(CycleFieldTypeError, match="xtb:cycle:c-raw field 'exit_attempts' holds str '1'; "
                                                      "expected an integer"):
            read()
    client.hset(record.key, "exit_attempts", "not json")
    with pytest.raises(CycleFieldTypeError, match="not JSON"):
        record.get("exit_attempts")
    client.hdel(record.key, "exit_attempts")
    client.hset(record.key, "mystery", json.dumps(1))
    with pytest.raises(UndeclaredCycleField, match="'mystery'"):
        record.all()


def test_reading_an_undeclared_name_is_refused_before_any_round_trip(client: redis.Redis) -> None:
    record = create_cycle(client, "c-read", "main")
    with pytest.raises(UndeclaredCycleField, match="'grop'"):
        record.get("grop")
    with pytest.raises(UndeclaredCycleField, match="'grop'"):
        record.view("group", "grop")


def test_the_watchdog_reports_an_unreadable_record_and_goes_on_with_the_others(client: redis.Redis) -> None:
    client.delete(keys.CYCLES_ACTIVE)
    broken = create_cycle(client, "c-broken", "main")
    client.hset(broken.key, "exit_attempts", json.dumps("1"))  # written around the schema
    fine = create_cycle(client, "c-fine", "main")
    fine.set_stage(Stage.DONE)
    client.hset(fine.key, "next_deadline", json.dumps(1.0))  # overdue; resolving a finished cycle forgets it
    actions = sweep(client, CeleryScheduler(), force=True)
    assert [a["action"] for a in actions] == ["unreadable", "forgotten"], actions
    assert "'exit_attempts' holds str" in actions[0]["error"]
    assert client.smembers(keys.CYCLES_ACTIVE) == {"c-broken"}  # left for an operator, not dropped


def test_a_claim_is_taken_once_and_counters_count(client: redis.Redis) -> None:
    record = create_cycle(client, "c-claim", "main")
    assert record.claim("exit_attempt:0") and not record.claim("exit_attempt:0")
    assert isinstance(record.get("exit_attempt:0"), float)
    assert [record.increment("rebalances") for _ in range(2)] == [1, 2] and record.get("rebalances") == 2
    with pytest.raises(UndeclaredCycleField):
        record.claim("exit_attempt:first")
    with pytest.raises(CycleFieldTypeError, match="'group' must be a string"):
        record.claim("group")
    with pytest.raises(CycleFieldTypeError, match="'created_at' is not an integer counter"):
        record.increment("created_at")


def test_events_noted_at_once_by_parallel_workers_are_all_kept(redis_url: str) -> None:
    # Two Lighter snapshots noted their leverage updates in the same millisecond and one note was
    # lost: the append read the list, then wrote it back. 8 writers, 5 notes each, plus a stream of
    # other field writes from the cycle's own steps.
    create_cycle(redis.Redis.from_url(redis_url, decode_responses=True), "c-events", "main")
    start = threading.Barrier(9)

    def note(n: int) -> None:
        record = CycleRecord(redis.Redis.from_url(redis_url, decode_responses=True), "c-events")
        start.wait()
        for i in range(5):
            record.add_event(f"writer {n} note {i}")

    def other_writes() -> None:
        record = CycleRecord(redis.Redis.from_url(redis_url, decode_responses=True), "c-events")
        start.wait()
        for i in range(40):
            record.update(exit_attempts=i)

    threads = [threading.Thread(target=note, args=(n,)) for n in range(8)] + [threading.Thread(target=other_writes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    texts = {e["text"] for e in CycleRecord(redis.Redis.from_url(redis_url, decode_responses=True),
                                            "c-events").get("events")}
    assert texts == {f"writer {n} note {i}" for n in range(8) for i in range(5)}


def test_events_keep_the_newest_in_order_and_a_step_appends_in_its_own_transaction(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    create_cycle(client, "c-kept", "main")
    record = CycleRecord(client, "c-kept")
    for i in range(EVENTS_KEPT + 5):
        record.add_event(f"note {i}")
    pipe = client.pipeline(transaction=True)
    record.add_events(("step a", "step b"), at=1_000_000.5, via=pipe)
    assert [e["text"] for e in record.get("events")][-1] == f"note {EVENTS_KEPT + 4}"  # queued, not sent
    pipe.execute()
    events = record.get("events")
    assert len(events) == EVENTS_KEPT
    assert [e["text"] for e in events] == [f"note {i}" for i in range(7, EVENTS_KEPT + 5)] + ["step a", "step b"]
    assert events[-1]["t"] == 1_000_000.5 and isinstance(record.get("updated_at"), float)
