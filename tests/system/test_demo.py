"""`xtb demo` (what `make demo` runs) as a user runs it, with its JSON summary asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers.services import ROOT, start_redis_server, stop_redis_server
from tests.helpers.support import free_port

DEMO_CONFIG = ROOT / "examples" / "demo.toml"
#: The fixed loopback ports of examples/demo.toml: the simulators', the Telegram stand-in's and the dashboard's.
DEMO_PORTS = ("18080", "18081", "18082", "10123")


def private_demo_config(tmp_path: Path) -> Path:
    """examples/demo.toml with every fixed port replaced by a free one and its relative key paths
    landing under ``tmp_path``: the demo of a parallel test worker, of another checkout's test run
    or of a developer's `make demo` holds none of them."""
    text = DEMO_CONFIG.read_text()
    for port in DEMO_PORTS:
        assert f"127.0.0.1:{port}" in text or f"port = {port}" in text, f"demo.toml no longer uses port {port}"
        fresh = str(free_port())
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{fresh}").replace(f"port = {port}", f"port = {fresh}")
    config = tmp_path / "examples" / "demo.toml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    return config


def test_demo_runs_the_main_job_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)  # the demo must work on the embedded default
    env.pop("XTB_CONFIG", None)
    # Another checkout's embedded Redis holds the preferred port: the demo takes a free one of its own.
    other = start_redis_server(tmp_path / "other-checkout" / "redis")
    other.client().set("owner", "other-checkout")
    env.update({"XTB_DATA_DIR": str(tmp_path / "data"), "XTB_EMBEDDED_REDIS_PORT": str(other.port),
                "PYTHONWARNINGS": "ignore::DeprecationWarning"})
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "xtb_tasks.cli", "--config", str(private_demo_config(tmp_path)),
                               "demo", "--json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)
        assert other.client().get("owner") == "other-checkout" and other.client().dbsize() == 1
    finally:
        stop_redis_server(other)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"127.0.0.1:{other.port} is in use by another embedded Redis" in proc.stderr, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True, summary["checks"]
    assert summary["checks"]["hedged_after_cycle"] and summary["checks"]["flat_after_exit"]
    assert (summary["outcome"], summary["reason"]) == ("flat", "lighter2_zero")
    assert {"bp_entry", "l1_hedge", "l2_entry"} <= set(summary["fills"])
    assert any(text.startswith("Cycle completed") for text in summary["telegram_messages"])
    # The market, not the admin API, liquidated Lighter2, and the PnL shows fees and funding.
    assert summary["checks"]["lighter2_liquidated_by_the_market"], summary["liquidations"]
    assert [e["cause"] for e in summary["liquidations"]] == ["engine"], summary["liquidations"]
    assert summary["checks"]["fees_and_funding_in_pnl"], summary["pnl_split"]
    assert len(summary["dashboard_bots_online"]) >= 3
    print(f"demo took {elapsed:.1f}s (the demo itself reports {summary['elapsed_secs']}s)")
    # Nothing the demo started may outlive it: every process it starts (workers, relay, dashboard,
    # embedded Redis) inherits this run's private XTB_DATA_DIR.
    assert leftover_processes(env["XTB_DATA_DIR"]) == []


def leftover_processes(data_dir: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("XTB_DATA_DIR") == data_dir:
                found.append(" ".join(proc.info["cmdline"] or [])[:120])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_the_demo_tests_config_holds_no_fixed_port_and_keeps_its_keys_in_the_tests_folder(tmp_path: Path) -> None:
    from core.config import load_settings

    config = private_demo_config(tmp_path)
    text = config.read_text()
    assert [port for port in DEMO_PORTS if port in text] == []
    settings = load_settings(config)
    key_files = [settings.account(name).keys_file for name in settings.accounts] + [settings.telegram.keys_file]
    assert len(key_files) == 4 and all(path is not None and path.is_relative_to(tmp_path) for path in key_files), key_files
