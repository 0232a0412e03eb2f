"""Where the cycle's time and Redis commands go: ``python -m bench.diagnose [--cycles 20] [--pyspy SECS]``.

One group, the same deployment as ``bench.run``. Prints the Redis commands of one cycle by command
and key prefix (MONITOR), the per-command totals over ``--cycles`` cycles (INFO commandstats),
and a timeline of one cycle's hand-off (Backpack fill → Lighter1 sendTx) from the MONITOR
timestamps. ``--pyspy SECS`` records one worker (``--pyspy-queue``, default lighter1) with py-spy while cycling
(py-spy is not a project dependency: ``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from bench import measure
from bench.deploy import ORCHESTRATOR, Bench, bench_deployment

MONITOR_LINE = re.compile(r'^(?P<ts>[\d.]+) \[\d+ (?P<client>[^\]]+)\] (?P<args>.*)$')


def key_prefix(key: str) -> str:
    key = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<uuid>", key)
    key = re.sub(r"main\d?-\d{8}-\d{6}-[0-9a-f]{4}", "<cycle>", key)
    return re.sub(r"\d{3,}", "<n>", key)


class Monitor:
    """Collect MONITOR output in a thread: (ts, client, command, args)."""

    def __init__(self, url: str) -> None:
        self.conn = redis.Redis.from_url(url)
        self.lines: list[tuple[float, str, list[str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.conn.monitor() as mon:
            for item in mon.listen():
                if self.stop.is_set():
                    return
                args = item["command"].split(" ")
                self.lines.append((float(item["time"]), str(item.get("client_address", "")) + ":" +
                                   str(item.get("client_port", "")), args))

    def __enter__(self) -> Monitor:
        self.thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        redis.Redis.from_url(self.url).ping()
        self.thread.join(2)

    @property
    def url(self) -> str:
        kw = self.conn.connection_pool.connection_kwargs
        return f"redis://{kw['host']}:{kw['port']}/0"


def by_command(lines: list[tuple[float, str, list[str]]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for _, _, args in lines:
        cmd = args[0].strip('"').upper()
        key = key_prefix(args[1].strip('"')) if len(args) > 1 else ""
        out[f"{cmd} {key}"] += 1
    return out


def one_cycle_monitored(bench: Bench) -> None:
    spec = bench.specs[0]
    client = bench.redis.client()
    stats = measure.CycleStats()
    with Monitor(bench.redis.url) as mon:
        measure.one_cycle(bench, client, spec, stats, record=True)
        time.sleep(0.3)
    lines = mon.lines
    print(f"\n== one cycle: {len(lines)} Redis commands (bench polling {stats.bench_commands}) ==")
    for name, count in by_command(lines).most_common(45):
        print(f"{count:5d}  {name[:110]}")
    handoff_timeline(bench, lines, stats)
    stage_timeline(lines, "l2_entry", "monitoring")


def _stage_set(args: list[str], stage: str) -> bool:
    return args[0].upper() == "HSET" and "stage" in args and stage in args


def stage_timeline(lines: list[tuple[float, str, list[str]]], first: str, last: str) -> None:
    """Every command from the first ``stage=<first>`` write to the last ``stage=<last>`` write."""
    starts = [ts for ts, _, a in lines if _stage_set(a, first)]
    ends = [ts for ts, _, a in lines if _stage_set(a, last)]
    if not starts or not ends:
        print(f"no {first}/{last} stage writes found")
        return
    t0 = starts[0]
    print(f"\n== timeline {first} → {last} (ms) ==")
    for ts, client, args in lines:
        if t0 <= ts <= ends[-1] and not (args[0].strip('"').upper() == "HGET" and "stage" in args[-1]):
            print(f"{(ts - t0) * 1000:8.2f}  {client:22s} {' '.join(args)[:110]}")


def handoff_timeline(bench: Bench, lines: list[tuple[float, str, list[str]]], stats: measure.CycleStats) -> None:
    fill = next((ts for ts, _, a in lines if a[0].strip('"').upper() == "HSET" and any("leg:bp_entry" in x for x in a)
                 and any("filled_at" in x for x in a)), None)
    if fill is None or not stats.handoff_ms:
        print("no hand-off found")
        return
    end = fill + stats.handoff_ms[-1] / 1000 + 0.002
    print(f"\n== hand-off timeline (ms after the BP fill record; sendTx at {stats.handoff_ms[-1]:.1f} ms) ==")
    for ts, client, args in lines:
        if fill - 0.001 <= ts <= end:
            print(f"{(ts - fill) * 1000:8.2f}  {client:22s} {' '.join(args)[:120]}")


def commandstats(bench: Bench, cycles: int) -> None:
    client = bench.redis.client()
    before = {k: int(v["calls"]) for k, v in client.info("commandstats").items()}
    stats = measure.run_cycles(bench, bench.specs[0], cycles, warmup=0)
    after = {k: int(v["calls"]) for k, v in client.info("commandstats").items()}
    delta = {k: after[k] - before.get(k, 0) for k in after}
    print(f"\n== INFO commandstats per cycle over {stats.cycles} cycles (bench polling "
          f"{stats.bench_commands / stats.cycles:.1f}/cycle) ==")
    for k, v in sorted(delta.items(), key=lambda kv: -kv[1]):
        if v:
            print(f"{v / stats.cycles:8.1f}  {k.removeprefix('cmdstat_')}")
    print(f"{sum(delta.values()) / stats.cycles:8.1f}  total")
    print(f"hand-off {measure.p50_p99(stats.handoff_ms)}  overhead {measure.p50_p99(stats.overhead_ms)}")
    stage_breakdown(bench, stats.cycle_ids)


STAGES = ("planning", "bp_entry", "l1_hedge", "wait", "l2_entry", "rebalance", "monitoring")


def stage_breakdown(bench: Bench, cycle_ids: list[str]) -> None:
    """Median time from the previous stage mark to each ``t:<stage>`` (and to monitoring_started_at)."""
    rows: dict[str, list[float]] = {s: [] for s in STAGES[1:]}
    polls: Counter[str] = Counter()
    for cycle_id in cycle_ids:
        data = bench.dep.record(cycle_id)
        for leg in ("l1_hedge", "l2_entry"):
            polls[f"{leg} polls={(data.get(f'confirm:{leg}') or {}).get('polls')}"] += 1
        marks = [float(data[f"t:{s}"]) if f"t:{s}" in data else None for s in STAGES]
        for prev, cur, name in zip(marks, marks[1:], STAGES[1:], strict=False):
            if prev is not None and cur is not None:
                rows[name].append((cur - prev) * 1000)
    print("\n== median ms from the previous stage mark (t:<stage>) ==")
    for name, values in rows.items():
        print(f"{name:12s} {measure.percentile(values, 50):8.1f}  (n={len(values)})  {[round(v) for v in values][:12]}")
    print("confirmation polls per cycle:", dict(sorted(polls.items())))


def pyspy(bench: Bench, secs: int, out: Path, queue: str, gil: bool) -> None:
    # --subprocesses samples the worker's pool children too (the orchestrator runs two); --gil
    # keeps only the thread holding the GIL (where the CPU goes, not where the time waits).
    exe = str(Path(sys.executable).with_name("py-spy"))
    spy = subprocess.Popen([exe, "record", "-p", str(bench.workers[queue].proc.pid), "--subprocesses",
                            "-d", str(secs), "-r", "500", "-f", "raw", "-o", str(out), "--nonblocking",
                            *(["--gil"] if gil else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + secs
        stats = measure.CycleStats()
        client = bench.redis.client()
        while time.monotonic() < deadline:
            measure.one_cycle(bench, client, bench.specs[0], stats, record=True)
    finally:
        spy.wait(secs + 30)
    print(f"\npy-spy raw stacks of the {queue} worker (parent and pool children) in {out}")


def rss_breakdown(bench: Bench) -> None:
    print("\n== memory of venue workers (MB): rss / pss / uss, parent then children ==")
    for name, worker in bench.venue_workers().items():
        for p in measure._tree(worker.proc.pid):
            m = p.memory_full_info()
            print(f"{name:10s} {p.pid:7d} rss {m.rss / 2**20:6.1f}  pss {m.pss / 2**20:6.1f}  uss {m.uss / 2**20:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.diagnose")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--pyspy", type=int, default=0)
    parser.add_argument("--pyspy-queue", default="lighter1", help="whose worker to sample (default lighter1)")
    parser.add_argument("--pyspy-out", type=Path, default=None, help="default /tmp/xtb-bench-<queue>.txt")
    parser.add_argument("--pyspy-gil", action="store_true", help="sample only the thread holding the GIL")
    args = parser.parse_args()
    with bench_deployment() as bench:
        bench.start_workers([*bench.specs[0].accounts, ORCHESTRATOR])
        measure.run_cycles(bench, bench.specs[0], 0, warmup=2)
        one_cycle_monitored(bench)
        commandstats(bench, args.cycles)
        rss_breakdown(bench)
        if args.pyspy:
            queue = args.pyspy_queue
            pyspy(bench, args.pyspy, args.pyspy_out or Path(f"/tmp/xtb-bench-{queue}.txt"), queue, args.pyspy_gil)


if __name__ == "__main__":
    main()
