"""The application's one error base: every failure we raise on purpose is an ``XtbError``.

Errors carry a reason code and an exit status as class attributes (NautilusTrader's "errors with
reason codes"), so a caller branches on the type, logs and alerts name the ``reason``, and the CLI
turns any of them into one line and the right exit status in one place (``xtb_tasks.cli.describe``)
instead of catching each type where it is raised.

``venues.VenueError`` sits below this layer (venues never import ``xtb_tasks``) and keeps its own
``ReasonCode``; the CLI maps it next to these.
"""

from __future__ import annotations

from typing import ClassVar

# Exit statuses of the ``xtb`` command line: 2 for what the user typed or configured (argparse's
# and click's convention for usage errors), 1 for everything that went wrong while running.
EXIT_FAILURE = 1
EXIT_USAGE = 2


class XtbError(Exception):
    """Base of the application's errors.

    Class attributes, overridden by each subclass:
      reason    -- short stable code naming the kind of failure (``"error"``), for logs and alerts.
      exit_code -- status ``xtb`` exits with when this error ends a command (``EXIT_FAILURE``).
      label     -- prefix of the CLI's one-line message, ``"<label>: <message>"`` (none).
    """

    reason: ClassVar[str] = "error"
    exit_code: int = EXIT_FAILURE  # an instance may narrow it (UserError)
    label: ClassVar[str] = ""


class UsageError(XtbError):
    """The user asked for something invalid (a bad option value, an unknown cycle)."""

    reason = "usage"
    exit_code = EXIT_USAGE
