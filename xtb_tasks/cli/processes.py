"""Start, watch and stop the processes of a local deployment (``xtb workers``, ``xtb demo``).

Each worker is a real ``celery worker`` subprocess with its own account queue. Everything that
is started is stopped on exit, also on Ctrl-C, children included, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from core.config import Settings
from core.policies import ORCHESTRATOR_QUEUE, worker_argv
from core.redis_conn import configured_url, data_dir, ensure_embedded_redis, resolve_redis_url, stop_embedded_redis
from core.redis_target import probe

log = logging.getLogger(__name__)


@dataclass
class ManagedProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    cmd: list[str]
    restarts: int = 0


#: Restarts per process before supervision gives up (a crash loop needs a person, not more restarts).
MAX_RESTARTS = 5


class ProcessSet:
    """A group of subprocesses sharing one config and one Redis.

    ``start_redis``: with no Redis configured, start this checkout's embedded one (the demo) rather
    than require one that already answers (``xtb workers``)."""

    def __init__(self, settings: Settings, *, log_dir: Path | None = None,
                 extra_env: dict[str, str] | None = None, start_redis: bool = False) -> None:
        self.settings = settings
        # Stop the embedded Redis on exit only if this process set started it.
        self.owns_redis = False
        if start_redis and configured_url(settings) is None:
            embedded = ensure_embedded_redis()
            self.redis_url, self.owns_redis = embedded.url, embedded.started
        else:
            self.redis_url = resolve_redis_url(settings)
            # One line naming what failed (no sentinel answers, no such primary, AUTH refused)
            # before any worker starts, instead of workers retrying it in their logs.
            probe(self.redis_url, settings.redis_access)
        self.log_dir = log_dir or (data_dir() / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({"REDIS_URL": self.redis_url, "PYTHONWARNINGS": "ignore::DeprecationWarning",
                         "NO_PROXY": "127.0.0.1,localhost"})
        if settings.path:
            self.env["XTB_CONFIG"] = str(settings.path)
        self.env.update(extra_env or {})
        self.procs: list[ManagedProcess] = []

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, name: str, cmd: list[str]) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        managed = ManagedProcess(name, self._spawn(cmd, log_path), log_path, cmd)
        self.procs.append(managed)
        log.info("started %s (pid %s), log %s", name, managed.proc.pid, log_path)
        return managed

    def _spawn(self, cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            # Own process group: Ctrl-C in the terminal reaches us first, and we stop them in order.
            return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def supervise(self) -> list[str]:
        """Restart processes that died, as systemd's Restart=on-failure does; returns their names.

        A worker can die on an upstream bug (kombu 5.7 exits a worker holding a countdown task when
        Redis restarts); its cycle is safe either way, but the account needs its worker back.
        """
        restarted = []
        for managed in self.procs:
            code = managed.proc.poll()
            if code is None:
                continue
            if managed.restarts >= MAX_RESTARTS:
                raise RuntimeError(f"{managed.name} keeps dying (status {code}, {managed.restarts} restarts); "
                                   f"see {managed.log_path}")
            log.warning("%s exited with status %s; restarting it", managed.name, code)
            _signal_group(managed.proc, signal.SIGKILL)  # its pool children, if any survived it
            managed.proc = self._spawn(managed.cmd, managed.log_path)
            managed.restarts += 1
            restarted.append(managed.name)
        return restarted

    def worker_command(self, queue: str) -> list[str]:
        return [sys.executable, "-m", "celery", *worker_argv(queue)]

    def start_workers(self, *, accounts: list[str] | None = None, orchestrator: bool = True) -> None:
        for account in accounts if accounts is not None else list(self.settings.accounts):
            self.start(f"worker-{account}", self.worker_command(account))
        if orchestrator:
            self.start("worker-orchestrator", self.worker_command(ORCHESTRATOR_QUEUE))

    def expected_workers(self) -> set[str]:
        return {m.name.removeprefix("worker-") for m in self.procs if m.name.startswith("worker-")}

    def ping_workers(self, timeout: float = 60.0) -> set[str]:
        """Wait until every started worker answers ``celery inspect ping``; returns their queue names."""
        from xtb_tasks.worker.celery_app import app

        expected = self.expected_workers()
        answered: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            replies = app.control.ping(timeout=0.5) or []
            answered = {name.split("@", 1)[0] for reply in replies for name in reply}
            if expected <= answered:
                return expected
        missing = ", ".join(sorted(expected - answered))
        raise RuntimeError(f"workers did not answer ping within {timeout:.0f}s: {missing}")

    def check_alive(self) -> None:
        for managed in self.procs:
            code = managed.proc.poll()
            if code is not None:
                tail = managed.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{managed.name} exited with status {code}; last log lines:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        for managed in reversed(self.procs):
            if managed.proc.poll() is None:
                _signal_group(managed.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for managed in reversed(self.procs):
            try:
                managed.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", managed.name, timeout)
            _signal_group(managed.proc, signal.SIGKILL)
        self.procs.clear()
        if self.owns_redis:
            stop_embedded_redis()
            self.owns_redis = False


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
