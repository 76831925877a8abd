"""Motion gate: decides per frame whether the detector needs to look at it."""

from __future__ import annotations

import collections

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.config import MotionConfig
from pipeline.records import Frame

# Frames of one camera can wait in a batch after the gate has seen newer ones.
MASKS_KEPT = 64


class MotionGate:
    """Background subtraction (MOG2) on a small grey copy of each frame of one camera.

    A frame passes when the changed fraction of pixels reaches ``min_area``, when the
    camera still has live tracks (a person standing still fades into the background,
    yet rules such as loitering need them followed), or when ``keepalive_s`` of stream
    time has passed since the last frame that passed, so tracks never starve.

    With ``keep_masks`` the foreground masks of the last few frames are kept by
    sequence number for the fusion model's motion cue, and computed even when the
    gate itself is disabled.
    """

    def __init__(self, config: MotionConfig, keep_masks: bool = False) -> None:
        self.config = config
        self.keep_masks = keep_masks
        self._masks: collections.OrderedDict[int, npt.NDArray[np.uint8]] = collections.OrderedDict()
        self._subtractor = cv2.createBackgroundSubtractorMOG2(
            history=config.history, varThreshold=config.var_threshold, detectShadows=False
        )
        self._last_passed: float | None = None
        self._kernel = np.ones((3, 3), np.uint8)
        self.last_motion = 0.0

    def motion_fraction(self, frame: Frame) -> float:
        """Feed the frame to the background model and return the fraction of moving pixels."""
        scale = self.config.width / frame.width
        size = (self.config.width, max(1, round(frame.height * scale)))
        grey = cv2.cvtColor(cv2.resize(frame.image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        grey = cv2.GaussianBlur(grey, (5, 5), 0)
        foreground = self._subtractor.apply(grey)
        mask = np.asarray(cv2.morphologyEx(foreground, cv2.MORPH_OPEN, self._kernel), dtype=np.uint8)
        if self.keep_masks:
            self._masks[frame.seq] = mask
            while len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)
        self.last_motion = float(np.count_nonzero(mask)) / mask.size
        return self.last_motion

    def mask_for(self, seq: int) -> npt.NDArray[np.uint8] | None:
        """Return the foreground mask of frame ``seq`` of this camera while it is among the last few kept, else None."""
        return self._masks.get(seq)

    def should_detect(self, frame: Frame, has_live_tracks: bool = False) -> bool:
        if not self.config.enabled:
            if self.keep_masks:
                self.motion_fraction(frame)
            return True
        moving = self.motion_fraction(frame) >= self.config.min_area
        due = self._last_passed is None or frame.timestamp - self._last_passed >= self.config.keepalive_s
        passed = moving or has_live_tracks or due
        if passed:
            self._last_passed = frame.timestamp
        return passed
