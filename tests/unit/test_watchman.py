"""The watchman's config (one line, exit 2) and its triggers (pure: reads, silences and a clock in)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from core.config import ConfigError, load_settings, parse_settings
from core.watchman_config import WatchmanConfig
from orchestrator.watchman import GroupRead, GroupWatch
from venues.base import MarketRules

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.toml"
BP_RULES = MarketRules("ETH_USDC_PERP", Decimal("0.01"), Decimal("0.0001"), Decimal("0.0001"))
L_RULES = MarketRules("ETH", Decimal("0.01"), Decimal("0.0001"), Decimal("0.001"), market_id=0)
RULES = {"BP": BP_RULES, "L1": L_RULES, "L2": L_RULES}
HEARTBEATS_FRESH = {"orchestrator": 1.0, "backpack": 1.0, "lighter1": 1.0, "lighter2": 1.0}


def keys(tmp_path: Path) -> dict[str, dict[str, object]]:
    for name in ("bp", "l1", "l2"):
        (tmp_path / f"{name}.txt").write_text("placeholder\n")
    return {"backpack": {"keys_file": str(tmp_path / "bp.txt")},
            "lighter1": {"keys_file": str(tmp_path / "l1.txt"), "api_key_index": 10},
            "lighter2": {"keys_file": str(tmp_path / "l2.txt"), "api_key_index": 11}}


def doc_with(watchman: dict[str, object]) -> dict[str, object]:
    doc = tomllib.loads(DEMO.read_text())
    doc["watchman"] = watchman
    return doc


def error(tmp_path: Path, **watchman: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(doc_with({"accounts": keys(tmp_path), **watchman}), DEMO)
    return info.value.render()


def test_a_complete_watchman_section_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    settings = parse_settings(doc_with({"accounts": keys(tmp_path)}), DEMO)
    config = settings.watchman
    assert config is not None
    assert (config.interval_secs, config.out_of_step_secs, config.silent_secs) == (10.0, 60.0, 60.0)
    assert (config.unwind, config.unwind_delay_secs, config.alert_repeat_secs) == (False, 30.0, 300.0)
    assert config.telegram.bot_token_env == "XTB_WATCHMAN_TELEGRAM_BOT_TOKEN"
    assert config.accounts["lighter1"].api_key_index == 10
    assert parse_settings(tomllib.loads(DEMO.read_text()), DEMO).watchman is None


def test_bad_watchman_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    assert error(tmp_path, interval_secs=0) == "watchman.interval_secs: expected a number >= 0.2, got 0"
    assert error(tmp_path, unwnd=True).startswith("watchman.unwnd: unknown key; expected one of")
    assert error(tmp_path, groups=["other"]) == "watchman.groups: unknown group 'other'; configured: main"
    assert error(tmp_path, redis_url="http://x") == "watchman.redis_url: expected a redis/rediss/unix URL, got 'http://x'"
    assert error(tmp_path, telegram={"api_url": "ftp://x"}) == (
        "watchman.telegram.api_url: expected a http/https URL, got 'ftp://x'")
    missing = keys(tmp_path)
    del missing["lighter2"]
    with pytest.raises(ConfigError) as info:
        parse_settings(doc_with({"accounts": missing}), DEMO)
    assert info.value.render().startswith("watchman.accounts.lighter2: missing; the watchman reads group 'main'")
    same = keys(tmp_path)
    same["lighter1"]["api_key_index"] = 4  # the worker's own index in the demo config
    with pytest.raises(ConfigError) as info:
        parse_settings(doc_with({"accounts": same}), DEMO)
    assert info.value.render().startswith("watchman.accounts.lighter1.api_key_index: 4 is the worker's own")


def test_xtb_watchman_without_a_section_or_with_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "xtb_tasks.cli", "--config"]
    result = subprocess.run([*run, str(DEMO), "watchman", "--once"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "watchman: missing; expected a [watchman] section" in result.stderr
    config = tmp_path / "xtb.toml"
    config.write_text(DEMO.read_text().replace("../.xtb/", str(ROOT / ".xtb") + "/")
                      + "\n[watchman]\nsilent_secs = 0.5\n")
    result = subprocess.run([*run, str(config), "watchman"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "watchman.silent_secs: expected a number >= 1.0, got 0.5" in result.stderr
    assert "Traceback" not in result.stderr


def watch(**options: object) -> GroupWatch:
    settings = load_settings(DEMO)
    return GroupWatch(settings.group("main"), WatchmanConfig(**options))  # type: ignore[arg-type]


def read(bp: str | None, l1: str | None, l2: str | None) -> GroupRead:
    values = {"BP": bp, "L1": l1, "L2": l2}
    return GroupRead({r: None if v is None else Decimal(v) for r, v in values.items()}, RULES)


def test_a_group_in_step_with_its_cluster_alive_never_triggers_anything() -> None:
    w = watch(out_of_step_secs=5, silent_secs=5, unwind=True, unwind_delay_secs=0)
    for now in range(0, 100, 5):
        verdict = w.judge(read("1", "-3", "2"), HEARTBEATS_FRESH, None, float(now))
        assert verdict.alerts == [] and not verdict.unwind


def test_out_of_step_alerts_after_m_seconds_then_unwinds_after_the_delay_and_says_when_it_clears() -> None:
    w = watch(out_of_step_secs=10, silent_secs=60, unwind=True, unwind_delay_secs=5, alert_repeat_secs=100)
    assert w.judge(read("1", "-3", "1"), HEARTBEATS_FRESH, None, 0.0).alerts == []
    assert w.judge(read("1", "-3", "1"), HEARTBEATS_FRESH, None, 9.9).alerts == []
    verdict = w.judge(read("1", "-3", "1"), HEARTBEATS_FRESH, None, 10.0)
    assert len(verdict.alerts) == 1 and "net -1 beyond one step" in verdict.alerts[0] and not verdict.unwind
    assert "unwinding in step in 5 s" in verdict.alerts[0]
    later = w.judge(read("1", "-3", "1"), HEARTBEATS_FRESH, None, 15.0)
    assert later.alerts == [] and later.unwind  # repeated only every alert_repeat_secs
    cleared = w.judge(read("0", "0", "0"), HEARTBEATS_FRESH, None, 20.0)
    assert len(cleared.alerts) == 1 and "no trigger left" in cleared.alerts[0] and not cleared.unwind


def test_a_net_that_dips_back_in_step_restarts_the_clock_and_unknown_is_never_in_step_nor_zero() -> None:
    w = watch(out_of_step_secs=10, silent_secs=60)
    w.judge(read("1", "-3", "1"), HEARTBEATS_FRESH, None, 0.0)
    w.judge(read("1", "-3", "2"), HEARTBEATS_FRESH, None, 6.0)
    assert w.judge(read("1", "-3", "1"), HEARTBEATS_FRESH, None, 12.0).alerts == []
    # An unknown position: no net to judge, but the group counts as open for the cluster trigger.
    assert read(None, "-3", "2").net is None and read(None, "0", "0").open
    assert not read("0", "0.0005", "0").open  # a Lighter leftover below the minimum order is dust
    assert read("0", "0.0005", "0").net == 0 and not read("0", "0.0005", "0").out_of_step


def test_cluster_gone_alerts_only_with_positions_open_and_names_what_is_silent() -> None:
    w = watch(out_of_step_secs=60, silent_secs=10, unwind=False)
    silent = {**HEARTBEATS_FRESH, "orchestrator": 12.0}
    assert w.judge(read("0", "0", "0"), silent, None, 0.0).alerts == []
    verdict = w.judge(read("1", "-3", "2"), silent, None, 1.0)
    assert "no heartbeat from orchestrator for 12 s" in verdict.alerts[0] and "unwind = false" in verdict.alerts[0]
    assert not verdict.unwind
    down = watch(silent_secs=10, unwind=True, unwind_delay_secs=0)
    verdict = down.judge(read("1", "-3", "2"), {b: 11.0 for b in HEARTBEATS_FRESH}, "ConnectionError: refused", 1.0)
    assert "Redis unreachable (ConnectionError: refused)" in verdict.alerts[0] and verdict.unwind


def test_every_watchman_field_is_documented_and_the_readme_defaults_agree() -> None:
    import re

    import msgspec

    from core.config_decode import field_info
    from core.watchman_config import WatchmanKeys

    for cls in (WatchmanConfig, WatchmanKeys):
        for name, (_, description, _) in field_info(cls).items():
            assert description, f"{cls.__name__}.{name} has no description"
    section = (ROOT / "README.md").read_text().split("**`[watchman]`**", 1)[1].split("\n\n**", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", section, re.MULTILINE))
    for f in msgspec.structs.fields(WatchmanConfig):
        if f.name in ("telegram", "accounts"):
            continue
        shown = rows[f.name].strip("`")
        default = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
        if isinstance(default, bool | float):
            assert shown == str(default).lower(), f.name
        else:
            assert not default, f.name  # groups = every group, redis_url = the cluster's
