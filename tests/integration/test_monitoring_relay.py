"""The alert relay and the missing-heartbeat watcher as real processes, against a real Redis and the
Telegram stand-in over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from core import keys
from monitoring.alert_texts import AlertKind
from monitoring.alerts import raise_alert
from monitoring.relay import DEAD_LETTER, AlertRelay, RelayOptions, pending_delivery
from monitoring.telegram import TelegramClient, TelegramCredentials
from monitoring.watcher import MISSING_SET
from simulators.telegram import TelegramServer, TelegramState
from tests.helpers.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "987654:relay-test-SECRET-token"
CHAT = "-100777"


@pytest.fixture
def tg() -> Iterator[TelegramServer]:
    with TelegramServer(TelegramState()) as server:
        yield server


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def write_config(directory: Path, tg_url: str, *, interval: float = 2.0) -> Path:
    # The original tg_key.txt spelling: mixed case, quotes, the 567b0f4 synonyms.
    (directory / "tg_key.txt").write_text(f'Telegram_Token: "{TOKEN}"\nchannel: {CHAT}\n')
    path = directory / "xtb.toml"
    path.write_text(
        f'[telegram]\napi_url = "{tg_url}"\nkeys_file = "tg_key.txt"\n\n'
        f"[telemetry]\ninterval_secs = {interval}\n"
    )
    return path


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def _env(redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"REDIS_URL": redis_url, "NO_PROXY": "127.0.0.1,localhost",
                "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture
def spawn(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Proc]]:
    """Start ``xtb <args>`` or ``python -m <module>`` as a real process; all killed at teardown."""
    started: list[Proc] = []

    def factory(*args: str, module: str | None = None) -> Proc:
        log_path = tmp_path / f"proc-{len(started)}.log"
        head = ["-m", module] if module else ["-c", "from xtb_tasks.cli import main; main()"]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, *head, *args], cwd=str(tmp_path), env=_env(redis_url),
                                    stdout=log_file, stderr=subprocess.STDOUT)
        started.append(Proc(proc, log_path))
        return started[-1]

    yield factory
    for proc in started:
        proc.kill()


def start_relay(spawn: Callable[..., Proc], config: Path, *extra: str, http_timeout: float = 1.0,
                min_idle: float = 1.0) -> Proc:
    return spawn("--config", str(config), "alerts", "relay", "--min-idle", str(min_idle), "--lock-ttl", "1",
                 "--backoff-max", "0.5", "--timeout", str(http_timeout), "--watch-every", "0.1", *extra)


def _no_secret(*logs: str) -> None:
    for text in logs:
        assert TOKEN not in text and TOKEN.split(":")[1] not in text


# --------------------------------------------------------------------------------------------


def test_backlog_of_100_is_delivered_once_in_order(tmp_path: Path, tg: TelegramServer, r: redis.Redis,
                                                   spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, tg.url)
    texts = [f"alert number {i:03d}" for i in range(100)]
    ids = [raise_alert(r, AlertKind.CYCLE_STARTED, text, n=i) for i, text in enumerate(texts)]
    assert len(set(ids)) == 100
    assert tg.state.messages == []
    relay = start_relay(spawn, config)
    wait_until(lambda: len(tg.state.messages) >= 100, timeout=60, what="100 alerts at Telegram")
    time.sleep(1.0)  # anything sent twice would show up now
    messages = tg.state.messages
    assert [m["text"] for m in messages] == texts
    assert {m["chat_id"] for m in messages} == {int(CHAT)}
    assert r.scard(keys.ALERTS_DELIVERED) == 100
    assert pending_delivery(r) == {"pending": 0, "undelivered": 0}
    assert relay.terminate() == 0, relay.log()
    _no_secret(relay.log())


def test_429_then_500_then_ok_delivers_once(tmp_path: Path, tg: TelegramServer, r: redis.Redis,
                                             spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, tg.url)
    tg.state.arm("http_429", 1, retry_after=1)
    tg.state.arm("http_500", 1)
    relay = start_relay(spawn, config)
    started = time.monotonic()
    raise_alert(r, AlertKind.EMERGENCY_EXIT, "EMERGENCY EXIT of cycle c1 (main): lighter1_zero.")
    raise_alert(r, AlertKind.CYCLE_FINISHED, "Cycle c1 (main) finished: emergency.")
    wait_until(lambda: len(tg.state.messages) >= 2, timeout=30, what="both alerts delivered")
    elapsed = time.monotonic() - started
    time.sleep(1.0)
    assert tg.state.texts() == ["EMERGENCY EXIT of cycle c1 (main): lighter1_zero.",
                                "Cycle c1 (main) finished: emergency."]
    assert tg.state.requests == 4  # 429, 500, ok, ok
    assert elapsed >= 1.0, "retry_after=1 must be honoured"
    log = relay.log()
    assert "rate_limited" in log and "transient" in log
    assert "bot<redacted>/sendMessage" in log
    _no_secret(log)


def test_relay_killed_mid_delivery_is_taken_over(tmp_path: Path, tg: TelegramServer, r: redis.Redis,
                                                 spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, tg.url)
    # A long HTTP timeout, so the relay is still inside the hanging request when it is killed.
    first = start_relay(spawn, config, http_timeout=60)
    texts = [f"cycle event {i:02d}" for i in range(25)]
    for text in texts[:5]:
        raise_alert(r, AlertKind.CYCLE_STARTED, text)
    wait_until(lambda: len(tg.state.messages) == 5, timeout=30, what="first 5 delivered")
    # The next send hangs: the relay dies while Telegram holds its request.
    tg.state.arm("hang", 1, seconds=30)
    for text in texts[5:]:
        raise_alert(r, AlertKind.CYCLE_STARTED, text)
    wait_until(lambda: tg.state.requests >= 6, timeout=30, what="the hanging send")
    held = pending_delivery(r)["pending"]
    assert held >= 1, "the dying relay holds read but unacknowledged alerts"
    first.kill()
    second = start_relay(spawn, config)
    wait_until(lambda: len(tg.state.messages) >= 25, timeout=60, what="the rest delivered by the new relay")
    time.sleep(1.0)
    assert tg.state.texts() == texts
    assert pending_delivery(r) == {"pending": 0, "undelivered": 0}
    assert f"took over {held} pending alert(s)" in second.log()


def test_standby_relay_takes_over_from_a_dead_leader(tmp_path: Path, tg: TelegramServer, r: redis.Redis,
                                                     spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, tg.url)
    relays = [start_relay(spawn, config, "--consumer", name, http_timeout=60) for name in ("relay-a", "relay-b")]
    texts = [f"burst {i:02d}" for i in range(40)]
    for text in texts[:10]:
        raise_alert(r, AlertKind.CYCLE_STARTED, text)
    wait_until(lambda: len(tg.state.messages) == 10, timeout=30, what="first 10 delivered")
    tg.state.arm("hang", 1, seconds=30)
    for text in texts[10:]:
        raise_alert(r, AlertKind.CYCLE_STARTED, text)
    wait_until(lambda: tg.state.requests >= 11, timeout=30, what="the leader inside a hanging send")
    # Exactly one relay delivers; the other waits as a hot standby.
    leaders = [p for p in relays if "is the leader" in p.log()]
    assert len(leaders) == 1, [p.log() for p in relays]
    leaders[0].kill()
    wait_until(lambda: len(tg.state.messages) >= 40, timeout=60, what="all 40 alerts")
    time.sleep(1.0)
    assert tg.state.texts() == texts
    assert sum("is the leader" in p.log() for p in relays) == 2, "the standby took over"


def test_clean_stop_releases_pending_alerts_at_once(tmp_path: Path, tg: TelegramServer, r: redis.Redis,
                                                   spawn: Callable[..., Proc]) -> None:
    config = write_config(tmp_path, tg.url)
    tg.state.arm("http_500", 10_000)
    # A long min idle: without the release, a successor would wait 60 s before taking over.
    first = start_relay(spawn, config, min_idle=60)
    texts = ["held 1", "held 2", "held 3"]
    for text in texts:
        raise_alert(r, AlertKind.CYCLE_STARTED, text)
    wait_until(lambda: tg.state.requests >= 2, timeout=30, what="the relay retrying")
    assert pending_delivery(r)["pending"] >= 1
    assert first.terminate() == 0, first.log()
    assert "released" in first.log()
    tg.state.clear_faults()
    started = time.monotonic()
    start_relay(spawn, config, min_idle=60)
    wait_until(lambda: len(tg.state.messages) >= 3, timeout=20, what="released alerts delivered")
    assert time.monotonic() - started < 20
    time.sleep(0.5)
    assert tg.state.texts() == texts


def test_already_delivered_id_is_acknowledged_without_sending(tg: TelegramServer, r: redis.Redis) -> None:
    skipped = raise_alert(r, AlertKind.CYCLE_STARTED, "sent before the crash")
    raise_alert(r, AlertKind.CYCLE_STARTED, "not sent yet")
    r.sadd(keys.ALERTS_DELIVERED, skipped)
    client = TelegramClient(tg.url, TelegramCredentials(chat_id=CHAT, bot_token=TOKEN))
    relay, stop = AlertRelay(r, client, RelayOptions(block_secs=0.1)), threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: pending_delivery(r) == {"pending": 0, "undelivered": 0}, timeout=20, what="drain")
    finally:
        stop.set()
        thread.join(10)
    assert tg.state.texts() == ["not sent yet"]
    assert r.get("xtb:alerts:relay:leader") is None, "a stopped relay releases the leader lock"


def test_bad_request_is_dead_lettered_and_does_not_block(tg: TelegramServer, r: redis.Redis) -> None:
    raise_alert(r, AlertKind.WORKER_CRASH, "Worker x crashed: test.")
    client = TelegramClient(tg.url, TelegramCredentials(chat_id="not-a-chat", bot_token=TOKEN))
    relay, stop = AlertRelay(r, client, RelayOptions(block_secs=0.1, backoff_base_secs=0.01)), threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: r.xlen(DEAD_LETTER) == 1, timeout=20, what="dead letter")
        wait_until(lambda: pending_delivery(r)["pending"] == 0, timeout=20, what="ack")
    finally:
        stop.set()
        thread.join(10)
    entry = r.xrange(DEAD_LETTER)[0][1]
    assert entry["text"] == "Worker x crashed: test." and "chat not found" in entry["error"]
    assert tg.state.requests == 3 and tg.state.messages == []


def test_relay_without_credentials_is_one_line_error(tmp_path: Path, tg: TelegramServer,
                                                     spawn: Callable[..., Proc], redis_url: str) -> None:
    config = tmp_path / "xtb.toml"
    config.write_text(f'[telegram]\napi_url = "{tg.url}"\nkeys_file = "missing.txt"\n')
    proc = spawn("--config", str(config), "alerts", "relay")
    assert proc.proc.wait(30) == 1
    lines = proc.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: telegram keys file not found"), lines


def test_send_and_tail_cli(tmp_path: Path, r: redis.Redis, spawn: Callable[..., Proc]) -> None:
    sent = spawn("alerts", "send", "cycle_started", "Cycle c9 started in group main.")
    assert sent.proc.wait(30) == 0, sent.log()
    alert_id = sent.log().strip().splitlines()[-1]  # stdout; the log line went to stderr
    entries = r.xrange(keys.ALERTS_OUTBOX)
    assert [(e[1]["id"], e[1]["kind"], e[1]["text"]) for e in entries] == [
        (alert_id, "cycle_started", "Cycle c9 started in group main.")]
    tail = spawn("alerts", "tail", "--last", "5", "--no-follow")
    assert tail.proc.wait(30) == 0
    assert "cycle_started" in tail.log() and "Cycle c9 started in group main." in tail.log()
    bad = spawn("alerts", "send", "no_such_kind", "x")
    assert bad.proc.wait(30) != 0


# --------------------------------------------------------------------------------------------
# The missing-heartbeat watcher (inside the relay process) with a real heartbeat process.


def test_missing_heartbeat_alert_within_three_intervals_then_back(
    tmp_path: Path, tg: TelegramServer, r: redis.Redis, spawn: Callable[..., Proc]
) -> None:
    interval = 1.0
    config = write_config(tmp_path, tg.url, interval=interval)
    start_relay(spawn, config)
    beats = spawn("--config", str(config), "--orchestrator", "--interval", str(interval),
                  module="monitoring.heartbeat")
    wait_until(lambda: r.hexists(keys.HEARTBEAT_LAST, "orchestrator"), timeout=30, what="first heartbeat")
    time.sleep(3 * interval)
    assert tg.state.messages == [], "no alert while the bot beats"
    beats.kill()
    killed_at = time.monotonic()
    wait_until(lambda: any("missing" in t for t in tg.state.texts()), timeout=10, what="missing alert")
    assert time.monotonic() - killed_at <= 3 * interval, "missing alert must arrive within three intervals"
    assert r.sismember(MISSING_SET, "orchestrator")
    time.sleep(2 * interval)
    assert len(tg.state.messages) == 1, "the missing alert is raised once"
    assert tg.state.texts()[0].startswith("Heartbeat missing from orchestrator: silent for")
    spawn("--config", str(config), "--orchestrator", "--interval", str(interval), module="monitoring.heartbeat")
    wait_until(lambda: len(tg.state.messages) >= 2, timeout=15, what="back alert")
    time.sleep(2 * interval)
    texts = tg.state.texts()
    assert len(texts) == 2 and texts[1].startswith("Heartbeat back from orchestrator after")
    assert not r.sismember(MISSING_SET, "orchestrator")
    kinds = [e[1]["kind"] for e in r.xrange(keys.ALERTS_OUTBOX)]
    assert kinds == [AlertKind.HEARTBEAT_MISSING.value, AlertKind.HEARTBEAT_BACK.value]


def test_telegram_disabled_still_watches_heartbeats(tmp_path: Path, r: redis.Redis,
                                                    spawn: Callable[..., Proc]) -> None:
    config = tmp_path / "xtb.toml"
    config.write_text("[telegram]\nenabled = false\n")
    r.hset(keys.HEARTBEAT_LAST, "lighter9", json.dumps({"timestamp": time.time() - 60, "interval": 2.0}))
    relay = start_relay(spawn, config)
    wait_until(lambda: r.xlen(keys.ALERTS_OUTBOX) == 1, timeout=20, what="missing alert in the outbox")
    assert r.xrange(keys.ALERTS_OUTBOX)[0][1]["text"].startswith("Heartbeat missing from lighter9")
    assert relay.terminate() == 0
    assert "only watching heartbeats" in relay.log()
