"""The production deployment files: systemd units verify, the compose file says what we promise.

``systemd-analyze verify`` checks that every ExecStart binary exists, so the units are verified
from a temporary copy whose ``/opt/xtb/.venv`` paths point at this checkout's venv (the same
entry points a production install has) and whose EnvironmentFile is the shipped example.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.policies import ORCHESTRATOR_QUEUE, worker_argv
from core.redis_target import parse_sentinel_url

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
VENV_BIN = Path(sys.executable).parent
DEMO_ACCOUNTS = sorted(tomllib.loads((ROOT / "examples" / "demo.toml").read_text())["accounts"])
SERVICES = ["xtb-orchestrator.service", "xtb-beat.service", "xtb-flower.service", "xtb-dashboard.service",
            "xtb-relay.service", "xtb-watchman.service"]


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit (keys may repeat, so not configparser)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def localized_units(tmp_path: Path) -> list[Path]:
    """Copies of every unit (the template once per demo account) runnable on this machine."""
    env_file = tmp_path / "xtb.env"
    shutil.copy(DEPLOY / "xtb.env.example", env_file)
    out = []
    for unit in sorted(UNITS.iterdir()):
        text = unit.read_text().replace("/opt/xtb/.venv/bin/", f"{VENV_BIN}/")
        text = text.replace("/etc/xtb/xtb.env", str(env_file)).replace("WorkingDirectory=/opt/xtb", f"WorkingDirectory={ROOT}")
        names = [unit.name.replace("@.", f"@{a}.") for a in DEMO_ACCOUNTS] if "@." in unit.name else [unit.name]
        for name in names:
            (tmp_path / name).write_text(text)
            out.append(tmp_path / name)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = localized_units(tmp_path)
    assert {u.name for u in units} >= {*SERVICES, "xtb.target", *(f"xtb-worker@{a}.service" for a in DEMO_ACCOUNTS)}
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)], capture_output=True,
                          text=True, timeout=60)
    # Warnings about our units (unknown keys, bad specifiers, missing binaries) name their files.
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if str(tmp_path) in line or "xtb" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_systemd_units_contract() -> None:
    worker = unit_settings(UNITS / "xtb-worker@.service")
    (command,) = worker["ExecStart"]
    assert command.startswith("/opt/xtb/.venv/bin/celery -A xtb_tasks worker -Q %i ")
    for flag in ("-c 1 ", "-P prefork", "--prefetch-multiplier 1 ", "-n %i@%%h"):
        assert flag in command, flag
    # Task events cost ~100 Redis commands per cycle; Flower switches them on while it watches.
    assert " -E " not in command
    assert int(worker["TimeoutStopSec"][0]) > 120 and worker["KillMode"] == ["mixed"]
    assert worker["KillSignal"] == ["SIGTERM"]
    for name in ["xtb-worker@.service", *SERVICES]:
        unit = unit_settings(UNITS / name)
        assert unit["User"] == ["xtb"] and unit["WorkingDirectory"] == ["/opt/xtb"], name
        assert unit["EnvironmentFile"] == ["/etc/xtb/xtb.env"] and unit["Restart"][0] in ("on-failure", "always"), name
        assert "XTB_CONFIG=" in unit["Environment"][0] and "REDIS_URL=" in unit["Environment"][0], name
        assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"], name
        assert float(unit["RestartSec"][0]) > 0, name
    assert "-Q orchestrator" in unit_settings(UNITS / "xtb-orchestrator.service")["ExecStart"][0]
    assert "beat -S redbeat.RedBeatScheduler" in unit_settings(UNITS / "xtb-beat.service")["ExecStart"][0]
    flower = unit_settings(UNITS / "xtb-flower.service")
    assert "--address=127.0.0.1" in flower["ExecStart"][0] and "FLOWER_BASIC_AUTH" in flower["ExecStartPre"][0]


def test_deploy_runs_the_one_worker_command_line() -> None:
    # xtb workers, the tests and the bench build it with policies.worker_argv; deploy/ spells it out.
    for unit, queue in (("xtb-worker@.service", "%i"), ("xtb-orchestrator.service", ORCHESTRATOR_QUEUE)):
        (command,) = unit_settings(UNITS / unit)["ExecStart"]
        # "%%h" is systemd's escape for the "%h" Celery expands.
        assert command.replace("%%", "%").split() == ["/opt/xtb/.venv/bin/celery", *worker_argv(queue)], unit
    services = load_compose()["services"]
    workers = {name: s["command"] for name, s in services.items() if "worker" in s.get("command", [])}
    for name, command in workers.items():
        assert command == ["celery", *worker_argv(flag_value(command, "-Q") or "")], name


def load_compose() -> dict[str, Any]:
    import yaml  # pinned in the test extra

    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def flag_value(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def test_compose_file() -> None:
    services = load_compose()["services"]
    # Redis with Sentinel: two data nodes and three Sentinels, all started by redis/start.sh.
    for name, role in (("redis", "primary"), ("redis-replica", "replica"), ("sentinel-1", "sentinel"),
                       ("sentinel-2", "sentinel"), ("sentinel-3", "sentinel")):
        assert services[name]["command"] == [role], name
        assert services[name]["entrypoint"] == ["/bin/sh", "/opt/xtb-redis/start.sh"], name
        assert any(v.endswith(":/data") for v in services[name]["volumes"]), name
    start = (DEPLOY / "redis" / "start.sh").read_text()
    for line in ("appendonly yes", "maxmemory-policy noeviction", "user default off", "sentinel monitor xtb"):
        assert line in start, line
    workers = {name: s for name, s in services.items() if "worker" in s.get("command", [])}
    queues = {flag_value(s["command"], "-Q") for s in workers.values()}
    assert queues == {*DEMO_ACCOUNTS, "orchestrator"}
    for name, service in workers.items():
        assert flag_value(service["command"], "-c") == "1", name
        assert flag_value(service["command"], "--prefetch-multiplier") == "1", name
        assert int(service["stop_grace_period"].rstrip("s")) > 120, name
    for name in ("beat", "relay", "dashboard", "flower", "watchman"):
        assert name in services, name
    # The watchman must start and page while Redis is down.
    assert "depends_on" not in services["watchman"] and services["watchman"]["command"] == ["xtb", "watchman"]
    assert flag_value(services["beat"]["command"], "-S") == "redbeat.RedBeatScheduler"
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always"), name
        if "command" in service and service.get("entrypoint") is None:
            assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
            target = parse_sentinel_url(service["environment"]["REDIS_URL"])
            assert target is not None and len(target.sentinels) == 3 and target.master_name == "xtb", name
    assert all(port.startswith("127.0.0.1:") for s in services.values() for port in s.get("ports", []))
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "pip install /opt/xtb" in dockerfile


def test_env_example_documents_every_variable_without_secrets() -> None:
    text = (DEPLOY / "xtb.env.example").read_text()
    values = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    for name in ("XTB_CONFIG", "REDIS_URL", "FLOWER_BASIC_AUTH", "XTB_DASHBOARD_TOKEN", "XTB_TELEGRAM_BOT_TOKEN",
                 "XTB_TELEGRAM_CHAT_ID", "XTB_WATCHMAN_TELEGRAM_BOT_TOKEN", "XTB_WATCHMAN_TELEGRAM_CHAT_ID",
                 "XTB_REDIS_USER", "XTB_REDIS_PASSWORD"):
        assert name in values, name
        assert "# " in text.split(f"\n{name}=")[0].rsplit("\n\n", 1)[-1], f"{name} has no comment"
    for secret in ("FLOWER_BASIC_AUTH", "XTB_DASHBOARD_TOKEN", "XTB_TELEGRAM_BOT_TOKEN", "XTB_TELEGRAM_CHAT_ID",
                   "XTB_WATCHMAN_TELEGRAM_BOT_TOKEN", "XTB_WATCHMAN_TELEGRAM_CHAT_ID", "XTB_REDIS_PASSWORD",
                   "XTB_REDIS_SENTINEL_PASSWORD"):
        assert values[secret] == "", secret


def _start_node(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(["/bin/sh", str(DEPLOY / "redis" / "start.sh"), role], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def test_redis_start_script_runs_sentinel_acl_and_aof(tmp_path: Path) -> None:
    """deploy/redis/start.sh as systemd and compose run it: a primary, a replica and a Sentinel on
    loopback; the bot's user reaches the primary through the Sentinel, nobody else gets in."""
    import secrets

    import redis

    from core.redis_target import RedisAccess, SentinelTarget, make_client
    from tests.helpers.services import terminate
    from tests.helpers.support import free_port, wait_until

    password, sentinel_password = secrets.token_hex(12), secrets.token_hex(12)
    primary, replica, sentinel = free_port(), free_port(), free_port()
    base = {"PATH": os.environ["PATH"], "XTB_REDIS_PASSWORD": password, "XTB_REDIS_SENTINEL_PASSWORD": sentinel_password,
            "XTB_REDIS_PRIMARY_HOST": "127.0.0.1", "XTB_REDIS_PRIMARY_PORT": str(primary),
            "XTB_REDIS_ANNOUNCE": "127.0.0.1"}
    procs = []
    try:
        for role, port in (("primary", primary), ("replica", replica)):
            (tmp_path / role).mkdir()
            procs.append(_start_node(role, {**base, "XTB_REDIS_DATA": str(tmp_path / role),
                                            "XTB_REDIS_PORT": str(port)}, tmp_path / f"{role}.log"))
        (tmp_path / "sentinel").mkdir()
        procs.append(_start_node("sentinel", {**base, "XTB_REDIS_DATA": str(tmp_path / "sentinel"),
                                              "XTB_SENTINEL_PORT": str(sentinel)}, tmp_path / "sentinel.log"))
        bot = redis.Redis(port=primary, username="xtb", password=password, decode_responses=True)
        wait_until(lambda: _answers(bot) and bot.info("replication").get("connected_slaves") == 1, timeout=20,
                   what="the primary with its replica")
        assert bot.info("persistence")["aof_enabled"] == 1
        assert bot.info("memory")["maxmemory_policy"] == "noeviction"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=primary).ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            bot.flushall()
        assert not (set(os.listdir(tmp_path / "primary")) - {"users.acl", "redis.conf", "appendonlydir"})
        assert oct((tmp_path / "primary" / "users.acl").stat().st_mode & 0o777) == "0o600"
        target = SentinelTarget((("127.0.0.1", sentinel),), "xtb").url()
        os.environ.update({"XTB_DEPLOY_TEST_USER": "xtb", "XTB_DEPLOY_TEST_PASSWORD": password})
        access = RedisAccess(username_env="XTB_DEPLOY_TEST_USER", password_env="XTB_DEPLOY_TEST_PASSWORD")
        wait_until(lambda: _probes(target, access), timeout=20, what="the sentinel to name the primary")
        client = make_client(target, access)
        client.set("xtb:deploy-test", "1")
        assert client.connection_pool.get_master_address() == ("127.0.0.1", primary)
    finally:
        for proc in procs:
            terminate(proc)  # SIGKILL when a loaded machine keeps one from exiting in 10 s


def _answers(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _probes(url: str, access: Any) -> bool:
    from core.redis_target import RedisUnavailable, probe

    try:
        probe(url, access)
    except RedisUnavailable:
        return False
    return True
