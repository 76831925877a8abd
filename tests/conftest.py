"""Shared fixtures: offline settings, the sample footage, and real Redis and RTSP servers."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Set before anything imports Ultralytics or transformers: both reach for the network otherwise.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="vigil-yolo-"))

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import RedisServer, RtspServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with the sample footage: $VIGIL_SAMPLE_DIR or ../shared/data beside the repository."""
    folder = Path(os.environ.get("VIGIL_SAMPLE_DIR") or REPO.parent / "shared" / "data")
    if not (folder / "intel_sample_videos").is_dir():
        pytest.fail(
            f"sample footage not found in {folder}; set VIGIL_SAMPLE_DIR to the folder holding the clips"
        )
    return folder


@pytest.fixture(scope="session")
def person_clip(data_dir: Path) -> Path:
    return data_dir / "intel_sample_videos" / "one-by-one-person-detection.mp4"


@pytest.fixture(scope="session")
def fall_clip(data_dir: Path) -> Path:
    return data_dir / "gmdcsa24_fall" / "Subject 1" / "Fall" / "14.mp4"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def rtsp_server(person_clip: Path) -> Iterator[RtspServer]:
    with RtspServer({"/lobby": person_clip}) as server:
        yield server
