"""Redis Sentinel through the real CLI: a command reaches the primary the Sentinels name, and a
Sentinel list that does not answer, a wrong primary name, refused credentials or a credential
variable that is not set end the command with one line naming what failed and a non-zero exit,
never a traceback, never the password."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.sentinel import MASTER_NAME, PASSWORD_ENV, USER_ENV, SentinelCluster
from tests.helpers.services import ROOT
from tests.helpers.support import free_port, write_config

DEAD_URLS = {"backpack": "http://127.0.0.1:9", "backpack_ws": "ws://127.0.0.1:9", "lighter": "http://127.0.0.1:9",
             "lighter_ws": "ws://127.0.0.1:9", "telegram": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    nodes = SentinelCluster(tmp_path_factory.mktemp("sentinel-cli"), secrets.token_hex(12)).start()
    yield nodes
    nodes.stop()


def config(tmp_path: Path, redis_lines: list[str]) -> Path:
    path = write_config(tmp_path / "xtb.toml", DEAD_URLS)
    path.write_text("[redis]\n" + "\n".join(redis_lines) + "\n\n" + path.read_text())
    return path


def sentinel_lines(ports: list[int], master: str = MASTER_NAME) -> list[str]:
    listed = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return [f"sentinels = [{listed}]", f'master_name = "{master}"', f'username_env = "{USER_ENV}"',
            f'password_env = "{PASSWORD_ENV}"']


def xtb(path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", USER_ENV, PASSWORD_ENV)}
    full = {**base, "PYTHONPATH": str(ROOT), "XTB_DATA_DIR": str(path.parent / ".xtb"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "xtb_tasks.cli", "--config", str(path), *args], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=timeout)


def one_line_failure(result: subprocess.CompletedProcess[str], *expected: str, secret: str = "") -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert lines[0].startswith("error: redis: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    if secret:
        assert secret not in result.stderr + result.stdout
    return lines[0]


def test_status_reaches_the_primary_the_sentinels_name(tmp_path: Path, cluster: SentinelCluster) -> None:
    path = config(tmp_path, sentinel_lines([n.port for n in cluster.sentinels]))
    result = xtb(path, "cycle", "status", "--json", env=cluster.env())
    assert result.returncode == 0, result.stderr
    assert cluster.password not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [("status",), ("cycle", "status"), ("workers",)])
def test_sentinels_that_do_not_answer(tmp_path: Path, cluster: SentinelCluster, command: tuple[str, ...]) -> None:
    dead = [free_port(), free_port()]
    result = xtb(config(tmp_path, sentinel_lines(dead)), *command, env=cluster.env())
    one_line_failure(result, "no sentinel answered", f"127.0.0.1:{dead[0]}", f"127.0.0.1:{dead[1]}")


def test_a_wrong_primary_name(tmp_path: Path, cluster: SentinelCluster) -> None:
    result = xtb(config(tmp_path, sentinel_lines([n.port for n in cluster.sentinels], master="nope")), "status",
                 env=cluster.env())
    one_line_failure(result, "no primary named 'nope'", "master_name")


def test_wrong_credentials(tmp_path: Path, cluster: SentinelCluster) -> None:
    wrong = secrets.token_hex(8)
    result = xtb(config(tmp_path, sentinel_lines([n.port for n in cluster.sentinels])), "workers",
                 env={USER_ENV: "xtb", PASSWORD_ENV: wrong})
    one_line_failure(result, "refused AUTH", f"${PASSWORD_ENV}", secret=wrong)
    # Nothing was started: no worker log was written.
    assert not (tmp_path / ".xtb" / "logs").exists() or not list((tmp_path / ".xtb" / "logs").iterdir())


def test_a_credential_variable_that_is_not_set(tmp_path: Path, cluster: SentinelCluster) -> None:
    result = xtb(config(tmp_path, sentinel_lines([n.port for n in cluster.sentinels])), "status")
    one_line_failure(result, f"${USER_ENV}", "not set")


def test_beat_holds_its_lock_on_the_primary_the_sentinels_name(tmp_path: Path, cluster: SentinelCluster) -> None:
    """RedBeat (celery beat) through the Sentinels: it takes its lock and writes its schedule on the primary."""
    import time

    from core.redis_target import make_client

    path = config(tmp_path, sentinel_lines([n.port for n in cluster.sentinels]))
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env = {**base, **cluster.env(), "PYTHONPATH": str(ROOT), "XTB_CONFIG": str(path)}
    log = tmp_path / "beat.log"
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "xtb_tasks", "beat", "-S", "redbeat.RedBeatScheduler",
                             "--loglevel", "INFO", "--logfile", str(log), "--pidfile", ""], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = make_client(cluster.url, cluster.access_from_env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.exists("xtb:redbeat:lock"):
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert client.exists("xtb:redbeat:lock"), log.read_text() if log.exists() else "no beat log"
        assert client.zcard("xtb:redbeat:schedule") >= 1  # the watchdog's entry
    finally:
        proc.terminate()
        proc.wait(20)
