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

# Longer gaps between tracked frames are the motion gate skipping an idle scene, not the frame rate.
MAX_FRAME_INTERVAL_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class TrackPoint:
    """Position of a track at one stream time; ``x``, ``y`` are its anchor as fractions of the frame."""

    timestamp: float
    x: float
    y: float
    box: tuple[float, float, float, float]
    class_name: str
    confidence: float


@dataclasses.dataclass(slots=True)
class Track:
    """A tracked object on one camera; ``history`` keeps at most ``TrackingConfig.history`` points.

    ``scores`` contains the fusion model's latest label scores for the track and
    ``scored_at`` the stream time of the frame they were computed on.
    """

    track_id: int
    first_seen: float
    history: collections.deque[TrackPoint]
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    scored_at: float | None = None

    @property
    def last(self) -> TrackPoint:
        return self.history[-1]

    @property
    def last_seen(self) -> float:
        return self.history[-1].timestamp


def box_iou(
    a: tuple[float, float, float, float] | npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> float:
    """Return the intersection over union of two xyxy boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


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
        # ByteTrack id -> (Vigil track id, stream time it was last used).
        self._aliases: dict[int, tuple[int, float]] = {}
        # Vigil numbers its own tracks: a ByteTrack id can return on another person
        # while its old track lives on under a joined id, so it is not reused as is.
        self._next_id = 1
        # Mean seconds between the frames passed to this tracker, to size ByteTrack's buffer.
        self._interval: float | None = None
        self._last_timestamp: float | None = None

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
        self._follow_frame_rate(frame.timestamp)
        rows = self._tracker.update(
            _TrackerInput(xywh, detections.confidence, detections.class_id.astype(np.float32)), frame.image
        )
        if len(rows) == 0:
            rows = np.zeros((0, 8), dtype=np.float64)
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 8)
        # Report the detector's own box, not ByteTrack's Kalman estimate: the estimate can
        # swell far past the person while they change shape (bending, entering the frame).
        source = rows[:, 7].astype(np.int64)
        boxes = detections.xyxy[source].astype(np.float64)
        track_ids = self._link(rows[:, 4].astype(np.int64), boxes, frame.timestamp)
        tracked = Detections.from_arrays(
            xyxy=boxes,
            confidence=rows[:, 5],
            class_id=rows[:, 6],
            names=self._names,
            track_id=track_ids,
            features=None if detections.features is None else detections.features[source],
        )
        self._record(frame, tracked)
        self._evict(frame.timestamp)
        return tracked

    def _follow_frame_rate(self, timestamp: float) -> None:
        """Set ByteTrack's lost-track buffer to ``track_buffer_s`` seconds of the frames it receives.

        The buffer is counted in frames, and the rate of frames passed to the tracker differs from the
        camera's ``fps`` setting when that is unset or the source delivers less.
        """
        previous, self._last_timestamp = self._last_timestamp, timestamp
        if previous is None or timestamp <= previous:
            return
        interval = timestamp - previous
        if interval > MAX_FRAME_INTERVAL_S:
            return  # the motion gate let an idle scene through once every few seconds
        self._interval = interval if self._interval is None else 0.9 * self._interval + 0.1 * interval
        self._tracker.max_frames_lost = max(1, round(self.config.track_buffer_s / self._interval))

    def _link(
        self, raw_ids: npt.NDArray[np.int64], boxes: npt.NDArray[np.float64], now: float
    ) -> npt.NDArray[np.int64]:
        """Map ByteTrack ids to Vigil track ids, joining a new id to the track it replaced.

        ByteTrack starts a new id when it loses a person for a frame or two, for example
        someone walking quickly towards the camera at a low frame rate. A new id whose
        box overlaps the last box of a track that is missing from this frame by at
        least ``relink_iou`` continues that track, so the rules see one person, not two.
        """
        linked = np.empty_like(raw_ids)
        used: set[int] = set()
        new_rows = []
        # Known ids first, so that a track present in this frame is never taken as "lost".
        for index, raw in enumerate(raw_ids.tolist()):
            alias = self._aliases.get(raw)
            if alias is None or alias[0] in used:
                new_rows.append((index, raw, alias is None))
                continue
            linked[index] = alias[0]
            used.add(alias[0])
            self._aliases[raw] = (alias[0], now)
        for index, raw, unseen in new_rows:
            target = self._lost_track_for(boxes[index], now, used) if unseen else None
            if target is None:
                track_id = self._next_id
                self._next_id += 1
            else:
                track_id = target
            linked[index] = track_id
            used.add(track_id)
            self._aliases[raw] = (track_id, now)
        return linked

    def _lost_track_for(self, box: npt.NDArray[np.float64], now: float, used: set[int]) -> int | None:
        if self.config.relink_iou is None:
            return None
        best, best_iou = None, self.config.relink_iou
        for track in self.tracks.values():
            if track.track_id in used or track.last_seen >= now:
                continue
            iou = box_iou(track.last.box, box)
            if iou >= best_iou:
                best, best_iou = track.track_id, iou
        return best

    def _record(self, frame: Frame, tracked: Detections) -> None:
        if tracked.track_id is None:
            raise ValueError("tracked detections need track ids")
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
        expired = [
            raw for raw, (_, used_at) in self._aliases.items() if now - used_at > self.config.track_buffer_s
        ]
        for raw in expired:
            del self._aliases[raw]
        overflow = len(self.tracks) - self.config.max_tracks
        if overflow > 0:
            oldest = sorted(self.tracks.values(), key=lambda track: track.last_seen)[:overflow]
            for track in oldest:
                del self.tracks[track.track_id]

    def reset(self) -> None:
        """Forget every track, for a stream that starts again; new tracks keep getting new ids."""
        self._tracker = self._new_tracker()
        self.tracks.clear()
        self._aliases.clear()
        self._last_timestamp = None

    def live_tracks(self) -> list[Track]:
        return list(self.tracks.values())
