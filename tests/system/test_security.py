"""Bad input and secrets: CLI fuzzing, Flower-triggered tasks with bad arguments, a pickled broker
message, the dashboard token, Backpack request replay, and a scan of everything the deployment
wrote (logs, results, events, heartbeats, alerts, all of Redis) for the secret values.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.helpers.faults import key_file_secrets, leaks, poll
from tests.helpers.harness import Deployment, make_deployment, teardown
from tests.helpers.services import ROOT, RedisServer, start_worker, worker_env
from tests.helpers.support import free_port, wait_until

FLOWER_PASSWORD = "flower-" + uuid.uuid4().hex
DASHBOARD_TOKEN = "dash-" + uuid.uuid4().hex
TELEGRAM_TOKEN = "424242:" + uuid.uuid4().hex
AUTH = ("ops", FLOWER_PASSWORD)


@pytest.fixture(scope="module")
def dep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    redis_server.client().flushall()
    deployment = make_deployment(tmp_path_factory.mktemp("sec"), redis_server.url, start_worker)
    # In-process CLI calls and the Celery app must use this Redis (never the embedded default).
    saved = {k: os.environ.get(k) for k in ("REDIS_URL", "XTB_CONFIG")}
    os.environ.update(REDIS_URL=redis_server.url, XTB_CONFIG=str(deployment.config))
    keys = deployment.tmp / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "tg_key.txt").write_text(f"bot_token: {TELEGRAM_TOKEN}\nchat_id: -100555\n")
    deployment.start_workers()
    yield deployment
    teardown(deployment)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _spawn(dep: Deployment, name: str, args: list[str],
           extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log = dep.tmp / f"{name}.log"
    env = worker_env(dep.config, dep.redis_url, {"PYTHONUNBUFFERED": "1", **(extra or {})})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=str(dep.tmp), env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def flower(dep: Deployment) -> Iterator[str]:
    port = free_port()
    proc, log = _spawn(dep, "flower", ["-m", "celery", "-A", "xtb_tasks", "flower", "--address=127.0.0.1",
                                       f"--port={port}", f"--basic-auth=ops:{FLOWER_PASSWORD}"])
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{url}/api/workers", auth=AUTH, timeout=2).status_code == 200
        return False

    wait_until(lambda: up() or proc.poll() is not None, timeout=60, what="flower")
    assert proc.poll() is None, log.read_text()
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def services(dep: Deployment) -> Iterator[dict[str, str]]:
    """The alert relay (Telegram stand-in) and the dashboard, with their secrets from files/env."""
    port = free_port()
    cli = ["-c", "from xtb_tasks.cli import main; main()", "--config", str(dep.config)]
    relay, _ = _spawn(dep, "relay", [*cli, "alerts", "relay", "--min-idle", "1", "--backoff-max", "0.5"])
    dash, _ = _spawn(dep, "dashboard", [*cli, "dashboard", "--port", str(port)],
                     {"XTB_DASHBOARD_TOKEN": DASHBOARD_TOKEN})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{url}/api/status", timeout=2).status_code < 500
        return False

    wait_until(lambda: up() or dash.poll() is not None, timeout=30, what="dashboard")
    yield {"dashboard": url}
    _stop(relay)
    _stop(dash)


# ---- CLI fuzz -----------------------------------------------------------------------------------

def run_cli(dep: Deployment, *args: str) -> tuple[int, str, str]:
    """``xtb --config <dep> <args>`` in process; (exit code, stdout, stderr)."""
    from xtb_tasks.cli import main
    from xtb_tasks.worker.connectors import close_connectors

    assert os.environ.get("REDIS_URL") == dep.redis_url, "the CLI would talk to another Redis"
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["--config", str(dep.config), *args])
        except SystemExit as exc:
            code = exc.code
        finally:
            close_connectors()  # each real invocation is a fresh process with no cached connector
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, out: str, err: str, args: tuple[str, ...]) -> None:
    assert code != 0, (args, out, err)
    assert "Traceback" not in out + err, (args, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, out, err)


GOOD_ACCOUNTS = ("backpack", "lighter1", "lighter2")
ACCOUNTS = st.sampled_from([*GOOD_ACCOUNTS, "nope", "", "LIGHTER1", "lighter1 ", "../etc/passwd", "orchestrator"])
SIDES = st.sampled_from(["buy", "sell", "BUY", "hold", "", "-1", "long"])
BAD_SIZES = ["0", "-1", "-0.01", "nan", "NaN", "inf", "-inf", "1e999", "abc", "", " ", "0x10", "1/2", "١"]
SIZES = st.one_of(st.sampled_from([*BAD_SIZES, "0.01"]), st.text(max_size=8))
SLIPPAGES = st.sampled_from([None, "0.001", "x", "", "0.001.1"])


def _good_size(text: str) -> bool:
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return False
    return value.is_finite() and value > 0


def _good_slippage(text: str | None) -> bool:
    if text is None:
        return True
    try:
        value = float(text)
    except ValueError:
        return False
    return 0 <= value <= 0.5  # the config's range for lighter_max_slippage


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(account=ACCOUNTS, side=SIDES, size=SIZES, slippage=SLIPPAGES, reduce_only=st.booleans())
def test_cli_order_fuzz_rejects_bad_arguments_in_one_line(dep: Deployment, account: str, side: str, size: str,
                                                           slippage: str | None, reduce_only: bool) -> None:
    good = account in GOOD_ACCOUNTS and side in ("buy", "sell") and _good_size(size) and _good_slippage(slippage)
    assume(not good)
    before = len(dep.audit())
    args = ("order", "--account", account, "--side", side, "--size", size, "--direct",
            *(("--max-slippage", slippage) if slippage is not None else ()), *(("--reduce-only",) if reduce_only else ()))
    assert_one_line_error(*run_cli(dep, *args), args)
    assert len(dep.audit()) == before, f"{args} reached the venue"


BAD_PAIRS = ["bogus=1", "wait_min_secs=9", "leverage=-3", "leverage=0", "direction=sideways", "noequals",
             "size=abc", "size=-1", "timeout_secs=nan", "max_cycles=-1", "zero_confirmations=0",
             "confirmation_min_fraction=2", "backpack_symbol=BTC", "poll_interval_secs=-5", "=1"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(group=st.sampled_from(["main", "nope", "", "MAIN"]), size=st.one_of(st.none(), st.sampled_from(BAD_SIZES)),
       pairs=st.lists(st.sampled_from(BAD_PAIRS), max_size=3))
def test_cli_cycle_start_fuzz_rejects_bad_arguments_in_one_line(dep: Deployment, group: str, size: str | None,
                                                                pairs: list[str]) -> None:
    assume(group != "main" or size is not None or pairs)
    if pairs == ["wait_min_secs=9"] and group == "main" and size is None:
        pairs = ["wait_min_secs=9", "wait_max_secs=1"]
    before = len(dep.audit())
    history = dep.client.llen("xtb:cycles:main")
    args = ("cycle", "start", "--group", group, *(("--size", size) if size is not None else ()),
            *[x for pair in pairs for x in ("--set", pair)])
    assert_one_line_error(*run_cli(dep, *args), args)
    assert len(dep.audit()) == before and dep.client.llen("xtb:cycles:main") == history, f"{args} started something"


@pytest.mark.parametrize("slippage", ["-1", "0.9"])
def test_out_of_range_max_slippage_never_reaches_the_venue(dep: Deployment, slippage: str) -> None:
    check_slippage_rejected(dep, slippage)


@pytest.mark.parametrize("slippage", ["nan", "inf", "1e9"])
def test_non_finite_or_huge_max_slippage_never_reaches_the_venue(dep: Deployment, slippage: str) -> None:
    check_slippage_rejected(dep, slippage)


def check_slippage_rejected(dep: Deployment, slippage: str) -> None:
    before = len(dep.audit())
    args = ("order", "--account", "lighter1", "--side", "buy", "--size", "0.01", "--direct", "--max-slippage", slippage)
    code, out, err = run_cli(dep, *args)
    sent = len(dep.audit()) - before
    if sent:  # leave the account flat for the other tests
        run_cli(dep, "order", "--account", "lighter1", "--side", "sell", "--size", "0.01", "--direct", "--reduce-only")
    assert sent == 0, f"{args} reached the venue: {out}"
    assert_one_line_error(code, out, err, args)


def test_usage_errors_are_one_line(dep: Deployment) -> None:
    code, _, err = run_cli(dep, "order", "--account", "lighter1", "--side", "BUY", "--size", "0.01")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Invalid value for '--side': 'BUY' is not one of"), err


def test_cli_errors_are_one_line_as_a_real_process(dep: Deployment) -> None:
    before = len(dep.audit())
    for args in (["order", "--account", "lighter1", "--side", "buy", "--size", "-1"],
                 ["order", "--account", "ghost", "--side", "sell", "--size", "0.01", "--direct"],
                 ["cycle", "start", "--group", "main", "--set", "bogus=1"]):
        proc = subprocess.run([sys.executable, "-c", "from xtb_tasks.cli import main; main()", "--config",
                               str(dep.config), *args], cwd=str(ROOT), env=worker_env(dep.config, dep.redis_url),
                              capture_output=True, text=True, timeout=60)
        assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, tuple(args))
    assert len(dep.audit()) == before


# ---- Flower ---------------------------------------------------------------------------------------

def _flower_start(flower: str, kwargs: dict[str, Any]) -> str:
    response = requests.post(f"{flower}/api/task/async-apply/xtb.hedge.start_cycle", auth=AUTH,
                             json={"kwargs": kwargs}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["task-id"])


def task_meta(dep: Deployment, task_id: str, timeout: float = 30) -> dict[str, Any]:
    """The task's final state straight from the result backend (``celery-task-meta-<id>``)."""
    key = f"celery-task-meta-{task_id}"

    def final() -> bool:
        raw = dep.client.get(key)
        return bool(raw) and json.loads(raw)["status"] in ("SUCCESS", "FAILURE")

    wait_until(final, timeout=timeout, what=f"task {task_id} to finish")
    return dict(json.loads(dep.client.get(key)))


def test_flower_requires_auth(flower: str) -> None:
    response = requests.post(f"{flower}/api/task/async-apply/xtb.hedge.start_cycle", json={"kwargs": {}},
                             timeout=10)
    assert response.status_code == 401
    bad = requests.get(f"{flower}/api/workers", auth=("ops", "wrong"), timeout=10)
    assert bad.status_code == 401


def test_flower_bad_start_cycle_is_rejected_before_any_venue_call(dep: Deployment, flower: str) -> None:
    before = len(dep.audit())
    cases = [({"group": "nope"}, "unknown group"), ({"group": "main", "size": "-1"}, "size"),
             ({"group": "main", "wait_min_secs": 9, "wait_max_secs": 1}, "wait_min_secs"),
             ({"group": "main", "bogus": 1}, "unknown key"), ({}, "group"),
             ({"group": "main", "leverage": -3}, "leverage")]
    ids = [(_flower_start(flower, kwargs), fragment) for kwargs, fragment in cases]
    for task_id, fragment in ids:
        meta = task_meta(dep, task_id)
        assert meta["status"] == "FAILURE", (fragment, meta)
        assert "InvalidCycleRequest" in json.dumps(meta) and fragment in json.dumps(meta), (fragment, meta)
    assert len(dep.audit()) == before
    assert not dep.client.scard("xtb:cycles:active")


def test_flower_good_start_cycle_reaches_monitoring_then_cancel(dep: Deployment, flower: str) -> None:
    task_id = _flower_start(flower, {"group": "main"})
    meta = task_meta(dep, task_id)
    assert meta["status"] == "SUCCESS", meta
    cycle_id = meta["result"]["cycle_id"]
    try:
        dep.wait_stage(cycle_id, "monitoring", timeout=60)
        code, _, err = run_cli(dep, "cycle", "cancel", cycle_id)
        assert code == 0, err
        done = dep.wait_done(cycle_id, timeout=60)
    finally:
        dep.unwind_leftovers()
    assert (done["outcome"], done["reason"]) == ("flat", "cancelled")
    assert dep.duplicate_client_ids() == []


# ---- a pickled message on the broker --------------------------------------------------------------

class _Payload:
    """Unpickling this creates the marker file: proof that the worker never unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def test_pickled_message_is_refused(dep: Deployment) -> None:
    marker = dep.tmp / "unpickled.marker"
    before = len(dep.audit())
    worker = dep.workers["lighter1"]
    task_id = str(uuid.uuid4())
    kwargs = {"account": "lighter1", "symbol": "ETH", "side": "buy", "client_ids": [777001], "quantity": "0.01",
              "evil": _Payload(marker)}
    headers = {"lang": "py", "task": "xtb.venue.submit_market_order", "id": task_id, "root_id": task_id,
               "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
               "argsrepr": "()", "kwargsrepr": "{}", "origin": "attacker"}
    body = ((), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    queue = dep.app.amqp.queues["lighter1"]
    with dep.app.producer_or_acquire() as producer:
        producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue],
                         serializer="pickle", headers=headers, delivery_mode=2)
    refused = poll(lambda: "untrusted content" in worker.log() or "Refusing" in worker.log(), timeout=20)
    time.sleep(1.0)
    assert not marker.exists(), "the worker unpickled a broker message"
    assert len(dep.audit()) == before
    assert worker.alive()
    assert not dep.client.exists(f"celery-task-meta-{task_id}") or \
        json.loads(dep.client.get(f"celery-task-meta-{task_id}"))["status"] != "SUCCESS"
    # No refusal means the worker never saw the message: with no binding for the exchange it was
    # published to, kombu's Redis transport drops it silently (see test_queue_routing_*).
    bindings = {key: sorted(dep.client.smembers(key)) for key in dep.client.scan_iter("_kombu.binding.*")}
    assert refused, (f"lighter1 logged no refusal; published to exchange {queue.exchange.name!r}, "
                     f"lighter1 list length {dep.client.llen('lighter1')}, bindings {bindings}")


def test_queue_routing_does_not_depend_on_which_config_the_app_loaded(dep: Deployment) -> None:
    """The test process's Celery app is built once, by whichever test imports it first, often with no
    config: its ``lighter1`` queue must name the exchange the configured worker binds, or a publish
    through that exchange after a ``flushall`` (kombu caches the declaration) reaches no queue."""
    from celery import Celery

    from core.config import load_settings
    from xtb_tasks.worker.celery_app import celery_settings

    for loaded in (None, load_settings(dep.config)):
        probe = Celery("xtb-queue-probe")
        probe.conf.update(celery_settings(loaded, dep.redis_url))
        queue = probe.amqp.queues["lighter1"]
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == ("lighter1", "direct", "lighter1")
    assert dep.app.amqp.queues["lighter1"].exchange.name == "lighter1"


# ---- dashboard and Backpack auth ----------------------------------------------------------------

def test_dashboard_rejects_ingest_and_prune_without_token(services: dict[str, str]) -> None:
    url = services["dashboard"]
    body = {"status": "ok", "ts": time.time()}
    for headers in ({}, {"x-auth-token": "wrong"}, {"x-auth-token": DASHBOARD_TOKEN[:-1]}):
        assert requests.post(f"{url}/ingest/intruder", json=body, headers=headers, timeout=5).status_code == 401
        assert requests.post(f"{url}/admin/prune?older_ms=0", headers=headers, timeout=5).status_code == 401
    ok = requests.post(f"{url}/ingest/friend", json=body, headers={"x-auth-token": DASHBOARD_TOKEN}, timeout=5)
    assert ok.status_code == 200, ok.text
    pruned = requests.post(f"{url}/admin/prune?older_ms=0", headers={"x-auth-token": DASHBOARD_TOKEN}, timeout=5)
    assert pruned.status_code == 200, pruned.text
    status = requests.get(f"{url}/api/status", timeout=5).text
    assert "intruder" not in status


def test_backpack_rejects_requests_outside_their_window(dep: Deployment) -> None:
    from venues.backpack.credentials import load_backpack_credentials
    from venues.backpack.signing import Signer

    signer = Signer(load_backpack_credentials(dep.tmp / "keys" / "bp.txt"))
    url = f"{dep.sim.urls['backpack']}/api/v1/capital"
    now = int(time.time() * 1000)
    fresh = signer.headers("balanceQuery", {}, now, 1000)
    assert requests.get(url, headers=fresh, timeout=5).status_code == 200
    old = signer.headers("balanceQuery", {}, now - 60_000, 5000)
    stale = requests.get(url, headers=old, timeout=5)
    assert stale.status_code == 401 and "expired" in stale.text.lower(), stale.text
    time.sleep(1.3)  # the captured fresh request, replayed after its 1 s window
    replay = requests.get(url, headers=fresh, timeout=5)
    assert replay.status_code == 401, replay.text
    tampered = signer.headers("balanceQuery", {}, int(time.time() * 1000), 5000)
    tampered["X-Timestamp"] = str(int(tampered["X-Timestamp"]) + 1)
    assert requests.get(url, headers=tampered, timeout=5).status_code == 401


# ---- secrets appear nowhere (runs last: scans everything the module produced) ---------------------

def _redis_dump(dep: Deployment) -> str:
    client = dep.client
    parts = []
    for key in client.scan_iter(count=500):
        kind = client.type(key)
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "hash":
            parts.append(json.dumps(client.hgetall(key)))
        elif kind == "list":
            parts.append(json.dumps(client.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(json.dumps(sorted(client.smembers(key))))
        elif kind == "zset":
            parts.append(json.dumps(client.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(json.dumps(client.xrange(key)))
        parts.append(key)
    return "\n".join(parts)


def test_secrets_appear_nowhere(dep: Deployment, flower: str, services: dict[str, str]) -> None:
    secrets = key_file_secrets(dep.tmp / "keys")
    assert {"bp.txt:api secret", "l1.txt:private key", "l2.txt:private key", "tg_key.txt:bot_token"} <= set(secrets)
    secrets["dashboard token"] = DASHBOARD_TOKEN
    # Something must have happened for the scan to mean anything.
    assert dep.client.hlen("xtb:hb:last") > 0
    assert dep.alerts()
    meta = [dep.client.get(k) or "" for k in dep.client.scan_iter("celery-task-meta-*")]
    assert len(meta) > 10
    poll(lambda: dep.sim.telegram.messages, timeout=15)

    def flower_tasks() -> dict[str, Any]:
        # Workers run without -E; Flower switches task events on in them within seconds (its
        # --enable_events default). A venue task sent from then on must show up, arguments and all.
        dep.app.send_task("xtb.venue.get_position", queue="lighter1", kwargs={"account": "lighter1", "symbol": "ETH"})
        captured: dict[str, Any] = requests.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
        return captured

    assert poll(flower_tasks, timeout=30, interval=1.0), "Flower captured no task events"
    tasks = flower_tasks()
    sources = {
        "worker logs": "\n".join(p.read_text(errors="replace") for p in dep.tmp.glob("worker-*.log")),
        "flower/relay/dashboard logs": "\n".join(p.read_text(errors="replace") for p in dep.tmp.glob("*.log")
                                                if not p.name.startswith("worker-")),
        "task results": "\n".join(meta),
        "task events (Flower)": json.dumps(tasks),
        "heartbeats": json.dumps(dep.client.hgetall("xtb:hb:last")),
        "alert outbox": json.dumps(dep.alerts()),
        "telegram messages": json.dumps(dep.sim.telegram.messages),
        "all of redis": _redis_dump(dep),
    }
    found = {where: leaks(text, secrets) for where, text in sources.items()}
    assert not any(found.values()), {k: v for k, v in found.items() if v}
    assert os.environ.get("XTB_DASHBOARD_TOKEN") != DASHBOARD_TOKEN
