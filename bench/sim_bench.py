"""Round-trip latency of the simulators on loopback: ``python -m bench.sim_bench [--n 500]``.

Starts ``xtb sim`` (fixed prices, latency 0) in its own process, as it runs in the demo and the
tests that use it as a subprocess, so the client does not share the server's GIL. ``--in-process``
runs :class:`SimulatorServer` in this process instead (what in-process pytest fixtures see).

Measured, per request, with a ``requests.Session`` (signing happens before the clock starts):

* a Backpack market order signed with ED25519 (``POST /api/v1/order``), alternating Bid/Ask;
* a Lighter ``sendTx`` of a market CreateOrder signed by lighter-sdk's ``SignerClient`` with an
  explicit nonce (no network I/O in the signer), alternating sides.

Prints one line per venue with p50/p99/mean in ms; exits 1 if the Backpack p50 exceeds the 2 ms
budget (``--budget-ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from nacl.signing import SigningKey

BACKPACK_BUDGET_MS = 2.0
LIGHTER_ACCOUNT = 281_474_976_000
LIGHTER_KEY_INDEX = 4  # 0-3 are reserved for the venue's own apps
ETH_MARKET = 0  # lighter: ETH, size_decimals 4, price_decimals 2


@contextmanager
def simulator(in_process: bool) -> Iterator[dict[str, str]]:
    if in_process:
        from simulators.server import SimulatorServer

        with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None) as sim:
            yield sim.urls
        return
    code = "from simulators.cli import sim; sim(prog_name='xtb sim')"
    proc = subprocess.Popen([sys.executable, "-c", code, "--backpack-port", "0", "--lighter-port", "0",
                             "--telegram-port", "0", "--fixed-prices"], stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout is None:  # stdout=PIPE always gives one
            raise RuntimeError("simulator started without a stdout pipe")
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(15)


def timed(n: int, warmup: int, prepare: Callable[[int], Callable[[], requests.Response]],
          ok: Callable[[Any], bool]) -> list[float]:
    """Milliseconds per request; ``prepare(i)`` signs request i and returns the call to time."""
    samples = []
    for i in range(warmup + n):
        call = prepare(i)
        start = time.perf_counter()
        response = call()
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200 or not ok(response.json()):
            raise SystemExit(f"request {i} failed: {response.status_code} {response.text[:200]}")
        if i >= warmup:
            samples.append(elapsed)
    return samples


def backpack_prepare(base: str) -> Callable[[int], Callable[[], requests.Response]]:
    sk = SigningKey.generate()
    key = base64.b64encode(bytes(sk.verify_key)).decode()
    http = requests.Session()

    def prepare(i: int) -> Callable[[], requests.Response]:
        body = {"symbol": "ETH_USDC_PERP", "side": "Bid" if i % 2 == 0 else "Ask", "orderType": "Market",
                "quantity": "0.01", "clientId": i + 1}
        ts = int(time.time() * 1000)
        params = "&".join(f"{k}={v}" for k, v in sorted(body.items()))
        message = f"instruction=orderExecute&{params}&timestamp={ts}&window=5000"
        headers = {"X-API-Key": key, "X-Signature": base64.b64encode(sk.sign(message.encode()).signature).decode(),
                   "X-Timestamp": str(ts), "X-Window": "5000", "Content-Type": "application/json; charset=utf-8"}
        data = json.dumps(body)
        return lambda: http.post(base + "/api/v1/order", data=data, headers=headers, timeout=5)

    return prepare


async def lighter_samples(base: str, n: int, warmup: int) -> list[float]:
    import lighter  # the Go signer loads here; SignerClient needs a running loop

    private_key, _public_key, err = lighter.create_api_key()
    if err:
        raise SystemExit(f"create_api_key failed: {err}")
    signer = lighter.SignerClient(url=base, account_index=LIGHTER_ACCOUNT,
                                  api_private_keys={LIGHTER_KEY_INDEX: private_key})
    http = requests.Session()

    def prepare(i: int) -> Callable[[], requests.Response]:
        is_ask = i % 2 == 1
        tx_type, tx_info, _hash, error = signer.sign_create_order(
            ETH_MARKET, i + 1, 100, 290000 if is_ask else 310000, int(is_ask), signer.ORDER_TYPE_MARKET,
            signer.ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL, order_expiry=0, nonce=i,
            api_key_index=LIGHTER_KEY_INDEX)
        if error:
            raise SystemExit(f"sign_create_order failed: {error}")
        form = {"tx_type": str(tx_type), "tx_info": tx_info}
        return lambda: http.post(base + "/api/v1/sendTx", data=form, timeout=5)

    try:
        return timed(n, warmup, prepare, lambda body: body.get("code") == 200)
    finally:
        await signer.close()


def report(name: str, samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"{name:<34} n={len(ordered):<5} p50={p50:.3f} ms  p99={p99:.3f} ms  mean={statistics.fmean(ordered):.3f} ms")
    return {"p50": p50, "p99": p99}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="measured requests per venue")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--in-process", action="store_true", help="run the simulator in this process")
    parser.add_argument("--no-lighter", action="store_true", help="skip the Lighter sendTx measurement")
    parser.add_argument("--budget-ms", type=float, default=BACKPACK_BUDGET_MS)
    args = parser.parse_args(argv)
    with simulator(args.in_process) as urls:
        samples = timed(args.n, args.warmup, backpack_prepare(urls["backpack"]),
                        lambda body: body.get("status") == "Filled")
        backpack = report("backpack signed market order", samples)
        if not args.no_lighter:
            report("lighter sendTx (market, IOC)", asyncio.run(lighter_samples(urls["lighter"], args.n, args.warmup)))
    if backpack["p50"] > args.budget_ms:
        print(f"backpack p50 {backpack['p50']:.3f} ms exceeds the {args.budget_ms} ms budget")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
