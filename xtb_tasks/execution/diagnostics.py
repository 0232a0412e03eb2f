"""Operator diagnostics: the minimum-size order check and the connector smoke test.

Both run in process under the account lease and send every order through
:func:`xtb_tasks.execution.venue_ops.submit_order`, the code path of the venue workers and ``xtb order
--direct``: a fresh client id from Redis, its intent recorded before the venue sees it.

Rules both keep:

* positions are signed everywhere, the min-order baseline and the smoke flatten included (an
  unsigned position cannot tell which way to close);
* nothing is retried while the previous attempt may have filled: an unknown outcome is looked up
  and the position re-read before a fresh client id is sent;
* the smoke test closes exactly the filled quantity, checks the position is back to the baseline
  (one recheck after a settle), and its final flatten is relative to the baseline, reduce-only,
  on the side given by the position's sign.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal, InvalidOperation
from typing import Any

import redis

from core.client_ids import allocate_client_ids, record_intent
from venues.base import MarketRules, OrderReport, PositionReading, Side, VenueConnector, VenueError
from xtb_tasks.execution.venue_ops import LegFailed, OrderRequest, RetryLater, read_position, submit_order

log = logging.getLogger(__name__)

FLATTEN_MAX_ORDERS = 3


# ---- shared helpers ------------------------------------------------------------------------------
def minimum_size(rules: MarketRules, price: Decimal, multiplier: Decimal = Decimal(1)) -> Decimal:
    """max(min base amount, min notional / price) × multiplier, rounded UP to the step."""
    floor = rules.min_quantity
    if rules.min_notional > 0 and price > 0:
        floor = max(floor, rules.min_notional / price)
    size = rules.quantize_size(floor * multiplier, rounding=ROUND_UP)
    return max(size, rules.step_size)


def nonce_state(connector: VenueConnector) -> str:
    """The Lighter signer's nonce bookkeeping (never the key); "n/a" for venues without nonces."""
    state = getattr(connector, "nonce_state", None)  # LighterConnector.nonce_state()
    if not callable(state):
        return "n/a"
    try:
        return str(state())
    except Exception as exc:  # a diagnostic must not die on the diagnostic itself
        return f"unreadable ({type(exc).__name__})"


@dataclass
class Attempt:
    """One client id sent once: what we sent, the nonce around it, and what the venue answered."""

    client_id: int
    api_key_index: int | None
    nonce_before: str
    nonce_after: str = ""
    report: OrderReport | None = None
    error: str | None = None

    @property
    def filled(self) -> Decimal:
        return self.report.filled if self.report is not None else Decimal(0)

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "api_key_index": self.api_key_index, "nonce_before": self.nonce_before,
                "nonce_after": self.nonce_after, "report": None if self.report is None else self.report.to_json(),
                "error": self.error}


@dataclass(frozen=True)
class Venue:
    """What a diagnostic needs of one account: Redis, its connector and the market."""

    client: redis.Redis
    connector: VenueConnector
    symbol: str

    @property
    def account(self) -> str:
        return self.connector.account

    def read(self) -> PositionReading:
        return read_position(self.client, self.connector, self.symbol)


def place(venue: Venue, side: Side, size: Decimal, *, reduce_only: bool, leg: str,
          max_slippage: float | None) -> Attempt:
    """Send one market order with a fresh client id through the workers' code path."""
    account, connector = venue.account, venue.connector
    client_id = allocate_client_ids(venue.client, account, connector.venue, 1)[0]
    record_intent(venue.client, account, client_id, leg=leg)
    attempt = Attempt(client_id, getattr(connector, "api_key_index", None), nonce_state(connector))
    log.info("account=%s %s submit client_id=%d api_key_index=%s nonce=%s side=%s size=%s reduce_only=%s",
             account, leg, client_id, attempt.api_key_index, attempt.nonce_before, side.value, size, reduce_only)
    request = OrderRequest(account=account, symbol=venue.symbol, side=side, client_ids=(client_id,),
                           quantity=size, reduce_only=reduce_only, max_slippage=max_slippage)
    try:
        attempt.report = submit_order(venue.client, connector, request)
    except LegFailed:
        # The venue refused it; submit_order recorded its answer with the intent.
        attempt.report = _recorded_report(venue, client_id)
        attempt.error = (attempt.report.reason if attempt.report else None) or "rejected by the venue"
    except RetryLater as exc:
        attempt.error = f"outcome unknown: {exc}"
        attempt.report = _look_up(venue, client_id)
    except VenueError as exc:
        attempt.error = str(exc)
    attempt.nonce_after = nonce_state(connector)
    answer = json.dumps(None if attempt.report is None else attempt.report.to_json())
    log.info("account=%s %s client_id=%d venue answer=%s error=%s nonce=%s", account, leg, client_id, answer,
             attempt.error, attempt.nonce_after)
    return attempt


def _recorded_report(venue: Venue, client_id: int) -> OrderReport | None:
    from core import keys

    raw = venue.client.hget(keys.intent(venue.account, client_id), "report")
    return OrderReport.from_json(json.loads(raw)) if raw else None


def _look_up(venue: Venue, client_id: int) -> OrderReport | None:
    """After an unknown outcome: the venue's record of the id, so a fill is never missed."""
    try:
        return venue.connector.find_order(venue.symbol, client_id)
    except VenueError as exc:
        log.warning("account=%s client_id=%d lookup after unknown outcome failed: %s", venue.account, client_id, exc)
        return None


def moved(reading: PositionReading, baseline: Decimal) -> Decimal | None:
    """Signed change since the baseline; None when the read is unknown (never zero)."""
    return None if reading.quantity is None else reading.quantity - baseline


# ---- minimum-size order check (original lighter_min_order) ------------------------------------------
@dataclass(frozen=True)
class MinOrderTarget:
    account: str
    side: Side
    reduce_only: bool = False
    multiplier: Decimal = Decimal(1)

    @classmethod
    def parse(cls, text: str) -> MinOrderTarget:
        """``ACCOUNT:DIRECTION[:reduce_only][:MULTIPLIER]``, e.g. ``lighter1:buy`` or ``lighter2:sell::2``."""
        parts = text.split(":")
        if not 2 <= len(parts) <= 4 or not parts[0]:
            raise ValueError(f"expected ACCOUNT:DIRECTION[:reduce_only][:MULTIPLIER], got {text!r}")
        if parts[1].lower() not in ("buy", "sell"):
            raise ValueError(f"{text!r}: direction must be buy or sell")
        flag = parts[2].lower() if len(parts) > 2 else ""
        if flag not in ("", "reduce_only", "reduce-only", "true", "false"):
            raise ValueError(f"{text!r}: third field must be reduce_only, true, false or empty")
        try:
            multiplier = Decimal(parts[3]) if len(parts) > 3 and parts[3] else Decimal(1)
        except InvalidOperation:
            raise ValueError(f"{text!r}: multiplier must be a number") from None
        if not multiplier.is_finite() or multiplier < 1:
            raise ValueError(f"{text!r}: multiplier must be at least 1 (the size would fall below the minimum)")
        return cls(parts[0], Side(parts[1].lower()), flag in ("reduce_only", "reduce-only", "true"), multiplier)

    def to_text(self) -> str:
        return f"{self.account}:{self.side.value}:{'reduce_only' if self.reduce_only else ''}:{self.multiplier}"


#: The original's YAML example: lighter1 buys, lighter2 sells, not reduce-only, multiplier 1.
DEFAULT_TARGETS = (MinOrderTarget("lighter1", Side.BUY), MinOrderTarget("lighter2", Side.SELL))


@dataclass
class TargetResult:
    target: MinOrderTarget
    symbol: str
    size: Decimal | None = None
    baseline: Decimal | None = None
    position: Decimal | None = None
    filled: Decimal = Decimal(0)
    fill_source: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def to_json(self) -> dict[str, Any]:
        def s(x: Decimal | None) -> str | None:
            return None if x is None else str(x)

        t = self.target
        return {"target": t.account, "symbol": self.symbol, "direction": t.side.value, "reduce_only": t.reduce_only,
                "size_multiplier": str(t.multiplier), "size": s(self.size), "baseline": s(self.baseline),
                "position": s(self.position), "filled": str(self.filled), "fill_source": self.fill_source,
                "attempts": [a.to_json() for a in self.attempts], "ok": self.ok, "reason": self.reason}


def run_min_order(venue: Venue, target: MinOrderTarget, *, max_attempts: int, retry_delay: float,
                  max_slippage: float | None) -> TargetResult:
    """Send the venue's minimum order for ``target`` until it fills or ``max_attempts`` are spent."""
    result = TargetResult(target, venue.symbol)
    rules = venue.connector.market_rules(venue.symbol)
    price = venue.connector.top_of_book(venue.symbol).price_for(target.side)
    if price is None:
        result.reason = f"no {'asks' if target.side is Side.BUY else 'bids'} to take"
        return result
    result.size = minimum_size(rules, price, target.multiplier)
    baseline = venue.read()
    if baseline.quantity is None:
        result.reason = f"baseline position unknown: {baseline.error}"
        return result
    result.baseline = baseline.quantity
    log.info("account=%s min-order %s size=%s (min_base=%s min_notional=%s price=%s x%s) baseline=%s",
             target.account, target.side.value, result.size, rules.min_quantity, rules.min_notional, price,
             target.multiplier, baseline.quantity)
    for number in range(1, max_attempts + 1):
        attempt = place(venue, target.side, result.size, reduce_only=target.reduce_only,
                        leg=f"diag-min-order#{number}", max_slippage=max_slippage)
        result.attempts.append(attempt)
        if _settle_fill(venue, result, attempt, rules):
            break
        if number < max_attempts:
            time.sleep(retry_delay * number)
    result.reason = _min_order_verdict(result, rules)
    return result


def _settle_fill(venue: Venue, result: TargetResult, attempt: Attempt, rules: MarketRules) -> bool:
    """Record the fill: the venue's report first, else the signed position change. True when filled."""
    reading = venue.read()
    result.position = reading.quantity
    if attempt.filled > 0:
        result.filled, result.fill_source = attempt.filled, "venue"
        return True
    delta = moved(reading, result.baseline or Decimal(0))
    # A fill the venue did not report still moved the position: never send another order on top of it.
    if delta is not None and abs(delta) >= rules.step_size:
        result.filled, result.fill_source = abs(delta), "position"
        return True
    return False


def _min_order_verdict(result: TargetResult, rules: MarketRules) -> str | None:
    if result.filled <= 0:
        last = result.attempts[-1] if result.attempts else None
        if last is None:
            return "not_sent"
        state = last.report.state.value if last.report else "unknown"
        why = last.error or (last.report.reason if last.report else None) or "no fill"
        return f"state={state} reason={why} after {len(result.attempts)} attempt(s)"
    if result.size is not None and result.filled < result.size:
        return f"partial_fill filled={result.filled} of {result.size}"
    return None


# ---- connector smoke test ---------------------------------------------------------------------------
@dataclass
class SmokeReport:
    account: str
    symbol: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def check(self, step: str, ok: bool, *, why: str = "failed", **detail: Any) -> bool:
        """Record one step; ``why`` is kept only when it failed (it becomes the failure reason)."""
        entry: dict[str, Any] = {"step": step, "ok": bool(ok), **{k: _jsonable(v) for k, v in detail.items()}}
        if not ok:
            entry["why"] = why
        self.steps.append(entry)
        log.log(logging.INFO if ok else logging.WARNING, "account=%s smoke %s", self.account, json.dumps(entry))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s["ok"] for s in self.steps)

    @property
    def failure_reason(self) -> str | None:
        failed = [s for s in self.steps if not s["ok"]]
        if not failed:
            return None if self.steps else f"{self.account}:nothing ran"
        return ", ".join(f"{self.account}:{s['step']}: {s['why']}" for s in failed)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, OrderReport | Attempt | PositionReading):
        return value.to_json()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def choose_side(requested: str, baseline: Decimal) -> Side | str:
    """The opening side; with an existing position it must grow it so the reduce-only close is valid."""
    if requested == "auto":
        return Side.BUY if baseline >= 0 else Side.SELL
    side = Side(requested)
    if baseline != 0 and side.sign * baseline < 0:
        return (f"--side {side.value} would shrink the existing position {baseline}; its reduce-only close "
                f"could not be placed (use --side auto)")
    return side


def run_smoke(venue: Venue, *, side: str = "auto", settle_secs: float = 1.0,
              max_slippage: float | None = None) -> SmokeReport:
    """Open the minimum, close exactly the fill reduce-only, check health, and flatten to the baseline."""
    report = SmokeReport(venue.account, venue.symbol)
    rules = venue.connector.market_rules(venue.symbol)
    book = venue.connector.top_of_book(venue.symbol)
    report.check("market", book.bid is not None and book.ask is not None, tick_size=rules.tick_size,
                 step_size=rules.step_size, min_quantity=rules.min_quantity, min_notional=rules.min_notional,
                 bid=book.bid, ask=book.ask, why="empty book side")
    start = venue.read()
    baseline = start.quantity
    report.check("baseline", baseline is not None, position=baseline, why=f"position unknown: {start.error}")
    if baseline is None:
        return report  # nothing was traded; nothing to undo
    try:
        _open_and_close(venue, report, rules, book.price_for, baseline, side, max_slippage)
        cancelled = venue.connector.cancel_all(venue.symbol)
        report.check("no_open_orders", cancelled == 0, cancelled=cancelled, why=f"{cancelled} order(s) were open")
        _check_back(venue, report, rules, baseline, settle_secs)
    except VenueError as exc:
        report.check("error", False, why=str(exc))
    finally:
        flatten_to_baseline(venue, report, rules, baseline, max_slippage)
    return report


def _open_and_close(venue: Venue, report: SmokeReport, rules: MarketRules,
                    price_for: Callable[[Side], Decimal | None], baseline: Decimal, side_opt: str,
                    max_slippage: float | None) -> None:
    side = choose_side(side_opt, baseline)
    if not isinstance(side, Side):
        report.check("open", False, why=side)
        return
    price = price_for(side)
    if price is None:
        report.check("open", False, why=f"no {'asks' if side is Side.BUY else 'bids'} to take")
        return
    size = minimum_size(rules, price)
    opened = place(venue, side, size, reduce_only=False, leg="diag-smoke-open", max_slippage=max_slippage)
    filled = opened.filled
    if not report.check("open", filled > 0, side=side.value, size=size, filled=filled, order=opened,
                        why=opened.error or "nothing filled"):
        return
    delta = moved(venue.read(), baseline)
    expected = filled * side.sign
    report.check("position_moved", delta is not None and abs(delta - expected) < rules.step_size,
                 expected=expected, moved=delta, why=f"moved {delta}, expected {expected}")
    closed = place(venue, side.opposite, filled, reduce_only=True, leg="diag-smoke-close", max_slippage=max_slippage)
    report.check("close", closed.filled == filled, size=filled, filled=closed.filled, order=closed,
                 why=closed.error or f"closed {closed.filled} of {filled}")


def _check_back(venue: Venue, report: SmokeReport, rules: MarketRules, baseline: Decimal, settle_secs: float) -> None:
    """Position back to the baseline within one step, from a fresh read; one recheck after a settle."""
    delta = moved(venue.read(), baseline)
    if delta is None or abs(delta) >= rules.step_size:
        time.sleep(settle_secs)
        delta = moved(venue.read(), baseline)
    report.check("back_to_baseline", delta is not None and abs(delta) < rules.step_size, moved=delta,
                 why=f"position is {delta} away from the baseline")


def flatten_to_baseline(venue: Venue, report: SmokeReport, rules: MarketRules, baseline: Decimal,
                        max_slippage: float | None) -> None:
    """Close any exposure the test left, relative to the baseline, with reduce-only orders only."""
    orders: list[Attempt] = []
    reading = venue.read()
    for _ in range(FLATTEN_MAX_ORDERS):
        quantity = reading.quantity
        if quantity is None:  # unknown: the final check below reports it
            break
        residual = quantity - baseline
        if abs(residual) < rules.step_size:
            break
        side = Side.to_reduce(quantity)
        # Reduce-only can only move toward zero: a residual that points away from zero is left alone.
        if side.sign * residual >= 0:
            break
        size = rules.quantize_size(min(abs(residual), abs(quantity)))
        if size < rules.step_size:
            break
        orders.append(place(venue, side, size, reduce_only=True, leg="diag-smoke-flatten", max_slippage=max_slippage))
        reading = venue.read()
    final = moved(reading, baseline)
    report.check("final_flatten", final is not None and abs(final) < rules.step_size, residual=final,
                 position=reading.quantity, orders=orders, why=f"residual exposure {final} versus the baseline")
