"""[redis] tls with a CA and a client certificate: a real redis-server that speaks only TLS and
requires client certificates; the bot's client, the CLI probe and a real Celery worker reach it,
and a client without the certificate is refused with one line."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import load_settings
from core.redis_target import RedisAccess, RedisUnavailable, make_client, probe
from tests.helpers.services import start_worker
from tests.helpers.support import free_port, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed here")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=xtb-test-ca", cwd=directory)
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=directory)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    from core.redis_conn import redis_server_binary

    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"),
                             "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "yes",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    access = RedisAccess(tls=True, tls_ca_file=certs / "ca.pem", tls_cert_file=certs / "client.pem",
                         tls_key_file=certs / "client.key")
    try:
        wait_until(lambda: _probes(f"redis://127.0.0.1:{port}/0", access), timeout=10, what="the TLS redis-server")
        yield port, certs
    finally:
        proc.terminate()
        proc.wait(10)


def _probes(url: str, access: RedisAccess) -> bool:
    try:
        probe(url, access)
    except RedisUnavailable:
        return False
    return True


def tls_config(tmp_path: Path, port: int, certs: Path) -> Path:
    path = tmp_path / "xtb.toml"
    path.write_text("\n".join([
        "[redis]", f'url = "redis://127.0.0.1:{port}/0"', "tls = true", f'tls_ca_file = "{certs / "ca.pem"}"',
        f'tls_cert_file = "{certs / "client.pem"}"', f'tls_key_file = "{certs / "client.key"}"', ""]))
    return path


def test_clients_and_a_worker_reach_redis_over_tls(tmp_path: Path, tls_redis: tuple[int, Path]) -> None:
    port, certs = tls_redis
    settings = load_settings(tls_config(tmp_path, port, certs))
    assert settings.redis_url is not None
    client = make_client(settings.redis_url, settings.redis_access)
    client.set("xtb:tls-test", "1")
    assert client.get("xtb:tls-test") == "1"

    # The Celery broker and result backend over the same TLS settings, in a real worker process.
    worker = start_worker(["orchestrator"], name="tls", config_path=settings.path, redis_url=settings.redis_url,
                          log_dir=tmp_path)
    try:
        from celery import Celery

        from xtb_tasks.worker.celery_app import celery_settings

        app = Celery("xtb-tls-test")
        app.conf.update(celery_settings(settings, settings.redis_url))
        replies = app.control.ping(timeout=5)
        assert any("tls@" in name for reply in replies for name in reply), replies
        app.close()
    finally:
        worker.stop()


def test_a_client_without_its_certificate_is_refused_in_one_line(tls_redis: tuple[int, Path]) -> None:
    port, certs = tls_redis
    with pytest.raises(RedisUnavailable) as err:
        probe(f"redis://127.0.0.1:{port}/0", RedisAccess(tls=True, tls_ca_file=certs / "ca.pem"), timeout=2)
    assert "\n" not in str(err.value) and f"127.0.0.1:{port}" in str(err.value), err.value
