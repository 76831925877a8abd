"""The interface every detector backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipeline.records import Detections


class Detector(Protocol):
    names: dict[int, str]
    device: str

    def detect_batch(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        """Detect objects in each BGR image; return one ``Detections`` per image, in order."""
        ...
