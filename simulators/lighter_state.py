"""The simulated Lighter venue: nonces, API keys, orders, trades and tx application.

Positions and collateral live in the shared :class:`market.Exchange` under
``("lighter", str(account_index))``; this module keeps what only Lighter has. Every method runs
on the server's event loop without awaiting, so a tx is applied atomically; calls into the
Exchange take its lock because the admin API and the other venue share it.

Rules (see also the ``lighter`` module docstring):

* Nonces are per ``(AccountIndex, ApiKeyIndex)`` and start at 0; a tx may run up to
  ``LighterRules.nonce_window`` (16) ahead of the next unused nonce, and only an accepted tx uses
  one, so a rejected tx never leaves a gap. ``nextNonce`` is the lowest unused nonce, as it was
  ``nonce_lag_ms`` ago (lighter_rules.py).
* The venue's clock is the wall clock plus ``clock_offset_ms`` (``POST /_sim/lighter/clock``), so a
  test can age orders past the history window; tx ``ExpiredAt`` stays checked against the wall clock.
* ``client_order_index`` values other than 0 are unique per account over the account's whole
  history (stricter than needed on mainnet, so a double submit can never slip through a test).
* Market and IOC orders fill against the synthetic book up to the tx's ``Price``, the worst
  acceptable price; the rest is canceled. Resting limit orders fill when the
  book crosses them (checked on every read and by the WebSocket ticker).
* UpdateLeverage (tx type 20) sets the account's initial-margin fraction on one market; the
  account then lists that market in ``positions`` even while flat (captured account fixtures list
  ``initial_margin_fraction`` at position 0), and its margin is checked at that fraction.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from simulators import margin
from simulators.lighter_model import (
    ASK_ORDER_BASE,
    BID_ORDER_BASE,
    MAKER_ACCOUNT,
    MARKETS,
    ORDER_TYPE_MARKET,
    QUOTE_DECIMALS,
    TIF_IOC,
    TIF_POST_ONLY,
    VENUE,
    CancelAllTx,
    CancelOrderTx,
    CreateOrderTx,
    LighterError,
    LighterOrder,
    ParsedTx,
    UpdateLeverageTx,
    fmt,
)
from simulators.lighter_money import fee_ppm
from simulators.lighter_nonces import Nonces
from simulators.lighter_rules import LighterRules, RateLimiter
from simulators.lighter_tx import CANCEL_ALL_ABORT, CANCEL_ALL_SCHEDULED
from simulators.market import AuditEntry, Exchange, SimAccount

logger = logging.getLogger(__name__)

#: Listener signature: (account_index, changed orders, new trades as JSON).
AccountListener = Callable[[int, list[LighterOrder], list[dict[str, Any]]], None]
TRADE_HISTORY = 50_000
TX_HISTORY = 50_000
#: ``EnrichedTx.status`` for an executed tx.
TX_STATUS_EXECUTED = 2


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class _Exec:
    """Outcome of one pass against the book."""

    filled: Decimal
    avg: Decimal | None
    reason: str | None
    #: Liquidity existed beyond the worst acceptable price (so slippage, not depth, stopped it).
    price_limited: bool
    #: A reduce-only order was larger than the position and was cut to it.
    clipped: bool


class LighterState:
    def __init__(self, exchange: Exchange, rules: LighterRules | None = None) -> None:
        self.exchange = exchange
        self.rules = rules if rules is not None else LighterRules()
        self.clock_offset_ms = 0.0
        self.limiter = RateLimiter(self.rules, self.monotonic) if self.rules.rate_limit else None
        self.nonce_book = Nonces(self.rules)
        self.markets = {m.market_id: m for m in MARKETS if m.base in exchange.prices}
        #: The lowest unused nonce per (account, api key); the nonce book's own dict.
        self.nonces: dict[tuple[int, int], int] = self.nonce_book.next
        self.api_keys: dict[tuple[int, int], str] = {}
        self.orders: dict[int, LighterOrder] = {}
        self.active: dict[int, LighterOrder] = {}
        self.account_orders: dict[int, list[LighterOrder]] = {}
        self.client_ids: dict[tuple[int, int], LighterOrder] = {}
        self.trades: deque[dict[str, Any]] = deque(maxlen=TRADE_HISTORY)
        self.txs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.cancel_all_at: dict[int, tuple[int, int | None]] = {}
        self.listeners: list[AccountListener] = []
        self._seq = itertools.count(1)
        self._trade_ids = itertools.count(1_000_000)
        self.block_height = 1

    # ---- the venue's clock -------------------------------------------------------------------
    def now(self) -> int:
        """The venue's time in ms: the wall clock plus the admin offset."""
        return int(time.time() * 1000 + self.clock_offset_ms)

    def monotonic(self) -> float:
        """Seconds for the rate limiter, moved by the same admin offset."""
        return time.monotonic() + self.clock_offset_ms / 1000

    # ---- accounts, keys, nonces -------------------------------------------------------------
    def ensure_account(self, account: int) -> SimAccount:
        """Unknown accounts are created on first use with the exchange's starting collateral."""
        return self.exchange.account(VENUE, str(account))

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def l1_address(account: int) -> str:
        """A stable made-up L1 address per account, so ``/account?by=l1_address`` can find it."""
        return "0x" + hashlib.sha256(f"lighter-sim:{account}".encode()).hexdigest()[:40]

    def account_by_l1(self, address: str) -> int | None:
        with self.exchange.lock:
            keys = [int(k) for (venue, k) in self.exchange.accounts if venue == VENUE and k.isdigit()]
        return next((a for a in keys if self.l1_address(a) == address.lower()), None)

    def next_nonce(self, account: int, api_key: int) -> int:
        """What ``GET /api/v1/nextNonce`` answers (lighter_nonces.py: the lag)."""
        self.ensure_account(account)
        return self.nonce_book.shown((account, api_key))

    def register_key(self, account: int, api_key: int, public_key: str) -> None:
        self.ensure_account(account)
        self.api_keys[(account, api_key)] = public_key

    def api_keys_for(self, account: int, api_key: int | None) -> list[dict[str, Any]]:
        return [{"account_index": a, "api_key_index": k, "nonce": self.nonces.get((a, k), 0),
                 "public_key": pub, "transaction_time": 0}
                for (a, k), pub in sorted(self.api_keys.items())
                if a == account and api_key in (None, 255, k)]

    # ---- tx submission ----------------------------------------------------------------------
    def submit(self, tx: ParsedTx, tx_type: int, info_text: str, fill_fraction: Decimal | None = None) -> str:
        """Check then apply one tx; returns its hash or raises :class:`LighterError`."""
        self._check(tx, None, set())
        return self._apply(tx, tx_type, info_text, fill_fraction)

    def submit_batch(self, txs: list[tuple[ParsedTx, int, str]]) -> list[str]:
        """All-or-nothing: every tx is checked (nonces in sequence) before any is applied.

        Checks run against the state before the batch, so a cancel naming an order created earlier
        in the same batch is refused (21700); two cancels of one order both pass, the second is a no-op.
        """
        expected: dict[tuple[int, int], int] = {}
        pending: set[tuple[int, int]] = set()
        for tx, _, _ in txs:
            key = (tx.account, tx.api_key)
            nonce = expected.get(key, self.nonces.get(key, 0))
            self._check(tx, nonce, pending)
            expected[key] = nonce + 1
            if isinstance(tx, CreateOrderTx) and tx.client_order_index:
                pending.add((tx.account, tx.client_order_index))
        return [self._apply(tx, kind, text, None) for tx, kind, text in txs]

    def _check(self, tx: ParsedTx, expected_nonce: int | None, pending: set[tuple[int, int]]) -> None:
        # HTTP 400 + "invalid nonce" is what makes the SDK resync its nonce.
        # A batch's nonces are consecutive, or the venue refuses the batch.
        key = (tx.account, tx.api_key)
        if (tx.nonce != expected_nonce) if expected_nonce is not None else not self.nonce_book.ok(key, tx.nonce):
            raise LighterError(400, 21104, "invalid nonce")
        if isinstance(tx, CreateOrderTx) and tx.client_order_index:
            key = (tx.account, tx.client_order_index)
            if key in self.client_ids or key in pending:
                raise LighterError(200, 21728, "client order index already exists")
        if isinstance(tx, CancelOrderTx):
            self._cancel_target(tx.account, tx.market.market_id, tx.index)
        if isinstance(tx, UpdateLeverageTx):
            with self.exchange.lock:
                allowed = margin.leverage_allowed(self.exchange, self.ensure_account(tx.account), tx.market.base,
                                                  Decimal(tx.fraction_bp) / 10000)
            if not allowed:
                # ccxt lighter.ts: 21508 "below initial margin".
                raise LighterError(200, 21508, "account would be below initial margin at this leverage")

    def _apply(self, tx: ParsedTx, tx_type: int, info_text: str, fill_fraction: Decimal | None) -> str:
        self.nonce_book.use((tx.account, tx.api_key), tx.nonce)
        self.ensure_account(tx.account)
        self.block_height += 1
        seq = next(self._seq)
        tx_hash = hashlib.blake2b(f"{seq}|{info_text}".encode(), digest_size=40).hexdigest()
        now = self.now()
        changed: list[LighterOrder] = []
        trades: list[dict[str, Any]] = []
        if isinstance(tx, CreateOrderTx):
            order = self._create(tx, fill_fraction, tx_hash, now, trades)
            changed.append(order)
            event: dict[str, Any] = {"order_index": order.order_index, "status": order.status}
        elif isinstance(tx, UpdateLeverageTx):
            with self.exchange.lock:
                acct = self.ensure_account(tx.account)
                acct.initial_fractions[tx.market.base] = Decimal(tx.fraction_bp) / 10000
                acct.position(tx.market.base)  # listed from now on, even flat
            event = {"market_index": tx.market.market_id, "initial_margin_fraction": tx.fraction_bp}
        elif isinstance(tx, CancelOrderTx):
            target = self._cancel_target(tx.account, tx.market.market_id, tx.index, strict=False)
            if target is not None:  # a cancel earlier in the same batch may have taken it
                self._close(target, "canceled", now)
                changed.append(target)
            event = {"order_index": target.order_index if target else None, "status": "canceled"}
        else:
            changed.extend(self._cancel_all(tx, now))
            event = {"canceled": [o.order_index for o in changed]}
        self._store_tx(tx, tx_type, info_text, tx_hash, seq, now, event)
        self._emit(tx.account, changed, trades)
        return tx_hash

    def _store_tx(self, tx: ParsedTx, tx_type: int, info_text: str, tx_hash: str, seq: int, now: int,
                  event: dict[str, Any]) -> None:
        self.txs[tx_hash] = {
            # event_info stays a dict until /api/v1/tx serves it (keeps JSON work off sendTx).
            "code": 200, "hash": tx_hash, "type": tx_type, "info": info_text, "event_info": event,
            "status": TX_STATUS_EXECUTED, "transaction_index": seq, "l1_address": self.l1_address(tx.account),
            "account_index": tx.account, "nonce": tx.nonce, "expire_at": tx.expired_at,
            "block_height": self.block_height, "queued_at": now, "executed_at": now, "sequence_index": seq,
            "parent_hash": "", "api_key_index": tx.api_key, "transaction_time": now * 1000,
            "committed_at": now, "verified_at": now,
        }
        while len(self.txs) > TX_HISTORY:
            self.txs.popitem(last=False)

    def _emit(self, account: int, orders: list[LighterOrder], trades: list[dict[str, Any]]) -> None:
        for listener in list(self.listeners):
            try:
                listener(account, orders, trades)
            except Exception:  # a push failure must never fail the tx that caused it
                logger.exception("lighter account listener failed")

    # ---- orders -----------------------------------------------------------------------------
    def _create(self, tx: CreateOrderTx, fraction: Decimal | None, tx_hash: str, now: int,
                trades: list[dict[str, Any]]) -> LighterOrder:
        base = ASK_ORDER_BASE if tx.is_ask else BID_ORDER_BASE
        order = LighterOrder(
            order_index=base + int(self.exchange.next_order_id()), client_order_index=tx.client_order_index,
            account=tx.account, market=tx.market, is_ask=tx.is_ask, order_type=tx.order_type,
            time_in_force=tx.time_in_force, reduce_only=tx.reduce_only, price=tx.price,
            price_int=tx.price_int, initial=tx.base, nonce=tx.nonce, order_expiry=tx.order_expiry,
            created_ms=now, block_height=self.block_height)
        self.orders[order.order_index] = order
        self.account_orders.setdefault(tx.account, []).append(order)
        if tx.client_order_index:
            self.client_ids[(tx.account, tx.client_order_index)] = order
        if tx.order_type == ORDER_TYPE_MARKET or tx.time_in_force == TIF_IOC:
            res = self._execute(order, order.initial, order.price, fraction)
            self._fill(order, res, True, tx_hash, now, trades)
            order.status = _ioc_status(order, res, fraction)
            order.updated_ms = now
        else:
            self._rest_or_take(order, tx_hash, now, trades)
        if order.active:
            self.active[order.order_index] = order
        self._audit(order)
        return order

    def _rest_or_take(self, order: LighterOrder, tx_hash: str, now: int, trades: list[dict[str, Any]]) -> None:
        if not self._crosses(order):
            if order.reduce_only and not self._reduces(order):
                order.status = "canceled-reduce-only"
            return
        if order.time_in_force == TIF_POST_ONLY:
            order.status = "canceled-post-only"
            return
        res = self._execute(order, order.initial, order.price, None)
        self._fill(order, res, True, tx_hash, now, trades)
        order.status = _resting_status(order, res)

    def _execute(self, order: LighterOrder, quantity: Decimal, worst: Decimal,
                 fraction: Decimal | None, maker: bool = False) -> _Exec:
        ex, m, key = self.exchange, order.market, str(order.account)
        with ex.lock:
            before = ex.account(VENUE, key).position(m.base).quantity
            filled, avg, reason = ex.execute_market(
                VENUE, key, m.base, order.side, quantity, step=m.step, worst_price=worst,
                reduce_only=order.reduce_only, fill_fraction=fraction, maker=maker)
            beyond = filled < quantity and self._liquidity_beyond(m.base, order.is_ask, worst)
        clipped = order.reduce_only and reason is None and abs(before) < quantity
        return _Exec(filled, avg, reason, beyond, clipped)

    def _liquidity_beyond(self, base: str, is_ask: bool, worst: Decimal) -> bool:
        """Whether the book holds levels past the worst price (only asked after a short fill)."""
        bids, asks = self.exchange.book(VENUE, base)
        return any(p < worst for p, _ in bids) if is_ask else any(p > worst for p, _ in asks)

    def _fill(self, order: LighterOrder, res: _Exec, taker: bool, tx_hash: str, now: int,
              trades: list[dict[str, Any]]) -> None:
        if res.filled <= 0 or res.avg is None:
            return
        order.filled += res.filled
        order.filled_quote += res.filled * res.avg
        order.updated_ms = now
        trade = self._trade_json(order, res.filled, res.avg, taker, tx_hash, now)
        self.trades.append(trade)
        trades.append(trade)

    def _trade_json(self, order: LighterOrder, size: Decimal, price: Decimal, taker: bool, tx_hash: str,
                    now: int) -> dict[str, Any]:
        tid, m = next(self._trade_ids), order.market
        other_id = (BID_ORDER_BASE if order.is_ask else ASK_ORDER_BASE) + tid
        user, other = (order.order_index, order.client_order_index, order.account), (other_id, 0, MAKER_ACCOUNT)
        ask, bid = (user, other) if order.is_ask else (other, user)
        return {
            "trade_id": tid, "trade_id_str": str(tid), "tx_hash": tx_hash, "type": "trade",
            "market_id": m.market_id, "size": m.size_str(size), "price": m.price_str(price),
            "usd_amount": fmt(size * price, QUOTE_DECIMALS),
            "ask_id": ask[0], "ask_id_str": str(ask[0]), "bid_id": bid[0], "bid_id_str": str(bid[0]),
            "ask_client_id": ask[1], "ask_client_id_str": str(ask[1]),
            "bid_client_id": bid[1], "bid_client_id_str": str(bid[1]),
            "ask_account_id": ask[2], "bid_account_id": bid[2],
            # The user is the maker only when a resting order is crossed later.
            "is_maker_ask": order.is_ask != taker, "block_height": self.block_height, "timestamp": now,
            # Fee rates in parts per million, as captured (lighter_money.py; charged by execute_market).
            "taker_fee": fee_ppm(self.exchange, False), "maker_fee": fee_ppm(self.exchange, True),
            "transaction_time": now * 1000,
        }

    def _top(self, base: str) -> tuple[Decimal | None, Decimal | None]:
        """(best bid, best ask) of the synthetic book, unrounded."""
        bids, asks = self.exchange.book(VENUE, base)
        return (bids[0][0] if bids else None), (asks[0][0] if asks else None)

    def _crosses(self, order: LighterOrder, top: tuple[Decimal | None, Decimal | None] | None = None) -> bool:
        bid, ask = top if top is not None else self._top(order.market.base)
        if order.is_ask:
            return bid is not None and bid >= order.price
        return ask is not None and ask <= order.price

    def _reduces(self, order: LighterOrder) -> bool:
        qty = self.exchange.account(VENUE, str(order.account)).position(order.market.base).quantity
        return qty != 0 and (qty > 0) == order.is_ask

    def _audit(self, order: LighterOrder) -> None:
        m = order.market
        avg = order.filled_quote / order.filled if order.filled else None
        self.exchange.record(AuditEntry(
            ts=time.time(), venue=VENUE, account=str(order.account), client_id=order.client_order_index,
            order_id=str(order.order_index), base=m.base, side=order.side, quantity=m.size_str(order.initial),
            filled=m.size_str(order.filled), avg_price=m.price_str(avg) if avg is not None else None,
            reduce_only=order.reduce_only, status=order.status))

    def _close(self, order: LighterOrder, status: str, now: int) -> None:
        order.status = status
        order.updated_ms = now
        self.active.pop(order.order_index, None)

    def _cancel_target(self, account: int, market_id: int, index: int, strict: bool = True) -> LighterOrder | None:
        """The order a cancel's ``Index`` names: an order_index, else a (non-zero) client_order_index."""
        order = self.orders.get(index)
        if order is None or order.account != account or order.market.market_id != market_id:
            order = self.client_ids.get((account, index)) if index else None
            if order is not None and order.market.market_id != market_id:
                order = None
        if order is not None and order.active:
            return order
        if not strict:
            return None
        if order is not None:
            raise LighterError(200, 21709, "order is not active")
        raise LighterError(200, 21700, "invalid order index")

    def _cancel_all(self, tx: CancelAllTx, now: int) -> list[LighterOrder]:
        market_id = tx.market.market_id if tx.market else None
        if tx.time_in_force == CANCEL_ALL_SCHEDULED:
            self.cancel_all_at[tx.account] = (tx.time, market_id)
            return []
        if tx.time_in_force == CANCEL_ALL_ABORT:
            self.cancel_all_at.pop(tx.account, None)
            return []
        return self._cancel_active(tx.account, market_id, now)

    def _cancel_active(self, account: int, market_id: int | None, now: int) -> list[LighterOrder]:
        hit = self.active_orders(account, market_id)
        for order in hit:
            self._close(order, "canceled", now)
        return hit

    def active_orders(self, account: int, market_id: int | None = None) -> list[LighterOrder]:
        return [o for o in self.account_orders.get(account, ())
                if o.active and (market_id is None or o.market.market_id == market_id)]

    def inactive_orders(self, account: int) -> list[LighterOrder]:
        """Inactive orders, oldest first; with ``rules.history`` only the newest ``inactive_history``
        that ended within ``history_secs`` (the venue's accountOrders/accountInactiveOrders window)."""
        ended = [o for o in self.account_orders.get(account, ()) if not o.active]
        if not self.rules.history:
            return ended
        since = self.now() - self.rules.history_secs * 1000
        recent = [o for o in ended if (o.updated_ms or o.created_ms) >= since]
        recent.sort(key=lambda o: o.updated_ms or o.created_ms)
        return recent[-self.rules.inactive_history:]

    def listed_active(self, account: int) -> list[LighterOrder]:
        """Active orders accountOrders lists: the newest ``active_history`` of them."""
        active = self.active_orders(account)
        return active[-self.rules.active_history:] if self.rules.history else active

    def order_by_client_id(self, account: int, client_order_index: int) -> LighterOrder | None:
        return self.client_ids.get((account, client_order_index))

    def listed_by_client_id(self, account: int, client_order_index: int) -> LighterOrder | None:
        """The order accountOrders shows for a client id: None once it fell out of the history window
        (docs: the last 10K active and 1K inactive orders of the last 24 h), so an old id looks absent."""
        order = self.client_ids.get((account, client_order_index))
        if order is None or not self.rules.history:
            return order
        listed = self.listed_active(account) if order.active else self.inactive_orders(account)
        return order if any(o is order for o in listed) else None

    # ---- time-driven work -------------------------------------------------------------------
    def sweep(self, now: int | None = None) -> None:
        """Fire scheduled cancel-alls, expire orders and fill resting orders the book now crosses."""
        if not self.active and not self.cancel_all_at:
            return
        now = self.now() if now is None else now
        for account, (at, market_id) in list(self.cancel_all_at.items()):
            if at <= now:
                del self.cancel_all_at[account]
                self._emit(account, self._cancel_active(account, market_id, now), [])
        # The book depends only on the mid, which fills do not move: one top of book per sweep.
        tops = {m.base: self._top(m.base) for m in self.markets.values()}
        for order in list(self.active.values()):
            trades: list[dict[str, Any]] = []
            if 0 < order.order_expiry <= now:
                self._close(order, "canceled-expired", now)
            elif self._crosses(order, tops[order.market.base]):
                tx_hash = hashlib.blake2b(f"fill|{order.order_index}|{now}".encode(), digest_size=40).hexdigest()
                res = self._execute(order, order.remaining, order.price, None, maker=True)
                self._fill(order, res, False, tx_hash, now, trades)
                status = _resting_status(order, res)
                if status != "open":
                    self._close(order, status, now)
                if not trades and status == "open":
                    continue
            else:
                continue
            self._emit(order.account, [order], trades)


def _ioc_status(order: LighterOrder, res: _Exec, fraction: Decimal | None) -> str:
    if res.reason == "reduce_only":
        return "canceled-reduce-only"
    if res.reason == "margin":
        return "canceled-margin-not-allowed"
    if order.filled >= order.initial:
        return "filled"
    if res.clipped:
        return "canceled-reduce-only"
    if fraction is None and res.price_limited:
        return "canceled-too-much-slippage"
    return "canceled-not-enough-liquidity"


def _resting_status(order: LighterOrder, res: _Exec) -> str:
    if res.reason == "reduce_only" or res.clipped:
        return "canceled-reduce-only"
    if res.reason == "margin":
        return "canceled-margin-not-allowed"
    if order.filled >= order.initial:
        return "filled"
    return "open"
