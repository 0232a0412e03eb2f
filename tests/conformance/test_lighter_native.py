"""Our ctypes binding to lighter-sdk's Go signer (``venues.lighter.native``) against the SDK itself.

* A Lighter worker never imports the ``lighter`` package (nor eth_account): checked in a real Celery
  worker's pool child after a real order, and in a plain process that makes keys, trades and cancels.
* The binding picks the same library file, signs the same fields as ``SignerClient`` for the same
  inputs (signatures are randomised, so ``Sig`` is compared by shape only), and what it signs is
  accepted by the simulator byte for byte.
* The nonce rules of the SDK's OPTIMISTIC manager hold on the paths the connector tests don't reach.

This test process itself imports ``lighter`` to compare against it; the no-import checks run in
other processes.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import requests

from core.client_ids import allocate_client_ids, record_intent
from tests.helpers.support import wait_until, write_config
from venues.base import OrderState, ReasonCode, Side, VenueError
from venues.lighter import native
from venues.lighter.connector import LighterConnector
from venues.lighter.credentials import LighterCredentials, generate_lighter_keys

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # `import lighter` (websockets)

ROOT = Path(__file__).resolve().parents[2]
SYMBOL = "ETH"
# Fresh indexes: the session simulator is shared with other test files.
_accounts = itertools.count(8101)
_client_ids = itertools.count(2_000_001)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> LighterCredentials:
    # api key index 6: no other connector alive in this process uses it (the Go client map is global).
    return generate_lighter_keys(tmp_path_factory.mktemp("native-keys") / "k6.txt", 6)


@pytest.fixture
def conn(simulator: Any, creds: LighterCredentials) -> Iterator[LighterConnector]:
    index = next(_accounts)
    connector = LighterConnector(f"native-{index}", simulator.urls["lighter"], None, index, creds, fill_wait=3.0)
    yield connector
    connector.close()


# ---- library, constants ----------------------------------------------------------------------

PLATFORMS = [("Linux", "x86_64"), ("Linux", "aarch64"), ("Linux", "arm64"), ("Darwin", "arm64"),
             ("Darwin", "x86_64"), ("Windows", "AMD64"), ("Linux", "i686"), ("FreeBSD", "amd64")]


@pytest.mark.parametrize(("system", "machine"), PLATFORMS)
def test_library_choice_is_the_sdks(monkeypatch: pytest.MonkeyPatch, system: str, machine: str) -> None:
    """``__get_shared_library`` of the SDK, run on a pretend platform, names the file we name."""
    import ctypes

    import lighter.signer_client as sdk

    chosen: list[str] = []
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(ctypes, "CDLL", lambda path: chosen.append(path))
    try:
        getattr(sdk, "__get_shared_library")()
    except Exception as exc:
        with pytest.raises(native.SignerError):
            native.library_file(system, machine)
        assert "Unsupported platform" in str(exc)
        return
    [path] = chosen
    assert os.path.basename(path) == native.library_file(system, machine)
    assert os.path.dirname(path) == os.path.join(os.path.dirname(sdk.__file__), "signers")


def test_library_path_and_constants_match_the_installed_sdk() -> None:
    import lighter.signer_client as sdk

    expected = os.path.join(os.path.dirname(sdk.__file__), "signers",
                            native.library_file(platform.system(), platform.machine()))
    assert native.library_path() == expected and os.path.exists(expected)
    c = sdk.SignerClient
    assert (native.ORDER_TYPE_LIMIT, native.ORDER_TYPE_MARKET) == (c.ORDER_TYPE_LIMIT, c.ORDER_TYPE_MARKET)
    assert (native.ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL, native.ORDER_TIME_IN_FORCE_GOOD_TILL_TIME) == (
        c.ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL, c.ORDER_TIME_IN_FORCE_GOOD_TILL_TIME)
    assert (native.CANCEL_ALL_TIF_IMMEDIATE, native.NIL_TRIGGER_PRICE, native.DEFAULT_IOC_EXPIRY,
            native.DEFAULT_28_DAY_ORDER_EXPIRY, native.NIL_MARKET_INDEX, native.SKIP_NONCE_OFF) == (
        c.CANCEL_ALL_TIF_IMMEDIATE, c.NIL_TRIGGER_PRICE, c.DEFAULT_IOC_EXPIRY, c.DEFAULT_28_DAY_ORDER_EXPIRY,
        c.NIL_MARKET_INDEX, c.SKIP_NONCE_OFF)
    assert (native.CROSS_MARGIN_MODE, native.ISOLATED_MARGIN_MODE) == (c.CROSS_MARGIN_MODE, c.ISOLATED_MARGIN_MODE)
    for url in ("https://mainnet.zklighter.elliot.ai", "https://testnet.zklighter.elliot.ai",
                "https://api.rh.lighter.xyz", "https://api.rh-testnet.lighter.xyz", "http://127.0.0.1:1"):
        assert native.chain_id_for(url) == _sdk_chain_id(url), url


def _sdk_chain_id(url: str) -> int:
    import lighter

    async def build() -> int:
        client = lighter.SignerClient(url, 1, {6: "ab" * 40})
        try:
            return int(client.chain_id)
        finally:
            await client.close()

    return asyncio.run(build())


# ---- same fields as the SDK ------------------------------------------------------------------

def _sdk_client(creds: LighterCredentials, url: str, account_index: int) -> Any:
    import lighter

    return lighter.SignerClient(url, account_index, {creds.api_key_index: creds.private_key})


def _fields(tx_info: str) -> dict[str, Any]:
    data = json.loads(tx_info)
    assert len(base64.b64decode(data.pop("Sig"))) == 80  # Schnorr signature, 80 bytes
    return data


def _assert_same(ours: native.SignedTx, theirs: tuple[Any, ...], *, times: tuple[str, ...] = ("ExpiredAt",)) -> None:
    tx_type, tx_info, tx_hash, err = theirs
    assert err is None and ours.tx_type == tx_type
    a, b = _fields(ours.tx_info), _fields(tx_info)
    for key in times:  # now-relative milliseconds, taken a few ms apart
        assert abs(a.pop(key) - b.pop(key)) < 5_000, key
    assert a == b
    assert ours.tx_hash and len(ours.tx_hash) == len(tx_hash) == 80


def test_native_signatures_carry_the_sdks_fields(creds: LighterCredentials) -> None:
    url, account, key = "http://127.0.0.1:9", next(_accounts), creds.api_key_index

    async def scenario() -> None:
        sdk = _sdk_client(creds, url, account)  # registers the key with Go, as we do below
        native.create_client(url, creds.private_key, native.chain_id_for(url), key, account)
        ids = {"nonce": 41, "api_key_index": key}
        try:
            for args in [(0, 7, 100, 300000, True, native.ORDER_TYPE_MARKET,
                          native.ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL, True, 0, native.DEFAULT_IOC_EXPIRY),
                         (0, 8, 250, 250000, False, native.ORDER_TYPE_LIMIT,
                          native.ORDER_TIME_IN_FORCE_GOOD_TILL_TIME, False, 0, native.DEFAULT_28_DAY_ORDER_EXPIRY)]:
                ours = native.sign_create_order(*args, account_index=account, **ids)
                _assert_same(ours, sdk.sign_create_order(*args, **ids), times=("ExpiredAt", "OrderExpiry"))
            _assert_same(native.sign_cancel_order(0, 77, account_index=account, **ids),
                         sdk.sign_cancel_order(0, 77, **ids))
            ours = native.sign_cancel_all_orders(native.CANCEL_ALL_TIF_IMMEDIATE, 0, 0, account_index=account, **ids)
            _assert_same(ours, sdk.sign_cancel_all_orders(sdk.CANCEL_ALL_TIF_IMMEDIATE, 0,
                                                          cancel_all_market_index=0, **ids))
            assert json.loads(ours.tx_info)["L2TxAttributes"] == {"5": 0}  # the market rides here in 1.1.8
            # UpdateLeverage (tx type 20) as update_leverage(market, CROSS, 50) signs it: int(10000 / 50).
            ours = native.sign_update_leverage(0, 200, native.CROSS_MARGIN_MODE, account_index=account, **ids)
            _assert_same(ours, sdk.sign_update_leverage(0, 200, sdk.CROSS_MARGIN_MODE, **ids))
            assert ours.tx_type == 20 and json.loads(ours.tx_info)["InitialMarginFraction"] == 200
            # Signatures are randomised: the same inputs twice give different Sig (hence no byte compare).
            again = sdk.sign_cancel_order(0, 77, **ids)[1]
            assert json.loads(again)["Sig"] != json.loads(sdk.sign_cancel_order(0, 77, **ids)[1])["Sig"]
            # Auth tokens: same deadline, same "deadline:account:key:" prefix.
            now = int(time.time())
            token, err = sdk.create_auth_token_with_expiry(timestamp=now, api_key_index=key)
            ours_token = native.create_auth_token(now + native.AUTH_TOKEN_SECS, key, account)
            assert err is None and ours_token.split(":")[:3] == token.split(":")[:3] == [
                str(now + native.AUTH_TOKEN_SECS), str(account), str(key)]
            # Validation errors are the Go library's own text, as the SDK returns them.
            with pytest.raises(native.SignerError) as exc:
                native.sign_cancel_order(0, 77, account_index=account, nonce=1, api_key_index=200)
            assert str(exc.value) == sdk.sign_cancel_order(0, 77, nonce=1, api_key_index=200)[3]
        finally:
            await sdk.close()

    asyncio.run(scenario())


def test_generated_keys_sign(tmp_path: Path) -> None:
    private_key, public_key = native.generate_api_key()
    assert len(private_key.removeprefix("0x")) == 80 and len(public_key.removeprefix("0x")) == 80
    creds = generate_lighter_keys(tmp_path / "k.txt", 9)
    assert (tmp_path / "k.txt").stat().st_mode & 0o777 == 0o600 and creds.private_key != private_key
    native.create_client("http://127.0.0.1:9", creds.private_key, 304, 9, 5)
    assert native.sign_cancel_order(0, 1, nonce=0, api_key_index=9, account_index=5).tx_type == 15


# ---- the simulator accepts what we sign ------------------------------------------------------

def test_native_tx_is_accepted_byte_for_byte(conn: LighterConnector, simulator: Any) -> None:
    rules = conn.market_rules(SYMBOL)
    ask = conn.top_of_book(SYMBOL).ask
    cid = next(_client_ids)
    signed: list[native.SignedTx] = []

    def sign(nonce: int) -> native.SignedTx:
        tx = native.sign_create_order(rules.market_id, cid, rules.size_to_int(Decimal("0.02")),
                                      rules.price_to_int(ask * Decimal("1.01")), False, native.ORDER_TYPE_MARKET,
                                      native.ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL, False, 0, 0, nonce=nonce,
                                      api_key_index=conn.api_key_index, account_index=conn.account_index)
        signed.append(tx)
        return tx

    tx_hash = conn._loop.run(conn._signer.send("probe order", sign), 10)
    [tx] = signed
    stored = requests.get(f"{simulator.urls['lighter']}/api/v1/tx", params={"by": "hash", "value": tx_hash},
                          timeout=5).json()
    assert (stored["type"], stored["info"]) == (tx.tx_type, tx.tx_info) == (14, tx.tx_info)
    report = conn.find_order(SYMBOL, cid)
    assert report is not None and (report.state, report.filled) == (OrderState.FILLED, Decimal("0.02"))


def _nonce_at_venue(simulator: Any, conn: LighterConnector) -> int:
    params = {"account_index": conn.account_index, "api_key_index": conn.api_key_index}
    return int(requests.get(f"{simulator.urls['lighter']}/api/v1/nextNonce", params=params, timeout=5).json()["nonce"])


def test_http_400_refusal_rolls_the_nonce_back(conn: LighterConnector, simulator: Any) -> None:
    """A 400 other than invalid nonce (here 21602, unknown market) frees the nonce: no refetch, no gap."""
    conn.submit_market_order(SYMBOL, next(_client_ids), Side.BUY, Decimal("0.01"))
    before = conn.nonce_state()
    send = conn._signer.send_create_order(42, next(_client_ids), 100, 300000, False)
    with pytest.raises(VenueError) as err:
        conn._loop.run(send, 10)
    assert (err.value.reason, err.value.status, err.value.code) == (ReasonCode.UNKNOWN_MARKET, 400, 21602)
    assert conn.nonce_state() == before
    # The venue agrees once its nextNonce has caught up with the accepted order (it lags).
    wait_until(lambda: before == f"next={_nonce_at_venue(simulator, conn)}", timeout=5, what="the venue's nextNonce")
    assert conn.submit_market_order(SYMBOL, next(_client_ids), Side.BUY, Decimal("0.01")).state is OrderState.FILLED


def test_signer_refusal_rolls_the_nonce_back_and_nothing_is_sent(conn: LighterConnector, simulator: Any) -> None:
    conn.submit_market_order(SYMBOL, next(_client_ids), Side.BUY, Decimal("0.01"))
    before, sent = conn.nonce_state(), len(simulator.exchange.audit)
    send = conn._signer.send_create_order(0, 2**48, 100, 300000, False)  # client order index out of range
    with pytest.raises(VenueError) as err:
        conn._loop.run(send, 10)
    assert err.value.reason is ReasonCode.INVALID_REQUEST and err.value.status is None
    assert conn.nonce_state() == before and len(simulator.exchange.audit) == sent


def test_a_bad_key_is_an_auth_error_that_hides_the_key(simulator: Any) -> None:
    for bad in ("ab" * 32, "zz" + "ab" * 39):  # a 32-byte (eth-style) key; not hex
        conn = LighterConnector("badkey", simulator.urls["lighter"], None, next(_accounts),
                                LighterCredentials(7, bad), timeout=2.0)
        try:
            with pytest.raises(VenueError) as err:
                conn.submit_market_order(SYMBOL, next(_client_ids), Side.BUY, Decimal("0.01"))
            assert err.value.reason is ReasonCode.AUTH and "api key 7" in str(err.value)
            assert bad not in str(err.value) and bad[:20] not in str(err.value)
        finally:
            conn.close()


# ---- no `import lighter` in a Lighter process ------------------------------------------------

_CHILD = """
import json, sys
from decimal import Decimal
from pathlib import Path
from venues.base import Side
from venues.lighter import native
from venues.lighter.connector import LighterConnector
from venues.lighter.credentials import generate_lighter_keys
url, index, keys_file, cid = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
assert not native.loaded()  # importing the connector does not load the library either
conn = LighterConnector("child", url, None, index, generate_lighter_keys(keys_file, 4))
try:
    report = conn.submit_market_order("ETH", cid, Side.BUY, Decimal("0.02"))
    cancelled = conn.cancel_all("ETH")
    position = conn.get_position("ETH").quantity
finally:
    conn.close()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lighter", "eth_account"))
print(json.dumps({"state": report.state.value, "position": str(position), "cancelled": cancelled,
                  "heavy": heavy[:20], "loaded": native.loaded()}))
"""


def test_a_lighter_process_never_imports_the_sdk_package(simulator: Any, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", _CHILD, simulator.urls["lighter"], str(next(_accounts)),
                            str(tmp_path / "k.txt"), str(next(_client_ids))],
                           capture_output=True, text=True, timeout=60, env=env, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert (result["state"], Decimal(result["position"]), result["cancelled"]) == ("filled", Decimal("0.02"), 0)
    assert result["heavy"] == [] and result["loaded"], result


def test_a_lighter_worker_child_never_imports_the_sdk_package(simulator: Any, redis_url: str, tmp_path: Path,
                                                              workers: Callable[..., Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The production layout: a real ``celery worker`` serving lighter1, after a real order through it."""
    from xtb_tasks.worker.celery_app import create_app
    from xtb_tasks.worker.results import wait_result

    config = write_config(tmp_path / "xtb.toml", simulator.urls, lighter_indexes=(next(_accounts), next(_accounts)))
    worker = workers(["lighter1"], name="native-l1", config_path=config, redis_url=redis_url,
                     extra_env={"XTB_TASK_MODULES": "tests.helpers.module_probe_tasks"})
    monkeypatch.setenv("XTB_CONFIG", str(config))
    app = create_app()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    [cid] = allocate_client_ids(client, "lighter1", "lighter")
    record_intent(client, "lighter1", cid, leg="test")
    task = app.send_task("xtb.venue.submit_market_order", queue="lighter1", kwargs={
        "account": "lighter1", "symbol": SYMBOL, "side": "buy", "client_ids": [cid], "quantity": "0.01"})
    assert wait_result(app, task.id, 60)["state"] == "filled"

    probe = wait_result(app, app.send_task("xtb.test.loaded_modules", queue="lighter1").id, 30)
    [child] = psutil.Process(worker.proc.pid).children()
    assert probe["pid"] == child.pid  # the pool child that just signed and sent the order
    assert probe["heavy_modules"] == [], probe
    assert probe["signer_loaded"] and probe["signer_mapped"], probe
