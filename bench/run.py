"""``make bench``: Celery baselines and hedge-cycle latencies against the simulators, in one run.

Starts a private redis-server, the simulators (latency 0, in this process, as the tests'
harness does) and real prefork worker processes, then measures the figures of bench/README.md
and writes ``bench/results.json``. ``--quick`` runs small N (development only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import measure
from bench.budget_bench import measure_budget
from bench.deploy import ORCHESTRATOR, Bench, bench_deployment

RESULTS = Path(__file__).resolve().parent / "results.json"
#: Past this many seconds of run time the scaling steps that would not fit in 5 minutes are skipped.
SCALING_DEADLINE_SECS = {2: 190.0, 4: 230.0}


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.phases: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        out = fn()
        self.phases[name] = round(time.monotonic() - start, 1)
        return out


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"baseline": 50, "chain": 10, "cycles": 10, "pairs": 10, "confirm": 10, "probe": 5, "scale2": 4,
                "scale4": 3, "budget_cycles": 2, "monitor_secs": 15, "push_confirms": 10, "liquidations": 3}
    return {"baseline": 300, "chain": 60, "cycles": 100, "pairs": 60, "confirm": 60, "probe": 30, "scale2": 25,
            "scale4": 20, "budget_cycles": 5, "monitor_secs": 60, "push_confirms": 60, "liquidations": 10}


def measure_one_group(bench: Bench, n: dict[str, int], clock: Clock, out: dict[str, Any]) -> None:
    app, spec, client = bench.dep.app, bench.specs[0], bench.redis.client()
    out["baseline_rtt_ms"] = measure.p50_p99(clock.phase("baseline", lambda: measure.baseline_rtt(
        app, spec.backpack, n["baseline"])))
    back_to_back = {"bare_chain_ms": measure.p50_p99(clock.phase("bare chain", lambda: measure.bare_chain(
        app, spec, n["chain"])))}
    out["bare_chain_hops"] = {"sequential": measure.BARE_HOPS, "tasks": measure.BARE_TASKS}
    out["bare_cycle_redis_cmds"] = clock.phase("bare cycle Redis commands", lambda: measure.bare_cycle_commands(
        app, client, spec, n["chain"] // 2))
    cold = measure.run_cycles(bench, spec, 0, warmup=2)  # connectors, keys, market rules
    out["first_cycles_handoff_ms"] = [round(x, 1) for x in cold.cold_handoff_ms]
    out["lighter1_worker_rss_mb_before_first_cycle"] = out.pop("_cold_rss", None)
    before, t0 = measure.total_commands(client), time.monotonic()
    with measure.MachineLoad() as load, measure.CpuTime(bench) as cpu:
        stats: measure.CycleStats = clock.phase("cycles (1 group)", lambda: measure.run_cycles(
            bench, spec, n["cycles"], warmup=0))
    out["_load_1"] = load.to_json()
    # Workers, Redis, simulators and the bench's polling: what one more group asks of the cores.
    out["cpu_ms_per_cycle"] = round(cpu.seconds * 1000 / max(stats.cycles, 1), 1)
    gross = measure.total_commands(client) - before - 1  # minus the INFO itself
    duration = time.monotonic() - t0
    out["handoff_ms"] = measure.p50_p99(stats.handoff_ms)
    back_to_back["cycle_overhead_ms"] = measure.p50_p99(stats.overhead_ms)
    out["cycle_failures"] = stats.failures
    out["rebalance_orders"] = {str(k): stats.rebalance_orders.count(k) for k in sorted(set(stats.rebalance_orders))}
    out["redis_cmds_per_cycle"] = round((gross - stats.bench_commands) / max(stats.cycles, 1), 1)
    out["redis_cmds_detail"] = {"gross_per_cycle": round(gross / max(stats.cycles, 1), 1),
                                "bench_polling_per_cycle": round(stats.bench_commands / max(stats.cycles, 1), 1),
                                "cycle_secs": round(duration / max(stats.cycles, 1), 3)}
    out["_handoff_samples_1"] = stats.handoff_ms
    pairs, paired = clock.phase("bare chain and cycle, alternating", lambda: measure.paired_overhead(
        bench, spec, n["pairs"]))
    out["bare_chain_ms"] = measure.p50_p99([bare for bare, _ in pairs])
    out["cycle_overhead_ms"] = measure.p50_p99([cycle for _, cycle in pairs])
    out["cycle_overhead_ratio_of_pairs"] = round(measure.percentile([c / b for b, c in pairs], 50), 3)
    out["cycle_failures"] += paired.failures
    out["back_to_back"] = back_to_back


def measure_footprint(bench: Bench, clock: Clock, out: dict[str, Any]) -> None:
    client = bench.redis.client()
    venue = bench.venue_workers()
    rss = {name: round(measure.rss_mb(w.proc.pid), 1) for name, w in venue.items()}
    out["worker_pss_uss_mb_each"] = {name: measure.pss_uss_mb(w.proc.pid) for name, w in venue.items()}
    time.sleep(1.0)
    before = measure.total_commands(client)
    cpu = clock.phase("idle footprint", lambda: measure.idle_cpu_percent(
        [w.proc.pid for w in bench.workers.values()], 4.0))
    idle_cmds = (measure.total_commands(client) - before - 1) / 4.0
    out["worker_rss_mb"] = max(rss.values())
    out["worker_rss_mb_each"] = rss
    out["orchestrator_rss_mb"] = round(measure.rss_mb(bench.workers[ORCHESTRATOR].proc.pid), 1)
    out["idle_cpu_percent_all_workers"] = round(cpu, 2)
    out["idle_redis_cmds_per_sec"] = round(idle_cmds, 1)


def measure_confirm(bench: Bench, n: dict[str, int], clock: Clock, out: dict[str, Any]) -> None:
    spec = bench.specs[0]
    poll = float(bench.dep.app.xtb_settings.group(spec.name).params.confirmation_poll_secs)
    samples = clock.phase("confirmation", lambda: measure.confirm_latency(bench, spec, poll, n["confirm"]))
    out["confirm_latency_ms"] = measure.p50_p99(samples)
    out["confirm_poll_secs"] = poll


def measure_scaling(bench: Bench, n: dict[str, int], clock: Clock, out: dict[str, Any]) -> None:
    scaling: dict[str, Any] = {"1": out["handoff_ms"]["p99"]}
    notes: dict[str, Any] = {"1": {"p50": out["handoff_ms"]["p50"], "n": out["handoff_ms"]["n"],
                                   "machine": out.pop("_load_1")}}
    # The floor: a Redis push waking a process that does nothing else, then one simulator request.
    venue_url = f"{bench.sim.urls['lighter']}/api/v1/orderBookOrders?market_id=0&limit=1"
    with measure.WakeupProbe(bench.redis.url, venue_url) as probe:
        clock.phase("wake-up probe (1 group)", lambda: measure.run_cycles(bench, bench.specs[0], n["probe"],
                                                                           warmup=0))
    wakeup: dict[str, Any] = {"1": probe.summary()}
    for count, key in ((2, "scale2"), (4, "scale4")):
        if clock.elapsed() > SCALING_DEADLINE_SECS[count]:
            scaling[str(count)] = None
            notes[str(count)] = f"skipped: {clock.elapsed():.0f}s elapsed, would not fit the 5-minute budget"
            continue
        specs = bench.specs[:count]
        missing = [q for s in specs for q in s.accounts if q not in bench.workers]
        clock.phase(f"start {len(missing)} more workers", partial(bench.start_workers, missing))
        with measure.MachineLoad() as load, measure.WakeupProbe(bench.redis.url, venue_url) as probe:
            results = clock.phase(f"cycles ({count} groups at once)", partial(measure.run_groups, bench, specs, n[key]))
        wakeup[str(count)] = probe.summary()
        handoffs = [x for r in results for x in r.handoff_ms]
        overheads = [x for r in results for x in r.overhead_ms]
        scaling[str(count)] = measure.p50_p99(handoffs)["p99"]
        notes[str(count)] = {"handoff": measure.p50_p99(handoffs), "cycle_overhead": measure.p50_p99(overheads),
                             "failures": [f for r in results for f in r.failures],
                             "venue_workers": len(bench.venue_workers()), "machine": load.to_json()}
    out["scaling_handoff_p99_ms"] = scaling
    out["scaling_detail"] = notes
    out["scaling_wakeup_floor_ms"] = wakeup


def targets(out: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    base, chain_ = out["baseline_rtt_ms"]["p50"], out["bare_chain_ms"]["p50"]
    poll_ms = out["confirm_poll_secs"] * 1000
    s = out["scaling_handoff_p99_ms"]
    four = s.get("4")
    return [
        ("hand-off p50 <= 1.0 x baseline RTT p50", out["handoff_ms"]["p50"] <= base,
         f'{out["handoff_ms"]["p50"]} vs {base} ms'),
        ("cycle overhead p50 <= 1.3 x bare chain p50", out["cycle_overhead_ms"]["p50"] <= 1.3 * chain_,
         f'{out["cycle_overhead_ms"]["p50"]} vs {1.3 * chain_:.2f} ms'),
        ("confirmation p99 <= poll + 15 ms", out["confirm_latency_ms"]["p99"] <= poll_ms + 15,
         f'{out["confirm_latency_ms"]["p99"]} vs {poll_ms + 15:.0f} ms'),
        ("venue worker RSS <= 150 MB", out["worker_rss_mb"] <= 150, f'{out["worker_rss_mb"]} MB'),
        ("Redis commands per cycle <= 400", out["redis_cmds_per_cycle"] <= 400,
         f'{out["redis_cmds_per_cycle"]} (Celery alone, same canvas: {out["bare_cycle_redis_cmds"]})'),
        ("hand-off p99, 4 groups <= 2 x 1 group", None if four is None else four <= 2 * s["1"],
         f'{four} vs {2 * s["1"]:.2f} ms'),
        *budget_targets(out),
    ]


def budget_targets(out: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    per_cycle = max(v["max"] for v in out["lighter_rest_requests_per_cycle"].values())
    per_minute = max(out["lighter_rest_requests_per_monitor_minute"].values(), default=None)
    stream_p99 = out["confirm_latency_stream_ms"]["p99"]
    # Monitoring rides on the stream; its REST cost is the one read every reconcile_secs that makes a
    # lost push seen within that interval (the liquidation targets below), and nothing else.
    minute_cap = 60 / out["reconcile_secs"] + 1
    return [
        ("Lighter REST requests per cycle <= 20 per account", per_cycle <= 20,
         f'max {per_cycle} ({out["lighter_rest_requests_per_cycle"]})'),
        ("HTTP 429 per cycle == 0 (Standard tier, one IP)", out["http_429_per_cycle"] == 0,
         f'{out["http_429_per_cycle"]}'),
        ("Lighter REST per monitor minute <= 60 / reconcile_secs + 1 per account",
         None if per_minute is None else per_minute <= minute_cap,
         f'{out["lighter_rest_requests_per_monitor_minute"]} over {out["lighter_monitor_secs_measured"]} s '
         f'(cap {minute_cap:.1f})'),
        ("confirmation p99 <= 10 ms after the push", stream_p99 <= 10, f"{stream_p99} ms"),
        *liquidation_targets(out),
    ]


def liquidation_targets(out: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    pushed, lost = out["liquidation_to_exit_ms"]["p99"], out["liquidation_to_exit_push_lost_ms"]["p99"]
    bound_ms = (out["reconcile_secs"] + 1) * 1000
    naked = (f'worst naked {out["liquidation_to_exit_naked_usd_secs"]["worst"]} / '
             f'{out["liquidation_to_exit_push_lost_naked_usd_secs"]["worst"]} USD·s per cycle')
    return [
        ("liquidation -> exit start p99 <= 1 s with the push", pushed <= 1000, f"{pushed} ms; {naked}"),
        ("liquidation -> exit start p99 <= reconcile_secs + 1 s, push lost", lost <= bound_ms,
         f"{lost} vs {bound_ms:.0f} ms"),
    ]


def print_table(out: dict[str, Any]) -> None:
    print("\nmetric                        p50 / value      p99")
    for key in ("baseline_rtt_ms", "bare_chain_ms", "handoff_ms", "cycle_overhead_ms", "confirm_latency_ms"):
        print(f"{key:28s} {out[key]['p50']:>10.2f} {out[key]['p99']:>10.2f}   (n={out[key]['n']})")
    for key, value in out["back_to_back"].items():
        print(f"{key + ', back to back':28s} {value['p50']:>10.2f} {value['p99']:>10.2f}   (n={value['n']})")
    print(f"{'cycle / bare, p50 of pairs':28s} {out['cycle_overhead_ratio_of_pairs']:>10.3f}")
    print(f"{'worker_rss_mb (max venue)':28s} {out['worker_rss_mb']:>10.1f}")
    print(f"{'idle_cpu_% (all workers)':28s} {out['idle_cpu_percent_all_workers']:>10.2f}")
    print(f"{'cpu_ms_per_cycle (all)':28s} {out['cpu_ms_per_cycle']:>10.1f}")
    print(f"{'redis_cmds_per_cycle':28s} {out['redis_cmds_per_cycle']:>10.1f}")
    print(f"{'  of which Celery alone':28s} {out['bare_cycle_redis_cmds']:>10.1f}   (no-op tasks, same canvas)")
    for k, v in out["scaling_handoff_p99_ms"].items():
        detail = out["scaling_detail"].get(k)
        machine = detail.get("machine") if isinstance(detail, dict) else None
        load = (f"   (CPU busy {machine['cpu_busy_percent']}%, {machine['runnable_mean']} runnable "
                f"on {machine['cores']} cores)") if machine else ""
        print(f"{'scaling hand-off p99, ' + k + ' grp':28s} {'' if v is None else f'{v:>10.2f}'}{load}")
    for k, floor in out["scaling_wakeup_floor_ms"].items():
        for name, label in (("wake", "floor: wake-up"), ("wake_and_request", "floor: + venue GET")):
            v = floor[name]
            print(f"{label + ', ' + k + ' grp':28s} {v['p50']:>10.2f} {v['p99']:>10.2f}   (n={v['n']})")
    for key, label in (("confirm_latency_stream_ms", "confirm after stream push ms"),
                       ("confirm_latency_in_cycle_ms", "  in a cycle (fill → stage)")):
        c = out[key]
        print(f"{label:28s} {c['p50']:>10.2f} {c['p99']:>10.2f}   (n={c['n']})")
    for role, v in out["lighter_rest_requests_per_cycle"].items():
        print(f"{role + ' REST reqs / cycle':28s} {v['mean']:>10.1f} {v['max']:>10d}   (mean, max; n={v['n']})")
    for role, v in out["lighter_rest_requests_per_monitor_minute"].items():
        print(f"{role + ' REST reqs / monitor min':28s} {v:>10.1f}")
    print(f"{'HTTP 429 per cycle':28s} {out['http_429_per_cycle']:>10.2f}")
    print()
    for name, ok, detail in out["targets"]:
        print(f"{'PASS' if ok else ('MISS' if ok is False else 'N/A '):4s}  {name:45s} {detail}")


def run(quick: bool) -> dict[str, Any]:
    clock = Clock()
    n = sizes(quick)
    out: dict[str, Any] = {}
    with bench_deployment() as bench:
        clock.phase("start redis, simulators, 4 workers", lambda: bench.start_workers(
            [*bench.specs[0].accounts, ORCHESTRATOR]))
        out["_cold_rss"] = round(measure.rss_mb(bench.workers[bench.specs[0].lighter1].proc.pid), 1)
        measure_one_group(bench, n, clock, out)
        measure_footprint(bench, clock, out)
        measure_confirm(bench, n, clock, out)
        measure_scaling(bench, n, clock, out)
        measure.release_results()
        clock.phase("stop", bench.close)
    clock.phase("rate-limited Lighter cycles", lambda: measure_budget(out, cycles=n["budget_cycles"],
                                                                       monitor_secs=n["monitor_secs"],
                                                                       confirms=n["push_confirms"],
                                                                       liquidations=n["liquidations"]))
    out.pop("_handoff_samples_1", None)
    out["targets"] = [[name, ok, detail] for name, ok, detail in targets(out)]
    out["phase_secs"] = clock.phases
    out["run_secs"] = round(clock.elapsed(), 1)
    out["quick"] = quick
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, for development")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS
    out = run(args.quick)
    print_table(out)
    print(f"\nrun time {out['run_secs']} s; results in {args.out}")
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
