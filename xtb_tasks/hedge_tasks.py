"""Hedge-cycle tasks on the orchestrator queue (filled in by the orchestrator work)."""
