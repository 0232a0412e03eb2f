"""``python -m bench.wakeup_probe {wait|push} REDIS_URL KEY``: a Redis push waking a blocked process.

``push`` pushes ``time.time()`` to KEY every 10 ms until it pops ``stop`` from ``KEY:stop``; ``wait``
blocks on KEY and notes how much later it woke with each item, then prints the samples (ms, one
JSON list) when it pops ``stop``. Two processes that do nothing else: the hand-off without any of
our code and without the venue request, at whatever load the bench is running.
:class:`bench.measure.WakeupProbe` drives them.
"""

from __future__ import annotations

import json
import sys
import time

import redis

PUSH_EVERY_SECS = 0.01


def wait(client: redis.Redis, key: str) -> None:
    samples: list[float] = []
    while True:
        item = client.blpop([key], timeout=1)
        if item is None:
            continue
        woke = time.time()
        if item[1] == b"stop":
            break
        samples.append(round((woke - float(item[1])) * 1000, 3))
    print(json.dumps(samples), flush=True)


def push(client: redis.Redis, key: str) -> None:
    while client.blpop([f"{key}:stop"], timeout=PUSH_EVERY_SECS) is None:
        client.rpush(key, repr(time.time()))
    client.rpush(key, "stop")


if __name__ == "__main__":
    mode, url, key = sys.argv[1:4]
    {"wait": wait, "push": push}[mode](redis.Redis.from_url(url), key)
