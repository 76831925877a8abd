"""Tests of the vision-language describer: a slow or failing endpoint never delays an alert."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from events import fall_event
from pydantic import ValidationError
from servers import RedisServer

from pipeline.config import VlmConfig, parse_config
from pipeline.daemon import Daemon
from pipeline.fusion.vlm import VlmDescriber, parse_reply
from pipeline.records import Event, Frame

ENDPOINT_DELAY_S = 3.0


class SlowChatEndpoint(http.server.ThreadingHTTPServer):
    """OpenAI-compatible /chat/completions server that replies after a delay and records the requests."""

    def __init__(self, delay_s: float, reply: str) -> None:
        self.delay_s = delay_s
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SlowChatEndpoint

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        time.sleep(self.server.delay_s)
        answer = {"choices": [{"message": {"role": "assistant", "content": self.server.reply}}]}
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


REPLY = json.dumps({"en": "A man lies by the bed.", "zh": "一名男子躺在床边。"})


def serve(delay_s: float, reply: str) -> Iterator[SlowChatEndpoint]:
    server = SlowChatEndpoint(delay_s, reply)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint() -> Iterator[SlowChatEndpoint]:
    yield from serve(ENDPOINT_DELAY_S, REPLY)


@pytest.fixture
def fast_endpoint() -> Iterator[SlowChatEndpoint]:
    yield from serve(0.0, REPLY)


@pytest.fixture
def empty_endpoint() -> Iterator[SlowChatEndpoint]:
    yield from serve(0.0, json.dumps({"text": "no en or zh key"}))


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_slow_endpoint_does_not_delay_alert(
    endpoint: SlowChatEndpoint, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = parse_config(
        {
            "cameras": {"ward": {"url": "ward.mp4", "enabled": False}},
            "redis": {"url": redis_server.url},
            "metrics": {"enabled": False},
            "alerts": {"snapshot_dir": str(tmp_path), "spool_dir": str(tmp_path / "spool")},
            "fusion": {
                "enabled": False,
                "vlm": {"url": endpoint.url, "model": "llava", "api_key": "${VLM_KEY}", "timeout_s": 10},
            },
        },
        env={"VLM_KEY": "sk-local"},
    )
    client = redis.Redis.from_url(redis_server.url)
    subscriber = client.pubsub()
    subscriber.subscribe("vigil:alerts:ward")
    subscriber.get_message(timeout=1.0)
    daemon = Daemon(config, detector=object(), redis_client=client)  # type: ignore[arg-type]
    daemon.start()
    try:
        frame = Frame("ward", 1, 0.0, time.time(), np.full((60, 80, 3), 90, np.uint8))
        submitted = time.monotonic()
        daemon._emit(fall_event(), frame)
        first = subscriber.get_message(timeout=ENDPOINT_DELAY_S / 2)
        assert first is not None, "the alert waited for the vision-language endpoint"
        first_after = time.monotonic() - submitted
        message = json.loads(first["data"])
        assert message["state"] == "started"
        assert "vlm_en" not in message["description"]

        second = subscriber.get_message(timeout=ENDPOINT_DELAY_S + 5)
        assert second is not None, "the described update never came"
        update = json.loads(second["data"])
    finally:
        daemon.stop()
    assert first_after < 1.0
    assert update["event_id"] == message["event_id"]
    assert update["state"] == "updated"
    assert update["description"]["vlm_en"] == "A man lies by the bed."
    assert update["description"]["vlm_zh"] == "一名男子躺在床边。"
    assert update["description"]["en"] == message["description"]["en"]

    (request,) = endpoint.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer sk-local"
    content = request["body"]["messages"][1]["content"]
    assert json.loads(content[0]["text"])["rule_type"] == "fall"
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_plain_text_reply_is_english() -> None:
    assert parse_reply("Someone fell near the bed.") == {"vlm_en": "Someone fell near the bed."}


def test_fenced_json_reply_is_parsed() -> None:
    assert parse_reply('```json\n{"en": "A fall.", "zh": "跌倒。"}\n```') == {
        "vlm_en": "A fall.",
        "vlm_zh": "跌倒。",
    }


def test_reply_without_texts_is_empty() -> None:
    assert parse_reply('{"text": "A fall."}') == {}


def test_worker_survives_failing_callback(fast_endpoint: SlowChatEndpoint) -> None:
    received: list[dict[str, str]] = []

    def on_text(event: Event, texts: dict[str, str]) -> None:
        if not received:
            received.append({})
            raise RuntimeError("publisher down")
        received.append(texts)

    config = VlmConfig(url=fast_endpoint.url, model="llava", workers=1)
    describer = VlmDescriber(config, on_text)
    describer.start()
    try:
        assert describer.submit(fall_event(), None)
        assert wait_until(lambda: describer.failed == 1)
        assert describer.submit(fall_event(), None)
        assert wait_until(lambda: describer.answered == 1)
    finally:
        describer.stop()
    assert received[1]["vlm_en"] == "A man lies by the bed."
    assert describer.failed == 1


def test_reply_without_texts_counts_failed(empty_endpoint: SlowChatEndpoint) -> None:
    received: list[dict[str, str]] = []
    config = VlmConfig(url=empty_endpoint.url, model="llava", workers=1)
    describer = VlmDescriber(config, lambda event, texts: received.append(texts))
    describer.start()
    try:
        assert describer.submit(fall_event(), None)
        assert wait_until(lambda: describer.failed == 1)
    finally:
        describer.stop()
    assert received == []
    assert describer.answered == 0


def test_stop_ends_more_workers_than_queue_slots() -> None:
    config = VlmConfig(url="http://127.0.0.1:9/v1", model="llava", workers=4, queue_size=1)
    describer = VlmDescriber(config, lambda event, texts: None)
    describer.start()
    started = time.monotonic()
    describer.stop(timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert not any(thread.is_alive() for thread in describer._threads)


def test_submit_after_stop_is_skipped() -> None:
    config = VlmConfig(url="http://127.0.0.1:9/v1", model="llava", workers=1)
    describer = VlmDescriber(config, lambda event, texts: None)
    describer.start()
    describer.stop()
    assert not describer.submit(fall_event(), None)
    assert describer.skipped == 1


class RedirectingServer(http.server.ThreadingHTTPServer):
    """Redirects every request to ``target`` and records the Authorization header of what it gets."""

    def __init__(self, target: str = "") -> None:
        self.target = target
        self.seen_auth: list[str | None] = []
        super().__init__(("127.0.0.1", 0), _RedirectHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    server: RedirectingServer

    def _answer(self) -> None:
        self.server.seen_auth.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(302 if self.server.target else 404)
        if self.server.target:
            self.send_header("Location", self.server.target + "/chat/completions")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_redirect_keeps_api_key_local() -> None:
    target = RedirectingServer()
    redirector = RedirectingServer(target.url)
    for server in (target, redirector):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = VlmConfig(url=redirector.url, model="llava", api_key="sk-local-secret")
        describer = VlmDescriber(config, lambda event, texts: None)
        with pytest.raises(urllib.error.HTTPError, match="302"):
            describer.describe(fall_event(), None)
    finally:
        for server in (target, redirector):
            server.shutdown()
            server.server_close()
    assert redirector.seen_auth == ["Bearer sk-local-secret"]
    assert target.seen_auth == [], "the request and its key went on to another server"


def test_vlm_url_with_credentials_rejected() -> None:
    with pytest.raises(ValidationError, match="put the key in api_key"):
        VlmConfig(url="http://user:hunter2@127.0.0.1:11434/v1", model="llava")
