"""``python -m bench.wakeup_probe {wait|push} REDIS_URL KEY [VENUE_URL]``: a bare hand-off.

``push`` pushes ``time.time()`` to KEY every 10 ms until it pops ``stop`` from ``KEY:stop``; ``wait``
blocks on KEY and notes how much later it woke with each item and, given VENUE_URL, how much later
a GET of it (one kept-alive HTTP request to the simulator) had its answer; it prints both sample
lists (ms, JSON) when it pops ``stop``. Two processes that do nothing else: the hand-off without any
of our code, at whatever load the bench is running. :class:`bench.measure.WakeupProbe` drives them.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from urllib.parse import urlsplit

import redis

PUSH_EVERY_SECS = 0.01


def wait(client: redis.Redis, key: str, venue_url: str | None = None) -> None:
    woke_ms: list[float] = []
    answered_ms: list[float] = []
    venue = urlsplit(venue_url) if venue_url else None
    conn = http.client.HTTPConnection(venue.netloc, timeout=10) if venue else None
    while True:
        item = client.blpop([key], timeout=1)
        if item is None:
            continue
        woke = time.time()
        if item[1] == b"stop":
            break
        pushed = float(item[1])
        woke_ms.append(round((woke - pushed) * 1000, 3))
        if conn is not None and venue is not None:
            conn.request("GET", f"{venue.path}?{venue.query}")
            conn.getresponse().read()
            answered_ms.append(round((time.time() - pushed) * 1000, 3))
    print(json.dumps({"wake": woke_ms, "wake_and_request": answered_ms}), flush=True)


def push(client: redis.Redis, key: str) -> None:
    while client.blpop([f"{key}:stop"], timeout=PUSH_EVERY_SECS) is None:
        client.rpush(key, repr(time.time()))
    client.rpush(key, "stop")


if __name__ == "__main__":
    mode, url, key = sys.argv[1:4]
    client = redis.Redis.from_url(url)
    if mode == "wait":
        wait(client, key, sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        push(client, key)
