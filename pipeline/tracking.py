"""Per-camera multi-object tracking with Ultralytics' ByteTrack and bounded track state."""

from __future__ import annotations

import collections
import dataclasses
import math
import types

import numpy as np
import numpy.typing as npt
from ultralytics.trackers.byte_tracker import BYTETracker

from pipeline.config import TrackingConfig
from pipeline.records import Detections, Frame


@dataclasses.dataclass(frozen=True, slots=True)
class TrackPoint:
    """Where a track was at one stream time; ``x``, ``y`` are its anchor as fractions of the frame."""

    timestamp: float
    x: float
    y: float
    box: tuple[float, float, float, float]
    class_name: str
    confidence: float


@dataclasses.dataclass(slots=True)
class Track:
    """A tracked object on one camera; ``history`` keeps at most ``TrackingConfig.history`` points."""

    track_id: int
    first_seen: float
    history: collections.deque[TrackPoint]

    @property
    def last(self) -> TrackPoint:
        return self.history[-1]

    @property
    def last_seen(self) -> float:
        return self.history[-1].timestamp


class _TrackerInput:
    """The minimal results object BYTETracker reads: ``conf``, ``cls``, ``xywh`` and boolean indexing."""

    def __init__(
        self, xywh: npt.NDArray[np.float32], conf: npt.NDArray[np.float32], cls: npt.NDArray[np.float32]
    ):
        self.xywh = xywh
        self.conf = conf
        self.cls = cls

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: npt.NDArray[np.bool_]) -> _TrackerInput:
        return _TrackerInput(self.xywh[index], self.conf[index], self.cls[index])


class CameraTracker:
    """Assigns track ids to one camera's detections and keeps a bounded history per track.

    Tracks not seen for ``track_buffer_s`` of stream time are evicted, and at most
    ``max_tracks`` live tracks are kept (the least recently seen go first), so a
    camera watching a busy street for weeks keeps a constant amount of state.
    """

    def __init__(self, camera: str, config: TrackingConfig, frame_rate: float = 10.0) -> None:
        self.camera = camera
        self.config = config
        self._frame_rate = frame_rate
        self._tracker = self._new_tracker()
        self.tracks: dict[int, Track] = {}
        self._names: dict[int, str] = {}

    def _new_tracker(self) -> BYTETracker:
        args = types.SimpleNamespace(
            track_high_thresh=self.config.high_thresh,
            track_low_thresh=self.config.low_thresh,
            new_track_thresh=self.config.new_track_thresh,
            track_buffer=max(1, math.ceil(self.config.track_buffer_s * self._frame_rate)),
            match_thresh=self.config.match_thresh,
            fuse_score=True,
        )
        return BYTETracker(args)

    def update(self, frame: Frame, detections: Detections) -> Detections:
        """Track this frame's detections; return those that belong to a track, with ``track_id`` set."""
        for class_id, name in zip(detections.class_id, detections.class_name, strict=True):
            self._names[int(class_id)] = name
        xyxy = detections.xyxy
        xywh = np.stack(
            [
                (xyxy[:, 0] + xyxy[:, 2]) / 2,
                (xyxy[:, 1] + xyxy[:, 3]) / 2,
                xyxy[:, 2] - xyxy[:, 0],
                xyxy[:, 3] - xyxy[:, 1],
            ],
            axis=1,
        ).astype(np.float32)
        rows = self._tracker.update(
            _TrackerInput(xywh, detections.confidence, detections.class_id.astype(np.float32)), frame.image
        )
        if len(rows) == 0:
            tracked = Detections.empty()
            tracked = Detections(
                tracked.xyxy, tracked.confidence, tracked.class_id, (), np.zeros(0, dtype=np.int64)
            )
        else:
            rows = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
            tracked = Detections.from_arrays(
                xyxy=rows[:, 0:4],
                confidence=rows[:, 5],
                class_id=rows[:, 6],
                names=self._names,
                track_id=rows[:, 4],
            )
        self._record(frame, tracked)
        self._evict(frame.timestamp)
        return tracked

    def _record(self, frame: Frame, tracked: Detections) -> None:
        assert tracked.track_id is not None
        anchors = tracked.anchors()
        for index, track_id in enumerate(tracked.track_id.tolist()):
            box = tuple(float(v) for v in tracked.xyxy[index])
            point = TrackPoint(
                timestamp=frame.timestamp,
                x=float(anchors[index, 0]) / frame.width,
                y=float(anchors[index, 1]) / frame.height,
                box=box,  # type: ignore[arg-type]
                class_name=tracked.class_name[index],
                confidence=float(tracked.confidence[index]),
            )
            track = self.tracks.get(track_id)
            if track is None:
                track = Track(track_id, frame.timestamp, collections.deque(maxlen=self.config.history))
                self.tracks[track_id] = track
            track.history.append(point)

    def _evict(self, now: float) -> None:
        stale = [
            tid for tid, track in self.tracks.items() if now - track.last_seen > self.config.track_buffer_s
        ]
        for track_id in stale:
            del self.tracks[track_id]
        overflow = len(self.tracks) - self.config.max_tracks
        if overflow > 0:
            oldest = sorted(self.tracks.values(), key=lambda track: track.last_seen)[:overflow]
            for track in oldest:
                del self.tracks[track.track_id]

    def live_tracks(self) -> list[Track]:
        return list(self.tracks.values())
