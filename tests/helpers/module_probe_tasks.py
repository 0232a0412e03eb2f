"""A task reporting what the pool child has imported and mapped, loaded into test workers via XTB_TASK_MODULES.

It runs in the same pool child as the account's venue tasks (``-c 1``), so it sees exactly what
serving real orders made that process load.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from xtb_tasks import app

#: Packages a Lighter worker must not import (lighter-sdk's Python side and what it drags in).
HEAVY = ("lighter", "eth_account")


@app.task(name="xtb.test.loaded_modules")
def loaded_modules() -> dict[str, Any]:
    from venues.lighter import native

    heavy = sorted(m for m in sys.modules if any(m == p or m.startswith(f"{p}.") for p in HEAVY))
    maps_file = Path(f"/proc/{os.getpid()}/maps")
    maps = maps_file.read_text() if maps_file.exists() else ""
    return {
        "pid": os.getpid(),
        "heavy_modules": heavy[:20],
        "signer_loaded": native.loaded(),
        "signer_mapped": os.path.basename(native.library_path()) in maps,
    }
