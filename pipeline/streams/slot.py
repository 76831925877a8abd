"""Bounded hand-off between one camera's reader thread and the processing thread."""

from __future__ import annotations

import collections
import dataclasses
import enum
import threading

from pipeline.records import Frame


class Overflow(enum.Enum):
    """What a put into a full slot does."""

    DROP_OLDEST = "drop_oldest"
    """Drop the oldest frame and count it: for live cameras, where the newest picture matters."""
    WAIT = "wait"
    """Block the reader until there is room: for files read faster than real time, where nothing need be lost."""


class FrameSlot:
    """Holds at most ``capacity`` frames of one camera.

    With ``Overflow.DROP_OLDEST`` a slow detector skips frames instead of falling further
    behind, and ``dropped`` counts the frames lost. With ``Overflow.WAIT`` the reader
    waits for the consumer, so a recorded file is processed whole at the pipeline's pace.
    """

    def __init__(
        self,
        capacity: int = 2,
        wake: threading.Event | None = None,
        overflow: Overflow = Overflow.DROP_OLDEST,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"slot capacity must be at least 1, got {capacity}")
        self._frames: collections.deque[Frame] = collections.deque(maxlen=capacity)
        self._condition = threading.Condition()
        self.capacity = capacity
        self.overflow = overflow
        self.dropped = 0
        # Set on every put, so a consumer of many slots can sleep until any of them has a frame.
        self._wake = wake

    def put(self, frame: Frame, timeout: float | None = None) -> bool:
        """Store a frame; return False only when it was not stored.

        Under ``DROP_OLDEST`` the frame is always stored, at the cost of the oldest one
        when the slot is full. Under ``WAIT`` False means ``timeout`` seconds passed
        without room; the caller decides whether to try again.
        """
        with self._condition:
            full = len(self._frames) == self.capacity
            if full and self.overflow is Overflow.WAIT:
                if not self._condition.wait_for(lambda: len(self._frames) < self.capacity, timeout):
                    return False
                full = False
            dropped_restart = False
            if full:
                self.dropped += 1
                dropped_restart = self._frames[0].restarted
            self._frames.append(frame)
            if dropped_restart and not self._frames[0].restarted:
                # The dropped frame began a new stream, so the frame now first in line marks it.
                self._frames[0] = dataclasses.replace(self._frames[0], restarted=True)
        if self._wake is not None:
            self._wake.set()
        return True

    def take(self) -> Frame | None:
        """Remove and return the oldest frame, or None when empty."""
        with self._condition:
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._condition.notify()
            return frame

    def __len__(self) -> int:
        with self._condition:
            return len(self._frames)
