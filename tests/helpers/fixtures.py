"""The captured venue responses in ``tests/fixtures`` (provenance in its README), read from one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.support import ROOT

#: Inside the repository, so a clone with nothing beside it runs every parser test.
FIXTURES_DIR = ROOT / "tests" / "fixtures"


def fixture_path(name: str) -> Path:
    """The path of ``name`` (``backpack.json``, ``lighter.json``); a missing file fails the test, saying which."""
    path = FIXTURES_DIR / name
    if not path.is_file():
        pytest.fail(f"captured venue fixture {name} is missing from {FIXTURES_DIR} (it is part of the repository: "
                    f"restore it with git checkout -- tests/fixtures/{name})", pytrace=False)
    return path
