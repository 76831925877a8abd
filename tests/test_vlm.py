"""The vision-language describer: a slow endpoint never holds an alert back."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from servers import RedisServer

from pipeline.config import parse_config
from pipeline.daemon import Daemon
from pipeline.fusion.vlm import parse_reply
from pipeline.records import Event, Frame

ENDPOINT_DELAY_S = 3.0


class SlowChatEndpoint(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible /chat/completions that answers after a delay and keeps the requests."""

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


@pytest.fixture
def endpoint() -> Iterator[SlowChatEndpoint]:
    server = SlowChatEndpoint(
        ENDPOINT_DELAY_S, json.dumps({"en": "A man lies by the bed.", "zh": "一名男子躺在床边。"})
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def started_event() -> Event:
    return Event(
        id="e1" * 16,
        camera="ward",
        rule="fall",
        rule_type="fall",
        label="fall",
        severity="critical",
        state="started",
        started_at=time.time(),
        ended_at=None,
        track_ids=(3,),
        zone=None,
        scores={"fall": 0.93},
        box=(10.0, 10.0, 50.0, 40.0),
    )


def test_slow_endpoint_does_not_delay_the_alert(
    endpoint: SlowChatEndpoint, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = parse_config(
        {
            "cameras": {"ward": {"url": "ward.mp4", "enabled": False}},
            "redis": {"url": redis_server.url},
            "metrics": {"enabled": False},
            "alerts": {"snapshot_dir": str(tmp_path)},
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
        daemon._emit(started_event(), frame)
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


def test_reply_that_is_not_json_is_english_text() -> None:
    assert parse_reply("Someone fell near the bed.") == {"vlm_en": "Someone fell near the bed."}
    assert parse_reply('```json\n{"en": "A fall.", "zh": "跌倒。"}\n```') == {
        "vlm_en": "A fall.",
        "vlm_zh": "跌倒。",
    }
