"""Tests of the on-disk alert spool: order, restarts, limits and a real Redis outage."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import RedisServer, find_free_port

from pipeline.alerts import AlertPublisher
from pipeline.config import RedisConfig
from pipeline.spool import Spool, SpoolError, SpoolFullError
from pipeline.streams import ExponentialBackoff

MB = 1024 * 1024


def message(index: int, camera: str = "gate") -> dict[str, Any]:
    """Build an alert message whose ``n`` field records the order it was sent in."""
    return {
        "message_id": f"m{index}",
        "event_id": f"e{index}",
        "state": "started",
        "camera": camera,
        "n": index,
    }


def drain(spool: Spool) -> list[int]:
    """Deliver every spooled message, oldest first, and return their ``n`` fields."""
    seen = []
    while (item := spool.peek()) is not None:
        seen.append(item["n"])
        spool.pop()
    return seen


def test_spool_keeps_order_across_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, MB)
    for index in range(5):
        spool.append(message(index))
    assert spool.peek() == message(0)
    spool.pop()
    spool.pop()
    spool.close()

    reopened = Spool(tmp_path, MB)
    assert len(reopened) == 3
    assert drain(reopened) == [2, 3, 4]
    assert len(reopened) == 0
    assert reopened.size_bytes == 0


def test_spool_drops_torn_last_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path, MB)
    spool.append(message(0))
    spool.close()

    with (tmp_path / "spool.jsonl").open("ab") as handle:
        handle.write(b'{"message_id": "m1", "ev')  # a crash in the middle of a write

    reopened = Spool(tmp_path, MB)
    assert len(reopened) == 1
    reopened.append(message(2))
    reopened.pop()
    assert reopened.peek() == message(2)


def test_full_spool_raises_clear_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 200)
    spool.append(message(0))
    with pytest.raises(SpoolFullError, match=r"full .*alerts.spool_max_mb"):
        for index in range(1, 10):
            spool.append(message(index))
    assert spool.size_bytes <= 200


def test_second_process_cannot_share_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path, MB)
    with pytest.raises(SpoolError, match="in use by another Vigil process"):
        Spool(tmp_path, MB)
    first.close()
    Spool(tmp_path, MB).close()


def test_offset_past_the_data_reads_from_the_start(tmp_path: Path) -> None:
    # A crash after the data file was emptied but before the new offset was saved.
    spool = Spool(tmp_path, MB)
    spool.append(message(0))
    spool.close()
    (tmp_path / "spool.offset").write_text("4096")
    (tmp_path / "spool.jsonl").write_bytes(b"")

    reopened = Spool(tmp_path, MB)
    assert len(reopened) == 0
    reopened.append(message(1))
    assert reopened.peek() == message(1)
    reopened.pop()
    assert reopened.peek() is None


def test_invalid_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, MB)
    spool.append(message(0))
    spool.close()
    with (tmp_path / "spool.jsonl").open("ab") as handle:
        handle.write(b"not json at all\n")
        handle.write(b'{"n": 1}\n')  # valid JSON, but not an alert message
    reopened = Spool(tmp_path, MB)
    reopened.append(message(2))
    assert len(reopened) == 4

    assert drain(reopened) == [0, 2]
    assert "skipped an invalid JSON line" in caplog.text
    assert len(reopened) == 0


def test_failed_append_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, MB)
    spool.append(message(0))
    size = (tmp_path / "spool.jsonl").stat().st_size

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr("pipeline.spool.os.fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            spool.append(message(1))
    assert (tmp_path / "spool.jsonl").stat().st_size == size
    assert len(spool) == 1
    spool.append(message(2))
    assert drain(spool) == [0, 2]


def stream_messages(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields[b"alert"]) for _, fields in client.xrange("vigil:events")]


def publisher_for(server: RedisServer, spool_dir: Path) -> AlertPublisher:
    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    return AlertPublisher(
        RedisConfig(),
        client,
        backoff=ExponentialBackoff(initial=0.2, maximum=1.0),
        spool=Spool(spool_dir, 16 * MB),
    )


OUTAGE_S = 60.0


@pytest.mark.slow
def test_redis_outage_loses_no_alert(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis is down for a minute while alerts keep coming, and the daemon restarts in the middle."""
    spool_dir = tmp_path / "spool"
    client = redis.Redis.from_url(redis_server.url)
    publisher = publisher_for(redis_server, spool_dir)
    publisher.start()
    sent = 0

    def produce(target: AlertPublisher, until: float) -> None:
        nonlocal sent
        while time.monotonic() < until:
            target.submit(message(sent))
            sent += 1
            time.sleep(0.25)

    produce(publisher, time.monotonic() + 2)
    time.sleep(0.5)
    # The test server keeps nothing across a restart, so remember what arrived before the outage.
    before = stream_messages(client)
    redis_server.stop()
    outage_ends = time.monotonic() + OUTAGE_S
    produce(publisher, time.monotonic() + OUTAGE_S / 2)
    assert publisher.spooled > 0

    # The daemon restarts while Redis is still down: what was queued goes to the spool.
    assert not publisher.close(timeout=3)
    publisher = publisher_for(redis_server, spool_dir)
    assert publisher.spooled > 0
    publisher.start()
    produce(publisher, outage_ends)
    redis_server.start()
    produce(publisher, time.monotonic() + 2)

    deadline = time.monotonic() + 30
    while len(before) + len(stream_messages(client)) < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    assert publisher.close(timeout=5)
    assert publisher.spooled == 0

    # A message sent just before a stop may arrive twice, so consumers drop repeats by message_id.
    seen: set[str] = set()
    numbers = []
    for item in before + stream_messages(client):
        if item["message_id"] not in seen:
            seen.add(item["message_id"])
            numbers.append(item["n"])
    assert numbers == list(range(sent))


def test_spooled_alerts_survive_restart(tmp_path: Path, redis_server: RedisServer) -> None:
    spool_dir = tmp_path / "spool"
    redis_server.stop()
    first = publisher_for(redis_server, spool_dir)
    first.start()
    for index in range(10):
        first.submit(message(index))
    time.sleep(1.0)
    assert not first.close(timeout=2)

    redis_server.start()
    second = publisher_for(redis_server, spool_dir)
    second.start()
    second.submit(message(10))
    client = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 15
    while len(stream_messages(client)) < 11 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.close(timeout=5)
    assert [item["n"] for item in stream_messages(client)] == list(range(11))
    assert not (spool_dir / "spool.jsonl").read_bytes()


def test_publisher_delivers_while_other_thread_submits(tmp_path: Path, redis_server: RedisServer) -> None:
    publisher = publisher_for(redis_server, tmp_path / "spool")
    publisher.start()
    threads = [
        threading.Thread(target=lambda c=camera: [publisher.submit(message(i, c)) for i in range(50)])
        for camera in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert publisher.close(timeout=10)
    delivered = stream_messages(redis.Redis.from_url(redis_server.url))
    for camera in ("a", "b"):
        assert [item["n"] for item in delivered if item["camera"] == camera] == list(range(50))


def test_publisher_survives_a_failing_callback(tmp_path: Path, redis_server: RedisServer) -> None:
    delivered: list[int] = []

    def flaky(sent: dict[str, Any]) -> None:
        delivered.append(sent["n"])
        if sent["n"] == 1:
            raise RuntimeError("listener bug")

    client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
    publisher = AlertPublisher(
        RedisConfig(), client, backoff=ExponentialBackoff(initial=0.05, maximum=0.1), on_published=flaky
    )
    publisher.start()
    for index in range(4):
        publisher.submit(message(index))
    assert publisher.close(timeout=10)
    assert delivered == [0, 1, 2, 3]
    assert [item["n"] for item in stream_messages(client)] == [0, 1, 2, 3]


def test_retry_wait_ignores_new_alerts(tmp_path: Path) -> None:
    # Nothing listens on this port and the client does not retry, so every attempt fails at once.
    client = redis.Redis(host="127.0.0.1", port=find_free_port(), retry=Retry(NoBackoff(), 0))
    failures = []
    publisher = AlertPublisher(
        RedisConfig(),
        client,
        backoff=ExponentialBackoff(initial=5.0, maximum=5.0, jitter=0.0),
        on_failure=lambda: failures.append(time.monotonic()),
        spool=Spool(tmp_path, MB),
    )
    publisher.start()
    for index in range(20):
        publisher.submit(message(index))
        time.sleep(0.02)
    time.sleep(0.3)
    assert len(failures) == 1, "each new alert started another attempt during the retry wait"
    assert not publisher.close(timeout=2)
    assert publisher.spooled == 20


def test_failing_flush_leaves_the_spool_usable(tmp_path: Path) -> None:
    spool = Spool(tmp_path, MB)
    spool.append(message(0))
    healthy = spool._data

    class FullDisk:
        """Stands in for the data file while the disk is full: every write and flush fails."""

        def __getattr__(self, name: str) -> Any:
            return getattr(healthy, name)

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            raise OSError(28, "No space left on device")

    spool._data = FullDisk()  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space left"):
        spool.append(message(1))
    spool.append(message(2))
    assert drain(spool) == [0, 2]
