"""The per-frame work of the pipeline, shared by the daemon and offline replay.

``Processor`` takes batches of frames from any cameras. It runs them through the
detector (one call per batch), then each camera's tracker and cue extractor, the
fusion model (one call for every track that is due a score) and each camera's rules.
It owns no threads and no network clients. The daemon feeds it from live readers and
publishes what it returns, while training and evaluation feed it from files.

The fusion scores of a batch are computed after its rules ran, so a rule sees the
scores of the previous batch. That costs one batch of latency, a fraction of a
second, and lets a batch hold several frames of one camera.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

from pipeline.config import CameraConfig, VigilConfig
from pipeline.detect import Detector
from pipeline.fusion.features import CueExtractor, TrackWindow
from pipeline.fusion.scorer import FusionScorer
from pipeline.motion import MotionGate
from pipeline.records import Detections, Event, Frame
from pipeline.rules import RuleEngine
from pipeline.tracking import CameraTracker, Track

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CameraPipeline:
    """The state the processor keeps for one camera."""

    camera: str
    gate: MotionGate
    tracker: CameraTracker
    cues: CueExtractor | None
    rules: RuleEngine


@dataclasses.dataclass
class BatchResult:
    """Output of one batch, for the caller to publish and to count."""

    events: list[tuple[Event, Frame]]
    tracked: list[tuple[Frame, Detections]]
    detector_ms: float
    fusion_ms: float = 0.0
    scored: int = 0


# Called with each scored window and its scores, for example to collect training data.
ScoreListener = Callable[[TrackWindow, dict[str, float]], None]


class Processor:
    """Runner of frame batches through detection, tracking, cues, fusion scoring and rules.

    Only cameras whose config is enabled get a pipeline. With a ``scorer``, each
    camera also keeps motion masks and a cue extractor, and ``on_scored`` is called
    for every window scored.
    """

    def __init__(
        self,
        config: VigilConfig,
        detector: Detector,
        scorer: FusionScorer | None = None,
        cameras: Mapping[str, CameraConfig] | None = None,
        on_scored: ScoreListener | None = None,
    ) -> None:
        self.config = config
        self.detector = detector
        self.scorer = scorer
        self.on_scored = on_scored
        self.cameras: dict[str, CameraPipeline] = {}
        chosen = config.cameras if cameras is None else cameras
        for camera_id, camera in chosen.items():
            if camera.enabled:
                self.add_camera(camera_id, camera)

    def add_camera(self, camera_id: str, camera: CameraConfig) -> CameraPipeline:
        """Create the state of one camera, replacing any state it had before."""
        fusion = self.scorer is not None
        zones = {name: [(x, y) for x, y in zone.polygon] for name, zone in camera.zones.items()}
        pipeline = CameraPipeline(
            camera=camera_id,
            gate=MotionGate(self.config.motion, keep_masks=fusion),
            tracker=CameraTracker(camera_id, self.config.tracking, frame_rate=camera.fps or 10.0),
            cues=CueExtractor(camera_id, zones, window_s=self.config.fusion.window_s) if fusion else None,
            rules=RuleEngine(camera_id, camera),
        )
        self.cameras[camera_id] = pipeline
        return pipeline

    def _restart(self, frame: Frame) -> list[Event]:
        """Start the frame's camera afresh: end its active events and forget its tracks."""
        pipeline = self.cameras[frame.camera]
        ended = pipeline.rules.end_all(frame.captured_at)
        pipeline.tracker.reset()
        if pipeline.cues is not None:
            pipeline.cues.retain(())
        return ended

    def admit(self, frame: Frame) -> bool:
        """Feed the frame to its camera's motion gate; True when the detector should see it.

        A restarted frame always passes, because processing it resets the camera.
        """
        pipeline = self.cameras[frame.camera]
        moving = pipeline.gate.should_detect(frame, has_live_tracks=bool(pipeline.tracker.tracks))
        return moving or frame.restarted

    def process(self, batch: list[Frame]) -> BatchResult:
        """Detect, track and evaluate rules on ``batch``, then score the tracks that are due."""
        detections = self.detector.detect_batch([frame.image for frame in batch])
        result = BatchResult(events=[], tracked=[], detector_ms=getattr(self.detector, "last_timing_ms", 0.0))
        # Tracks due a score, keyed by camera and track id. A track seen on several
        # frames of the batch keeps the timestamp of the latest one.
        due: dict[tuple[str, int], tuple[Track, float]] = {}
        for frame, found in zip(batch, detections, strict=True):
            pipeline = self.cameras[frame.camera]
            # Here, in frame order, so that an older frame of the same batch cannot follow the reset.
            if frame.restarted:
                result.events.extend((event, frame) for event in self._restart(frame))
            tracked = pipeline.tracker.update(frame, found)
            result.tracked.append((frame, tracked))
            live = pipeline.tracker.live_tracks()
            if pipeline.cues is not None:
                pipeline.cues.observe(frame, tracked, pipeline.gate.mask_for(frame.seq), tracked.features)
                pipeline.cues.retain(track.track_id for track in live)
                for track in live:
                    if track.last_seen == frame.timestamp and self._due(track, frame.timestamp):
                        due[(frame.camera, track.track_id)] = (track, frame.timestamp)
            result.events.extend((event, frame) for event in pipeline.rules.evaluate(frame, live))
        if due and self.scorer is not None:
            self._score(self.scorer, due, result)
        return result

    def _due(self, track: Track, now: float) -> bool:
        return track.scored_at is None or now - track.scored_at >= self.config.fusion.score_interval_s

    def _score(
        self,
        scorer: FusionScorer,
        due: dict[tuple[str, int], tuple[Track, float]],
        result: BatchResult,
    ) -> None:
        """Score the windows of the due tracks in one call and store the scores on the tracks."""
        tracks: list[tuple[Track, float]] = []
        windows: list[TrackWindow] = []
        for (camera, track_id), (track, now) in due.items():
            cues = self.cameras[camera].cues
            window = cues.window(track_id, track.first_seen) if cues is not None else None
            if window is not None:
                tracks.append((track, now))
                windows.append(window)
        scores = scorer.score(windows)
        for (track, now), window, track_scores in zip(tracks, windows, scores, strict=True):
            track.scores = track_scores
            track.scored_at = now
            if self.on_scored is not None:
                self.on_scored(window, track_scores)
        result.fusion_ms = scorer.last_timing_ms
        result.scored = len(windows)
