"""The cycle record's schema: declared fields take their type and nothing else; anything undeclared is refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from core.cycle_fields import (
    BOOL,
    FAMILIES,
    FIELDS,
    FLOAT,
    INT,
    LEG,
    LIST,
    OBJECT,
    STR,
    CycleFieldError,
    CycleFieldTypeError,
    ExitReason,
    Kind,
    Stage,
    UndeclaredCycleField,
    check,
    check_fields,
    checked,
    kind_of,
)
from core.errors import XtbError
from core.legs import Leg
from orchestrator.cycle.state import LegName
from venues.base import Side

A_LEG = Leg.in_flight("lighter1", "ETH", Side.SELL, 9, Decimal("0.5")).to_json()


def good(kind: Kind) -> Any:
    """A value of ``kind``."""
    if kind.choices is not None:
        return sorted(kind.choices)[-1]
    return {STR: "text", FLOAT: 1.5, INT: 3, BOOL: True, OBJECT: {"a": 1}, LIST: [1], LEG: A_LEG}[kind]


def bad(kind: Kind) -> list[Any]:
    """Values that are not of ``kind`` (a JSON-level type that is close, where there is one)."""
    if kind.choices is not None:
        return ["not-a-choice", 1, None]
    return {STR: [1, Decimal("1.5"), None, {"a": 1}], FLOAT: ["1.5", True, None, Decimal("1.5")],
            INT: [1.5, "3", True, None], BOOL: [1, "true", None], OBJECT: [[1], "{}", None],
            LEG: [[1], None, {"a": 1}, {**A_LEG, "state": "sending"}, {k: v for k, v in A_LEG.items() if k != "side"}],
            LIST: [{"a": 1}, (1,), "[]", None]}[kind]


DECLARED = [(name, f.kind) for name, f in FIELDS.items()]


def family_members() -> list[tuple[str, Kind]]:
    members = []
    for prefix, family in FAMILIES.items():
        members += [(f"{prefix}:{suffix}", family.kind) for suffix in sorted(family.names)]
        members += [(f"{prefix}:{stem}{n}", family.kind) for stem in family.numbered for n in (0, 7, 12)]
    return members


@pytest.mark.parametrize(("name", "kind"), DECLARED + family_members())
def test_a_declared_field_takes_its_type(name: str, kind: Kind) -> None:
    check(name, good(kind))
    assert kind_of(name) is kind


@pytest.mark.parametrize(("name", "kind"), DECLARED + family_members())
def test_a_declared_field_refuses_another_type(name: str, kind: Kind) -> None:
    for value in bad(kind):
        with pytest.raises(CycleFieldTypeError) as caught:
            check(name, value)
        message = str(caught.value)
        assert repr(name) in message and kind.expected in message, message


def test_every_field_says_what_it_holds() -> None:
    for name, f in [*FIELDS.items(), *FAMILIES.items()]:
        assert f.doc.strip() and "\n" not in f.doc, name


def test_numbers_take_ints_and_read_back_as_floats() -> None:
    check("next_deadline", 0)  # set_stage writes ``deadline or 0``
    value = checked("next_deadline", 0, FLOAT, "xtb:cycle:c-1")
    assert value == 0.0 and type(value) is float
    assert type(checked("exit_attempts", 2, INT, "xtb:cycle:c-1")) is int


def test_enum_fields_take_members_and_values() -> None:
    check("stage", Stage.DONE)
    check("stage", "done")
    check("reason", ExitReason.TIMEOUT.value)
    check("reason", "")  # finish(outcome, None)
    check("reason", "not_started")
    with pytest.raises(CycleFieldTypeError, match="'reason' must be one of"):
        check("reason", "because")


@pytest.mark.parametrize("name", ["bogus", "Stage", "stage ", "leg", "t", "positions:", "updated"])
def test_an_unknown_field_is_refused_by_name(name: str) -> None:
    with pytest.raises(UndeclaredCycleField) as caught:
        check(name, "x")
    assert repr(name) in str(caught.value) and "cycle_fields.py" in str(caught.value)
    assert isinstance(caught.value, CycleFieldError) and isinstance(caught.value, XtbError)


@pytest.mark.parametrize("name", ["leg:bogus", "leg:bp_rebalance_", "leg:bp_rebalance_1a", "leg:bp_rebalance_²",
                                  "leg:flatten", "t:nope", "t:", "confirm:bp_rebalance", "positions:rebalance",
                                  "positions:end", "exit_ids:x", "exit_ids:-1", "exit_results:", "exit_attempt:1.5",
                                  "unknown:family"])
def test_a_family_refuses_a_suffix_it_does_not_take(name: str) -> None:
    with pytest.raises(UndeclaredCycleField) as caught:
        check(name, {})
    message = str(caught.value)
    assert repr(name) in message
    prefix = name.partition(":")[0]
    if prefix in FAMILIES:
        assert FAMILIES[prefix].suffixes() in message, message


def test_stage_times_take_every_stage_and_only_stages() -> None:
    assert FAMILIES["t"].names == {s.value for s in Stage}


def test_one_refused_field_fails_the_whole_write() -> None:
    with pytest.raises(UndeclaredCycleField, match="'bogus'"):
        check_fields({"stage": "done", "bogus": 1, "updated_at": 1.0})
    with pytest.raises(CycleFieldTypeError, match="'exit_attempts' must be an integer, not str '1'"):
        check_fields({"stage": "done", "exit_attempts": "1"})


def test_a_stored_value_of_the_wrong_type_is_an_error_on_read() -> None:
    with pytest.raises(CycleFieldTypeError, match=r"xtb:cycle:c-1 field 'plan' holds list \[\]; expected a JSON object"):
        checked("plan", [], OBJECT, "xtb:cycle:c-1")


def test_the_entry_legs_are_declared() -> None:
    # The entry's legs are the members of LegName; a new leg must be declared before a cycle can record it.
    for leg in LegName:
        check(f"leg:{leg.value}", A_LEG)
        check(f"confirm:{leg.value}", {})
