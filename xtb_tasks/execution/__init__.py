"""The order execution the venue workers run: sends, confirmations, the armed hedge, hand-off, diagnostics."""
