"""Config validation: every invalid case is one line naming the key, exit status 2, no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from enum import Enum
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import (
    AccountConfig,
    ConfigError,
    DashboardConfig,
    Direction,
    GroupConfig,
    HedgeParams,
    Role,
    ScheduleConfig,
    TelegramConfig,
    TelemetryConfig,
    load_settings,
    parse_settings,
)
from core.config_decode import field_info

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.toml"


def run_xtb(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xtb_tasks.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def demo_doc() -> dict:
    return tomllib.loads(DEMO.read_text())


def test_demo_config_is_valid_and_keeps_the_original_defaults() -> None:
    settings = load_settings(DEMO)
    assert set(settings.accounts) == {"backpack", "lighter1", "lighter2"}
    group = settings.group("main")
    assert (group.backpack, group.lighter1, group.lighter2) == ("backpack", "lighter1", "lighter2")
    assert group.params.direction is Direction.LONG_BACKPACK
    assert group.params.wait_min_secs == 2.0 and group.params.wait_max_secs == 5.0
    assert settings.accounts["lighter1"].account_index == 101
    defaults = HedgeParams()
    assert (defaults.leverage, defaults.timeout_secs, defaults.poll_interval_secs) == (50.0, 86400.0, 5.0)
    assert (defaults.confirmation_timeout_secs, defaults.confirmation_poll_secs) == (2.0, 0.2)


def test_check_config_cli_accepts_the_demo() -> None:
    result = run_xtb("check-config", str(DEMO))
    assert result.returncode == 0, result.stderr
    assert "3 accounts" in result.stdout


def _write(tmp_path: Path, doc_text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(doc_text)
    return path


def _demo_text_with(old: str, new: str, keys_dir: Path) -> str:
    # Keys in the test's own folder: whatever `make demo` left in .xtb/demo-keys must not matter.
    text = DEMO.read_text().replace("../.xtb/demo-keys", str(keys_dir))
    assert old in text
    return text.replace(old, new, 1)


BROKEN = [
    ("unknown key", ('leverage = 3.0', 'leverage = 3.0\nlevrage = 2'), "groups.main.levrage"),
    ("wrong type", ('account_index = 101', 'account_index = "abc"'), "accounts.lighter1.account_index"),
    ("bad enum", ('direction = "long_backpack"', 'direction = "sideways"'), "groups.main.direction"),
    ("missing keys file", ('Backpack_key.txt"\ncreate_keys_if_missing = true', 'Backpack_key.txt"'),
     "accounts.backpack.keys_file"),
    ("unknown venue", ('venue = "backpack"', 'venue = "binance"'), "accounts.backpack.venue"),
    ("role on wrong venue", ('lighter1 = "lighter1"', 'lighter1 = "backpack"'), "groups.main.lighter1"),
    ("unknown account in group", ('lighter2 = "lighter2"', 'lighter2 = "nope"'), "groups.main.lighter2"),
    ("wait range", ('wait_min_secs = 2.0', 'wait_min_secs = 9.0'), "groups.main.wait_min_secs"),
    ("negative size", ('leverage = 3.0', 'leverage = 3.0\nsize = "-1"'), "groups.main.size"),
    ("bad url", ('base_url = "http://127.0.0.1:18080"', 'base_url = "ftp://x"'), "accounts.backpack.base_url"),
    ("reserved lighter key index", ("api_key_index = 4", "api_key_index = 3"), "accounts.lighter1.api_key_index"),
    ("unknown top-level table", ("[telemetry]", "[telemetri]"), "telemetri"),
    ("above the bound", ('create_keys_if_missing = true\n', 'create_keys_if_missing = true\nwindow_ms = 70000\n'),
     "accounts.backpack.window_ms"),
    ("bool for a number", ('leverage = 3.0', 'leverage = true'), "groups.main.leverage"),
    ("bool for an integer", ('account_index = 101', 'account_index = true'), "accounts.lighter1.account_index"),
    ("key of another venue", ('account_index = 101', 'account_index = 101\nwindow_ms = 5000'),
     "accounts.lighter1.window_ms"),
]


@pytest.mark.parametrize(("case", "edit", "key"), BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_config_exits_2_with_one_line_naming_the_key(tmp_path: Path, case: str, edit: tuple[str, str],
                                                             key: str) -> None:
    path = _write(tmp_path, _demo_text_with(*edit, tmp_path / "keys"))
    result = run_xtb("check-config", str(path))
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and str(path) in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_errors_say_what_is_expected_and_what_was_found() -> None:
    def error(section: str, name: str, **values: object) -> str:
        doc = demo_doc()
        doc[section][name].update(values)
        with pytest.raises(ConfigError) as info:
            parse_settings(doc, DEMO.resolve())
        return str(info.value)

    assert error("accounts", "backpack", window_ms=70000) == (
        "accounts.backpack.window_ms: expected an integer <= 60000, got 70000")
    assert error("accounts", "backpack", window_ms=True) == "accounts.backpack.window_ms: expected an integer, got bool True"
    assert error("groups", "main", leverage=False) == "groups.main.leverage: expected a number, got bool False"
    assert error("groups", "main", direction="up").endswith("expected one of 'long_backpack', 'short_backpack', got 'up'")
    assert error("groups", "main", size="abc") == "groups.main.size: expected a decimal number in ASCII digits, got 'abc'"
    assert error("groups", "main", levrage=1).startswith("groups.main.levrage: unknown key; expected one of")


def test_a_numeric_group_name_is_a_string_key(tmp_path: Path) -> None:
    path = _write(tmp_path, _demo_text_with("[groups.main]", '[groups."123"]', tmp_path / "keys"))
    settings = load_settings(path)
    assert list(settings.groups) == ["123"] and settings.group("123").name == "123"
    assert settings.role_of("lighter1") == ("123", Role.L1)


def test_every_field_is_documented_and_the_readme_defaults_agree() -> None:
    reference = (ROOT / "README.md").read_text().split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (`.+?`) \| (.+?) \|", reference, re.MULTILINE))
    readme_defaults = {}
    for keys, defaults in rows.items():
        names, values = re.findall(r"`(\w+)`", keys), [v.strip(" `") for v in defaults.split(",")]
        readme_defaults.update(zip(names, values if len(values) == len(names) else values * len(names), strict=True))
    for cls in (HedgeParams, AccountConfig, GroupConfig, ScheduleConfig, TelegramConfig, TelemetryConfig, DashboardConfig):
        for name, (_, description, _) in field_info(cls).items():
            assert description, f"{cls.__name__}.{name} has no description"
    for f in msgspec.structs.fields(HedgeParams):
        shown = readme_defaults[f.name]
        default = f.default.value if isinstance(f.default, Enum) else f.default
        assert shown == ("none" if default is None else str(default).lower()) or float(shown) == default, f.name
    window = next(f for f in msgspec.structs.fields(AccountConfig) if f.name == "window_ms")
    assert readme_defaults["window_ms"] == str(window.default)


SECOND_GROUP = """[accounts.backpack2]
venue = "backpack"
base_url = "http://127.0.0.1:18080"
api_key_env = "BP2_KEY"
api_secret_env = "BP2_SECRET"

[accounts.lighter3]
venue = "lighter"
base_url = "http://127.0.0.1:18081"
account_index = 103
private_key_env = "L3_KEY"

[accounts.lighter4]
venue = "lighter"
base_url = "http://127.0.0.1:18081"
account_index = 104
private_key_env = "L4_KEY"

[groups.second]
backpack = "{backpack}"
lighter1 = "{lighter1}"
lighter2 = "{lighter2}"

[telegram]"""


# One account, one group: two groups sharing an account would run two cycles
# on one position, each hedging and unwinding the other's legs. The second group to name it is
# the one reported, with the first group, so the operator sees both ends of the conflict.
SHARED = [
    ("same role", ("backpack", "lighter3", "lighter4"), "groups.second.backpack",
     "account 'backpack' is already backpack of group 'main'"),
    ("same lighter role", ("backpack2", "lighter1", "lighter4"), "groups.second.lighter1",
     "account 'lighter1' is already lighter1 of group 'main'"),
    ("another role", ("backpack2", "lighter2", "lighter3"), "groups.second.lighter1",
     "account 'lighter2' is already lighter2 of group 'main'"),
]


@pytest.mark.parametrize(("case", "accounts", "key", "says"), SHARED, ids=[c[0] for c in SHARED])
def test_an_account_in_two_groups_exits_2_naming_both_groups(tmp_path: Path, case: str, accounts: tuple[str, ...],
                                                              key: str, says: str) -> None:
    second = SECOND_GROUP.format(**dict(zip(("backpack", "lighter1", "lighter2"), accounts, strict=True)))
    path = _write(tmp_path, _demo_text_with("[telegram]", second, tmp_path / "keys"))
    result = run_xtb("check-config", str(path))
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].endswith(f"{path}: {key}: {says}; an account belongs to one group"), lines[0]


def test_two_groups_on_their_own_accounts_load(tmp_path: Path) -> None:
    second = SECOND_GROUP.format(backpack="backpack2", lighter1="lighter3", lighter2="lighter4")
    path = _write(tmp_path, _demo_text_with("[telegram]", second, tmp_path / "keys"))
    settings = load_settings(path)
    assert list(settings.groups) == ["main", "second"]
    assert settings.role_of("lighter3") == ("second", Role.L1)
    assert run_xtb("check-config", str(path)).returncode == 0


_BP_POOL = ["backpack", "bp_b", "bp_c"]
_L_POOL = ["lighter1", "lighter2", "l_c", "l_d", "l_e", "l_f"]


def _pool_doc() -> dict:
    doc = demo_doc()
    for name in _BP_POOL[1:]:
        doc["accounts"][name] = {"venue": "backpack", "base_url": "http://127.0.0.1:18080",
                                 "api_key_env": "K", "api_secret_env": "S"}
    for n, name in enumerate(_L_POOL[2:]):
        doc["accounts"][name] = {"venue": "lighter", "base_url": "http://127.0.0.1:18081",
                                 "account_index": 200 + n, "private_key_env": "K"}
    return doc


triads = st.tuples(st.sampled_from(_BP_POOL), st.lists(st.sampled_from(_L_POOL), min_size=2, max_size=2, unique=True))


@settings(max_examples=200, deadline=None)
@given(extra=st.lists(triads, min_size=1, max_size=3))
def test_groups_load_exactly_when_no_account_is_in_two(extra: list[tuple[str, list[str]]]) -> None:
    doc = _pool_doc()
    for n, (bp, (l1, l2)) in enumerate(extra):
        doc["groups"][f"g{n}"] = {"backpack": bp, "lighter1": l1, "lighter2": l2}
    members = [(name, account) for name, g in doc["groups"].items()
               for account in (g["backpack"], g["lighter1"], g["lighter2"])]
    owners: dict[str, list[str]] = {}
    for group, account in members:
        owners.setdefault(account, []).append(group)
    shared = {a: gs for a, gs in owners.items() if len(gs) > 1}
    try:
        settings = parse_settings(doc, DEMO.resolve())
    except ConfigError as exc:
        assert shared, str(exc)
        text = exc.render()
        # The first clash in file order: its account and both of its groups are named.
        assert any(f"account {a!r}" in text and f"group {gs[0]!r}" in text and text.startswith(f"groups.{gs[1]}.")
                   for a, gs in shared.items()), text
        assert "\n" not in text
    else:
        assert not shared, shared
        for group in settings.groups.values():
            for role in Role:
                assert settings.role_of(group.account_for(role)) == (group.name, role)


def test_missing_config_file_and_invalid_toml(tmp_path: Path) -> None:
    missing = run_xtb("check-config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr
    garbled = run_xtb("check-config", str(_write(tmp_path, "[accounts\nx=")))
    assert garbled.returncode == 2 and "invalid TOML" in garbled.stderr


def test_config_show_redacts_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_xtb("--config", str(DEMO), "config", "show")
    assert result.returncode == 0, result.stderr
    assert '"account_index": 101' in result.stdout


def test_hedge_overrides_reuse_the_config_validation() -> None:
    base = HedgeParams()
    assert HedgeParams.from_mapping({"size": "0.5"}, base=base).size is not None
    with pytest.raises(ConfigError, match="size"):
        HedgeParams.from_mapping({"size": -1})
    with pytest.raises(ConfigError, match="unknown key"):
        HedgeParams.from_mapping({"bogus": 1})
    # Finite as a Decimal, yet no venue amount: refused up front, not by the planner after "started".
    for huge in ("1e999", "1E+12", 10**13):
        with pytest.raises(ConfigError, match="size: expected a decimal number below"):
            HedgeParams.from_mapping({"size": huge})
    # Decimal("١") is 1: digits of other scripts would start a real 1-unit cycle.
    for foreign in ("١", "٠.٥", "１", " 1"):
        with pytest.raises(ConfigError, match="size: expected a decimal number in ASCII digits"):
            HedgeParams.from_mapping({"size": foreign})


toml_scalars = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True), st.text(max_size=20),
                         st.booleans(), st.none())
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=st.sampled_from(["accounts", "groups", "redis", "telegram", "schedules", "dashboard"]),
       name=st.text(max_size=10), key=st.text(max_size=25), value=toml_values)
def test_fuzzed_documents_fail_only_with_config_error(section: str, name: str, key: str, value: object) -> None:
    doc = demo_doc()
    target = doc.setdefault(section, {})
    if isinstance(target, dict) and section in ("accounts", "groups", "schedules"):
        target = target.setdefault(name, {}) if name else target
    if isinstance(target, dict):
        target[key] = value
    try:
        parse_settings(doc, DEMO.resolve())
    except ConfigError as exc:
        assert "\n" not in exc.render()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_text_never_escapes_as_a_traceback(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.toml"
    path.write_text(text)
    try:
        load_settings(path)
    except ConfigError as exc:
        assert exc.render().count("\n") <= 1 or "invalid TOML" in exc.render()


def test_a_short_visibility_timeout_gets_a_sweep_to_match_and_a_too_short_one_is_refused() -> None:
    from xtb_tasks.worker.celery_app import celery_settings

    doc = demo_doc()
    doc["redis"] = {"visibility_timeout_secs": 6}
    options = celery_settings(parse_settings(doc, DEMO.resolve()), "redis://127.0.0.1:1/0")["broker_transport_options"]
    # kombu's default sweep runs every ~100 s; a 6 s timeout would still redeliver after 100 s.
    assert (options["visibility_timeout"], options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (
        6, 1, 1)
    default = celery_settings(parse_settings(demo_doc(), DEMO.resolve()), "redis://127.0.0.1:1/0")
    assert default["broker_transport_options"]["visibility_timeout"] == 3600
    assert "unacked_restore_interval" not in default["broker_transport_options"]
    doc["redis"] = {"visibility_timeout_secs": 2}
    with pytest.raises(ConfigError, match=r"redis\.visibility_timeout_secs"):
        parse_settings(doc, DEMO.resolve())


def test_the_watchdog_grace_is_configured_and_bounded() -> None:
    assert parse_settings(demo_doc(), DEMO.resolve()).step_grace_secs == 30.0
    doc = demo_doc()
    doc["watchdog"] = {"step_grace_secs": 10}
    assert parse_settings(doc, DEMO.resolve()).step_grace_secs == 10.0
    for bad in (2, "ten", 7200):
        doc["watchdog"] = {"step_grace_secs": bad}
        with pytest.raises(ConfigError, match=r"watchdog\.step_grace_secs"):
            parse_settings(doc, DEMO.resolve())
    doc["watchdog"] = {"grace": 10}
    with pytest.raises(ConfigError, match=r"watchdog"):
        parse_settings(doc, DEMO.resolve())
