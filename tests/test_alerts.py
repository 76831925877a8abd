"""Alert messages, snapshots, descriptions and the publisher against a real redis-server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from servers import RedisServer

from pipeline.alerts import AlertPublisher, SnapshotWriter, alert_message, safe_name
from pipeline.config import AlertsConfig, RedisConfig
from pipeline.fusion import TemplateDescriber
from pipeline.records import Event, Frame
from pipeline.streams import NoBackoff


def make_event(state: str = "started", rule_type: str = "zone_intrusion", **changes: object) -> Event:
    fields: dict[str, object] = {
        "id": "e1",
        "camera": "gate",
        "rule": "dock-intrusion",
        "rule_type": rule_type,
        "label": "person",
        "severity": "warning",
        "state": state,
        "started_at": 1_796_212_800.0,
        "ended_at": None,
        "track_ids": (7,),
        "zone": "dock",
        "scores": {"confidence": 0.8},
        "box": (10.0, 20.0, 60.0, 120.0),
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def test_alert_message_schema() -> None:
    event = make_event(
        description={
            "en": "Camera gate: A person entered zone dock.",
            "zh": "摄像头 gate：人员进入区域 dock。",
        }
    )
    message = alert_message(event, language="zh")
    assert message["schema"] == 1
    assert message["event_id"] == "e1"
    assert message["track_ids"] == [7]
    assert message["started_at"] == "2026-12-02T12:00:00.000+00:00"
    assert message["ended_at"] is None
    assert message["text"] == "摄像头 gate：人员进入区域 dock。"
    assert set(message["description"]) == {"en", "zh"}
    json.dumps(message)


@pytest.mark.parametrize(
    ("rule_type", "state", "details", "english", "chinese"),
    [
        ("zone_intrusion", "started", {}, "A person entered zone dock", "人员进入区域 dock"),
        ("zone_intrusion", "ended", {}, "A person left zone dock", "人员离开区域 dock"),
        ("loitering", "started", {"dwell_s": 31.6}, "stayed in zone dock for 32 s", "停留了 32 秒"),
        (
            "line_crossing",
            "started",
            {"line": "door", "direction": "left_to_right"},
            "crossed line door from left to right",
            "从左到右越过警戒线 door",
        ),
        ("crowding", "started", {"count": 5}, "5 people gathered in zone dock", "聚集了 5 人"),
        ("fall", "started", {"frames": 5}, "A person fell in zone dock", "有人跌倒"),
    ],
)
def test_template_descriptions(
    rule_type: str, state: str, details: dict[str, object], english: str, chinese: str
) -> None:
    text = TemplateDescriber().describe(make_event(state=state, rule_type=rule_type, details=details))
    assert english in text["en"]
    assert text["en"].startswith("Camera gate: ")
    assert chinese in text["zh"]
    assert text["zh"].startswith("摄像头 gate：")


def test_zone_alert_ignores_fall_class() -> None:
    # The fall detector's "Fall" class flickers on upright people; only the fall rule reports a fall.
    text = TemplateDescriber().describe(make_event(label="Fall"))
    assert text["en"] == "Camera gate: A person entered zone dock."
    assert "倒地" not in text["zh"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gate", "gate"),
        ("../../etc/passwd", "etc_passwd"),
        ("a b/c", "a_b_c"),
        ("...", "_"),
        ("x" * 100, "x" * 64),
    ],
)
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_snapshot_is_written_inside_its_folder(tmp_path: Path) -> None:
    writer = SnapshotWriter(AlertsConfig(snapshot_dir=tmp_path))
    image = np.full((120, 160, 3), 90, dtype=np.uint8)
    frame = Frame("gate", 1, 0.0, 1_796_212_800.0, image)
    path = Path(writer.write(make_event(camera="../../evil"), frame))
    assert path.is_file()
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert path.read_bytes()[:2] == b"\xff\xd8", "not a JPEG"
    assert np.array_equal(frame.image, image), "annotating must not touch the frame"


def published_messages(client: redis.Redis, stream: str) -> list[dict[str, object]]:
    return [json.loads(fields[b"alert"]) for _id, fields in client.xrange(stream)]


def test_publisher_sends_to_channel_and_stream(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("vigil:alerts:*")
    publisher = AlertPublisher(RedisConfig(stream_maxlen=1000), client)
    publisher.start()
    for index in range(5):
        publisher.submit(alert_message(make_event(id=f"e{index}")))
    assert publisher.close(5)
    received = []
    deadline = time.monotonic() + 5
    while len(received) < 5 and time.monotonic() < deadline:
        item = pubsub.get_message(timeout=0.5)
        if item:
            assert item["channel"] == b"vigil:alerts:gate"
            received.append(json.loads(item["data"])["event_id"])
    assert received == [f"e{index}" for index in range(5)]
    assert [m["event_id"] for m in published_messages(client, "vigil:events")] == received


def test_stream_is_capped(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    publisher = AlertPublisher(RedisConfig(stream_maxlen=100), client)
    publisher.start()
    for index in range(1000):
        publisher.submit(alert_message(make_event(id=f"e{index}")))
    assert publisher.close(10)
    length = client.xlen("vigil:events")
    # MAXLEN ~ trims whole macro nodes, so the stream may keep somewhat more than 100 entries.
    assert 100 <= length < 400


def test_publisher_keeps_order_across_outage(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    publisher = AlertPublisher(RedisConfig(), client, backoff=NoBackoff())
    publisher.start()
    publisher.submit(alert_message(make_event(id="before")))
    deadline = time.monotonic() + 5
    while publisher.published < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis_server.stop()
    for index in range(3):
        publisher.submit(alert_message(make_event(id=f"during{index}")))
    time.sleep(1.0)
    assert publisher.published == 1
    redis_server.start()
    assert publisher.close(10)
    # The restarted server has no data: the three messages queued during the outage arrive in order.
    ids = [m["event_id"] for m in published_messages(client, "vigil:events")]
    assert ids == ["during0", "during1", "during2"]


def test_publisher_full_queue_drops_oldest_and_counts() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    dropped: list[str] = []
    publisher = AlertPublisher(
        RedisConfig(), client, queue_size=3, on_drop=lambda m: dropped.append(m["event_id"])
    )
    for index in range(5):
        publisher.submit(alert_message(make_event(id=f"e{index}")))
    assert dropped == ["e0", "e1"]
    assert publisher.dropped == 2
    assert len(publisher) == 3


def test_publisher_logs_alerts_submitted_after_close(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    dropped: list[str] = []
    publisher = AlertPublisher(
        RedisConfig(), redis.Redis.from_url(redis_server.url), on_drop=lambda m: dropped.append(m["event_id"])
    )
    publisher.start()
    publisher.submit(alert_message(make_event(id="before")))
    assert publisher.close(timeout=5)
    publisher.submit(alert_message(make_event(id="late", state="updated")))
    assert dropped == ["late"]
    assert publisher.dropped == 1
    assert "alert of event late (updated, camera gate) lost: the publisher is closed" in caplog.text
