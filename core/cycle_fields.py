"""The cycle record's schema: every field a process may write to ``xtb:cycle:<id>``, with its value type.

The record is one Redis hash of JSON values, written by a dozen steps on four kinds of worker and
read by recovery, the exit's fill ledger and ``xtb cycle``. Without a schema a misspelt field, or a
``Decimal`` where text belongs, is written without a word and only fails (or silently reads as
missing) steps later in another process. ``core.cycle_record.CycleRecord`` checks every
write against this table and every value it reads back, so such a mistake fails at its writer.

Fields whose names are built (``leg:<leg>``, ``t:<stage>``, ...) are declared as families by the
prefix before the colon, with the suffixes they take. Value types are JSON-level: text, number
(an int is accepted and reads back as a float), integer, boolean, object, list, or one of an
enum's values. Nested content is not checked, except that a leg written must parse as a ``Leg``.

Pure: no Celery, no Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from core.config_schema import Direction
from core.errors import XtbError
from core.legs import parse_leg

# The stage, outcome and exit-reason enums live here, not in cycle_record.py, because the schema
# needs their values and cycle_record imports the schema; cycle_record re-exports them.


class Stage(str, Enum):
    """Cycle stages, in order; ``emergency_exit`` can follow any of them."""

    #: Validating, sizing, allocating client ids.
    PLANNING = "planning"
    #: Backpack market entry.
    BP_ENTRY = "bp_entry"
    #: Lighter1 opposite-side hedge and its confirmation.
    L1_HEDGE = "l1_hedge"
    #: The random wait before Lighter2 (a countdown on the Lighter2 entry).
    WAIT = "wait"
    #: Lighter2 same-side entry and its confirmation.
    L2_ENTRY = "l2_entry"
    #: Reading all three positions and driving Backpack to its own-delta target (-(l1 + l2) from flat).
    REBALANCE = "rebalance"
    #: Self-rescheduling checks until a leg is liquidated or the cycle times out.
    MONITORING = "monitoring"
    #: Flattening all three accounts.
    EMERGENCY_EXIT = "emergency_exit"
    #: Finished (see ``outcome`` and ``reason``).
    DONE = "done"


class Outcome(str, Enum):
    """How a finished cycle ended."""

    #: All three accounts confirmed flat after an emergency exit or cancel.
    FLAT = "flat"
    #: Hedged (net delta within one step) when the cycle stopped monitoring.
    HEDGED = "hedged"
    #: The exit could not confirm flat on every account: an operator must look (alerted).
    UNRESOLVED = "unresolved"


class ExitReason(str, Enum):
    """Why an emergency exit ran (the original's reasons plus the failure paths it ignored)."""

    BP_ENTRY_FAILED = "bp_entry_failed"
    LIGHTER1_HEDGE_FAILED = "lighter1_hedge_failed"
    LIGHTER2_ENTRY_FAILED = "lighter2_entry_failed"
    REBALANCE_FAILED = "rebalance_failed"
    LIGHTER1_ZERO = "lighter1_zero"
    LIGHTER2_ZERO = "lighter2_zero"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    RECOVERED_UNWIND = "recovered_unwind"


#: The exit reason of a step that failed in each stage (an exit after a failure names where it failed).
FINAL_REASON_BY_STAGE = {
    Stage.PLANNING: ExitReason.BP_ENTRY_FAILED,
    Stage.BP_ENTRY: ExitReason.BP_ENTRY_FAILED,
    Stage.L1_HEDGE: ExitReason.LIGHTER1_HEDGE_FAILED,
    Stage.WAIT: ExitReason.LIGHTER2_ENTRY_FAILED,
    Stage.L2_ENTRY: ExitReason.LIGHTER2_ENTRY_FAILED,
    Stage.REBALANCE: ExitReason.REBALANCE_FAILED,
    Stage.MONITORING: ExitReason.REBALANCE_FAILED,
}


#: ``reason`` of a cycle that finished before any order (``hedge_tasks.finish_not_started``).
NOT_STARTED = "not_started"


class CycleFieldError(XtbError, ValueError):
    """A cycle record field that the schema does not declare, or a value of the wrong type."""

    reason = "cycle_field"


class UndeclaredCycleField(CycleFieldError, KeyError):
    """A field name that is neither declared nor a declared family with an allowed suffix."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class CycleFieldTypeError(CycleFieldError, TypeError):
    """A value written, or found stored, that is not of its field's declared type."""


@dataclass(frozen=True, slots=True)
class Kind:
    """A JSON-level value type: the Python types that encode to it, and an optional closed set of texts."""

    #: For messages: "a string", "one of planning, bp_entry, ...".
    expected: str
    types: tuple[type, ...]
    #: The allowed texts of an enum-valued field; None for any value of ``types``.
    choices: frozenset[str] | None = None
    #: An int is a JSON number too; it is accepted and read back as a float.
    number: bool = False
    #: A check of the content, on writes only: a reader of such a field treats content that does not
    #: parse as unknown (a leg that does not parse is unknown to the fill ledger, never zero).
    content: Callable[[Any], bool] | None = None

    def accepts(self, value: Any) -> bool:
        return self.holds(value) and (self.content is None or self.content(value))

    def holds(self, value: Any) -> bool:
        """Whether a stored value is of this kind (the content check aside)."""
        # bool is an int in Python but not a number in JSON: refused where numbers are wanted.
        if not isinstance(value, self.types) or (value.__class__ is bool and bool not in self.types):
            return False
        return self.choices is None or value in self.choices


STR = Kind("a string", (str,))
FLOAT = Kind("a number", (float, int), number=True)
INT = Kind("an integer", (int,))
BOOL = Kind("true or false", (bool,))
OBJECT = Kind("a JSON object (dict)", (dict,))
LIST = Kind("a JSON list", (list,))
LEG = Kind("a leg record (core.legs.Leg.to_json())", (dict,), content=lambda v: parse_leg(v) is not None)


def one_of(values: Iterable[str] | type[Enum], *extra: str) -> Kind:
    """The kind of a field holding one of an enum's values (a str enum member is accepted too)."""
    texts = [str(m.value) for m in values] if isinstance(values, type) else list(values)
    texts += extra
    return Kind("one of " + ", ".join(repr(t) for t in texts), (str,), choices=frozenset(texts))


@dataclass(frozen=True, slots=True)
class Field:
    """One declared field: its value type and what it holds."""

    kind: Kind
    doc: str


@dataclass(frozen=True, slots=True)
class Family:
    """Fields named ``<prefix>:<suffix>``: a fixed set of suffixes and/or numbered ones (``stem<n>``)."""

    kind: Kind
    doc: str
    names: frozenset[str] = frozenset()
    #: Suffix stems followed by a decimal number: ``("bp_rebalance_",)``; ``("",)`` for a bare number.
    numbered: tuple[str, ...] = ()

    def allows(self, suffix: str) -> bool:
        if suffix in self.names:
            return True
        for stem in self.numbered:
            number = suffix[len(stem):]
            if suffix.startswith(stem) and number.isascii() and number.isdigit():
                return True
        return False

    def suffixes(self) -> str:
        """The allowed suffixes, for messages and docs."""
        return ", ".join([*sorted(self.names), *(f"{stem}<n>" for stem in self.numbered)])


#: The cycle's legs (``xtb_tasks/worker/canvas.py``): the entry chain's three and each rebalance order
#: (``bp_rebalance_<n>``, numbered by the record's ``rebalances`` counter in ``loop_tasks``) and each
#: exit order (``exit_<role>_<n>``, numbered by ``exit_orders`` in ``orchestrator.store``).
LEG_NAMES = frozenset({"bp_entry", "l1_hedge", "l1_topup", "bp_balance", "l2_entry"})
LEG_NUMBERED = ("bp_rebalance_", "exit_bp_", "exit_l1_", "exit_l2_")

STAGE = one_of(Stage)

FIELDS: dict[str, Field] = {
    # Written once by create_cycle (xtb.hedge.start_cycle).
    "cycle_id": Field(STR, "the cycle's id, as in its key"),
    "group": Field(STR, "the hedge group the cycle runs for"),
    "created_at": Field(FLOAT, "when the record was created (epoch seconds)"),
    "trigger_task": Field(STR, "the Celery task id of the start_cycle that created it ('' if none)"),
    "overrides": Field(OBJECT, "the parameter overrides the cycle was started with"),
    "cycle_index": Field(INT, "the cycle's position in a multi-cycle run (0 = first)"),
    "direction": Field(one_of(Direction), "which way Backpack enters (a config Direction)"),
    "params": Field(OBJECT, "the effective hedge parameters (HedgeParams.to_json)"),
    "config": Field(OBJECT, "the group as configured when the cycle started (GroupConfig): the cycle's accounts "
                            "and symbols, which a config edit does not change while it runs"),
    # Every write, and every stage change (set_stage, touch_deadline).
    "updated_at": Field(FLOAT, "when any field was last written (epoch seconds)"),
    "stage": Field(STAGE, "the stage the cycle is in"),
    "stage_started_at": Field(FLOAT, "when the current stage was entered"),
    "next_deadline": Field(FLOAT, "when the watchdog considers the next step overdue (0 = never)"),
    # Planning (xtb.hedge.plan).
    "plan_claimed_at": Field(FLOAT, "when a plan step claimed the cycle (HSETNX: a duplicate delivery stops)"),
    "plan": Field(OBJECT, "the cycle plan: sides, sizes, wait, baselines, start equity (CyclePlan.to_json)"),
    "client_ids": Field(OBJECT, "each entry leg's planned client order ids (leg -> list of ints)"),
    "bp_rules": Field(OBJECT, "Backpack's market rules at planning (symbol, tick, step, minimum)"),
    "l_step": Field(STR, "Lighter's size step at planning (decimal text)"),
    "l_rules": Field(OBJECT, "Lighter's market rules at planning (its minimum order size decides dust)"),
    # Rebalancing and monitoring.
    "positions": Field(OBJECT, "the latest reading of the three positions"),
    "net_delta": Field(STR, "the latest net of the cycle's own deltas (positions less the plan's "
                            "baselines) as decimal text ('' when unknown)"),
    "rebalances": Field(INT, "how many rebalance orders were placed (HINCRBY; numbers bp_rebalance_<n>)"),
    "monitoring_started_at": Field(FLOAT, "when monitoring began (the cycle timeout counts from it)"),
    "zero_streaks": Field(OBJECT, "consecutive fresh zero (or below-minimum) reads per Lighter role"),
    "net_exposure": Field(OBJECT, "worst |bp + l1 + l2| relative to the baselines seen by the rebalance and "
                                  "monitor reads, when, and seconds beyond one Backpack step (core.exposure)"),
    "unknown_reads": Field(INT, "consecutive monitor reads with a position unknown (alerted every unknown_reads_alert)"),
    "step_seq": Field(INT, "the control loop's fencing token: only a rebalance or monitor step issued under "
                           "this value may act; the step that acts moves it on (core.fencing)"),
    "events": Field(LIST, "the last 100 events ({'t': epoch seconds, 'text': ...})"),
    "error": Field(STR, "why the cycle failed or was not started"),
    # Emergency exit and the end.
    "reason": Field(one_of(ExitReason, NOT_STARTED, ""), "why the exit ran or the cycle ended ('' if none)"),
    "exit_attempts": Field(INT, "how many emergency exit attempts were launched"),
    "exit_orders": Field(INT, "how many exit orders were planned (HINCRBY; numbers exit_<role>_<n>)"),
    "exit_worst_net": Field(STR, "the largest |net| (bp + l1 + l2 less the baselines) a read of the exit saw"),
    "exit_worst_net_at": Field(FLOAT, "when the exit read exit_worst_net (epoch seconds)"),
    "exit_reported_at": Field(FLOAT, "when an exit report finished the cycle (HSETNX: later reports stop)"),
    "exit_unresolved_since": Field(FLOAT, "when the exit's quick attempts ran out without confirming flat: from "
                                          "then on it is unresolved (outcome 'unresolved', the group stopped) and "
                                          "goes on, slower, paging, until a read confirms flat"),
    "exit_paged_at": Field(FLOAT, "when the unresolved exit last paged that it is still not flat"),
    "exit_flat_doubted_since": Field(FLOAT, "when a flat read first disagreed with the cycle's own Backpack fills "
                                            "(0 once a read no longer does); held FLAT_READ_TRUSTED_SECS, the "
                                            "read is trusted"),
    "pnl": Field(OBJECT, "per-venue PnL after the exit (role -> decimal text or null)"),
    "dust": Field(OBJECT, "roles left after the exit with a position below the venue minimum (role -> decimal "
                          "text): flat as far as anything can be traded, and reported as dust"),
    "pnl_split_claimed_at": Field(FLOAT, "when a pnl_report step claimed the cycle (HSETNX: one split, one alert)"),
    "pnl_split": Field(OBJECT, "per-venue realised PnL from the venues' fill and funding records: role -> "
                               "{trading, fees, funding, net, fills, ...} (orchestrator.pnl_split)"),
    "outcome": Field(one_of(Outcome), "how the cycle ended"),
    "finished_at": Field(FLOAT, "when the cycle finished"),
}

FAMILIES: dict[str, Family] = {
    "t": Family(FLOAT, "when the cycle entered stage <suffix>", names=frozenset(s.value for s in Stage)),
    "leg": Family(LEG, "a leg's order: in flight, then the venue's answer (core.legs)",
                  names=LEG_NAMES, numbered=LEG_NUMBERED),
    "confirm": Family(OBJECT, "a leg's position confirmation (confirmed, position, delta, polls)",
                      names=LEG_NAMES, numbered=LEG_NUMBERED),
    "positions": Family(OBJECT, "the three positions read at start, each rebalance attempt, and the exit",
                        names=frozenset({"start", "exit"}), numbered=("rebalance_", "exit_")),
    "exit_attempt": Family(FLOAT, "when exit attempt <n> was claimed (HSETNX: once per attempt)", numbered=("",)),
    "entry_balance": Family(FLOAT, "when round <n> of the entry's balance was claimed (HSETNX: once per round)",
                            numbered=("",)),
    "exit_ids": Family(OBJECT, "exit attempt <n>'s client ids per role", numbered=("",)),
    "exit_results": Family(LIST, "exit attempt <n>'s per-role results", numbered=("",)),
    "exit_step": Family(OBJECT, "exit step <k> (attempt × 1000 + step): its read and its orders; written "
                                "once (HSETNX: a duplicate delivery stops)", numbered=("",)),
    "exit_match": Family(FLOAT, "when exit step <k>'s Backpack match was claimed (HSETNX)", numbered=("",)),
}

# Resolved names -> kinds: the exact fields up front, family members as they are first seen (their
# numbers stay small: attempts and rebalances per cycle), so a check is one dict lookup.
_KINDS: dict[str, Kind] = {name: f.kind for name, f in FIELDS.items()}
_CACHE_LIMIT = len(_KINDS) + 4096
_SCHEMA = "core/cycle_fields.py"


def kind_of(name: str) -> Kind:
    """The declared type of field ``name``; raises :class:`UndeclaredCycleField` when there is none."""
    kind = _KINDS.get(name)
    if kind is not None:
        return kind
    prefix, colon, suffix = name.partition(":")
    family = FAMILIES.get(prefix) if colon else None
    if family is None:
        raise UndeclaredCycleField(f"{name!r} is not a cycle record field (the fields are declared in {_SCHEMA})")
    if not family.allows(suffix):
        raise UndeclaredCycleField(f"{name!r} is not a cycle record field: '{prefix}:' takes {family.suffixes()} "
                                   f"(declared in {_SCHEMA})")
    if len(_KINDS) < _CACHE_LIMIT:
        _KINDS[name] = family.kind
    return family.kind


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def check(name: str, value: Any) -> None:
    """Refuse a write of ``value`` to field ``name`` unless the schema declares it with that type."""
    kind = _KINDS.get(name) or kind_of(name)
    if not kind.accepts(value):
        raise CycleFieldTypeError(f"cycle record field {name!r} must be {kind.expected}, not {_shown(value)}")


def check_fields(fields: Mapping[str, Any]) -> None:
    """:func:`check` for each field of one write (nothing is written when any is refused)."""
    for name, value in fields.items():
        kind = _KINDS.get(name) or kind_of(name)
        if not kind.accepts(value):
            raise CycleFieldTypeError(f"cycle record field {name!r} must be {kind.expected}, not {_shown(value)}")


def checked(name: str, value: Any, kind: Kind, where: str) -> Any:
    """A value read back from field ``name`` (of ``where``, for the message), as its declared type.

    A stored value of another type is an error, not passed through: something wrote around the
    schema, and its reader would otherwise fail later and further from the cause.
    """
    if not kind.holds(value):
        raise CycleFieldTypeError(f"{where} field {name!r} holds {_shown(value)}; expected {kind.expected}")
    return float(value) if kind.number and value.__class__ is int else value
