"""The cycle record stores JSON always and reads every field back as the type it was written."""

from __future__ import annotations

from decimal import Decimal

import redis

from xtb_tasks.core.cycle_record import CycleRecord, Stage, create_cycle


def test_text_that_looks_like_a_number_reads_back_as_text(redis_url: str) -> None:
    # A group named "123" used to come back as the int 123 and fail every cycle at planning.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    record = create_cycle(client, "c-123", "123", reason="42")
    assert record.get("group") == "123"
    assert record.all()["reason"] == "42"
    assert record.view("group").get("group") == "123"


def test_values_keep_their_types(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    record = CycleRecord(client, "c-types")
    record.update({"leg:bp_entry": {"filled": "1.5"}}, attempts=3, size=Decimal("1.50"), flag=True, note="true")
    record.set_stage(Stage.MONITORING)
    assert record.leg("bp_entry") == {"filled": "1.5"}
    assert (record.get("attempts"), record.get("flag"), record.get("note")) == (3, True, "true")
    assert record.get("size") == "1.50"  # Decimals travel as text, quantized as written
    assert record.stage is Stage.MONITORING and record.view().stage is Stage.MONITORING
