"""Typed, immutable records that flow through the pipeline: frames, detections, events."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

EventState = Literal["started", "updated", "ended"]
Severity = Literal["info", "warning", "critical"]


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame.

    ``timestamp`` is the stream time in seconds. It comes from the container's
    presentation timestamps and keeps increasing across file loops and reconnects,
    so rules can measure durations with it. ``captured_at`` is the wall-clock time
    (``time.time()``) when the reader received the frame; frame age is measured
    from it. ``image`` is H x W x 3 uint8 BGR and is made read-only. ``restarted``
    is True on the first frame after the source was opened, reopened or looped:
    the scene may jump there, so tracks and events do not carry over.
    """

    camera: str
    seq: int
    timestamp: float
    captured_at: float
    image: npt.NDArray[np.uint8]
    restarted: bool = False

    def __post_init__(self) -> None:
        image = self.image
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frame image: expected shape (H, W, 3), got {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"frame image: expected dtype uint8, got {image.dtype}")
        image.flags.writeable = False

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclasses.dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one frame as parallel arrays.

    ``xyxy`` is (N, 4) float32 in pixels of the original frame; ``confidence`` is (N,)
    float32; ``class_id`` is (N,) int64; ``class_name`` has N strings; ``track_id``
    is (N,) int64 once a tracker has assigned identities, else ``None``. ``features``
    is (N, D) float32: the detector's own feature vector for each box, when it gives one.
    """

    xyxy: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]
    class_name: tuple[str, ...]
    track_id: npt.NDArray[np.int64] | None = None
    features: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n = len(self.class_name)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy: expected shape ({n}, 4), got {self.xyxy.shape}")
        if self.confidence.shape != (n,):
            raise ValueError(f"confidence: expected shape ({n},), got {self.confidence.shape}")
        if self.class_id.shape != (n,):
            raise ValueError(f"class_id: expected shape ({n},), got {self.class_id.shape}")
        if self.track_id is not None and self.track_id.shape != (n,):
            raise ValueError(f"track_id: expected shape ({n},), got {self.track_id.shape}")
        if self.features is not None and (self.features.ndim != 2 or self.features.shape[0] != n):
            raise ValueError(f"features: expected shape ({n}, D), got {self.features.shape}")
        for array in (self.xyxy, self.confidence, self.class_id, self.track_id, self.features):
            if array is not None:
                array.flags.writeable = False

    def __len__(self) -> int:
        return len(self.class_name)

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), dtype=np.float32),
            confidence=np.zeros((0,), dtype=np.float32),
            class_id=np.zeros((0,), dtype=np.int64),
            class_name=(),
        )

    @classmethod
    def from_arrays(
        cls,
        xyxy: npt.ArrayLike,
        confidence: npt.ArrayLike,
        class_id: npt.ArrayLike,
        names: Sequence[str] | dict[int, str],
        track_id: npt.ArrayLike | None = None,
        features: npt.ArrayLike | None = None,
    ) -> Detections:
        """Build detections from array-likes, looking each class name up in ``names``."""
        ids = np.asarray(class_id, dtype=np.int64).reshape(-1)
        return cls(
            xyxy=np.asarray(xyxy, dtype=np.float32).reshape(-1, 4),
            confidence=np.asarray(confidence, dtype=np.float32).reshape(-1),
            class_id=ids,
            class_name=tuple(names[int(i)] for i in ids),
            track_id=None if track_id is None else np.asarray(track_id, dtype=np.int64).reshape(-1),
            features=None if features is None else _rows(features, len(ids)),
        )

    def anchors(self) -> npt.NDArray[np.float32]:
        """Return the bottom-centre point of each box, (N, 2) in pixels: where a person stands."""
        x = (self.xyxy[:, 0] + self.xyxy[:, 2]) / 2
        return np.stack([x, self.xyxy[:, 3]], axis=1).astype(np.float32)


def _rows(values: npt.ArrayLike, count: int) -> npt.NDArray[np.float32]:
    array = np.asarray(values, dtype=np.float32)
    return array if array.ndim == 2 else array.reshape(count, -1)


def new_event_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One state of an anomaly. ``id`` stays the same across its started, updated and ended states.

    Times are wall-clock seconds since the epoch. ``box`` is the xyxy box in pixels of
    the main track in the frame that produced this state, when there is one.
    """

    id: str
    camera: str
    rule: str
    rule_type: str
    label: str
    severity: Severity
    state: EventState
    started_at: float
    ended_at: float | None
    track_ids: tuple[int, ...]
    zone: str | None
    scores: dict[str, float]
    box: tuple[float, float, float, float] | None = None
    details: dict[str, str | float | int] = dataclasses.field(default_factory=dict)
    description: dict[str, str] = dataclasses.field(default_factory=dict)
    snapshot: str | None = None

    def with_updates(self, **changes: object) -> Event:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
