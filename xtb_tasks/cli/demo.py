"""``xtb demo`` (``make demo``): the whole system on this machine against the simulators.

Starts the embedded Redis, the simulators, one real worker per account plus the orchestrator,
the alert relay and the dashboard; runs one hedge cycle with live progress on the demo market
(:func:`demo_profile`: every venue rule on, a falling price path), waits for the market to
liquidate Lighter2's long leg and shows the exit; prints a summary with the PnL split into
trading, fees and funding; stops everything. Exit status 0 only when the outcome is right: hedged
after the cycle, Lighter2 liquidated by the simulator's margin engine, flat after the exit, fees
and funding in the PnL, and the expected alerts delivered to the Telegram stand-in.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from core.config import Settings, load_settings
from core.policies import ORCHESTRATOR_QUEUE
from xtb_tasks.cli import UserError

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "demo.toml"
#: The normal end of a cycle is "Cycle completed" (cycle_completed), not an emergency exit.
EXPECTED_ALERTS = ("cycle_started", "cycle_hedged", "cycle_finished", "cycle_completed")
COMPLETED_TEXT = "Cycle completed"
#: The demo's cycle sizes at 40x (the bot raises the Lighter accounts' leverage to it) on accounts
#: that start with $1000: a leg is ~12.8 ETH, which the default book (20 levels of 5 ETH a side)
#: fills without a remainder.
DEMO_LEVERAGE = 40.0
DEMO_COLLATERAL = Decimal(1000)
#: How long the demo waits for the market to liquidate a leg (it takes ~40 s on the demo path).
LIQUIDATION_WAIT_SECS = 120.0


def demo_profile() -> Any:
    """The simulators' default venue rules (fees, funding, initial margin, the liquidation engine,
    Backpack's rate limit) on a price path tuned for the demo, not the rules: it falls
    0.04 % a second with little noise, so Lighter2's long leg at 40x (1.4 % from its maintenance
    margin) is liquidated by the market within a minute while the short Lighter1 gains. Funding
    settles every 10 s instead of hourly, at the venues' per-interval rates, so a one-minute
    cycle shows some."""
    from dataclasses import replace

    from simulators.profile import SimProfile

    rules = SimProfile()
    return replace(rules, price_path=replace(rules.price_path, drift=Decimal("-0.0004"), volatility=Decimal("0.0002")),
                   funding=replace(rules.funding, interval_secs=10.0))


def ensure_demo_telegram_keys(settings: Settings) -> None:
    path = settings.telegram.keys_file
    if path is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"bot_token: demo{secrets.token_hex(8)}:{secrets.token_hex(16)}\nchat_id: 1001\n")
        path.chmod(0o600)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


class Demo:
    def __init__(self, settings: Settings, emit: Any, profile: Any = None) -> None:
        self.settings = settings
        self.emit = emit
        self.profile = profile
        self.started = time.monotonic()
        self.sim: Any = None
        self.procs: Any = None
        self.online_bots: list[str] = []

    def say(self, text: str) -> None:
        self.emit(f"[{time.monotonic() - self.started:6.2f}s] {text}")

    def start(self) -> None:
        from simulators.server import SimulatorServer
        from xtb_tasks.cli.processes import ProcessSet

        grp = next(iter(self.settings.groups.values()))
        bp, l1 = self.settings.account(grp.backpack), self.settings.account(grp.lighter1)
        self.sim = SimulatorServer(backpack_port=port_of(bp.base_url), lighter_port=port_of(l1.base_url),
                                   telegram_port=port_of(self.settings.telegram.api_url), profile=self.profile,
                                   starting_collateral=DEMO_COLLATERAL)
        try:
            self.sim.start()
        except RuntimeError as exc:
            raise UserError(f"simulators could not start ({exc}); is another demo or `xtb sim` running?") from None
        self.say(f"simulators up: {json.dumps(self.sim.urls)}")
        self.procs = ProcessSet(self.settings, start_redis=True)
        # The Celery app this process imports later publishes to the same Redis as the workers.
        os.environ["REDIS_URL"] = self.procs.redis_url
        self.say(f"redis at {self.procs.redis_url}" + (" (embedded, started now)" if self.procs.owns_redis else ""))
        self.procs.start_workers()
        xtb = [sys.executable, "-m", "xtb_tasks.cli"]
        self.procs.start("alert-relay", [*xtb, "alerts", "relay"])
        self.procs.start("dashboard", [*xtb, "dashboard", "--port", str(self.settings.dashboard.port)])
        names = self.procs.ping_workers(timeout=90)
        self.say(f"workers answering ping: {', '.join(sorted(names))}")
        self.online_bots = self.wait_bots_online(timeout=20)
        self.say(f"dashboard shows online: {', '.join(self.online_bots) or 'none'}")

    def wait_bots_online(self, timeout: float) -> list[str]:
        """The dashboard's own API, as the user's browser sees it: every account's bot online."""
        import requests

        url = f"http://{self.settings.dashboard.host}:{self.settings.dashboard.port}/api/status"
        accounts = set(self.settings.accounts)
        deadline = time.monotonic() + timeout
        online: list[str] = []
        while time.monotonic() < deadline:
            try:
                bots = requests.get(url, timeout=2).json().get("bots", [])
            except (requests.RequestException, ValueError):
                bots = []
            online = sorted(b["name"] for b in bots if b.get("online"))
            seen = {(b.get("payload") or {}).get("account") for b in bots if b.get("online")}
            if accounts <= seen:
                break
            time.sleep(0.3)
        return online

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.stop()
        if self.sim is not None:
            self.sim.stop()


def clear_previous_cycles(client: Any, settings: Settings, demo: Demo) -> None:
    """A demo killed mid-cycle left an active cycle in the embedded Redis: unwind it first."""
    from core.cycle_record import active_cycle_ids
    from orchestrator.recovery import unwind_all
    from xtb_tasks.worker.cycle_task import CeleryScheduler

    if not active_cycle_ids(client):
        return
    demo.say("unwinding cycles left active by an earlier run")
    unwind_all(client, CeleryScheduler())
    deadline = time.monotonic() + 30
    while active_cycle_ids(client) and time.monotonic() < deadline:
        time.sleep(0.2)


def wait_for_alerts(demo: Demo, cycle_id: str, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    texts: list[str] = []
    while time.monotonic() < deadline:
        texts = [t for t in demo.sim.telegram.texts() if cycle_id in t]
        if any(t.startswith(COMPLETED_TEXT) for t in texts) and len(texts) >= len(EXPECTED_ALERTS):
            break
        time.sleep(0.2)
    return texts


def run_demo(settings: Settings, emit: Any) -> dict[str, Any]:
    from core.cycle_record import CycleRecord, Stage
    from core.redis_conn import redis_client
    from xtb_tasks.cli.cycle import cycle_summary, follow_cycle
    from xtb_tasks.worker.results import wait_result

    ensure_demo_telegram_keys(settings)
    demo = Demo(settings, emit, demo_profile())
    try:
        demo.start()
        client = redis_client(demo.procs.redis_url)
        clear_previous_cycles(client, settings, demo)
        from xtb_tasks.worker.celery_app import app

        group = next(iter(settings.groups))
        demo.say(f"step 1: one full hedge cycle in group {group} at {DEMO_LEVERAGE:.0f}x")
        start = {"group": group, "leverage": DEMO_LEVERAGE}
        cycle_id = wait_result(app, app.send_task("xtb.hedge.start_cycle", kwargs=start,
                                                  queue=ORCHESTRATOR_QUEUE).id, 60)["cycle_id"]
        shown: set[str] = set()
        follow_cycle(client, cycle_id, lambda line: demo.say(f"  {line}"), until=Stage.MONITORING, timeout=60,
                     shown=shown)
        hedged = CycleRecord(client, cycle_id).all()
        demo.say(f"step 2: the price falls ({demo.sim.exchange.mark('lighter', 'ETH'):.2f} now); waiting for the "
                 f"market to liquidate Lighter2's long leg")
        follow_cycle(client, cycle_id, lambda line: demo.say(f"  {line}"), until=Stage.DONE,
                     timeout=LIQUIDATION_WAIT_SECS, shown=shown)
        texts = wait_for_alerts(demo, cycle_id)
        l2_index = str(settings.account(settings.group(group).lighter2).account_index)
        by_market = [e for e in demo.sim.exchange.liquidations
                     if (e.venue, e.account, e.cause) == ("lighter", l2_index, "engine")]
        return summarize(demo, cycle_summary(CycleRecord(client, cycle_id)), hedged, texts, by_market,
                         demo.sim.exchange.request_totals("lighter"))
    finally:
        demo.stop()


def summarize(demo: Demo, final: dict[str, Any], hedged: dict[str, Any], texts: list[str],
              by_market: list[Any], requests: dict[str, dict[str, int]]) -> dict[str, Any]:
    hedged_positions = hedged.get("positions") or {}
    net_after_entry = hedged_positions.get("net")
    step = Decimal((hedged.get("bp_rules") or {}).get("step_size") or "0.0001")
    final_positions = {k: v for k, v in (final.get("positions") or {}).items() if k in ("BP", "L1", "L2")}
    split = final.get("pnl_split") or {}
    checks = {
        "hedged_after_cycle": net_after_entry is not None and abs(Decimal(net_after_entry)) <= step,
        "flat_after_exit": final.get("outcome") == "flat" and all(Decimal(str(v or 0)) == 0 for v in final_positions.values()),
        "reason_is_lighter2_zero": final.get("reason") == "lighter2_zero",
        "lighter2_liquidated_by_the_market": bool(by_market),
        "fees_and_funding_in_pnl": _paid(split, "fees") and _paid(split, "funding"),
        "lighter_within_its_rate_limit": bool(requests) and all(c["limited"] == 0 for c in requests.values()),
        "alerts_delivered": any(t.startswith(COMPLETED_TEXT) for t in texts) and len(texts) >= len(EXPECTED_ALERTS),
        "bots_online_on_dashboard": len(demo.online_bots) >= len(demo.settings.accounts),
    }
    return {
        "cycle_id": final["cycle_id"], "outcome": final.get("outcome"), "reason": final.get("reason"),
        "fills": {leg: {k: v.get(k) for k in ("account", "side", "requested", "filled", "avg_price", "state")}
                  for leg, v in sorted((final.get("legs") or {}).items(),
                                       key=lambda item: float(item[1].get("filled_at") or 0))
                  if isinstance(v, dict)},
        "positions_when_hedged": hedged_positions, "net_delta_when_hedged": net_after_entry,
        "positions_after_exit": final_positions, "pnl": final.get("pnl"), "pnl_split": final.get("pnl_split"),
        "worst_net": final.get("worst_net"), "lighter_requests": requests,
        "liquidations": [{"account": e.account, "quantity": str(e.quantity), "price": f"{e.price:.2f}",
                          "cause": e.cause} for e in by_market],
        "stage_times": final.get("stage_times"), "telegram_messages": texts,
        "dashboard_url": f"http://{demo.settings.dashboard.host}:{demo.settings.dashboard.port}/",
        "dashboard_bots_online": demo.online_bots,
        "checks": checks, "ok": all(checks.values()), "elapsed_secs": round(time.monotonic() - demo.started, 2),
    }


def _paid(split: dict[str, Any], part: str) -> bool:
    # Some venue's split of the cycle's PnL shows a non-zero amount of ``part`` (fees or funding).
    return any(Decimal(str(role.get(part) or 0)) != 0 for role in split.values() if isinstance(role, dict))


def print_summary(summary: dict[str, Any]) -> None:
    click.echo("\n=== summary ===")
    click.echo(f"cycle {summary['cycle_id']}: outcome {summary['outcome']}, reason {summary['reason']}")
    for leg, fill in summary["fills"].items():
        click.echo(f"  {leg:<16} {fill['side']:<4} {fill['filled']}/{fill['requested']} on {fill['account']} "
                   f"avg {fill['avg_price']} ({fill['state']})")
    click.echo(f"positions when hedged: {summary['positions_when_hedged']}")
    click.echo(f"positions after exit:  {summary['positions_after_exit']}")
    for event in summary["liquidations"]:
        click.echo(f"liquidated by the market: lighter account {event['account']}, {event['quantity']} ETH at "
                   f"{event['price']}")
    click.echo(f"per-venue PnL: {summary['pnl']}")
    from xtb_tasks.cli.cycle import report_lines

    for line in report_lines({"pnl": summary["pnl"], "pnl_split": summary.get("pnl_split"),
                              "worst_net": summary.get("worst_net")}):
        click.echo(line)
    requests = ", ".join(f"{who} {c['requests']} ({c['limited']} answered 429)"
                         for who, c in sorted(summary["lighter_requests"].items()))
    click.echo(f"Lighter REST requests (Standard tier, 60 a minute each): {requests}")
    click.echo("Telegram (stand-in) received:")
    for text in summary["telegram_messages"]:
        click.echo(f"  - {text}")
    click.echo(f"dashboard: {summary['dashboard_url']} (while workers run: xtb demo --keep-running)")
    for name, ok in summary["checks"].items():
        click.echo(f"  [{'ok' if ok else 'FAILED'}] {name}")
    click.echo(f"demo {'passed' if summary['ok'] else 'FAILED'} in {summary['elapsed_secs']}s")


def keep_running(settings: Settings) -> None:
    """Everything up, plus Flower on loopback with basic auth, until Ctrl-C."""
    ensure_demo_telegram_keys(settings)
    demo = Demo(settings, click.echo)
    password = secrets.token_urlsafe(12)
    try:
        demo.start()
        demo.procs.start("flower", [sys.executable, "-m", "celery", "-A", "xtb_tasks", "flower",
                                    "--address=127.0.0.1", "--port=5555", f"--basic-auth=ops:{password}"])
        click.echo(f"dashboard http://{settings.dashboard.host}:{settings.dashboard.port}/ ; "
                   f"Flower http://127.0.0.1:5555/ (user ops, password printed once: {password})")
        click.echo("start a cycle: xtb --config examples/demo.toml cycle start --group main --follow ; Ctrl-C stops all")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(1)
            for name in demo.procs.supervise():
                click.echo(f"{name} died and was restarted")
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        demo.stop()


@click.command("demo")
@click.option("--keep-running", "keep", is_flag=True, help="Leave everything up (with Flower) until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def demo(ctx: click.Context, keep: bool, as_json: bool) -> None:
    """Run the main job on this machine against the simulators.

    \b
    Example:
      xtb demo            # or: make demo
      xtb demo --json
    """
    config = (ctx.obj or {}).get("config_file") or str(DEMO_CONFIG)
    # Every process the demo starts (and the Celery app here) reads the same config.
    os.environ["XTB_CONFIG"] = str(Path(config).resolve())
    settings = load_settings(config)
    if keep:
        keep_running(settings)
        return
    emit = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    summary = run_demo(settings, emit)
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    if not summary["ok"]:
        failed = [name for name, ok in summary["checks"].items() if not ok]
        raise UserError(f"demo outcome wrong: {', '.join(failed)}")
