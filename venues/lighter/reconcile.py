"""How long a pushed Lighter position may answer without a REST read to check it: the default the
config (``reconcile_secs``) and the connector share, kept apart from the stream code so that the
config schema, which the pure cycle core reads, does not import the WebSocket client.

A lost push (the socket up, the update never sent) is seen by that read: a liquidation shows within
this many seconds even when its push is lost. One account read per 10 s is 6 of a Standard
account's 60 a minute.
"""

DEFAULT_RECONCILE_SECS = 10.0
