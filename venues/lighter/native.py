"""ctypes binding to lighter-sdk's Go signer library, without importing the ``lighter`` package.

``import lighter`` executes the package ``__init__``: the whole OpenAPI client, 160 pydantic models
and eth_account, +31..59 MB in every Lighter worker. Signing needs none of that, only the Go
library shipped in ``lighter/signers/`` (about 3 MB once loaded). So this module:

* finds the package directory with ``importlib.util.find_spec("lighter")``, which locates a
  top-level package without executing its ``__init__``;
* picks the file by ``platform.system()``/``platform.machine()`` exactly as
  ``lighter.signer_client.__get_shared_library`` does (lighter-sdk 1.1.8);
* declares argtypes/restype exactly as ``__populate_shared_library_functions`` does, for the
  functions we call, and frees every returned C string with the library's own ``Free`` (as
  ``decode_and_free`` does: the allocator that made it must release it);
* loads the library once per process, lazily, on the first call (never at import, so a Celery
  parent that imports the connector module does not map 12 MB it never uses).

Every ``sign_*`` gets an explicit ``nonce`` and ``api_key_index``: with ``nonce=-1`` the Go code would
make its own blocking HTTP call, which we never want.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import threading
from dataclasses import dataclass

# SignerClient constants we use (lighter-sdk 1.1.8 ``SignerClient``; checked against it in tests).
ORDER_TYPE_LIMIT = 0
ORDER_TYPE_MARKET = 1
ORDER_TIME_IN_FORCE_IMMEDIATE_OR_CANCEL = 0
ORDER_TIME_IN_FORCE_GOOD_TILL_TIME = 1
CANCEL_ALL_TIF_IMMEDIATE = 0
NIL_TRIGGER_PRICE = 0
DEFAULT_IOC_EXPIRY = 0
DEFAULT_28_DAY_ORDER_EXPIRY = -1
NIL_MARKET_INDEX = 255
SKIP_NONCE_OFF = 0
CROSS_MARGIN_MODE = 0
ISOLATED_MARGIN_MODE = 1
#: ``create_auth_token_with_expiry`` default: 10 minutes from now.
AUTH_TOKEN_SECS = 10 * 60


class SignerError(Exception):
    """The Go library returned an error string (text as Go wrote it; may name the input, never log raw)."""


class _SignedTxResponse(ctypes.Structure):
    _fields_ = [
        ("txType", ctypes.c_uint8),
        ("txInfo", ctypes.c_void_p),
        ("txHash", ctypes.c_void_p),
        ("messageToSign", ctypes.c_void_p),
        ("err", ctypes.c_void_p),
    ]


class _StrOrErr(ctypes.Structure):
    _fields_ = [("str", ctypes.c_void_p), ("err", ctypes.c_void_p)]


class _ApiKeyResponse(ctypes.Structure):
    _fields_ = [("privateKey", ctypes.c_void_p), ("publicKey", ctypes.c_void_p), ("err", ctypes.c_void_p)]


@dataclass(frozen=True)
class SignedTx:
    """One signed transaction, ready for ``POST /api/v1/sendTx`` (form ``tx_type``, ``tx_info``)."""

    tx_type: int
    tx_info: str
    tx_hash: str | None


_lib: ctypes.CDLL | None = None
_load_lock = threading.Lock()


def library_file(system: str, machine: str) -> str:
    """The signer file name for a platform, by the same rules as the SDK's ``__get_shared_library``."""
    is_linux, is_mac, is_windows = system == "Linux", system == "Darwin", system == "Windows"
    is_x64 = machine.lower() in ("amd64", "x86_64")
    is_arm = machine.lower() in ("arm64", "aarch64")
    if is_arm and is_mac:
        return "lighter-signer-darwin-arm64.dylib"
    if is_x64 and is_mac:
        return "lighter-signer-darwin-amd64.dylib"
    if is_linux and is_x64:
        return "lighter-signer-linux-amd64.so"
    if is_linux and is_arm:
        return "lighter-signer-linux-arm64.so"
    if is_windows and is_x64:
        return "lighter-signer-windows-amd64.dll"
    raise SignerError(f"Unsupported platform/architecture: {system}/{machine}. "
                      "Currently supported: Linux(x86_64/arm64), macOS(arm64/x86_64), and Windows(x86_64).")


def library_path() -> str:
    """Path of the Go signer inside the installed lighter-sdk (its ``__init__`` is NOT executed)."""
    spec = importlib.util.find_spec("lighter")
    if spec is None or not spec.submodule_search_locations:
        raise SignerError("lighter-sdk is not installed (no 'lighter' package on sys.path)")
    folder = os.path.join(spec.submodule_search_locations[0], "signers")
    return os.path.join(folder, library_file(platform.system(), platform.machine()))


def _declare(lib: ctypes.CDLL) -> None:
    """argtypes/restype exactly as lighter-sdk 1.1.8 ``__populate_shared_library_functions``."""
    c_int, c_ll, c_u8, c_str = ctypes.c_int, ctypes.c_longlong, ctypes.c_uint8, ctypes.c_char_p
    lib.GenerateAPIKey.argtypes = []
    lib.GenerateAPIKey.restype = _ApiKeyResponse
    lib.CreateClient.argtypes = [c_str, c_str, c_int, c_int, c_ll]
    lib.CreateClient.restype = ctypes.c_void_p
    lib.SignCreateOrder.argtypes = [c_ll, c_ll, c_ll, c_int, c_int, c_int, c_int, c_int, c_int, c_ll, c_ll,
                                    c_int, c_int, c_u8, c_u8, c_u8, c_ll, c_int, c_ll]
    lib.SignCreateOrder.restype = _SignedTxResponse
    lib.SignCancelOrder.argtypes = [c_ll, c_ll, c_u8, c_ll, c_int, c_ll]
    lib.SignCancelOrder.restype = _SignedTxResponse
    lib.SignCancelAllOrders.argtypes = [c_int, c_ll, c_ll, c_u8, c_ll, c_int, c_ll]
    lib.SignCancelAllOrders.restype = _SignedTxResponse
    lib.SignUpdateLeverage.argtypes = [c_ll, c_int, c_int, c_u8, c_ll, c_int, c_ll]
    lib.SignUpdateLeverage.restype = _SignedTxResponse
    lib.CreateAuthToken.argtypes = [c_ll, c_int, c_ll]
    lib.CreateAuthToken.restype = _StrOrErr
    lib.Free.argtypes = [ctypes.c_void_p]
    lib.Free.restype = None


def library() -> ctypes.CDLL:
    """The loaded signer, once per process (a forked child inherits a parent's load, which works)."""
    global _lib
    if _lib is None:
        with _load_lock:
            if _lib is None:
                lib = ctypes.CDLL(library_path())
                _declare(lib)
                _lib = lib
    return _lib


def loaded() -> bool:
    return _lib is not None


def _take(lib: ctypes.CDLL, ptr: int | None) -> str | None:
    """Read a C string the library returned, then free it with the library's own ``Free``."""
    if not ptr:
        return None
    try:
        raw = ctypes.cast(ptr, ctypes.c_char_p).value
        return None if raw is None else raw.decode("utf-8")
    finally:
        lib.Free(ptr)


def _signed(lib: ctypes.CDLL, result: _SignedTxResponse) -> SignedTx:
    """Free all four strings (as the SDK's ``__decode_tx_info`` does), then the tx or the error."""
    err = _take(lib, result.err)
    tx_info = _take(lib, result.txInfo)
    tx_hash = _take(lib, result.txHash)
    _take(lib, result.messageToSign)  # only L1-signed txs use it
    if err:
        raise SignerError(err)
    if not tx_info or not tx_info.startswith("{"):
        # SignerClient.send_tx refuses such a tx_info too; nothing was sent.
        raise SignerError(f"signer returned no tx_info (tx_type={result.txType})")
    return SignedTx(int(result.txType), tx_info, tx_hash)


def chain_id_for(url: str) -> int:
    """SignerClient's chain id choice by URL substring."""
    if "mainnet.zklighter" in url:
        return 304
    if "testnet.zklighter" in url:
        return 300
    if "api.rh.lighter" in url:
        return 466324
    if "api.rh-testnet.lighter" in url:
        return 300
    return 304


def create_client(url: str, private_key: str, chain_id: int, api_key_index: int, account_index: int) -> None:
    """Register the key in the library's process-global client map (``SignerClient.create_client``)."""
    lib = library()
    key = private_key[2:] if private_key.startswith("0x") else private_key  # the SDK strips 0x too
    err = _take(lib, lib.CreateClient(url.encode("utf-8"), key.encode("utf-8"), chain_id, api_key_index,
                                      account_index))
    if err is not None:
        raise SignerError(err)


def create_auth_token(deadline: int, api_key_index: int, account_index: int) -> str:
    """``CreateAuthToken(deadline, …)``; ``deadline`` is unix seconds (SDK: now + 600)."""
    lib = library()
    result = lib.CreateAuthToken(deadline, api_key_index, account_index)
    token, err = _take(lib, result.str), _take(lib, result.err)
    if err or not token:
        raise SignerError(err or "no auth token")
    return token


def sign_create_order(market_index: int, client_order_index: int, base_amount: int, price: int, is_ask: bool,
                      order_type: int, time_in_force: int, reduce_only: bool, trigger_price: int,
                      order_expiry: int, *, nonce: int, api_key_index: int, account_index: int) -> SignedTx:
    """``SignerClient.sign_create_order`` with no integrator and default self-trade modes."""
    lib = library()
    return _signed(lib, lib.SignCreateOrder(
        market_index, client_order_index, base_amount, price, int(is_ask), order_type, time_in_force,
        int(reduce_only), trigger_price, order_expiry,
        0, 0, 0,  # integrator account index, taker fee, maker fee
        0, 0,  # self-trade behaviour mode, self-trade equality mode
        SKIP_NONCE_OFF, nonce, api_key_index, account_index))


def sign_cancel_order(market_index: int, order_index: int, *, nonce: int, api_key_index: int,
                      account_index: int) -> SignedTx:
    lib = library()
    return _signed(lib, lib.SignCancelOrder(market_index, order_index, SKIP_NONCE_OFF, nonce, api_key_index,
                                            account_index))


def sign_cancel_all_orders(time_in_force: int, timestamp_ms: int, market_index: int, *, nonce: int,
                           api_key_index: int, account_index: int) -> SignedTx:
    """1.1.8 passes the market as a plain argument; Go puts it in ``L2TxAttributes`` ("5")."""
    lib = library()
    return _signed(lib, lib.SignCancelAllOrders(time_in_force, timestamp_ms, market_index, SKIP_NONCE_OFF, nonce,
                                                api_key_index, account_index))


def sign_update_leverage(market_index: int, initial_margin_fraction: int, margin_mode: int, *, nonce: int,
                         api_key_index: int, account_index: int) -> SignedTx:
    """``SignerClient.sign_update_leverage``: the fraction in basis points (``int(10000 / leverage)``
    as ``update_leverage`` computes it), margin mode cross (0) or isolated (1)."""
    lib = library()
    return _signed(lib, lib.SignUpdateLeverage(market_index, initial_margin_fraction, margin_mode, SKIP_NONCE_OFF,
                                               nonce, api_key_index, account_index))


def generate_api_key() -> tuple[str, str]:
    """A fresh (private, public) API key pair, offline (``lighter.signer_client.create_api_key``)."""
    lib = library()
    result = lib.GenerateAPIKey()
    private_key, public_key, err = _take(lib, result.privateKey), _take(lib, result.publicKey), _take(lib, result.err)
    if err or not private_key or not public_key:
        raise SignerError(err or "no key returned")
    return private_key, public_key
