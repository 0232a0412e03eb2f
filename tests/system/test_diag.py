"""``xtb diag min-order`` and ``xtb diag smoke`` as subprocesses against the simulators over real HTTP.

Each test uses fresh Lighter account indexes and fresh Backpack keys, so positions and the audit
log of one test are not disturbed by another.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from core import keys
from simulators.market import AuditEntry, Fault, FaultKind
from simulators.server import SimulatorServer
from tests.helpers.support import write_config

ROOT = Path(__file__).resolve().parents[2]
_indexes = itertools.count(9101, 2)
SMOKE_STEPS = ["market", "baseline", "open", "position_moved", "close", "no_open_orders", "back_to_baseline",
               "final_flatten"]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, sim: SimulatorServer, redis_url: str) -> dict[str, Any]:
    first = next(_indexes)
    config = write_config(tmp_path / "xtb.toml", sim.urls, lighter_indexes=(first, first + 1))
    return {"config": config, "redis_url": redis_url, "l1": str(first), "l2": str(first + 1), "cwd": tmp_path}


def xtb(env: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    proc_env = {**os.environ, "REDIS_URL": env["redis_url"], "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost",
                "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run([sys.executable, "-c", "from xtb_tasks.cli import main; main()", "--config",
                           str(env["config"]), "diag", *args], cwd=env["cwd"], env=proc_env, capture_output=True,
                          text=True, timeout=120)


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def audit(sim: SimulatorServer, venue: str, account: str | None = None) -> list[AuditEntry]:
    with sim.exchange.lock:
        entries = list(sim.exchange.audit)
    return [e for e in entries if e.venue == venue and (account is None or e.account == account)]


def position(sim: SimulatorServer, venue: str, account: str, base: str = "ETH") -> Decimal:
    with sim.exchange.lock:
        return sim.exchange.account(venue, account).position(base).quantity


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in last, last
    return last


def test_min_order_default_targets_then_reduce_only_with_signed_baselines(env: dict[str, Any], sim: SimulatorServer,
                                                                         redis_url: str) -> None:
    proc = xtb(env, "min-order")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second, verdict = lines(proc)
    assert (first["target"], first["direction"], second["target"], second["direction"]) == \
        ("lighter1", "buy", "lighter2", "sell")
    assert verdict == {"ok": True, "targets": 2, "failure_reason": None}
    size = Decimal(first["size"])
    assert size > 0 and second["size"] == first["size"]
    for result, sign in ((first, 1), (second, -1)):
        assert result["ok"] and result["reduce_only"] is False and result["baseline"] == "0"
        assert (Decimal(result["filled"]), result["fill_source"]) == (size, "venue")
        assert Decimal(result["position"]) == sign * size
        (attempt,) = result["attempts"]
        assert attempt["api_key_index"] in (4, 5) and attempt["nonce_after"].startswith("next=")
        assert attempt["report"]["state"] == "filled" and attempt["error"] is None
    entries = audit(sim, "lighter", env["l1"]) + audit(sim, "lighter", env["l2"])
    assert [(e.account, e.side, Decimal(e.quantity), e.reduce_only) for e in entries] == \
        [(env["l1"], "buy", size, False), (env["l2"], "sell", size, False)]
    client_ids = [first["attempts"][0]["client_id"], second["attempts"][0]["client_id"]]
    assert [e.client_id for e in entries] == client_ids
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget(keys.intent("lighter1", client_ids[0]), "status") == "done"

    # Closing with reduce-only targets: the baselines are signed (+size, -size), the fills bring both to zero.
    proc = xtb(env, "min-order", "--target", "lighter1:sell:reduce_only", "--target", "lighter2:buy:reduce_only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    close1, close2, verdict = lines(proc)
    assert verdict["ok"] is True
    assert (Decimal(close1["baseline"]), Decimal(close2["baseline"])) == (size, -size)
    assert Decimal(close1["position"]) == 0 and Decimal(close2["position"]) == 0
    entries = sorted(audit(sim, "lighter", env["l1"]) + audit(sim, "lighter", env["l2"]), key=lambda e: e.ts)
    assert [(e.account, e.side, Decimal(e.filled), e.reduce_only) for e in entries[2:]] == \
        [(env["l1"], "sell", size, True), (env["l2"], "buy", size, True)]
    assert len({e.client_id for e in entries}) == 4
    assert position(sim, "lighter", env["l1"]) == 0 and position(sim, "lighter", env["l2"]) == 0


def test_min_order_failure_names_target_and_reason(env: dict[str, Any], sim: SimulatorServer) -> None:
    sim.exchange.arm_fault(Fault(kind=FaultKind.HTTP_500, venue="lighter", remaining=100, op="order",
                                 account=env["l1"]))
    try:
        proc = xtb(env, "min-order", "--target", "lighter1:buy", "--max-attempts", "2", "--retry-delay", "0")
    finally:
        sim.exchange.clear_faults()
    result, verdict = lines(proc)
    last = assert_one_error_line(proc, "lighter1:", "unavailable")
    assert verdict["ok"] is False and verdict["failure_reason"] == last.removeprefix("error: ")
    assert result["ok"] is False and Decimal(result["filled"]) == 0 and result["position"] == "0"
    attempts = result["attempts"]
    assert len(attempts) == 2 and attempts[0]["client_id"] != attempts[1]["client_id"]
    assert all(a["report"] is None and "outcome unknown" in a["error"] for a in attempts)
    assert audit(sim, "lighter", env["l1"]) == []

    # Usage errors are one line too, before anything is sent.
    proc = xtb(env, "min-order", "--target", "backpack:buy")
    assert proc.returncode == 2 and "Lighter accounts only" in assert_one_error_line(proc, "backpack")
    proc = xtb(env, "min-order", "--target", "lighter1:up")
    assert proc.returncode == 2 and "direction" in assert_one_error_line(proc, "--target")


@pytest.mark.parametrize("account", ["lighter1", "backpack"])
def test_smoke_passes_and_leaves_the_account_as_found(env: dict[str, Any], sim: SimulatorServer, account: str) -> None:
    proc = xtb(env, "smoke", "--account", account, "--settle-secs", "0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = lines(proc)
    steps, verdict = out[:-1], out[-1]
    assert [s["step"] for s in steps] == SMOKE_STEPS and all(s["ok"] for s in steps)
    assert verdict == {"account": account, "symbol": "ETH_USDC_PERP" if account == "backpack" else "ETH",
                       "ok": True, "failure_reason": None}
    opened = next(s for s in steps if s["step"] == "open")
    closed = next(s for s in steps if s["step"] == "close")
    assert Decimal(opened["filled"]) == Decimal(opened["size"]) == Decimal(closed["filled"]) > 0
    venue = "lighter" if account == "lighter1" else "backpack"
    entries = audit(sim, venue, env["l1"]) if venue == "lighter" else \
        [e for e in audit(sim, venue) if e.client_id in (opened["order"]["client_id"], closed["order"]["client_id"])]
    assert [(e.side, Decimal(e.filled), e.reduce_only) for e in entries] == \
        [("buy", Decimal(opened["filled"]), False), ("sell", Decimal(opened["filled"]), True)]
    assert entries[0].client_id != entries[1].client_id


def test_smoke_failed_close_is_flattened_to_the_baseline(env: dict[str, Any], sim: SimulatorServer) -> None:
    # The open fills in full (a no-op fault that only takes the first sendTx); the close dies with HTTP 500
    # before the venue acts, so the final flatten must remove the opened size, reduce-only.
    sim.exchange.arm_fault(Fault(kind=FaultKind.PARTIAL_FILL, venue="lighter", remaining=1, op="order",
                                 account=env["l1"], params={"fraction": "1"}))
    sim.exchange.arm_fault(Fault(kind=FaultKind.HTTP_500, venue="lighter", remaining=1, op="order", account=env["l1"]))
    try:
        proc = xtb(env, "smoke", "--account", "lighter1", "--settle-secs", "0.2")
    finally:
        sim.exchange.clear_faults()
    out = lines(proc)
    steps = {s["step"]: s for s in out[:-1]}
    last = assert_one_error_line(proc, "lighter1:close: outcome unknown", "lighter1:back_to_baseline")
    assert out[-1]["ok"] is False and out[-1]["failure_reason"] == last.removeprefix("error: ")
    assert [name for name, s in steps.items() if not s["ok"]] == ["close", "back_to_baseline"]
    assert Decimal(steps["final_flatten"]["residual"]) == 0
    size = Decimal(steps["open"]["filled"])
    (flatten_order,) = steps["final_flatten"]["orders"]
    entries = audit(sim, "lighter", env["l1"])
    assert [(e.side, Decimal(e.filled), e.reduce_only) for e in entries] == [("buy", size, False), ("sell", size, True)]
    assert entries[1].client_id == flatten_order["client_id"] != steps["close"]["order"]["client_id"]
    assert len({steps["open"]["order"]["client_id"], steps["close"]["order"]["client_id"],
                flatten_order["client_id"]}) == 3
    assert position(sim, "lighter", env["l1"]) == 0
