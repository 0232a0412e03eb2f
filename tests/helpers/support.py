"""Small test utilities shared by the fixtures and the tests."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def write_config(path: Path, urls: dict[str, str], *, redis_url: str | None = None,
                 group_params: dict[str, object] | None = None, account_suffix: str = "",
                 lighter_indexes: tuple[int, int] = (101, 102), redis_options: dict[str, int] | None = None,
                 step_grace_secs: float | None = None, streams: bool = True) -> Path:
    """A config for the three demo roles on the simulators, with fresh keys in ``path.parent``;
    ``streams=False`` makes every account read REST only (no venue stream) and the Lighter ones
    unbudgeted, as before the streams (tests of REST faults, whose 0.5 s polls alone would spend a Standard budget)."""
    keys = path.parent / "keys"
    lines = []
    if redis_url or redis_options:
        lines += ["[redis]", *([f'url = "{redis_url}"'] if redis_url else []),
                  *(f"{key} = {value}" for key, value in (redis_options or {}).items()), ""]
    if step_grace_secs is not None:
        lines += ["[watchdog]", f"step_grace_secs = {step_grace_secs}", ""]
    if not streams:
        lines += ["[rate_budget]", "enabled = false", ""]
    lines += [
        f"[accounts.backpack{account_suffix}]", 'venue = "backpack"', f'base_url = "{urls["backpack"]}"',
        f'ws_url = "{urls["backpack_ws"]}"', f'keys_file = "{keys}/bp{account_suffix}.txt"',
        "create_keys_if_missing = true", *([] if streams else ["stream = false"]), "",
    ]
    for n, index in zip((1, 2), lighter_indexes, strict=True):
        lines += [
            f"[accounts.lighter{n}{account_suffix}]", 'venue = "lighter"', f'base_url = "{urls["lighter"]}"',
            f'ws_url = "{urls["lighter_ws"]}"', f"account_index = {index}", f"api_key_index = {3 + n}",
            f'keys_file = "{keys}/l{n}{account_suffix}.txt"', "create_keys_if_missing = true",
            *([] if streams else ["stream = false"]), "",
        ]
    lines += [
        f"[groups.main{account_suffix}]", f'backpack = "backpack{account_suffix}"',
        f'lighter1 = "lighter1{account_suffix}"', f'lighter2 = "lighter2{account_suffix}"',
    ]
    for key, value in (group_params or {}).items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, bool) else f"{key} = {str(value).lower()}")
    lines += ["", "[telegram]", f'api_url = "{urls.get("telegram", "http://127.0.0.1:9")}"',
              f'keys_file = "{keys}/tg_key.txt"', ""]
    path.write_text("\n".join(lines).replace("'", '"'))
    return path
