"""Per-track features for the fusion model, computed the same way in the daemon and in training.

For every tracked box on every detected frame, ``CueExtractor`` records an
``Observation``: where the box is and what shape it has, how much of it moves
(background subtraction), how its pixels flow (Farneback optical flow on a small
grey crop), and the detector's own features for the box when the detector gives
them. ``TrackWindow`` holds the observations of one track over the last few
seconds; ``cue_vector`` turns a window into a fixed vector of named numbers.

The numbers are chosen so that the shape of a fall is visible in them: the box
turns from tall to wide, its height collapses and its centre drops, all within
a second or so, and then it stays wide.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.geometry import point_in_polygon
from pipeline.records import Detections, Frame

# Names of the entries of ``cue_vector``, in order. Training stores them with a model,
# and the scorer switches off the cue tokens of a model built for a different list
# instead of misreading its inputs.
CUE_NAMES: tuple[str, ...] = (
    "aspect_last",
    "aspect_mean",
    "aspect_min",
    "aspect_max",
    "aspect_change",
    "aspect_rate_max",
    "height_ratio",
    "height_drop_rate",
    "centre_drop_rate",
    "centre_drop_rate_max",
    "speed",
    "motion_mean",
    "motion_max",
    "flow_mean",
    "flow_max",
    "flow_down",
    "flow_side",
    "detector_fall",
    "confidence",
    "dwell_log",
    "in_zone",
    "hour_sin",
    "hour_cos",
    "observations_log",
    "track_flow_peak",
)

# Class names that detectors trained for falls give a fallen person.
FALL_CLASS_NAMES = frozenset({"fall", "fallen", "falling"})

# Height in pixels that both crops are resized to before optical flow.
FLOW_HEIGHT = 48
# Seconds between two detected frames beyond which no flow is computed for the later one.
MAX_FLOW_GAP_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """One tracked box on one frame.

    ``cx``, ``cy``, ``width`` and ``height`` are fractions of the frame; ``aspect`` is
    width over height in pixels. ``motion`` is the moving fraction of the box's pixels.
    ``flow_dx`` and ``flow_dy`` are the mean optical flow inside the box in box heights
    per second (``flow_dy`` > 0 is downwards), ``flow_magnitude`` the mean length of
    the flow vectors in the same unit. ``visual`` is the detector's feature vector for
    the box, when it gives one.
    """

    timestamp: float
    captured_at: float
    cx: float
    cy: float
    width: float
    height: float
    aspect: float
    confidence: float
    class_name: str
    motion: float = 0.0
    flow_magnitude: float = 0.0
    flow_dx: float = 0.0
    flow_dy: float = 0.0
    visual: npt.NDArray[np.float32] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TrackWindow:
    """Recent observations of one track, with the context the text prompt needs.

    ``dwell_s`` is the stream time since the track was first seen, and ``zones`` are
    the camera zones that contain the bottom centre of the last box. ``flow_peak``
    is the largest ``flow_magnitude`` of the track over its whole life, not only this
    window: a box that never moved (furniture taken for a lying person) stays near zero.
    Optical flow is used rather than ``motion`` because the background model marks
    everything as moving while it learns the first frames.
    """

    camera: str
    track_id: int
    observations: tuple[Observation, ...]
    dwell_s: float
    zones: tuple[str, ...] = ()
    flow_peak: float = 0.0

    @property
    def last(self) -> Observation:
        return self.observations[-1]

    def visual(self) -> npt.NDArray[np.float32] | None:
        """Mean of the detector's feature vectors over the window, or None when there are none."""
        vectors = [obs.visual for obs in self.observations if obs.visual is not None]
        if not vectors:
            return None
        return np.mean(np.stack(vectors), axis=0).astype(np.float32)

    def local_hour(self) -> float:
        """Return the hour of the last capture in the daemon's local time zone, with minutes as a fraction."""
        when = dt.datetime.fromtimestamp(self.last.captured_at)
        return when.hour + when.minute / 60


def _rates(values: npt.NDArray[np.float64], times: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Return the rates of change of ``values`` per second, skipping repeated timestamps, or [0] when none is left."""
    gaps = np.diff(times)
    keep = gaps > 1e-6
    if not keep.any():
        return np.zeros(1)
    return np.diff(values)[keep] / gaps[keep]


def cue_vector(window: TrackWindow) -> npt.NDArray[np.float32]:
    """Return the window's traditional cues as a float32 vector ordered like ``CUE_NAMES``.

    Centre velocities are in mean box heights per second, and ``height_drop_rate`` is
    in tallest-box heights per second, so near and far people compare.
    """
    obs = window.observations
    times = np.array([o.timestamp for o in obs], dtype=np.float64)
    aspect = np.array([o.aspect for o in obs], dtype=np.float64)
    height = np.array([o.height for o in obs], dtype=np.float64)
    cx = np.array([o.cx for o in obs], dtype=np.float64)
    cy = np.array([o.cy for o in obs], dtype=np.float64)
    # Dividing by ``scale`` turns frame fractions per second into box heights per second.
    scale = max(float(height.mean()), 1e-3)
    tallest = max(float(height.max()), 1e-3)
    drops = _rates(cy, times) / scale
    speeds = np.hypot(_rates(cx, times), _rates(cy, times)) / scale
    span = times[-1] - times[0]
    centre_drop_rate = (cy[-1] - cy[0]) / span / scale if span > 1e-6 else 0.0
    hour = window.local_hour()
    values = {
        "aspect_last": aspect[-1],
        "aspect_mean": aspect.mean(),
        "aspect_min": aspect.min(),
        "aspect_max": aspect.max(),
        "aspect_change": aspect[-1] - aspect[0],
        "aspect_rate_max": np.abs(_rates(aspect, times)).max(),
        "height_ratio": height[-1] / tallest,
        "height_drop_rate": max(0.0, -float(_rates(height, times).min()) / tallest),
        "centre_drop_rate": centre_drop_rate,
        "centre_drop_rate_max": max(0.0, float(drops.max())),
        "speed": speeds.mean(),
        "motion_mean": np.mean([o.motion for o in obs]),
        "motion_max": max(o.motion for o in obs),
        "flow_mean": np.mean([o.flow_magnitude for o in obs]),
        "flow_max": max(o.flow_magnitude for o in obs),
        "flow_down": np.mean([o.flow_dy for o in obs]),
        "flow_side": np.mean([abs(o.flow_dx) for o in obs]),
        "detector_fall": np.mean([o.class_name.lower() in FALL_CLASS_NAMES for o in obs]),
        "confidence": np.mean([o.confidence for o in obs]),
        "dwell_log": math.log1p(max(0.0, window.dwell_s)),
        "in_zone": 1.0 if window.zones else 0.0,
        "hour_sin": math.sin(2 * math.pi * hour / 24),
        "hour_cos": math.cos(2 * math.pi * hour / 24),
        "observations_log": math.log1p(len(obs)),
        "track_flow_peak": max(window.flow_peak, max(o.flow_magnitude for o in obs)),
    }
    return np.array([values[name] for name in CUE_NAMES], dtype=np.float32)


def cue_dict(window: TrackWindow) -> dict[str, float]:
    """Return ``cue_vector(window)`` keyed by cue name."""
    return dict(zip(CUE_NAMES, cue_vector(window).tolist(), strict=True))


def _grey(image: npt.NDArray[np.uint8], width: int) -> npt.NDArray[np.uint8]:
    scale = width / image.shape[1]
    size = (width, max(1, round(image.shape[0] * scale)))
    grey = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    return np.asarray(grey, dtype=np.uint8)


def _crop(
    image: npt.NDArray[np.uint8], box: tuple[float, float, float, float]
) -> npt.NDArray[np.uint8] | None:
    """Cut the box, given as fractions of the frame, out of ``image``, or return None when it is under 2 pixels wide or high."""
    h, w = image.shape[:2]
    x1, y1 = max(0, math.floor(box[0] * w)), max(0, math.floor(box[1] * h))
    x2, y2 = min(w, math.ceil(box[2] * w)), min(h, math.ceil(box[3] * h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return image[y1:y2, x1:x2]


def box_flow(
    previous: npt.NDArray[np.uint8], current: npt.NDArray[np.uint8], box: tuple[float, float, float, float]
) -> tuple[float, float, float]:
    """Compute the mean flow magnitude, dx and dy inside ``box`` between two grey frames.

    The values are in box heights per frame interval, and all three are zero when the
    box is too small to crop.
    """
    before, after = _crop(previous, box), _crop(current, box)
    if before is None or after is None:
        return 0.0, 0.0, 0.0
    aspect = before.shape[1] / before.shape[0]
    size = (int(np.clip(round(FLOW_HEIGHT * aspect), 8, 4 * FLOW_HEIGHT)), FLOW_HEIGHT)
    small_before = np.asarray(cv2.resize(before, size, interpolation=cv2.INTER_AREA))
    small_after = np.asarray(cv2.resize(after, size, interpolation=cv2.INTER_AREA))
    # Arguments: pyramid scale, levels, window, iterations, poly_n, poly_sigma, flags.
    flow = np.asarray(
        cv2.calcOpticalFlowFarneback(small_before, small_after, None, 0.5, 2, 9, 3, 5, 1.1, 0)  # type: ignore[call-overload]
    )
    dx, dy = flow[..., 0] / FLOW_HEIGHT, flow[..., 1] / FLOW_HEIGHT
    return float(np.hypot(dx, dy).mean()), float(dx.mean()), float(dy.mean())


class CueExtractor:
    """Recorder of one ``Observation`` per track and frame for one camera, which also builds track windows.

    Each track keeps its last ``max_observations`` observations, and ``window`` returns
    those of the last ``window_s`` seconds. ``retain`` drops tracks that are no longer
    live. Optical flow runs on frames scaled down to ``flow_width`` pixels.
    """

    def __init__(
        self,
        camera: str,
        zones: Mapping[str, Sequence[tuple[float, float]]] | None = None,
        window_s: float = 2.0,
        max_observations: int = 64,
        flow_width: int = 320,
    ) -> None:
        self.camera = camera
        self.zones = {name: list(polygon) for name, polygon in (zones or {}).items()}
        self.window_s = window_s
        self.flow_width = flow_width
        self._max_observations = max_observations
        self._observations: dict[int, collections.deque[Observation]] = {}
        self._flow_peak: dict[int, float] = {}
        self._previous: tuple[float, npt.NDArray[np.uint8]] | None = None

    def observe(
        self,
        frame: Frame,
        tracked: Detections,
        motion_mask: npt.NDArray[np.uint8] | None = None,
        visual: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """Record one observation for each tracked box of ``frame``.

        ``motion_mask`` is the background-subtraction mask of the frame at any size;
        ``visual`` contains one detector feature row per box of ``tracked``.
        """
        if tracked.track_id is None:
            raise ValueError(
                f"camera {self.camera}: observe() got detections without track_id; pass the tracker's output"
            )
        grey = _grey(frame.image, min(self.flow_width, frame.width)) if len(tracked) else None
        previous = self._previous
        flow_gap = frame.timestamp - previous[0] if previous is not None else math.inf
        for index, track_id in enumerate(tracked.track_id.tolist()):
            x1, y1, x2, y2 = (float(v) for v in tracked.xyxy[index])
            width_px, height_px = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
            box = (x1 / frame.width, y1 / frame.height, x2 / frame.width, y2 / frame.height)
            motion = 0.0
            region = _crop(motion_mask, box) if motion_mask is not None else None
            if region is not None:
                motion = float(np.count_nonzero(region)) / region.size
            magnitude = dx = dy = 0.0
            if grey is not None and previous is not None and 0 < flow_gap <= MAX_FLOW_GAP_S:
                # box_flow measures per frame interval; dividing by the gap gives per second.
                per_frame = box_flow(previous[1], grey, box)
                magnitude, dx, dy = (value / flow_gap for value in per_frame)
            observation = Observation(
                timestamp=frame.timestamp,
                captured_at=frame.captured_at,
                cx=(box[0] + box[2]) / 2,
                cy=(box[1] + box[3]) / 2,
                width=box[2] - box[0],
                height=box[3] - box[1],
                aspect=width_px / height_px,
                confidence=float(tracked.confidence[index]),
                class_name=tracked.class_name[index],
                motion=motion,
                flow_magnitude=magnitude,
                flow_dx=dx,
                flow_dy=dy,
                visual=None if visual is None else np.asarray(visual[index], dtype=np.float32),
            )
            history = self._observations.get(track_id)
            if history is None:
                history = collections.deque(maxlen=self._max_observations)
                self._observations[track_id] = history
            self._flow_peak[track_id] = max(self._flow_peak.get(track_id, 0.0), observation.flow_magnitude)
            history.append(observation)
        if grey is not None:
            self._previous = (frame.timestamp, grey)

    def window(self, track_id: int, first_seen: float) -> TrackWindow | None:
        """Return the last ``window_s`` seconds of ``track_id``, or None when it has no observations.

        ``first_seen`` is the track's first stream timestamp, which sets ``dwell_s``.
        """
        history = self._observations.get(track_id)
        if not history:
            return None
        start = history[-1].timestamp - self.window_s
        recent = tuple(obs for obs in history if obs.timestamp >= start)
        last = recent[-1]
        anchor = (last.cx, last.cy + last.height / 2)
        zones = tuple(name for name, polygon in self.zones.items() if point_in_polygon(anchor, polygon))
        return TrackWindow(
            camera=self.camera,
            track_id=track_id,
            observations=recent,
            dwell_s=last.timestamp - first_seen,
            zones=zones,
            flow_peak=self._flow_peak.get(track_id, 0.0),
        )

    def retain(self, live_ids: Iterable[int]) -> None:
        """Forget every track not in ``live_ids``."""
        keep = set(live_ids)
        gone = [track_id for track_id in self._observations if track_id not in keep]
        for track_id in gone:
            del self._observations[track_id]
            self._flow_peak.pop(track_id, None)

    def __len__(self) -> int:
        return len(self._observations)
