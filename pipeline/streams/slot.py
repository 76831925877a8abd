"""Bounded hand-off between one camera's reader thread and the processing thread."""

from __future__ import annotations

import collections
import threading

from pipeline.records import Frame


class FrameSlot:
    """Holds at most ``capacity`` frames; a put into a full slot drops the oldest.

    Drop-oldest keeps the newest picture, which is what a live monitor needs: a slow
    detector skips frames instead of falling further behind. ``dropped`` counts the
    frames lost this way.
    """

    def __init__(self, capacity: int = 2, wake: threading.Event | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"slot capacity must be at least 1, got {capacity}")
        self._frames: collections.deque[Frame] = collections.deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.capacity = capacity
        self.dropped = 0
        # Set on every put, so a consumer of many slots can sleep until any of them has a frame.
        self._wake = wake

    def put(self, frame: Frame) -> bool:
        """Store a frame; return False when the oldest frame had to be dropped for it."""
        with self._lock:
            full = len(self._frames) == self.capacity
            if full:
                self.dropped += 1
            self._frames.append(frame)
        if self._wake is not None:
            self._wake.set()
        return not full

    def take(self) -> Frame | None:
        """Remove and return the oldest frame, or None when empty."""
        with self._lock:
            return self._frames.popleft() if self._frames else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
