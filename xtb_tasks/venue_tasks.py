"""Per-account venue tasks (filled in by the connector work)."""
