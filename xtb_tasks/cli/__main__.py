from __future__ import annotations

from xtb_tasks.cli import main

main()
