"""Stream readers against real footage: files, a real RTSP server, and failures."""

from __future__ import annotations

import http.server
import itertools
import threading
import time
from pathlib import Path

import av
import numpy as np
from servers import RtspServer

from pipeline.config import CameraConfig
from pipeline.records import Frame
from pipeline.streams import FrameSlot, NoBackoff, ReaderState, StreamReader


def camera(url: str | Path, **fields: object) -> CameraConfig:
    return CameraConfig.model_validate({"url": str(url), **fields})


class Collector(FrameSlot):
    """A slot that keeps every frame, so a test can look at all of them."""

    def __init__(self) -> None:
        super().__init__(capacity=1)
        self.frames: list[Frame] = []

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        self.frames.append(frame)
        return True


class States:
    def __init__(self) -> None:
        self.seen: list[ReaderState] = []
        self.errors: list[str] = []
        self.changed = threading.Event()

    def __call__(self, camera: str, state: ReaderState, error: object) -> None:
        self.seen.append(state)
        if error is not None:
            self.errors.append(str(error))
        self.changed.set()


def wait_for(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_file_reads_to_end(fall_clip: Path) -> None:
    slot, states = Collector(), States()
    reader = StreamReader("ward", camera(fall_clip, realtime=False), slot, listener=states)
    reader.start()
    assert wait_for(lambda: reader.state is ReaderState.ENDED, 30)
    assert reader.join(5)
    assert len(slot.frames) > 50
    first = slot.frames[0]
    assert (first.width, first.height) == (640, 480)
    timestamps = [f.timestamp for f in slot.frames]
    assert timestamps == sorted(timestamps)
    assert [f.seq for f in slot.frames] == list(range(1, len(slot.frames) + 1))


def test_file_loop_keeps_time_increasing(fall_clip: Path) -> None:
    slot = Collector()
    reader = StreamReader("ward", camera(fall_clip, realtime=False, loop=True), slot)
    reader.start()
    assert wait_for(lambda: len(slot.frames) > 400, 60), "a looping file should keep producing frames"
    reader.stop()
    assert reader.join(5)
    timestamps = [f.timestamp for f in slot.frames]
    assert all(b > a for a, b in itertools.pairwise(timestamps)), "stream time must not jump back at a loop"
    assert timestamps[-1] > 12.0, "more than one pass of a 7 s clip"
    # Each pass starts with a frame marked restarted, so tracks do not jump back to the start.
    starts = [index for index, frame in enumerate(slot.frames) if frame.restarted]
    assert starts[0] == 0
    assert len(starts) >= 2
    assert all(b - a > 50 for a, b in itertools.pairwise(starts))


def test_fps_limit(fall_clip: Path) -> None:
    slot = Collector()
    reader = StreamReader("ward", camera(fall_clip, realtime=False, fps=5), slot)
    reader.start()
    assert wait_for(lambda: reader.state is ReaderState.ENDED, 30)
    gaps = [b.timestamp - a.timestamp for a, b in zip(slot.frames, slot.frames[1:], strict=False)]
    assert min(gaps) >= 0.19
    duration = slot.frames[-1].timestamp
    assert abs(len(slot.frames) - duration * 5) <= 2


def test_realtime_file_is_paced(fall_clip: Path) -> None:
    slot = Collector()
    reader = StreamReader("ward", camera(fall_clip), slot)
    reader.start()
    time.sleep(2.0)
    reader.stop()
    reader.join(5)
    # About 29 fps for 2 s; without pacing a 2-core machine decodes hundreds.
    assert 30 <= len(slot.frames) <= 75


def test_full_slot_keeps_the_reader_at_its_pace(fall_clip: Path) -> None:
    # No consumer takes frames, so the slot keeps the newest two and counts the rest as
    # dropped. The reader goes on at the camera's rate instead of waiting for room.
    slot = FrameSlot(capacity=2)
    reader = StreamReader("ward", camera(fall_clip, fps=10), slot)
    reader.start()
    time.sleep(2.0)
    reader.stop()
    reader.join(5)
    assert reader.frames_read >= 10, "the reader stalled on the full slot"
    assert slot.dropped == reader.frames_read - 2
    last = reader.frames_read
    newest = [slot.take(), slot.take()]
    assert [frame.seq for frame in newest if frame is not None] == [last - 1, last]


def test_missing_file_backs_off_with_clear_error(tmp_path: Path) -> None:
    slot, states = Collector(), States()
    backoff = NoBackoff()
    reader = StreamReader("yard", camera(tmp_path / "nope.mp4"), slot, backoff=backoff, listener=states)
    reader.start()
    assert wait_for(lambda: backoff.calls >= 3, 10)
    reader.stop()
    assert reader.join(5)
    assert ReaderState.BACKOFF in states.seen
    assert "camera 'yard'" in states.errors[0]
    assert "not_found" in states.errors[0]


class HeaderOnlyServer(http.server.ThreadingHTTPServer):
    """HTTP server that sends the first three packets of an MPEG-TS clip: the stream opens, no frame follows."""

    def __init__(self, clip: Path) -> None:
        super().__init__(("127.0.0.1", 0), _HeaderOnlyHandler)
        self.payload = clip.read_bytes()[: 3 * 188]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/cam.ts"


class _HeaderOnlyHandler(http.server.BaseHTTPRequestHandler):
    server: HeaderOnlyServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.payload)))
        self.end_headers()
        self.wfile.write(self.server.payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def mpegts_clip(target: Path) -> Path:
    with av.open(str(target), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(20):
            image = np.full((48, 64, 3), index * 10, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return target


def test_source_without_frames_keeps_backing_off(tmp_path: Path) -> None:
    server = HeaderOnlyServer(mpegts_clip(tmp_path / "clip.ts"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backoff = NoBackoff()
    reader = StreamReader("gate", camera(server.url, open_timeout_s=3), Collector(), backoff=backoff)
    reader.start()
    try:
        assert wait_for(lambda: backoff.calls >= 3, 20), "the reader did not retry"
    finally:
        reader.stop()
        reader.join(5)
        server.shutdown()
        server.server_close()
    # The connection opened each time but no frame came, so the delay must keep growing.
    assert backoff.resets == 0
    assert reader.frames_read == 0


def test_rtsp_reads_and_reconnects(person_clip: Path) -> None:
    with RtspServer({"/lobby": person_clip}) as server:
        slot, states = Collector(), States()
        backoff = NoBackoff()
        reader = StreamReader(
            "lobby",
            camera(server.url_for("/lobby"), stall_timeout_s=3),
            slot,
            backoff=backoff,
            listener=states,
        )
        reader.start()
        try:
            assert wait_for(lambda: len(slot.frames) >= 10, 20), "no frames from the RTSP server"
            assert (slot.frames[0].width, slot.frames[0].height) == (768, 432)
            server.stop()
            assert wait_for(lambda: reader.state is not ReaderState.STREAMING, 10)
            count = len(slot.frames)
            server.start()
            assert wait_for(lambda: len(slot.frames) > count + 10, 30), "no frames after the server came back"
            assert reader.reconnects >= 1
            timestamps = [f.timestamp for f in slot.frames]
            assert timestamps == sorted(timestamps)
        finally:
            reader.stop()
            assert reader.join(10)


def test_rtsp_wrong_password_is_auth_error(person_clip: Path) -> None:
    with RtspServer({"/lobby": person_clip}, user="viewer", password="right") as server:
        slot, states = Collector(), States()
        backoff = NoBackoff()
        url = server.url_for("/lobby", password="wrong@pass")
        reader = StreamReader("lobby", camera(url, open_timeout_s=5), slot, backoff=backoff, listener=states)
        reader.start()
        try:
            assert wait_for(lambda: bool(states.errors), 20)
        finally:
            reader.stop()
            reader.join(10)
        assert "auth" in states.errors[0], states.errors[0]
        assert "wrong@pass" not in " ".join(states.errors)
        assert slot.frames == []


def test_rtsp_frozen_server_triggers_stall_reconnect(person_clip: Path) -> None:
    """A server that keeps the TCP connection open but sends nothing (SIGSTOP) is a frozen camera."""
    import os
    import signal

    with RtspServer({"/lobby": person_clip}) as server:
        slot, states = Collector(), States()
        config = camera(server.url_for("/lobby"), stall_timeout_s=2, open_timeout_s=2)
        reader = StreamReader("lobby", config, slot, backoff=NoBackoff(), listener=states)
        reader.start()
        try:
            assert wait_for(lambda: len(slot.frames) >= 5, 20)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                assert wait_for(lambda: ReaderState.BACKOFF in states.seen, 15), (
                    "the frozen stream was not detected"
                )
                detected_after = time.monotonic() - frozen_at
            finally:
                os.kill(server.pid, signal.SIGCONT)
            count = len(slot.frames)
            assert wait_for(lambda: len(slot.frames) > count + 5, 30), "no frames after the server resumed"
        finally:
            reader.stop()
            assert reader.join(10)
        # Stall timeout 2 s; PyAV's read timeout fires a little later than that.
        assert detected_after < 8
        assert any(
            "timed out" in error or "stalled" in error or "ended" in error for error in states.errors
        ), states.errors
