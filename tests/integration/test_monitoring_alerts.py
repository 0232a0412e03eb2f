"""raise_alert (outbox + live channel), the standard texts, and Telegram credentials and redaction."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from core import keys
from core.config import TelegramConfig
from monitoring.alert_texts import (
    AlertKind,
    fmt_amount,
    format_cycle_finished,
    format_cycle_hedged,
    format_cycle_started,
    format_emergency_exit,
    format_heartbeat_back,
    format_heartbeat_missing,
    format_worker_crash,
)
from monitoring.alerts import OUTBOX_MAXLEN, alert_id_ms, queue_alert, raise_alert, recent_alerts
from monitoring.relay import prune_delivered
from monitoring.telegram import (
    CredentialsError,
    RedactingFilter,
    SendStatus,
    TelegramClient,
    TelegramCredentials,
    load_credentials,
    parse_keys_text,
)
from simulators.telegram import TelegramServer, TelegramState

TOKEN = "555:alerts-SECRET"


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_every_kind_is_documented() -> None:
    assert {k.value for k in AlertKind} == {
        "cycle_started", "cycle_hedged", "cycle_finished", "cycle_completed", "emergency_exit",
        "heartbeat_missing", "heartbeat_back", "worker_crash", "group_stopped", "group_resumed",
        "positions_unknown", "stream_disagreement"}
    lines = Path(__file__).resolve().parents[2].joinpath("monitoring", "alert_texts.py").read_text().splitlines()
    for kind in AlertKind:
        at = lines.index(f'    {kind.name} = "{kind.value}"')
        assert lines[at - 1].startswith("    #: "), f"{kind.name} needs a #: doc comment"


def test_raise_alert_writes_outbox_and_live_channel(r: redis.Redis) -> None:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.ALERTS_CHANNEL)
    pubsub.get_message(timeout=1)
    alert_id = raise_alert(r, AlertKind.EMERGENCY_EXIT, "line one\nline   two", cycle_id="c1",
                           pnl={"lighter1": Decimal("-1.5")})
    (entry_id, data), = r.xrange(keys.ALERTS_OUTBOX)
    assert data["id"] == alert_id and data["kind"] == "emergency_exit"
    assert data["text"] == "line one line two", "one line"
    assert json.loads(data["fields"]) == {"cycle_id": "c1", "pnl": {"lighter1": "-1.5"}}
    message = pubsub.get_message(timeout=2)
    assert message is not None
    live = json.loads(message["data"])
    assert (live["id"], live["text"], live["fields"]["cycle_id"]) == (alert_id, "line one line two", "c1")
    (alert,) = recent_alerts(r)
    assert (alert.alert_id, alert.entry_id, alert.kind) == (alert_id, entry_id, "emergency_exit")
    assert alert_id_ms(alert_id) is not None and abs(alert_id_ms(alert_id) / 1000 - alert.ts) < 1
    pubsub.close()


def test_raise_alert_rejects_empty_text_and_unknown_kind(r: redis.Redis) -> None:
    with pytest.raises(ValueError):
        raise_alert(r, AlertKind.CYCLE_STARTED, "   \n ")
    with pytest.raises(ValueError):
        raise_alert(r, "nonsense", "x")  # type: ignore[arg-type]
    assert r.xlen(keys.ALERTS_OUTBOX) == 0


def test_outbox_is_capped_and_ids_are_unique(r: redis.Redis) -> None:
    ids: set[str] = set()
    for start in range(0, OUTBOX_MAXLEN + 500, 500):
        pipe = r.pipeline(transaction=True)
        ids.update(queue_alert(pipe, AlertKind.CYCLE_STARTED, f"cycle {i}") for i in range(start, start + 500))
        pipe.execute()
    assert len(ids) == OUTBOX_MAXLEN + 500
    # MAXLEN ~ trims whole stream nodes: never below the cap, never far above it.
    assert OUTBOX_MAXLEN <= r.xlen(keys.ALERTS_OUTBOX) < OUTBOX_MAXLEN + 200
    assert r.xrevrange(keys.ALERTS_OUTBOX, count=1)[0][1]["text"] == f"cycle {OUTBOX_MAXLEN + 499}"


def test_long_text_is_cut_for_telegram(r: redis.Redis) -> None:
    raise_alert(r, AlertKind.WORKER_CRASH, "x" * 10_000)
    text = r.xrange(keys.ALERTS_OUTBOX)[0][1]["text"]
    assert len(text) == 4000 and text.endswith("…")


def test_prune_delivered_forgets_only_old_ids(r: redis.Redis) -> None:
    r.sadd(keys.ALERTS_DELIVERED, "1000-aaaa", "2000-bbbb", "9000000000000-cccc")
    assert prune_delivered(r, before_epoch=5.0) == 2
    assert r.smembers(keys.ALERTS_DELIVERED) == {"9000000000000-cccc"}


def test_standard_texts_are_one_line_plain_english() -> None:
    texts = [
        format_cycle_started("main", "c1", "long_backpack", Decimal("0.50")),
        format_cycle_hedged("main", "c1", {"backpack": Decimal("0.001"), "lighter1": Decimal("-0.5"),
                                           "lighter2": Decimal("0.499")}),
        format_cycle_finished("main", "c1", "flat", {"backpack": Decimal("1.2"), "lighter1": None}, 3600),
        format_emergency_exit("main", "c1", "lighter1_zero",
                              {"backpack": Decimal("1.20"), "lighter1": Decimal("-40.1"), "lighter2": 38.3},
                              {"backpack": 0, "lighter1": Decimal("0E-8"), "lighter2": None}),
        format_heartbeat_missing("lighter1", 4.26, 2.0),
        format_heartbeat_back("lighter1", 65.0),
        format_worker_crash("lighter1@host", "pool process died"),
    ]
    assert all("\n" not in t for t in texts)
    assert texts[0] == "Cycle c1 started in group main: long_backpack, Backpack size 0.5."
    assert texts[1] == ("Cycle c1 (main) hedged; positions: backpack +0.001, lighter1 -0.5, lighter2 +0.499; "
                        "net 0.")
    assert texts[2] == ("Cycle c1 (main) finished after 60m: flat; PnL backpack +1.2, lighter1 unknown; "
                        "total unknown.")
    assert texts[3] == ("EMERGENCY EXIT of cycle c1 (main): lighter1_zero; PnL backpack +1.2, lighter1 -40.1, "
                        "lighter2 +38.3; positions backpack 0, lighter1 0, lighter2 unknown.")
    assert texts[4] == "Heartbeat missing from lighter1: silent for 4.3s (expected every 2.0s)."
    assert texts[5] == "Heartbeat back from lighter1 after 65s of silence."
    assert fmt_amount(None) == "unknown" and fmt_amount(Decimal("-0")) == "0"
    assert fmt_amount(Decimal("1E+2")) == "100" and fmt_amount(0.1, signed=True) == "+0.1"


# --------------------------------------------------------------------------------------------
# Credentials


def test_keys_file_formats() -> None:
    assert parse_keys_text('bot_token: "123:ABC"\nchat_id: -100\n') == {"bot_token": "123:ABC", "chat_id": "-100"}
    # Split on the first colon only (tokens contain one), case-insensitive keys, quotes and spaces.
    assert parse_keys_text("  TOKEN :  '9:x:y'  \n# comment\nChannel: @alerts\nnoise\n") == {
        "token": "9:x:y", "channel": "@alerts"}


def test_load_credentials_from_file_synonyms_and_env(tmp_path: Path) -> None:
    keys_file = tmp_path / "tg_key.txt"
    keys_file.write_text('Telegram_Token: "1:file"\ntelegram_chat: 42\n')
    config = TelegramConfig(keys_file=keys_file)
    creds = load_credentials(config, env={})
    assert (creds.bot_token, creds.chat_id) == ("1:file", "42")
    assert "1:file" not in repr(creds)
    env = {"XTB_TELEGRAM_BOT_TOKEN": "2:env"}
    assert load_credentials(config, env=env).bot_token == "2:env"
    assert load_credentials(config, env=env).chat_id == "42"
    only_env = load_credentials(TelegramConfig(), env={"XTB_TELEGRAM_BOT_TOKEN": "3:e", "XTB_TELEGRAM_CHAT_ID": "7"},
                                base_dir=tmp_path / "nowhere")
    assert (only_env.bot_token, only_env.chat_id) == ("3:e", "7")


def test_missing_credentials_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="keys file not found"):
        load_credentials(TelegramConfig(keys_file=tmp_path / "absent.txt"), env={})
    (tmp_path / "tg_key.txt").write_text("bot_token: 1:x\n")
    with pytest.raises(CredentialsError, match=r"chat_id not found: set \$XTB_TELEGRAM_BOT_TOKEN"):
        load_credentials(TelegramConfig(), env={}, base_dir=tmp_path)


def test_client_classifies_answers_and_never_leaks_the_token(caplog: pytest.LogCaptureFixture) -> None:
    with TelegramServer(TelegramState()) as tg:
        client = TelegramClient(tg.url, TelegramCredentials(chat_id="5", bot_token=TOKEN), timeout=2)
        assert client.safe_url == f"{tg.url}/bot<redacted>/sendMessage"
        assert client.send("hi").status is SendStatus.OK
        tg.state.arm("http_429", 1, retry_after=7)
        limited = client.send("hi")
        assert (limited.status, limited.retry_after) == (SendStatus.RATE_LIMITED, 7.0)
        tg.state.arm("http_500", 1)
        assert client.send("hi").status is SendStatus.TRANSIENT
        with caplog.at_level(logging.DEBUG, logger="urllib3"):
            client.send("again")
        client.close()
    closed = TelegramClient(tg.url, TelegramCredentials(chat_id="5", bot_token=TOKEN), timeout=0.5)
    failed = closed.send("server is gone")
    closed.close()
    assert failed.status is SendStatus.TRANSIENT and TOKEN not in failed.description
    assert "bot<redacted>" in failed.description or "Connection" in failed.description
    assert caplog.records, "urllib3 debug lines were captured"
    assert all(TOKEN not in rec.getMessage() for rec in caplog.records)


def test_redacting_filter_rewrites_records() -> None:
    record = logging.LogRecord("urllib3", logging.DEBUG, __file__, 1, 'POST /bot%s/sendMessage', (TOKEN,), None)
    RedactingFilter(TOKEN).filter(record)
    assert record.getMessage() == "POST /bot<redacted>/sendMessage"


def test_rejected_credentials_are_classified() -> None:
    with TelegramServer(TelegramState()) as tg:
        client = TelegramClient(tg.url.replace("127.0.0.1", "localhost") + "/nope",
                                TelegramCredentials(chat_id="5", bot_token=TOKEN), timeout=2)
        assert client.send("x").status is SendStatus.REJECTED  # 404 as Telegram answers a bad token
        client.close()
