"""The Telegram Bot API stand-in over real HTTP: answers, recording, armed faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from simulators.telegram import TelegramServer, TelegramState

TOKEN = "123456:ABC-secret-token"


@pytest.fixture
def tg() -> Iterator[TelegramServer]:
    with TelegramServer(TelegramState()) as server:
        yield server


def _send(server: TelegramServer, timeout: float = 5.0, **body: object) -> requests.Response:
    return requests.post(f"{server.url}/bot{TOKEN}/sendMessage", json=body, timeout=timeout)


def test_send_message_answers_like_telegram_and_records(tg: TelegramServer) -> None:
    first = _send(tg, chat_id=-1001234, text="hello")
    second = _send(tg, chat_id="42", text="second")
    assert first.status_code == 200
    body = first.json()
    assert body["ok"] is True
    assert body["result"]["chat"]["id"] == -1001234
    assert body["result"]["text"] == "hello"
    assert isinstance(body["result"]["date"], int)
    assert second.json()["result"]["message_id"] == body["result"]["message_id"] + 1
    listed = requests.get(f"{tg.url}/_sim/messages", timeout=5).json()["messages"]
    assert [(m["chat_id"], m["text"]) for m in listed] == [(-1001234, "hello"), (42, "second")]
    assert TOKEN not in repr(listed), "the stand-in must not record the bot token"
    assert tg.state.texts() == ["hello", "second"]


def test_form_encoded_send_is_accepted(tg: TelegramServer) -> None:
    url = f"{tg.url}/bot{TOKEN}/sendMessage"
    reply = requests.post(url, data={"chat_id": "7", "text": "form"}, timeout=5)
    assert reply.json()["ok"] is True
    assert tg.state.messages[0]["chat_id"] == 7


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": "x"}, "chat_id is empty"),
        ({"chat_id": 1}, "message text is empty"),
        ({"chat_id": 1, "text": ""}, "message text is empty"),
        ({"chat_id": "nobody", "text": "x"}, "chat not found"),
    ],
)
def test_bad_requests_are_400_and_not_recorded(
    tg: TelegramServer, body: dict[str, object], fragment: str
) -> None:
    reply = _send(tg, **body)
    assert reply.status_code == 400
    payload = reply.json()
    assert payload["ok"] is False and payload["error_code"] == 400
    assert payload["description"].startswith("Bad Request: ") and fragment in payload["description"]
    assert tg.state.messages == []


def test_armed_429_then_500_then_ok(tg: TelegramServer) -> None:
    requests.post(f"{tg.url}/_sim/fail", json={"kind": "http_429", "count": 1, "retry_after": 3}, timeout=5)
    requests.post(f"{tg.url}/_sim/fail", json={"kind": "http_500", "count": 1}, timeout=5)
    limited = _send(tg, chat_id=1, text="a")
    assert limited.status_code == 429
    assert limited.json() == {
        "ok": False, "error_code": 429, "description": "Too Many Requests: retry after 3",
        "parameters": {"retry_after": 3},
    }
    broken = _send(tg, chat_id=1, text="a")
    assert broken.status_code == 500 and broken.json()["ok"] is False
    assert _send(tg, chat_id=1, text="a").json()["ok"] is True
    assert tg.state.texts() == ["a"]
    assert tg.state.requests == 3


def test_hang_makes_the_client_time_out(tg: TelegramServer) -> None:
    requests.post(f"{tg.url}/_sim/fail", json={"kind": "hang", "count": 1, "seconds": 1.5}, timeout=5)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        _send(tg, timeout=0.3, chat_id=1, text="late")
    assert time.monotonic() - started < 1.4
    # The next request is served at once; the abandoned one is dropped once its hang ends
    # (lost in transit), so it is never delivered.
    assert _send(tg, chat_id=1, text="next").json()["ok"] is True
    time.sleep(1.6)
    assert tg.state.texts() == ["next"]


def test_hang_shorter_than_client_timeout_delivers(tg: TelegramServer) -> None:
    tg.state.arm("hang", 1, seconds=0.3)
    started = time.monotonic()
    assert _send(tg, timeout=5, chat_id=1, text="slow").json()["ok"] is True
    assert time.monotonic() - started >= 0.3
    assert tg.state.texts() == ["slow"]


def test_unknown_fault_kind_is_rejected(tg: TelegramServer) -> None:
    reply = requests.post(f"{tg.url}/_sim/fail", json={"kind": "explode"}, timeout=5)
    assert reply.status_code == 400
    assert "http_429" in reply.json()["error"]


def test_reset_faults_only_keeps_messages(tg: TelegramServer) -> None:
    _send(tg, chat_id=1, text="kept")
    tg.state.arm("http_500", 5)
    requests.post(f"{tg.url}/_sim/reset", json={"faults_only": True}, timeout=5)
    assert _send(tg, chat_id=1, text="after").json()["ok"] is True
    assert tg.state.texts() == ["kept", "after"]


def test_reset_forgets_messages_and_faults(tg: TelegramServer) -> None:
    _send(tg, chat_id=1, text="a")
    tg.state.arm("http_500", 5)
    assert requests.post(f"{tg.url}/_sim/reset", timeout=5).json() == {"status": "ok"}
    assert tg.state.messages == []
    assert _send(tg, chat_id=1, text="b").json()["result"]["message_id"] == 1


def test_concurrent_sends_get_unique_ids(tg: TelegramServer) -> None:
    def worker(n: int) -> None:
        for i in range(10):
            assert _send(tg, chat_id=1, text=f"{n}-{i}").json()["ok"] is True

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [m["message_id"] for m in tg.state.messages]
    assert sorted(ids) == list(range(1, 41))
