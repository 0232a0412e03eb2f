"""What a failed hedge step was, in words an operator can act on, and whether anything was sent.

A chord whose header task fails hands its errback the id of the chord's body, whose stored result
is a ``ChordError("Dependency <id> raised ...")``: its name is the body's (often not stored) and its
text names no account. The alert must say which read failed on which account,
so the failure is traced back to the dependency that raised, and told by its task name, its
``account`` argument and the venue's own message.

Pure: no Celery, no Redis (the caller looks the task results up).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: ``celery.exceptions.ChordError``'s text when a header task raised (Celery 5: "Dependency <id> raised <repr>").
_DEPENDENCY = re.compile(r"Dependency (?P<id>[0-9A-Za-z-]+) raised")
_TASK_PREFIXES = ("xtb.venue.", "xtb.hedge.")
MAX_TEXT = 400


def chord_dependency(error: BaseException | str | None) -> str | None:
    """The id of the header task that made a chord fail, from its ``ChordError`` (None otherwise)."""
    if error is None:
        return None
    match = _DEPENDENCY.search(str(error))
    return match.group("id") if match else None


def exception_text(error: BaseException | str | None) -> str:
    """The exception's own message. Results read back from the backend may come as Celery's
    ``UnpickleableExceptionWrapper`` whose ``str`` is the repr; its first argument is the message."""
    if error is None:
        return "unknown error"
    if isinstance(error, str):
        return error
    wrapped_args = getattr(error, "exc_args", None)
    if isinstance(wrapped_args, list | tuple) and wrapped_args and isinstance(wrapped_args[0], str):
        return wrapped_args[0]
    text = str(error)
    return text or type(error).__name__


def describe_step_failure(task_name: str | None, kwargs: Mapping[str, Any] | None,
                          error: BaseException | str | None) -> str:
    """``"account_snapshot on backpack: unavailable: GET ... -> HTTP 500 ..."``: which step, on which
    account, and what the venue (or the step) said; ``"step"`` when the task name is unknown."""
    name = task_name or "step"
    for prefix in _TASK_PREFIXES:
        name = name.removeprefix(prefix)
    account = (kwargs or {}).get("account")
    where = f"{name} on {account}" if account else name
    return f"{where}: {exception_text(error)}"[:MAX_TEXT]


def before_any_order(data: Mapping[str, Any]) -> bool:
    """True while the cycle record shows that no order can have been sent.

    ``plan`` writes the plan, the client ids and their intents in one transaction before it
    publishes the entry chain, and no venue order is sent without a recorded intent: a record
    with no ``plan`` (and so no leg and no exit attempt) has sent nothing.
    """
    if "plan" in data or "exit_attempts" in data:
        return False
    return not any(key.startswith(("leg:", "exit_attempt:")) for key in data)
