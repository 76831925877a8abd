"""Offline replay: a recorded file through the same stages as a live camera, on the caller's thread.

Evaluation, training and benchmarks use it to get exactly what the daemon would
compute for the footage: the same decoder and fps limit, motion gate, batched
detector, tracker, cue extractor, fusion model and rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr

from pipeline.config import CameraConfig
from pipeline.processing import BatchResult, Processor
from pipeline.records import Frame
from pipeline.streams import FrameSlot, StreamReader


def replay_file(
    processor: Processor,
    path: Path | str,
    camera_id: str = "replay",
    camera: CameraConfig | None = None,
    batch_size: int = 8,
) -> Iterator[BatchResult]:
    """Process every frame of ``path`` as camera ``camera_id``, yielding each batch's result.

    ``camera`` gives the fps limit, zones and rules. By default every frame is taken
    and no rule runs. Frames are read as fast as they are processed, never paced to
    the clip's frame rate, and the file is read once even when ``camera`` loops. The
    camera's state is replaced, so each call starts with fresh tracks and events.
    Raises ``StreamOpenError`` when the file cannot be opened.
    """
    url = SecretStr(str(path))
    if camera is None:
        camera = CameraConfig(url=url, realtime=False)
    else:
        camera = camera.model_copy(update={"url": url, "realtime": False, "loop": False})
    processor.add_camera(camera_id, camera)
    reader = StreamReader(camera_id, camera, FrameSlot(1))
    batch: list[Frame] = []
    for frame in reader.iter_frames():
        if not processor.admit(frame):
            continue
        batch.append(frame)
        if len(batch) >= batch_size:
            yield processor.process(batch)
            batch = []
    if batch:
        yield processor.process(batch)
