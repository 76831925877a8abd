"""Track windows of annotated footage, computed by the daemon's own stages and cached on disk.

Each video is replayed through the same decoder, motion gate, detector, tracker,
cue extractor and prompt as a live camera (``pipeline.replay``). Every scored track
window is kept: its cue vector, the detector's features, its prompt, its time and
track. The zero-shot fusion scores and the alerts of the detector's own ``Fall``
class (``type: fall, source: detector``) are kept too, as baselines for evaluation.

The result for one video is cached under a key made of the video's sha256 and the
extractor's settings, so a second run, or a run with other training settings, skips
the extraction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.config import VigilConfig, parse_config
from pipeline.detect.weights import resolve_weights
from pipeline.detect.yolo import select_device
from pipeline.fusion.features import CUE_NAMES, TrackWindow
from pipeline.fusion.model import resolve_encoder, stack_visual
from pipeline.fusion.scorer import FusionScorer, prepare
from pipeline.processing import Processor
from pipeline.replay import replay_file
from training.config import TrainingConfig

logger = logging.getLogger(__name__)

# Bump when the meaning of a cached array changes, so that old caches are not reused.
CACHE_FORMAT = 1


@dataclasses.dataclass
class VideoWindows:
    """The scored track windows of one video, as arrays with one row per window."""

    video: str
    duration_s: float
    timestamps: npt.NDArray[np.float64]
    track_ids: npt.NDArray[np.int64]
    cues: npt.NDArray[np.float32]
    visual: npt.NDArray[np.float32]
    visual_present: npt.NDArray[np.bool_]
    texts: list[str]
    zero_shot: npt.NDArray[np.float32]
    detector_alerts: list[float]

    def __len__(self) -> int:
        return len(self.timestamps)

    def save(self, path: Path) -> None:
        arrays = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        meta = {
            "video": self.video,
            "duration_s": self.duration_s,
            "texts": self.texts,
            "detector_alerts": self.detector_alerts,
        }
        for key in meta:
            arrays.pop(key)
        # One partial file per process, so two runs that share the cache never mix their writes.
        partial = path.with_suffix(f".{os.getpid()}.partial.npz")
        np.savez_compressed(partial, meta=np.array(json.dumps(meta)), **arrays)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> VideoWindows:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {key: data[key] for key in data.files if key != "meta"}
        return cls(**meta, **arrays)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extractor_config(config: TrainingConfig) -> VigilConfig:
    """Build the daemon config that extraction runs with: one camera with the detector's own fall rule."""
    return parse_config(
        {
            "cameras": {
                "clip": {
                    "url": "clip",
                    "fps": config.extract.fps,
                    "rules": {"detector-fall": {"type": "fall", "source": "detector"}},
                }
            },
            "detector": {"imgsz": config.extract.imgsz, "weights": config.extract.weights},
            "fusion": {"encoder": config.encoder, "labels": config.labels, "normal": config.normal},
        },
        env={},
    )


def cache_key(video_hash: str, config: TrainingConfig, models: Mapping[str, object] | None = None) -> str:
    """Derive the cache file name from the video's hash and every setting that changes its windows.

    ``models`` identifies the model files in use and the device (see ``model_identity``),
    so retrained weights, an upgraded package or a GPU run do not reuse old windows.
    """
    settings = {
        "format": CACHE_FORMAT,
        "video": video_hash,
        "extract": config.extract.model_dump(mode="json", exclude={"cache_dir"}),
        "cues": list(CUE_NAMES),
        "labels": config.labels,
        "normal": config.normal,
        "encoder": config.encoder,
        "models": dict(models or {}),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def model_identity(vigil: VigilConfig) -> dict[str, object]:
    """Return the content hashes of the detector and encoder files and the device, without loading them.

    The hashes change when a model is retrained in place or its package is upgraded.
    """
    weights = Path(resolve_weights(vigil.detector.weights))
    encoder = resolve_encoder(vigil.fusion.encoder)
    device = select_device(vigil.detector.device)
    half = vigil.detector.half if vigil.detector.half is not None else device.startswith("cuda")
    return {
        "weights": file_sha256(weights) if weights.is_file() else str(weights),
        "encoder": {entry.name: file_sha256(entry) for entry in sorted(encoder.iterdir()) if entry.is_file()},
        "device": device.split(":")[0],
        "half": half,
    }


class Extractor:
    """Replayer of videos through the daemon's stages, with an on-disk cache.

    The detector and the fusion scorer load on the first cache miss.
    """

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.vigil = extractor_config(config)
        self._processor: Processor | None = None
        self.cache_dir = config.extract.cache_dir
        self.hits = 0
        self.misses = 0
        self._models: dict[str, object] | None = None

    def _ensure_processor(self) -> Processor:
        if self._processor is None:
            from pipeline.detect import YoloDetector

            detector = YoloDetector(self.vigil.detector)
            scorer = FusionScorer(self.vigil.fusion, detector.device, detector.feature_dim)
            self._processor = Processor(self.vigil, detector, scorer, cameras={})
        return self._processor

    def windows(self, root: Path, video: str) -> VideoWindows:
        """Return the track windows of ``root / video``, from the cache or by replaying the file."""
        path = root / video
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        if self._models is None:
            self._models = model_identity(self.vigil)
        key = cache_key(file_sha256(path), self.config, self._models)
        cached = self.cache_dir / f"{key}.npz"

        if cached.is_file():
            try:
                found = VideoWindows.load(cached)
            except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
                logger.warning("feature cache %s is unreadable (%s); extracting %s again", cached, exc, video)
            else:
                self.hits += 1
                found.video = video
                return found

        self.misses += 1
        extracted = self._extract(path, video)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        extracted.save(cached)
        return extracted

    def _extract(self, path: Path, video: str) -> VideoWindows:
        processor = self._ensure_processor()
        collected: list[tuple[TrackWindow, dict[str, float]]] = []
        processor.on_scored = lambda window, scores: collected.append((window, scores))
        detector_alerts: list[float] = []
        last_time = 0.0

        for result in replay_file(processor, path, camera=self.vigil.cameras["clip"]):
            for event, frame in result.events:
                if event.state == "started":
                    detector_alerts.append(frame.timestamp)
            if result.tracked:
                last_time = result.tracked[-1][0].timestamp

        # Windows without visual features, or with features of another width, are marked absent.
        windows = [window for window, _ in collected]
        labels = list(self.config.labels)
        cue_rows, visual_rows, texts = prepare(windows) if windows else ([], [], [])
        dim = next((row.shape[0] for row in visual_rows if row is not None), 0)
        visual, present = stack_visual(visual_rows, dim)

        return VideoWindows(
            video=video,
            duration_s=last_time,
            timestamps=np.array([window.last.timestamp for window in windows], np.float64),
            track_ids=np.array([window.track_id for window in windows], np.int64),
            cues=np.stack(cue_rows).astype(np.float32)
            if cue_rows
            else np.zeros((0, len(CUE_NAMES)), np.float32),
            visual=visual,
            visual_present=present,
            texts=texts,
            zero_shot=np.array(
                [[scores[label] for label in labels] for _, scores in collected], np.float32
            ).reshape(len(collected), len(labels)),
            detector_alerts=detector_alerts,
        )


def moving_tracks(windows: VideoWindows, min_flow: float = 0.06) -> set[int]:
    """Return the ids of tracks whose boxes moved at some point.

    This excludes static boxes, such as furniture taken for a person. Optical flow
    decides, not background subtraction, because the background model marks
    everything as moving while it learns the first frames.
    """
    flow = windows.cues[:, CUE_NAMES.index("track_flow_peak")]
    return {int(track) for track in np.unique(windows.track_ids[flow >= min_flow])}


def window_targets(
    windows: VideoWindows, segments: Sequence[tuple[str, float, float]], labels: Sequence[str]
) -> npt.NDArray[np.float32]:
    """Build the target matrix, one row per window and one column per label.

    A target is 1 where the window ends inside a segment of the label and belongs
    to a track that moved, else 0. Annotations give when something happens but not
    which box it happens to, so a static box inside a fall segment counts as not falling.
    """
    targets = np.zeros((len(windows), len(labels)), np.float32)
    movers = moving_tracks(windows)
    for column, label in enumerate(labels):
        for name, start, end in segments:
            if name != label:
                continue
            inside = (windows.timestamps >= start) & (windows.timestamps <= end)
            mover = np.array([int(track) in movers for track in windows.track_ids], bool)
            targets[inside & mover, column] = 1.0
    return targets
