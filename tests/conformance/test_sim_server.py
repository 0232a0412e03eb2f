"""The simulator runner: ``xtb sim`` as a process, and SimulatorServer in-process."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from simulators.server import SimulatorServer

ROOT = Path(__file__).resolve().parents[2]
XTB = Path(sys.executable).with_name("xtb")
URL_KEYS = {"backpack", "backpack_ws", "lighter", "lighter_ws", "telegram"}


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "xtb sim printed nothing"
    return proc.stdout.readline()


def test_xtb_sim_prints_one_json_line_and_exits_0_on_sigterm() -> None:
    proc = subprocess.Popen([str(XTB), "sim", "--backpack-port", "0", "--lighter-port", "0", "--telegram-port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        urls = json.loads(_read_line(proc, 30))
        assert set(urls) == URL_KEYS
        assert urls["backpack_ws"].startswith("ws://") and urls["backpack_ws"].endswith("/ws")
        assert urls["lighter_ws"].endswith("/stream")
        assert requests.get(urls["backpack"] + "/api/v1/ping", timeout=5).text == "pong"
        # The admin API is on both venue ports over one shared exchange.
        requests.post(urls["lighter"] + "/_sim/price", json={"base": "ETH", "price": "3210"}, timeout=5)
        assert requests.get(urls["backpack"] + "/_sim/state", timeout=5).json()["prices"]["ETH"] == "3210"
        assert requests.get(urls["telegram"] + "/_sim/messages", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stdout is not None and proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_xtb_sim_fails_cleanly_on_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([str(XTB), "sim", "--backpack-port", str(port), "--lighter-port", "0",
                               "--telegram-port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "Traceback" not in proc.stderr


def test_simulator_server_context_manager_frees_its_ports() -> None:
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=None) as sim:
        port = int(sim.urls["backpack"].rsplit(":", 1)[1])
        assert requests.get(sim.urls["backpack"] + "/api/v1/status", timeout=5).json()["status"] == "Ok"
        assert sim.exchange.snapshot()["prices"]["ETH"] == "3000"
    with SimulatorServer(backpack_port=port, lighter_port=0, telegram_port=0, price_tick_secs=None) as again:
        assert again.urls["backpack"].endswith(f":{port}")


def test_price_ticker_moves_prices_and_latency_applies() -> None:
    with SimulatorServer(backpack_port=0, lighter_port=0, telegram_port=0, price_tick_secs=0.05,
                         latency_ms=60) as sim:
        first = sim.exchange.snapshot()["prices"]["ETH"]
        deadline = time.monotonic() + 3
        while sim.exchange.snapshot()["prices"]["ETH"] == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.exchange.snapshot()["prices"]["ETH"] != first
        start = time.monotonic()
        requests.get(sim.urls["backpack"] + "/api/v1/ping", timeout=5)
        assert time.monotonic() - start >= 0.06
