"""The retry and backoff policies, the orchestrator queue and the worker command line, named once.

Every component that retries, waits or starts a worker reads them here, so a change of policy is
one edit and a test can name what it relies on. The hedge's own per-group retry settings
(``backpack_retry_delay_secs`` and friends) stay in the config: they are the user's to tune.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.cycle_fields import Stage

#: The orchestrator worker's queue; account queues are the account names, so a config may not use it.
ORCHESTRATOR_QUEUE = "orchestrator"

#: How long a cycle step may make no progress before the watchdog resolves the cycle from venue
#: truth, unless the config's ``[watchdog] step_grace_secs`` says otherwise.
DEFAULT_STEP_GRACE_SECS = 30.0
#: The step grace of a cycle in its emergency exit (the deployment's when that is shorter). An exit
#: step is short: a read chord, or a few reduce-only orders, each writing its intent before its send
#: and its outcome after; while the venues answer, its writes are seconds apart. 10 s is a venue
#: request's timeout (Backpack's order timeout, Lighter's requests): an exit quiet for longer lost a
#: task, or waits on a request the venue did not answer. Only the watchdog moves a lost exit step,
#: this grace and a sweep later, while the cycle's exposure is open. Retrying an exit that was only
#: slow is safe: the old attempt's orders not yet sent are refused by their fence (``exit_attempt``),
#: an order already sent is looked up, never sent again (its intent), and the new attempt's reads
#: take an account with an order of unknown outcome as unknown until it settles
#: (``ORDER_SETTLE_SECS``), so no order is doubled.
EXIT_STEP_GRACE_SECS = 10.0


def watchdog_grace(stage: str | None, step_grace: float) -> float:
    """How long a cycle in ``stage`` may go without a write to its record past its deadline before
    the watchdog resolves it: ``step_grace`` (the deployment's, ``[watchdog] step_grace_secs``),
    and in the emergency exit :data:`EXIT_STEP_GRACE_SECS` when that is shorter. The store adds it to
    the deadline it writes and the watchdog's overdue test reads it, for the same stage."""
    return min(EXIT_STEP_GRACE_SECS, step_grace) if stage == Stage.EMERGENCY_EXIT else step_grace


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try again, and how long to wait before each new try.

    Fields:
      attempts       -- tries in all, the first one included; ``None`` for no limit (required).
      delay_secs     -- wait before the second try (required).
      backoff        -- factor applied to the wait after each further try; 1.0 keeps it fixed (1.0).
      max_delay_secs -- ceiling of any wait (60.0).
      jitter         -- the wait is stretched by up to this fraction at random, so several
                        processes retrying the same thing do not do it in lockstep (0.0).
    """

    attempts: int | None
    delay_secs: float
    backoff: float = 1.0
    max_delay_secs: float = 60.0
    jitter: float = 0.0

    def delay(self, attempt: int) -> float:
        """The wait after try number ``attempt`` (1 is the first try) before the next one."""
        base = self.delay_secs * self.backoff ** min(max(attempt - 1, 0), 60)
        return min(self.max_delay_secs, base) * (1 + self.jitter * random.random())

    def exhausted(self, attempt: int) -> bool:
        """Whether try number ``attempt`` was the last one allowed."""
        return self.attempts is not None and attempt >= self.attempts

    @property
    def retries(self) -> int | None:
        """Celery's ``max_retries``: the tries after the first."""
        return None if self.attempts is None else self.attempts - 1


#: A venue task whose account lease is busy gives its worker slot back and comes again soon.
#: 0.25-0.5 s between tries, up to 1000 of them (well beyond any lease's 75 s TTL).
LEASE_BUSY = RetryPolicy(attempts=1001, delay_secs=0.25, jitter=1.0)

#: An emergency exit that could not confirm every account flat runs once more, 2 s later; after that
#: it is ``unresolved`` (the group stopped, an operator paged) and goes on, never ending while the
#: cycle's own exposure remains: an attempt every ``UNRESOLVED_RETRY_SECS``, a page every
#: ``UNRESOLVED_PAGE_SECS``, until a read confirms flat. The slower pace leaves the venues' rate
#: budgets to the operator's reads and flatten (an attempt spends about ten Lighter requests).
EMERGENCY_EXIT = RetryPolicy(attempts=2, delay_secs=2.0)
UNRESOLVED_RETRY_SECS = 30.0
UNRESOLVED_PAGE_SECS = 300.0

#: An order the venue has no record of this long after its intent was last written is taken as never
#: placed: twice the venues' request timeout (10 s), and past Backpack's default signature window
#: (5 s), after which the venue refuses the request. Until then its outcome is unknown and nothing is
#: sent in its place. Short enough that an exit still in its first attempt (``exit_max_steps`` reads
#: at least ``lighter_retry_delay_secs`` apart) gets past it.
ORDER_SETTLE_SECS = 20.0


def never_placed(intent_age_secs: float) -> bool:
    """Whether an order the venue has no record of ``intent_age_secs`` after its intent was last
    written is taken as never placed (and another may be sent in its place). Before
    ``ORDER_SETTLE_SECS`` a request the venue holds can still fill: its outcome is unknown, not "not sent"."""
    return intent_age_secs >= ORDER_SETTLE_SECS


#: A flat Backpack read the cycle's own fills contradict is read again until the disagreement has
#: held this long, then trusted: a stale read heals within a read or two, while one that holds is a
#: fill the cycle did not send (an operator's ``xtb flatten``, a liquidation), which only the read
#: shows. Less than ``UNRESOLVED_RETRY_SECS``, so an unresolved exit trusts it on its next attempt.
FLAT_READ_TRUSTED_SECS = 20.0
#: How soon a submit whose earlier send has an unknown outcome looks the order up again.
UNKNOWN_OUTCOME_RECHECK_SECS = 2.0

#: The alert relay retries a Telegram send that failed transiently: 0.5 s, doubling, at most 30 s.
ALERT_DELIVERY = RetryPolicy(attempts=None, delay_secs=0.5, backoff=2.0, max_delay_secs=30.0, jitter=0.1)

#: The orchestrator worker's recovery sweep: first 1 s after it is ready, then every 5 s.
WATCHDOG_FIRST_SECS = 1.0
WATCHDOG_INTERVAL_SECS = 5.0


def worker_argv(queues: str | list[str], *, name: str | None = None, concurrency: int = 1,
                loglevel: str = "INFO") -> list[str]:
    """The arguments after ``celery`` that start a worker; the one command line of every worker.

    ``xtb workers``, the tests and the bench call it; ``deploy/`` spells it out and
    ``tests/system/test_deploy.py`` checks that it matches. ``name`` defaults to the first queue;
    Celery expands ``%h`` to the host name. Prefork with ``-c 1`` and prefetch 1 keeps one task at a
    time per account and never a task reserved by a worker that may die. No ``-E``: task events
    cost ~100 Redis commands per cycle, Flower switches them on while it watches.
    """
    queue_list = [queues] if isinstance(queues, str) else list(queues)
    return ["-A", "xtb_tasks", "worker", "-Q", ",".join(queue_list), "-c", str(concurrency), "-P", "prefork",
            "--prefetch-multiplier", "1", "-n", f"{name or queue_list[0]}@%h", "--loglevel", loglevel]
