"""The second half of the fault schedules' seeds (a file of its own: another pytest-xdist worker)."""

from __future__ import annotations

from tests.simulation.run import run_seeds

SEEDS = range(3000, 6000)


def test_every_seed_keeps_every_invariant() -> None:
    summary = run_seeds(SEEDS)
    assert sum(summary.outcomes.values()) == len(SEEDS)
