"""Gathering frames of all cameras into detector batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from pipeline.records import Frame
from pipeline.streams.slot import FrameSlot


class BatchScheduler:
    """Takes frames from every camera's slot, round robin, into batches for one detector call.

    A batch closes when it holds ``max_batch`` frames or ``max_wait_ms`` after its
    first frame arrived, whichever comes first; a lone camera therefore waits at
    most ``max_wait_ms`` for company. ``admit`` sees every frame taken and decides
    whether the detector needs it (the motion gate); frames it rejects are not
    batched.
    """

    def __init__(
        self,
        slots: Mapping[str, FrameSlot],
        wake: threading.Event,
        max_batch: int,
        max_wait_ms: float,
        admit: Callable[[Frame], bool] | None = None,
    ) -> None:
        self.slots = slots
        self.wake = wake
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.admit = admit or (lambda frame: True)
        self._order = list(slots)

    def _take_round(self, batch: list[Frame]) -> bool:
        """Take at most one frame from each slot; return True if any slot had one."""
        took = False
        for camera in self._order:
            if len(batch) >= self.max_batch:
                break
            frame = self.slots[camera].take()
            if frame is None:
                continue
            took = True
            if self.admit(frame):
                batch.append(frame)
        # Start the next round at the following camera, so no camera is always first.
        if self._order:
            self._order.append(self._order.pop(0))
        return took

    def next_batch(self, stop: threading.Event, idle_timeout: float = 0.5) -> list[Frame]:
        """Return the next batch; empty when ``idle_timeout`` passed without frames or ``stop`` is set."""
        batch: list[Frame] = []
        idle_deadline = time.monotonic() + idle_timeout
        first_at: float | None = None
        while not stop.is_set() and len(batch) < self.max_batch:
            self.wake.clear()
            took = self._take_round(batch)
            now = time.monotonic()
            if batch and first_at is None:
                first_at = now
            if first_at is not None:
                remaining = first_at + self.max_wait_s - now
                if remaining <= 0:
                    break
                if not took:
                    self.wake.wait(remaining)
            elif not took:
                if now >= idle_deadline:
                    break
                self.wake.wait(idle_deadline - now)
        return batch
