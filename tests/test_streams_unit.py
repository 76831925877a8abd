"""Backoff, the frame slot, the batch scheduler and URL redaction."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import numpy as np
import pytest

from pipeline.batching import BatchScheduler
from pipeline.records import Frame
from pipeline.redact import redact_text, redact_url, url_secrets
from pipeline.streams import ExponentialBackoff, FrameSlot, Overflow
from pipeline.streams.reader import classify_open_error

IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, seq * 0.1, time.time(), IMAGE.copy())


def test_backoff_grows_and_caps() -> None:
    backoff = ExponentialBackoff(initial=0.5, maximum=4.0, multiplier=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_reset_starts_over() -> None:
    backoff = ExponentialBackoff(initial=1.0, maximum=30.0, jitter=0.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_backoff_jitter_stays_in_range() -> None:
    backoff = ExponentialBackoff(initial=2.0, maximum=2.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    assert min(delays) >= 1.0
    assert max(delays) <= 2.0
    assert len(set(delays)) > 100, "jitter should spread the delays"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0}, "0 < initial <= maximum"),
        ({"initial": 5, "maximum": 1}, "0 < initial <= maximum"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_backoff_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExponentialBackoff(**kwargs)


def test_slot_drops_oldest_and_counts() -> None:
    slot = FrameSlot(capacity=2)
    assert slot.put(frame("a", 1))
    assert slot.put(frame("a", 2))
    assert slot.put(frame("a", 3)), "the newest frame is always stored"
    assert slot.dropped == 1
    assert len(slot) == 2
    taken = [slot.take(), slot.take(), slot.take()]
    assert [f.seq if f else None for f in taken] == [2, 3, None]


def test_slot_keeps_the_restart_mark_of_a_dropped_frame() -> None:
    slot = FrameSlot(capacity=2)
    slot.put(dataclasses.replace(frame("a", 1), restarted=True))
    slot.put(frame("a", 2))
    slot.put(frame("a", 3))
    first = slot.take()
    assert first is not None
    assert first.seq == 2
    assert first.restarted
    second = slot.take()
    assert second is not None
    assert not second.restarted


def test_slot_stays_bounded_under_load() -> None:
    slot = FrameSlot(capacity=3)
    for seq in range(10_000):
        slot.put(frame("a", seq))
    assert len(slot) == 3
    assert slot.dropped == 10_000 - 3


def test_slot_wait_policy_blocks_until_taken() -> None:
    slot = FrameSlot(capacity=1, overflow=Overflow.WAIT)
    assert slot.put(frame("a", 1))
    started = time.monotonic()
    assert not slot.put(frame("a", 2), timeout=0.2), "a full WAIT slot must not take the frame"
    assert time.monotonic() - started >= 0.19
    assert slot.dropped == 0

    threading.Timer(0.2, slot.take).start()
    assert slot.put(frame("a", 3), timeout=5)
    taken = slot.take()
    assert taken is not None
    assert taken.seq == 3
    assert slot.dropped == 0


def test_slot_wakes_consumer() -> None:
    wake = threading.Event()
    slot = FrameSlot(capacity=1, wake=wake)
    slot.put(frame("a", 1))
    assert wake.is_set()


def test_frame_is_read_only_and_validated() -> None:
    f = frame("a", 1)
    with pytest.raises(ValueError, match="read-only"):
        f.image[0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"expected shape \(H, W, 3\)"):
        Frame("a", 1, 0.0, 0.0, np.zeros((4, 4), dtype=np.uint8))


def test_scheduler_batches_across_cameras() -> None:
    wake = threading.Event()
    slots = {name: FrameSlot(4, wake=wake) for name in ("a", "b", "c")}
    for name, slot in slots.items():
        for seq in range(2):
            slot.put(frame(name, seq))
    scheduler = BatchScheduler(slots, wake, max_batch=4, max_wait_ms=50)
    batch = scheduler.next_batch(threading.Event())
    assert len(batch) == 4
    assert {f.camera for f in batch} == {"a", "b", "c"}, "round robin takes from every camera"
    rest = scheduler.next_batch(threading.Event())
    assert len(rest) == 2
    for name in ("a", "b", "c"):
        seqs = [f.seq for f in batch + rest if f.camera == name]
        assert seqs == sorted(seqs), "frames of one camera keep their order"


def test_scheduler_waits_at_most_max_wait() -> None:
    wake = threading.Event()
    slots = {"a": FrameSlot(2, wake=wake)}
    slots["a"].put(frame("a", 1))
    scheduler = BatchScheduler(slots, wake, max_batch=8, max_wait_ms=100)
    started = time.monotonic()
    batch = scheduler.next_batch(threading.Event())
    elapsed = time.monotonic() - started
    assert len(batch) == 1
    assert 0.09 <= elapsed < 1.0


def test_scheduler_skips_frames_the_gate_rejects() -> None:
    wake = threading.Event()
    slots = {"a": FrameSlot(4, wake=wake)}
    for seq in range(4):
        slots["a"].put(frame("a", seq))
    scheduler = BatchScheduler(slots, wake, max_batch=8, max_wait_ms=10, admit=lambda f: f.seq % 2 == 0)
    assert [f.seq for f in scheduler.next_batch(threading.Event())] == [0, 2]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream", "rtsp://***@10.0.0.5:554/stream"),
        ("rtsp://admin:p@ss@word@cam.local/s", "rtsp://***@cam.local/s"),
        ("rtsp://admin@cam.local/s", "rtsp://***@cam.local/s"),
        ("rtsp://cam.local/s", "rtsp://cam.local/s"),
        ("/videos/a.mp4", "/videos/a.mp4"),
        (
            "http://127.0.0.1:8080/snapshot.cgi?user=admin&password=qsecret42",
            "http://127.0.0.1:8080/snapshot.cgi?user=admin&password=***",
        ),
        ("rtsp://cam.local/s?Token=abc123&channel=2", "rtsp://cam.local/s?Token=***&channel=2"),
        ("rtsp://admin:pw@[127.0.0.1/s", "rtsp://***@[127.0.0.1/s"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_secrets_include_query_values() -> None:
    assert set(url_secrets("rtsp://viewer:pw1@cam/s?pwd=pw2&key=k3&channel=1")) == {
        "viewer",
        "pw1",
        "pw2",
        "k3",
    }
    assert url_secrets("rtsp://admin:pw@[127.0.0.1/s") == ()


def test_open_error_hides_query_password() -> None:
    url = "http://127.0.0.1:18181/snapshot.cgi?user=admin&password=qsecret42"
    error = OSError(f"Server returned 401 Unauthorized: '{url}'")
    classified = classify_open_error("door", url, error)
    assert "qsecret42" not in str(classified)
    assert "password=***" in str(classified)


def test_redact_text_removes_urls_and_secrets() -> None:
    text = "Could not open rtsp://admin:p@ss@10.0.0.5/s: 401 (password p@ss)"
    cleaned = redact_text(text, ("p@ss",))
    assert "p@ss" not in cleaned
    assert "rtsp://***@10.0.0.5/s" in cleaned


def test_scheduler_without_cameras_returns_empty_batches() -> None:
    # Every camera may be disabled in the config; the processing loop still runs.
    scheduler = BatchScheduler({}, threading.Event(), max_batch=8, max_wait_ms=10)
    started = time.monotonic()
    assert scheduler.next_batch(threading.Event(), idle_timeout=0.1) == []
    assert time.monotonic() - started < 1.0
