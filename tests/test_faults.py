"""Tests that inject faults into a running daemon: bad cameras, a flapping RTSP server, SIGTERM under load.

Every server here is real and on 127.0.0.1: GStreamer's RTSP server, redis-server and
a small HTTP server that serves random bytes as if they were a camera.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import redis
import yaml
from events import fall_event
from servers import RedisServer, RtspServer, find_free_port

from pipeline.config import parse_config
from pipeline.daemon import Daemon
from pipeline.errors import StreamOpenError
from pipeline.processing import BatchResult
from pipeline.records import Detections, Event, Frame
from pipeline.streams.reader import classify_open_error
from pipeline.tracking import Track, TrackPoint

REPO = Path(__file__).resolve().parents[1]
CAMERA_PASSWORD = "cam-s3cret!"


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    """Poll ``condition`` every ``step`` seconds until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


class NoiseServer(http.server.ThreadingHTTPServer):
    """HTTP server that sends 2 MB of random bytes at any path, as a broken HTTP camera would."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _NoiseHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/stream.mjpg"


class _NoiseHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        payload = np.random.default_rng(7).integers(0, 256, 2 * 1024 * 1024, dtype=np.uint8).tobytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def noise_server() -> Iterator[NoiseServer]:
    server = NoiseServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def truncated_copy(source: Path, target: Path) -> Path:
    """Write the first third of an mp4 whose index is at the start, so frames decode and then the data stops."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 3])
    return target


def unknown_codec_file(target: Path) -> Path:
    """Write an AVI whose video codec tag matches no FFmpeg decoder."""
    scratch = target.with_suffix(".tmp.avi")
    with av.open(str(scratch), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 20, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    target.write_bytes(scratch.read_bytes().replace(b"FMP4", b"ZZZZ"))
    return target


def gauge(daemon: Daemon, name: str, **labels: str) -> float:
    """Read one metric sample, or 0.0 when it has not been set."""
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


def base_config(cameras: dict[str, Any], redis_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "cameras": cameras,
        "detector": {"imgsz": 320},
        "fusion": {"enabled": False},
        "alerts": {"snapshot_dir": str(tmp_path / "snaps"), "spool_dir": str(tmp_path / "spool")},
        "redis": {"url": redis_url},
        "metrics": {"enabled": False},
    }


@pytest.mark.slow
def test_bad_cameras_degrade_alone(
    tmp_path: Path,
    data_dir: Path,
    person_clip: Path,
    redis_server: RedisServer,
    noise_server: NoiseServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    backoff = {"initial_s": 0.5, "max_s": 2.0}
    with RtspServer({"/door": person_clip}, user="viewer", password=CAMERA_PASSWORD) as rtsp:
        wrong = rtsp.url_for("/door", password="not-the-password")
        cameras = {
            "good": {"url": str(person_clip), "loop": True, "fps": 5},
            "truncated": {
                "url": str(
                    truncated_copy(data_dir / "intel_sample_videos" / "car-detection.mp4", tmp_path / "t.mp4")
                ),
                "realtime": False,
                # Few frames, so the damage is reached quickly even on a loaded machine.
                "fps": 2,
            },
            "noise": {"url": noise_server.url, "open_timeout_s": 5, "backoff": backoff},
            "codec": {"url": str(unknown_codec_file(tmp_path / "unknown.avi")), "backoff": backoff},
            "badpass": {"url": wrong, "open_timeout_s": 5, "backoff": backoff},
        }
        config = parse_config(base_config(cameras, redis_server.url, tmp_path), env={})
        daemon = Daemon(config)
        daemon.start()
        try:
            bad = ("truncated", "noise", "codec", "badpass")
            assert wait_for(
                lambda: all(
                    gauge(daemon, "vigil_camera_state", camera=c, state="degraded") == 1 for c in bad
                ),
                60,
            ), {c: daemon.cameras[c].reader.state for c in bad}
            good = daemon.cameras["good"]
            before, started = good.processed, time.monotonic()
            time.sleep(5)
            good_rate = (good.processed - before) / (time.monotonic() - started)
            assert daemon._processor.is_alive()
        finally:
            daemon.stop()

    assert good_rate > 3.0, "the good camera slowed down next to the broken ones"
    reasons = {
        camera: {
            sample.labels["reason"]
            for metric in daemon.metrics.registry.collect()
            if metric.name == "vigil_camera_errors"
            for sample in metric.samples
            if sample.labels.get("camera") == camera and sample.value > 0
        }
        for camera in ("truncated", "noise", "codec", "badpass")
    }
    assert reasons["truncated"] == {"StreamDamagedError"}
    assert reasons["noise"] <= {"invalid_data", "unknown"}
    assert reasons["noise"]
    assert reasons["codec"] == {"codec"}
    assert reasons["badpass"] == {"auth"}
    for camera in ("truncated", "noise", "codec", "badpass"):
        assert f"camera {camera}:" in caplog.text or f"camera '{camera}'" in caplog.text
    assert "damaged file:" in caplog.text
    assert CAMERA_PASSWORD not in caplog.text
    assert "not-the-password" not in caplog.text


def test_unresolvable_host_is_unreachable() -> None:
    # A real lookup would query the machine's DNS server, so only FFmpeg's error message is classified here.
    error = OSError("Failed to resolve hostname cam.invalid: Name or service not known")
    classified = classify_open_error("gate", "rtsp://user:pw@cam.invalid/s", error)
    assert isinstance(classified, StreamOpenError)
    assert classified.reason == "unreachable"
    assert "camera 'gate'" in str(classified)


RESTARTS = 10


@pytest.mark.slow
def test_rtsp_server_restarted_ten_times(
    tmp_path: Path, person_clip: Path, redis_server: RedisServer
) -> None:
    with RtspServer({"/door": person_clip}) as rtsp:
        cameras = {
            "door": {
                "url": rtsp.url_for("/door"),
                "fps": 5,
                "stall_timeout_s": 3,
                "open_timeout_s": 3,
                "backoff": {"initial_s": 0.2, "max_s": 1.0},
            },
            "hall": {"url": str(person_clip), "loop": True, "fps": 5},
        }
        config = parse_config(base_config(cameras, redis_server.url, tmp_path), env={})
        daemon = Daemon(config)
        daemon.start()
        door, hall = daemon.cameras["door"], daemon.cameras["hall"]
        try:
            assert wait_for(lambda: door.reader.frames_read > 5, 30), "the RTSP camera never streamed"
            hall_before, started = hall.reader.frames_read, time.monotonic()
            for restart in range(RESTARTS):
                rtsp.kill()
                assert wait_for(lambda: door.reader.state.value != "streaming", 15), f"restart {restart}"
                rtsp.start()
                frames = door.reader.frames_read
                assert wait_for(lambda seen=frames: door.reader.frames_read > seen + 3, 30), (
                    f"no frames after restart {restart}"
                )
            hall_rate = (hall.reader.frames_read - hall_before) / (time.monotonic() - started)
            time.sleep(STATS_WAIT_S)
            reconnects = gauge(daemon, "vigil_camera_reconnects_total", camera="door")
        finally:
            daemon.stop()
    assert door.reader.reconnects >= RESTARTS
    assert reconnects >= RESTARTS
    assert hall_rate > 4.0, "the file camera lost frame rate while the RTSP camera flapped"


STATS_WAIT_S = 2.5


@pytest.mark.slow
def test_sigterm_under_load_exits_and_spools(tmp_path: Path, data_dir: Path) -> None:
    clips = [
        data_dir / "intel_sample_videos" / "one-by-one-person-detection.mp4",
        data_dir / "gmdcsa24_fall" / "Subject 2" / "Fall" / "14.mp4",
        data_dir / "gmdcsa24_fall" / "Subject 3" / "ADL" / "18.mp4",
        data_dir / "intel_sample_videos" / "car-detection.mp4",
    ]
    whole_frame = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    cameras = {
        f"cam{index}": {
            "url": str(clip),
            "loop": True,
            "realtime": False,
            "zones": {"all": {"polygon": whole_frame}},
            "rules": {"seen": {"type": "zone_intrusion", "zone": "all", "cooldown_s": 0, "exit_grace_s": 0}},
        }
        for index, clip in enumerate(clips)
    }
    # Nothing listens on this port, so Redis is down for the whole run.
    config = base_config(cameras, f"redis://127.0.0.1:{find_free_port()}/0", tmp_path)
    config["redis"]["socket_timeout_s"] = 1
    path = tmp_path / "vigil.yaml"
    path.write_text(yaml.safe_dump(config))

    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            assert wait_for(lambda: "event seen started" in log_path.read_text(), 90), log_path.read_text()[
                -3000:
            ]
            time.sleep(3)
            children = child_pids(daemon.pid)
            sent = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            exit_code = daemon.wait(timeout=30)
            took = time.monotonic() - sent
        finally:
            if daemon.poll() is None:
                daemon.kill()

    text = log_path.read_text()
    assert exit_code == 0, text[-3000:]
    assert took < 10, f"SIGTERM took {took:.1f} s"
    spooled = (tmp_path / "spool" / "spool.jsonl").read_text().splitlines()
    assert spooled, "no alert reached the spool"
    assert "delivered at the next start" in text
    assert all(not Path(f"/proc/{pid}").exists() for pid in children), "a child process outlived the daemon"


def child_pids(parent: int) -> list[int]:
    """List the ids of the direct child processes of ``parent`` from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_credentials_never_leave_the_process(
    tmp_path: Path, person_clip: Path, redis_server: RedisServer
) -> None:
    """The camera password appears in no log line, alert or metric, even when the camera fails."""
    with RtspServer({"/door": person_clip}, user="viewer", password=CAMERA_PASSWORD) as rtsp:
        whole_frame = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
        cameras = {
            "door": {
                "url": rtsp.url_for("/door"),
                "fps": 5,
                "zones": {"all": {"polygon": whole_frame}},
                "rules": {"seen": {"type": "zone_intrusion", "zone": "all"}},
            },
            "side": {"url": rtsp.url_for("/door", password=CAMERA_PASSWORD + "x"), "open_timeout_s": 3},
        }
        config = base_config(cameras, redis_server.url, tmp_path)
        config["metrics"] = {"port": 0}
        path = tmp_path / "vigil.yaml"
        path.write_text(yaml.safe_dump(config))
        client = redis.Redis.from_url(redis_server.url)
        log_path = tmp_path / "daemon.log"
        with log_path.open("w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "--log-level", "debug", "run", "-c", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            try:
                assert wait_for(lambda: client.xlen("vigil:events") > 0, 90), log_path.read_text()[-3000:]
                port = next(
                    int(line.rsplit(":", 1)[1].split("/")[0])
                    for line in log_path.read_text().splitlines()
                    if "metrics on http://" in line
                )
                import urllib.request

                metrics = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                )
                host_line = next(
                    line for line in log_path.read_text().splitlines() if "metrics on http://" in line
                )
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
    alerts = b"".join(fields[b"alert"] for _, fields in client.xrange("vigil:events")).decode()
    logs = log_path.read_text()
    for secret in (CAMERA_PASSWORD, CAMERA_PASSWORD + "x"):
        assert secret not in logs
        assert secret not in alerts
        assert secret not in metrics
    assert "metrics on http://127.0.0.1:" in host_line


def test_pickled_weights_outside_model_folder_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.detect.yolo import warn_if_untrusted_pickle

    stray = tmp_path / "downloads" / "best.pt"
    stray.parent.mkdir()
    stray.write_bytes(b"not really a checkpoint")
    trusted = tmp_path / "models"
    trusted.mkdir()
    own = trusted / "site.pt"
    own.write_bytes(b"ours")
    caplog.set_level(logging.WARNING)
    assert warn_if_untrusted_pickle(str(stray), str(stray), trusted)
    assert "pickled checkpoint from outside the model folder" in caplog.text
    assert not warn_if_untrusted_pickle(str(own), str(own), trusted)
    assert not warn_if_untrusted_pickle("package:fall_detection/models/best.pt", str(stray), None)
    assert not warn_if_untrusted_pickle(str(tmp_path / "w.onnx"), str(tmp_path / "w.onnx"), None)


def idle_daemon(redis_url: str, tmp_path: Path) -> Daemon:
    """Return a daemon with one disabled camera and no detector, for driving its loop by hand."""
    cameras = {"ward": {"url": "ward.mp4", "enabled": False}}
    return Daemon(parse_config(base_config(cameras, redis_url, tmp_path), env={}), detector=object())  # type: ignore[arg-type]


def test_one_failing_event_does_not_drop_the_batch(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = idle_daemon(redis_server.url, tmp_path)
    frame = Frame("ward", 1, 0.0, time.time(), np.full((60, 80, 3), 90, np.uint8))
    batch = BatchResult(
        events=[(fall_event("bad"), frame), (fall_event("good"), frame)], tracked=[], detector_ms=1.0
    )
    monkeypatch.setattr(daemon.processor, "process", lambda frames: batch)
    describe = daemon.describer.describe

    def failing_describe(event: Event) -> dict[str, str]:
        if event.id == "bad":
            raise ValueError("template bug")
        return describe(event)

    monkeypatch.setattr(daemon.describer, "describe", failing_describe)
    daemon.publisher.start()
    daemon._process_batch([frame])
    assert daemon.publisher.close(timeout=5)
    delivered = [
        json.loads(fields[b"alert"])["event_id"]
        for _id, fields in redis.Redis.from_url(redis_server.url).xrange("vigil:events")
    ]
    assert delivered == ["good"]


def test_processing_loop_survives_a_failing_step(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = idle_daemon(redis_server.url, tmp_path)
    calls: list[float] = []

    def flaky_stats() -> None:
        calls.append(time.monotonic())
        daemon._last_stats = time.monotonic()
        if len(calls) == 1:
            raise RuntimeError("stats bug")

    monkeypatch.setattr(daemon, "_update_stats", flaky_stats)
    monkeypatch.setattr("pipeline.daemon.STATS_INTERVAL_S", 0.2)
    daemon.start()
    try:
        assert wait_for(lambda: len(calls) >= 3, 10), "the processing loop stopped after an error"
        assert daemon._processor.is_alive()
    finally:
        daemon.stop()


def zone_daemon(redis_url: str, tmp_path: Path) -> Daemon:
    """Return a daemon whose one camera has a zone over the whole frame and reads a missing file."""
    whole = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    cameras = {
        "ward": {
            "url": str(tmp_path / "missing.mp4"),
            "zones": {"room": {"polygon": whole}},
            "rules": {"entered": {"type": "zone_intrusion", "zone": "room"}},
        }
    }
    return Daemon(parse_config(base_config(cameras, redis_url, tmp_path), env={}), detector=object())  # type: ignore[arg-type]


def start_intrusion(daemon: Daemon) -> Event:
    """Put a track in the camera's zone through its rule engine; return the started event."""
    frame = Frame("ward", 1, 1.0, time.time(), np.zeros((48, 64, 3), np.uint8))
    track = Track(
        7, 1.0, collections.deque([TrackPoint(1.0, 0.5, 0.5, (20.0, 10.0, 40.0, 40.0), "person", 0.9)])
    )
    (started,) = daemon.processor.cameras["ward"].rules.evaluate(frame, [track])
    return started


def published(redis_url: str) -> list[tuple[str, str]]:
    entries = redis.Redis.from_url(redis_url).xrange("vigil:events")
    return [
        (json.loads(fields[b"alert"])["event_id"], json.loads(fields[b"alert"])["state"])
        for _id, fields in entries
    ]


def test_restarted_stream_ends_active_events(tmp_path: Path, redis_server: RedisServer) -> None:
    daemon = zone_daemon(redis_server.url, tmp_path)
    started = start_intrusion(daemon)
    daemon.publisher.start()
    frame = Frame("ward", 2, 600.0, time.time(), np.zeros((48, 64, 3), np.uint8), restarted=True)
    # A detector that finds nobody, so that only the restart changes the camera's state.
    daemon.processor.detector = types.SimpleNamespace(
        detect_batch=lambda images: [Detections.empty()] * len(images)
    )  # type: ignore[assignment]
    assert daemon._admit(frame), "a restarted frame must reach processing even without motion"
    daemon._process_batch([frame])
    assert daemon.publisher.close(timeout=5)
    assert published(redis_server.url) == [(started.id, "ended")]
    assert daemon.processor.cameras["ward"].rules.active_events() == 0
    assert daemon.processor.cameras["ward"].tracker.tracks == {}


def test_stop_ends_active_events(tmp_path: Path, redis_server: RedisServer) -> None:
    daemon = zone_daemon(redis_server.url, tmp_path)
    daemon.start()
    started = start_intrusion(daemon)
    daemon.stop()
    assert published(redis_server.url) == [(started.id, "ended")]
