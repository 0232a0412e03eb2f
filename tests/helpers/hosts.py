"""Hosts for the partition tests: each worker in its own Linux network namespace, as on its own machine.

Topology of one run (every name carries the pytest process id, so parallel runs never clash and a
later run can tell a dead run's leftovers from a live one's):

```
 root namespace                                         namespace xtbnet-<pid>-<host>
 ┌──────────────────────────────────────────┐          ┌───────────────────────────┐
 │ bridge xr<pid>  10.213.N.1/25   (Redis)  │◄─ veth ─►│ redis0  10.213.N.(10+k)   │
 │ bridge xv<pid>  10.213.N.129/25 (venues) │◄─ veth ─►│ venue0  10.213.N.(138+k)  │
 └──────────────────────────────────────────┘          └───────────────────────────┘
```

Redis listens on the Redis bridge's address (and loopback, for the test process); the simulators on
the venue bridge's. A host reaches each over its own veth pair, so :meth:`Hosts.cut` can take a host
off Redis alone (its venue link stays up: a cut venue worker can still reach its venue, the case the
account lease and fencing exist for) by setting the root-side end of its Redis veth down: packets are
dropped silently, as by a pulled cable, and established TCP connections hang rather than reset. The
block 10.213.N.0/24 is chosen free of every address on the machine; nothing is routed beyond it.

Each host also has its own host name (a UTS namespace); process ids stay shared, as they never
cross hosts in production anyway. Needs root, ``unshare`` and ``ip`` with netns support;
:func:`require_netns` skips, saying which is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

NS_PREFIX = "xtbnet-"
#: Addresses of a run come from one /24 of this /16, never used elsewhere on the machine.
BLOCK = ipaddress.ip_network("10.213.0.0/16")
MAX_HOSTS = 100


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message carries the command and its stderr."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (inside ``netns`` when given); returns stdout, raises :class:`NetnsError`."""
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here; None when they can."""
    if os.geteuid() != 0:
        return "partition tests need root to create network namespaces (ip netns, veth); run them as root"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("hostname", "hostname")):
        if shutil.which(tool) is None:
            return f"partition tests need the '{tool}' command ({package}) to give each worker its own host"
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except NetnsError as exc:
        return f"ip netns is not usable here ({exc})"
    ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)


@dataclass(frozen=True)
class Host:
    """One namespace.

    Fields:
      name        the test's name for it (``orch-a``, ``l2-b``)
      netns       the namespace's name (``xtbnet-<pid>-<name>``)
      index       its number in the run (its addresses end in ``10 + index`` and ``138 + index``)
      redis_link  the root-side end of its Redis veth (what :meth:`Hosts.cut` sets down)
      venue_link  the root-side end of its venue veth
    """

    name: str
    netns: str
    index: int
    redis_link: str
    venue_link: str

    @property
    def hostname(self) -> str:
        return f"xtb-{self.name}"

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside this host: its network namespace and a UTS
        namespace with its own host name, so that a process here is on another host for whatever
        compares host names (the account lease breaks a dead holder's lease only on its own host).
        Each step execs the next: the process started is the program itself."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname]


@dataclass
class Hosts:
    """The namespaces, bridges and addresses of one run; :meth:`close` removes them all."""

    tag: str
    subnet: ipaddress.IPv4Network
    hosts: dict[str, Host] = field(default_factory=dict)
    cut_links: set[str] = field(default_factory=set)

    @property
    def redis_bridge(self) -> str:
        return f"xr{self.tag}"

    @property
    def venue_bridge(self) -> str:
        return f"xv{self.tag}"

    @property
    def redis_addr(self) -> str:
        """Where Redis listens for the hosts."""
        return str(self.subnet[1])

    @property
    def venue_addr(self) -> str:
        """Where the simulators listen for the hosts."""
        return str(self.subnet[129])

    def add(self, name: str) -> Host:
        index = len(self.hosts)
        if index >= MAX_HOSTS or not re.fullmatch(r"[a-z0-9-]{1,20}", name) or name in self.hosts:
            raise ValueError(f"host name {name!r}: lower-case letters, digits and '-', unique, at most {MAX_HOSTS}")
        host = Host(name, f"{NS_PREFIX}{self.tag}-{name}", index, f"xr{self.tag}h{index}", f"xv{self.tag}h{index}")
        self.hosts[name] = host
        ip("netns", "add", host.netns)
        ip("link", "set", "lo", "up", netns=host.netns)
        self._link(host, host.redis_link, self.redis_bridge, "redis0", 10 + index)
        self._link(host, host.venue_link, self.venue_bridge, "venue0", 138 + index)
        return host

    def _link(self, host: Host, outer: str, bridge: str, inner: str, last_octet: int) -> None:
        temp = f"{outer}p"
        ip("link", "add", outer, "type", "veth", "peer", "name", temp)
        ip("link", "set", temp, "netns", host.netns)
        ip("link", "set", temp, "name", inner, netns=host.netns)
        ip("addr", "add", f"{self.subnet[last_octet]}/25", "dev", inner, netns=host.netns)
        ip("link", "set", inner, "up", netns=host.netns)
        ip("link", "set", outer, "master", bridge)
        ip("link", "set", outer, "up")

    def cut(self, name: str, link: str = "redis") -> None:
        """Take host ``name`` off Redis (``link="redis"``) or off the venues (``"venue"``): packets dropped."""
        outer = self._outer(name, link)
        ip("link", "set", outer, "down")
        self.cut_links.add(outer)

    def heal(self, name: str, link: str = "redis") -> None:
        outer = self._outer(name, link)
        ip("link", "set", outer, "up")
        self.cut_links.discard(outer)

    def _outer(self, name: str, link: str) -> str:
        host = self.hosts[name]
        return {"redis": host.redis_link, "venue": host.venue_link}[link]

    def no_proxy(self) -> str:
        """``NO_PROXY`` for processes on the hosts: the simulators and Redis are never behind a proxy."""
        return ",".join(["127.0.0.1", "localhost", self.redis_addr, self.venue_addr])

    def close(self) -> None:
        """Kill what still runs in the namespaces, then remove them and the bridges (idempotent)."""
        for host in self.hosts.values():
            remove_netns(host.netns)
        for bridge in (self.redis_bridge, self.venue_bridge):
            ip("link", "del", bridge, check=False)
        self.hosts.clear()


def remove_netns(netns: str) -> None:
    """SIGKILL the processes inside ``netns`` (only this run's processes live there) and delete it;
    deleting it removes the veth ends inside, which removes their root-side peers."""
    for pid in ip("netns", "pids", netns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", netns, check=False)


def remove_dead_runs() -> None:
    """Remove the namespaces and bridges of earlier runs whose pytest process is gone (a run
    killed before its teardown); a live run's are left alone."""
    for line in ip("netns", "list", check=False).splitlines():
        match = re.match(rf"{NS_PREFIX}(\d+)-\S+", line)
        if match and not _alive(int(match.group(1))):
            remove_netns(match.group(0))
    for match in re.finditer(r"^\d+: (x[rv](\d+))[:@]", ip("-o", "link", "show", check=False), re.M):
        if not _alive(int(match.group(2))):
            ip("link", "del", match.group(1), check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> ipaddress.IPv4Network:
    used = {ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", ip("-o", "-4", "addr", "show"))}
    # The search starts at the pid's own /24, so runs started side by side seldom even look at the same one.
    candidates = list(BLOCK.subnets(new_prefix=24))
    start = os.getpid() % len(candidates)
    candidates = candidates[start:] + candidates[:start]
    for subnet in candidates:
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NetnsError(f"no free /24 left in {BLOCK}")


@contextlib.contextmanager
def network(names: tuple[str, ...]) -> Iterator[Hosts]:
    """A run's two bridges (Redis and venues) and one host per name; removed on exit, even on failure."""
    require_netns()
    remove_dead_runs()
    hosts = Hosts(str(os.getpid()), _free_subnet())
    try:
        for bridge, addr in ((hosts.redis_bridge, hosts.redis_addr), (hosts.venue_bridge, hosts.venue_addr)):
            ip("link", "add", bridge, "type", "bridge")
            ip("addr", "add", f"{addr}/25", "dev", bridge)
            ip("link", "set", bridge, "up")
        for name in names:
            hosts.add(name)
        yield hosts
    finally:
        hosts.close()


def placed_start_worker(hosts: Hosts, placement: dict[str, str], start: Any) -> Any:
    """A ``start_worker`` that runs worker ``name`` inside host ``placement[name]``."""
    def start_on_host(queues: list[str], *, name: str, **kwargs: Any) -> Any:
        host = hosts.hosts[placement[name]]
        extra = {"NO_PROXY": hosts.no_proxy(), **(kwargs.pop("extra_env", None) or {})}
        return start(queues, name=name, prefix=host.prefix(), extra_env=extra, **kwargs)

    return start_on_host
