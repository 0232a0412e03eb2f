"""The dashboard as a real process: the original server.js contract, the overview and /metrics,
state in Redis across a restart, and the page rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from core import keys
from monitoring.alert_texts import AlertKind
from monitoring.alerts import raise_alert
from monitoring.heartbeat import BotIdentity, HeartbeatPublisher, IngestTarget, build_payload, record_heartbeat
from tests.helpers.support import free_port, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "dash-SECRET-4f1c2a"
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_PROBE = "<img src=x onerror=document.body.setAttribute('data-pwned','1')>"
DUMMY_URLS = {"backpack": "http://127.0.0.1:9", "backpack_ws": "ws://127.0.0.1:9/ws",
              "lighter": "http://127.0.0.1:9", "lighter_ws": "ws://127.0.0.1:9/stream",
              "telegram": "http://127.0.0.1:9"}


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "xtb.toml", DUMMY_URLS, group_params={"liquidation_tolerance": "0.01"})


@dataclass
class Dashboard:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start_dashboard(tmp_path: Path, redis_url: str, config: Path) -> Iterator[Callable[..., Dashboard]]:
    started: list[Dashboard] = []

    def factory(*extra: str, token: str | None = TOKEN, env_name: str = "XTB_DASHBOARD_TOKEN") -> Dashboard:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("XTB_DASHBOARD_TOKEN", "TELEMETRY_TOKEN")}
        env.update({"REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"})
        if token:
            env[env_name] = token
        log_path = tmp_path / f"dashboard-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from xtb_tasks.cli import main; main()", "--config", str(config),
                 "dashboard", "--host", "127.0.0.1", "--port", str(port), *extra],
                cwd=str(tmp_path), env=env, stdout=log_file, stderr=subprocess.STDOUT)
        dash = Dashboard(f"http://127.0.0.1:{port}", proc, log_path)
        started.append(dash)
        wait_until(lambda: _up(dash), timeout=30, what="dashboard listening")
        return dash

    yield factory
    for dash in started:
        dash.stop()


def _up(dash: Dashboard) -> bool:
    if dash.proc.poll() is not None:
        raise RuntimeError(f"dashboard exited:\n{dash.log()}")
    try:
        return requests.get(f"{dash.url}/", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def ingest(dash: Dashboard, bot: str, payload: dict[str, Any], token: str | None = TOKEN) -> requests.Response:
    headers = {"x-auth-token": token} if token is not None else {}
    return requests.post(f"{dash.url}/ingest/{urllib.parse.quote(bot, safe='')}", json=payload,
                         headers=headers, timeout=5)


def original_payload(role: str, position: float, interval: float = 2.0) -> dict[str, Any]:
    """Exactly what the original bot POSTed."""
    return {"timestamp": time.time(), "telemetry_interval_secs": interval, "group": "triad-1", "role": role,
            "symbol": "ETH", "direction": "long", "position_base": position, "max_position_base": None,
            "pnl_unrealized": None, "balance_total": None}


# --------------------------------------------------------------------------------------------


def test_server_js_contract(start_dashboard: Callable[..., Dashboard]) -> None:
    dash = start_dashboard()
    assert ingest(dash, "triad-bp", original_payload("BP", 0.5), token=None).status_code == 401
    wrong = ingest(dash, "triad-bp", original_payload("BP", 0.5), token="nope")
    assert (wrong.status_code, wrong.json()) == (401, {"status": "unauthorized"})
    ok = ingest(dash, "triad-bp", original_payload("BP", 0.5))
    assert (ok.status_code, ok.json()) == (200, {"status": "ok"})
    assert ingest(dash, "fast-bot", original_payload("L1", -0.5, interval=0.2)).json() == {"status": "ok"}
    bad = requests.post(f"{dash.url}/ingest/x", data=b"{nope", headers={"x-auth-token": TOKEN}, timeout=5)
    assert bad.status_code == 400
    time.sleep(0.6)  # fast-bot misses two of its 0.2 s intervals
    status = requests.get(f"{dash.url}/api/status", timeout=5)
    assert status.headers["Cache-Control"] == "no-store"
    doc = status.json()
    assert isinstance(doc["now"], int) and abs(doc["now"] / 1000 - time.time()) < 5
    bots = {b["name"]: b for b in doc["bots"]}
    assert set(bots) == {"triad-bp", "fast-bot"}
    assert set(bots["triad-bp"]) == {"name", "online", "last_update_ms_ago", "payload"}
    assert bots["triad-bp"]["online"] is True and bots["fast-bot"]["online"] is False
    assert 500 <= bots["fast-bot"]["last_update_ms_ago"] < 5000
    assert bots["triad-bp"]["payload"]["position_base"] == 0.5
    assert bots["triad-bp"]["payload"]["group"] == "triad-1"
    unauthorized = requests.post(f"{dash.url}/admin/prune", timeout=5)
    assert (unauthorized.status_code, unauthorized.json()) == (401, {"status": "unauthorized"})
    pruned = requests.post(f"{dash.url}/admin/prune", headers={"x-auth-token": TOKEN}, timeout=5)
    assert pruned.json() == {"status": "ok", "removed": 1, "total": 1}
    aged = requests.post(f"{dash.url}/admin/prune?older_ms=1", headers={"x-auth-token": TOKEN}, timeout=5)
    assert aged.json() == {"status": "ok", "removed": 1, "total": 0}
    assert TOKEN not in dash.log()


def test_state_survives_a_restart_and_legacy_token_env(start_dashboard: Callable[..., Dashboard]) -> None:
    first = start_dashboard(token=TOKEN, env_name="TELEMETRY_TOKEN")
    assert ingest(first, "survivor", original_payload("BP", 1.0, interval=30)).json() == {"status": "ok"}
    first.stop()
    second = start_dashboard(token=None)
    names = [b["name"] for b in requests.get(f"{second.url}/api/status", timeout=5).json()["bots"]]
    assert names == ["survivor"]
    # Without a token configured, ingest is open (server.js with an empty TELEMETRY_TOKEN).
    assert ingest(second, "open", original_payload("BP", 0), token=None).status_code == 200


def test_private_mode_guards_reads(start_dashboard: Callable[..., Dashboard]) -> None:
    dash = start_dashboard("--private")
    for path in ("/api/status", "/api/overview", "/metrics"):
        assert requests.get(f"{dash.url}{path}", timeout=5).status_code == 401, path
        assert requests.get(f"{dash.url}{path}", headers={"x-auth-token": TOKEN}, timeout=5).status_code == 200
    assert requests.get(f"{dash.url}/", timeout=5).status_code == 200  # the page asks for the token


def _beat(r: redis.Redis, bot: str, role: str, position: str | None, *, interval: float = 2.0,
          account: str | None = None) -> None:
    identity = BotIdentity(bot=bot, role=role, group="main", account=account or bot, venue="lighter",
                           symbol="ETH", direction="long")
    state = {"position": position, "position_read_at": str(time.time())} if position is not None else {}
    record_heartbeat(r, build_payload(identity, state, now=time.time(), interval=interval))


def test_overview_and_metrics(start_dashboard: Callable[..., Dashboard], r: redis.Redis) -> None:
    _beat(r, "backpack", "BP", "0.05")
    _beat(r, "lighter1", "L1", "-1.00")
    _beat(r, "lighter2", "L2", "0.90")
    r.hset(keys.cycle("c-42"), mapping={"cycle_id": "c-42", "group": "main", "stage": "monitoring",
                                        "stage_started_at": str(time.time() - 30)})
    r.sadd(keys.CYCLES_ACTIVE, "c-42")
    r.hset(keys.cycle("c-41"), mapping={"cycle_id": "c-41", "group": "main", "stage": "done", "outcome": "flat"})
    r.lpush(keys.cycle_history("main"), "c-41", "c-42")
    r.rpush("lighter1", "task-1", "task-2")
    raise_alert(r, AlertKind.CYCLE_HEDGED, "Cycle c-42 (main) hedged.")
    dash = start_dashboard()
    doc = requests.get(f"{dash.url}/api/overview", timeout=5).json()
    (group,) = doc["groups"]
    assert group["name"] == "main" and group["all_online"] is True
    assert {role: m["name"] for role, m in group["roles"].items()} == {"BP": "backpack", "L1": "lighter1",
                                                                       "L2": "lighter2"}
    assert group["net_delta"] == "-0.05" and group["tolerance"] == "0.01" and group["net_delta_breach"] is True
    assert group["cycle"]["cycle_id"] == "c-42" and group["cycle"]["stage"] == "monitoring"
    assert [c["cycle_id"] for c in group["recent_cycles"]] == ["c-42", "c-41"]
    assert [a["text"] for a in doc["alerts"]] == ["Cycle c-42 (main) hedged."]
    assert doc["alerts"][0]["delivered"] is False and doc["relay"]["undelivered"] == 1
    metrics = requests.get(f"{dash.url}/metrics", timeout=5)
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'xtb_account_position{account="lighter1",group="main",role="L1"} -1.0' in text
    assert 'xtb_group_net_delta{group="main"} -0.05' in text
    assert 'xtb_queue_length{queue="lighter1"} 2.0' in text
    assert 'xtb_queue_length{queue="orchestrator"} 0.0' in text
    assert 'xtb_cycles{group="main",outcome="flat"} 1.0' in text
    assert 'xtb_cycles{group="main",outcome="active"} 1.0' in text
    assert 'xtb_alerts_pending_delivery{state="undelivered"} 1.0' in text
    assert re.search(r'^xtb_heartbeat_age_seconds\{bot="backpack",role="BP"\} \d', text, re.M)
    for line in text.splitlines():
        assert line.startswith("#") or re.match(r'^[a-z_]+(\{[^}]*\})? -?[0-9.]+(e-?\d+)?$', line), line
    # An unknown leg makes the net delta unknown, never a number.
    _beat(r, "lighter2", "L2", None)
    group = requests.get(f"{dash.url}/api/overview", timeout=5).json()["groups"][0]
    assert group["net_delta"] is None and group["net_delta_breach"] is False
    assert 'xtb_group_net_delta{' not in requests.get(f"{dash.url}/metrics", timeout=5).text


# --------------------------------------------------------------------------------------------
# A real browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium")
        if found:
            return found
    pytest.skip("headless Chromium is not installed and could not be installed with apt-get (needs root)")


def _chromium_run(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chromium-{time.time_ns()}"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
           "--window-size=1400,1000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def live_bots(tmp_path: Path, config: Path, redis_url: str, r: redis.Redis) -> Iterator[None]:
    """Three venue bots and the orchestrator beating every 0.5 s from a real heartbeat process."""
    now = str(time.time() + 600)  # stays fresh for the whole test
    for account, position, balance in (("backpack", "0.012", "2500.5"), ("lighter1", "-1.25", "1200"),
                                       ("lighter2", "1.25", "1180.75")):
        r.hset(keys.account_state(account), mapping={
            "position": position, "position_read_at": now, "balance": balance, "latency_ms": "23",
            "cycle_id": "c-7", "stage": "monitoring"})
    r.hset(keys.cycle("c-7"), mapping={"cycle_id": "c-7", "group": "main", "stage": "monitoring",
                                       "stage_started_at": str(time.time() - 95)})
    r.sadd(keys.CYCLES_ACTIVE, "c-7")
    r.hset(keys.cycle("c-6"), mapping={"cycle_id": "c-6", "group": "main", "stage": "done", "outcome": "flat",
                                       "reason": "lighter2_zero"})
    r.lpush(keys.cycle_history("main"), "c-6", "c-7")
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "monitoring.heartbeat", "--config", str(config), "--interval",
                             "0.5", "--account", "backpack", "--account", "lighter1", "--account", "lighter2",
                             "--orchestrator"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: r.hlen(keys.HEARTBEAT_LAST) >= 4, timeout=30, what="four live bots")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def test_page_in_headless_chromium(tmp_path: Path, start_dashboard: Callable[..., Dashboard], r: redis.Redis,
                                   live_bots: None) -> None:
    binary = _chromium()
    dash = start_dashboard()
    for name in (XSS_NAME, XSS_PROBE):
        assert ingest(dash, name, {**original_payload("BP", 0.3, interval=60), "group": "<b>evil</b>"}).ok
    raise_alert(r, AlertKind.EMERGENCY_EXIT, "EMERGENCY EXIT of cycle c-5 (main): lighter1_zero; PnL backpack "
                "+1.2, lighter1 -40.1, lighter2 +38.3; positions backpack 0, lighter1 0, lighter2 0.")
    raise_alert(r, AlertKind.HEARTBEAT_MISSING, f"Heartbeat missing from {XSS_NAME}: silent for 21s.")
    dumped = _chromium_run(binary, tmp_path, "--dump-dom", f"{dash.url}/")
    dom = dumped.stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard.html").write_text(dom)
    assert "Group main" in dom, dumped.stderr[-2000:]
    for text in ("backpack", "lighter1", "lighter2", "+0.012", "-1.25", "+1.25", "2500.5", "orchestrator",
                 "monitoring", "c-7", "lighter2_zero", "EMERGENCY EXIT of cycle c-5"):
        assert text in dom, text
    # Net delta 0.012 - 1.25 + 1.25 = +0.012 is beyond the 0.01 tolerance: highlighted.
    assert re.search(r'class="delta delta-breach".*?<div class="delta-value">\+0\.012</div>', dom, re.S)
    assert "BEYOND tolerance ±0.01" in dom
    # Hostile names are shown as text, never parsed as markup, and nothing of theirs ran.
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "&lt;b&gt;evil&lt;/b&gt;" in dom
    assert "<img" not in dom and "<b>evil" not in dom and "data-pwned=" not in dom
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    _chromium_run(binary, tmp_path, f"--screenshot={shot}", f"{dash.url}/")
    assert shot.exists() and shot.stat().st_size > 10_000
    assert json.dumps(TOKEN) not in dom


def test_heartbeats_are_forwarded_to_an_ingest_server(start_dashboard: Callable[..., Dashboard],
                                                      redis_url: str) -> None:
    """telemetry.ingest_url: each beat is also POSTed like the original bot did, token in x-auth-token."""
    dash = start_dashboard()
    # The publisher writes to another Redis database, so what the dashboard shows came over HTTP.
    other_db = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1", decode_responses=True)
    other_db.hset(keys.account_state("lighter1"), mapping={"position": "-2", "position_read_at": str(time.time()),
                                                           "balance": "99.5"})
    identity = BotIdentity(bot="lighter1", role="L1", group="main", account="lighter1", venue="lighter",
                           symbol="ETH", direction="short")
    publisher = HeartbeatPublisher([identity], interval=0.3, redis_factory=lambda: other_db,
                                   ingest=IngestTarget(dash.url, TOKEN))
    publisher.beat_once()
    publisher.stop()
    (bot,) = requests.get(f"{dash.url}/api/status", timeout=5).json()["bots"]
    payload = bot["payload"]
    assert bot["name"] == "lighter1" and bot["online"] is True
    for name, value in {"telemetry_interval_secs": 0.3, "group": "main", "role": "L1", "symbol": "ETH",
                        "direction": "short", "position_base": -2.0, "balance_total": 99.5,
                        "max_position_base": None, "pnl_unrealized": None}.items():
        assert payload[name] == value, name
    assert isinstance(payload["timestamp"], float) and "received_at" in payload
    wrong = HeartbeatPublisher([identity], interval=0.3, redis_factory=lambda: other_db,
                               ingest=IngestTarget(dash.url, "wrong-token"))
    requests.post(f"{dash.url}/admin/prune?older_ms=1", headers={"x-auth-token": TOKEN}, timeout=5)
    wrong.beat_once()
    wrong.stop()
    assert requests.get(f"{dash.url}/api/status", timeout=5).json()["bots"] == []


def test_overview_shows_the_last_cycles_pnl_split_dust_and_worst_net(start_dashboard: Callable[..., Dashboard],
                                                                      r: redis.Redis) -> None:
    # The last cycle's card shows the realised split per venue, dust, and the larger of the reads' and the exit's worst net.
    split = {"BP": {"trading": "1.5", "fees": "-0.3", "funding": "0", "net": "1.2", "fills": 4},
             "L1": {"trading": "-2", "fees": "-0.1", "funding": "0.05", "net": "-2.05", "fills": 3},
             "L2": {"error": "unavailable: GET /api/v1/trades"}}
    exposure = {"worst": "0.02", "worst_at": 105.0, "beyond_secs": 1.5, "beyond_since": None, "reads": 7}
    r.hset(keys.cycle("c-9"), mapping={"cycle_id": '"c-9"', "group": '"main"', "stage": '"done"',
                                       "outcome": '"flat"', "reason": '"lighter2_zero"', "finished_at": "110.0",
                                       "pnl_split": json.dumps(split), "dust": json.dumps({"L2": "0.0030"}),
                                       "net_exposure": json.dumps(exposure), "exit_worst_net": '"-0.05"',
                                       "exit_worst_net_at": "108.0"})
    r.lpush(keys.cycle_history("main"), "c-9")
    dash = start_dashboard()
    (group,) = requests.get(f"{dash.url}/api/overview", timeout=5).json()["groups"]
    report = group["recent_cycles"][0]["report"]
    assert report["pnl_split"] == split and report["dust"] == {"L2": "0.0030"}
    assert report["worst_net"] == {"worst_net": "0.05", "worst_net_at": 108.0, "worst_net_source": "exit",
                                   "beyond_step_secs": 1.5, "reads": 7}
    page = requests.get(f"{dash.url}/static/dashboard.js", timeout=5)
    assert page.status_code == 200 and "reportLine(group.recent_cycles)" in page.text
