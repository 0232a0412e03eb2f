"""The captured venue responses in ``shared/fixtures`` (beside the project), read from one place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.support import ROOT

#: ``$XTB_FIXTURES_DIR`` wins; else ``shared/fixtures`` next to the checkout (as CI lays it out).
FIXTURES_DIR = Path(os.environ.get("XTB_FIXTURES_DIR", ROOT.parent / "shared" / "fixtures"))


def fixture_path(name: str) -> Path:
    """The path of ``name`` (``backpack.json``, ``lighter.json``); skips the test, saying why, when absent."""
    path = FIXTURES_DIR / name
    if not path.exists():
        pytest.skip(f"captured venue fixtures not found at {path} (set XTB_FIXTURES_DIR to the shared/fixtures folder)")
    return path
