"""The per-camera tracker on real detections and on hand-made boxes."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.config import DetectorConfig, TrackingConfig
from pipeline.detect import YoloDetector
from pipeline.records import Detections, Frame
from pipeline.tracking import CameraTracker, box_iou

IMAGE = np.zeros((100, 200, 3), dtype=np.uint8)


def detections(*boxes: tuple[float, float, float, float]) -> Detections:
    return Detections.from_arrays(
        xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        confidence=np.full(len(boxes), 0.9),
        class_id=np.zeros(len(boxes)),
        names={0: "person"},
    )


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), np.array([0, 0, 10, 10.0])) == 1.0
    assert box_iou((0, 0, 10, 10), np.array([5, 0, 15, 10.0])) == 50 / 150
    assert box_iou((0, 0, 10, 10), np.array([20, 20, 30, 30.0])) == 0.0


def test_tracks_keep_ids_and_bounded_history() -> None:
    tracker = CameraTracker("gate", TrackingConfig(history=5), frame_rate=10)
    for step in range(30):
        x = 10 + step
        tracker.update(Frame("gate", step, step * 0.1, time.time(), IMAGE), detections((x, 20, x + 20, 80)))
    assert len(tracker.tracks) == 1
    track = next(iter(tracker.tracks.values()))
    assert len(track.history) == 5
    assert track.last.x == pytest.approx((39 + 10) / 200, abs=0.005)  # ByteTrack smooths the box


def test_lost_tracks_are_evicted() -> None:
    tracker = CameraTracker("gate", TrackingConfig(track_buffer_s=1.0), frame_rate=10)
    for step in range(5):
        tracker.update(Frame("gate", step, step * 0.1, time.time(), IMAGE), detections((10, 20, 30, 80)))
    assert len(tracker.tracks) == 1
    for step in range(5, 30):
        tracker.update(Frame("gate", step, step * 0.1, time.time(), IMAGE), detections())
    assert tracker.tracks == {}
    assert tracker._aliases == {}


def test_lost_track_buffer_follows_the_real_frame_rate() -> None:
    # The camera has no fps setting, so 10 frames/s is assumed, but frames come at 30/s.
    tracker = CameraTracker("gate", TrackingConfig(track_buffer_s=2.0), frame_rate=10)
    assert tracker._tracker.max_frames_lost == 20
    for step in range(60):
        tracker.update(Frame("gate", step, step / 30, time.time(), IMAGE), detections((10, 20, 30, 80)))
    assert tracker._tracker.max_frames_lost == 60
    # An idle scene passes the motion gate once every 2 s: those gaps are not the frame rate.
    for step in range(60, 70):
        t = 2.0 + 2.0 * (step - 60)
        tracker.update(Frame("gate", step, t, time.time(), IMAGE), detections((10, 20, 30, 80)))
    assert tracker._tracker.max_frames_lost == 60


def test_max_tracks_caps_state() -> None:
    tracker = CameraTracker("gate", TrackingConfig(max_tracks=3, track_buffer_s=60), frame_rate=10)
    for step in range(40):
        column = (step // 4) * 18  # a new person every 4 frames, in a new place
        tracker.update(
            Frame("gate", step, step * 0.1, time.time(), IMAGE), detections((column, 0, column + 10, 50))
        )
    assert len(tracker.tracks) <= 3


def test_returning_bytetrack_id_gets_a_new_track() -> None:
    # ByteTrack loses id 3 and starts id 5 on the same person, which Vigil joins back to
    # that person's track. When id 3 then returns on someone else, the two people must
    # not share one track.
    tracker = CameraTracker("gate", TrackingConfig(), frame_rate=10)
    first = tracker._link(np.array([3]), np.array([[100.0, 100, 150, 250]]), 0.0)
    tracker._record(Frame("gate", 1, 0.0, time.time(), IMAGE), tracked(first, (100, 100, 150, 250)))
    joined = tracker._link(np.array([5]), np.array([[105.0, 100, 155, 250]]), 0.1)
    assert joined.tolist() == first.tolist()
    both = tracker._link(np.array([5, 3]), np.array([[110.0, 100, 160, 250], [600, 100, 650, 250]]), 0.2)
    assert both[0] == first[0]
    assert both[1] != first[0]


def tracked(track_ids: np.ndarray, *boxes: tuple[float, float, float, float]) -> Detections:
    return Detections.from_arrays(
        xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        confidence=np.full(len(boxes), 0.9),
        class_id=np.zeros(len(boxes)),
        names={0: "person"},
        track_id=track_ids,
    )


def test_person_walking_towards_camera_keeps_one_track(person_clip: Path) -> None:
    """At 5 fps the first person of the clip grows fast; ByteTrack alone splits them in two."""
    detector = YoloDetector(DetectorConfig(imgsz=320))
    tracker = CameraTracker("lobby", TrackingConfig(), frame_rate=5)
    ids: set[int] = set()
    with av.open(str(person_clip)) as container:
        for index, decoded in enumerate(container.decode(video=0)):
            if index % 2:
                continue  # 10 fps clip read at 5 fps
            if decoded.time is not None and decoded.time > 19.5:
                break
            image = decoded.to_ndarray(format="bgr24")
            frame = Frame("lobby", index, float(decoded.time or 0.0), time.time(), image)
            tracked = tracker.update(frame, detector.detect_batch([image])[0])
            assert tracked.track_id is not None
            ids.update(tracked.track_id.tolist())
    # From 6 s to 19.5 s one person walks in from the bottom edge, bending, and stands at the table.
    assert len(ids) == 1, ids
