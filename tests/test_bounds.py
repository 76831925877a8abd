"""Long runs on hand-made inputs: per-camera state stays bounded as objects come and go."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.config import CameraConfig, MotionConfig, TrackingConfig
from pipeline.fusion.features import CueExtractor
from pipeline.motion import MASKS_KEPT, MotionGate
from pipeline.records import Detections, Frame
from pipeline.rules import LabelScore, Loitering, RuleEngine
from pipeline.streams.slot import FrameSlot, Overflow
from pipeline.tracking import CameraTracker, Track, TrackPoint

HEIGHT, WIDTH = 240, 320
IMAGE = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
EPOCH = 1_767_225_600.0  # Wall-clock time of stream time 0: 2026-01-01 00:00 UTC.


def frame_at(seq: int, timestamp: float, image: np.ndarray = IMAGE) -> Frame:
    return Frame(camera="lobby", seq=seq, timestamp=timestamp, captured_at=EPOCH + timestamp, image=image)


def boxes_of(corners: list[tuple[float, float]], size: tuple[float, float] = (16.0, 32.0)) -> Detections:
    """Return person detections whose boxes have their top-left corner at each of ``corners``, in pixels."""
    width, height = size
    xyxy = [(x, y, x + width, y + height) for x, y in corners]
    return Detections.from_arrays(
        xyxy=np.array(xyxy, dtype=np.float32).reshape(-1, 4),
        confidence=np.full(len(corners), 0.9),
        class_id=np.zeros(len(corners)),
        names=["person"],
    )


# --- CameraTracker ---


def test_tracker_history_capped() -> None:
    config = TrackingConfig(history=8)
    tracker = CameraTracker("lobby", config, frame_rate=10.0)
    for seq in range(500):
        tracker.update(frame_at(seq, seq / 10), boxes_of([(100.0 + (seq % 50) * 0.2, 100.0)]))
    tracks = tracker.live_tracks()
    assert len(tracks) == 1
    assert len(tracks[0].history) == config.history


def walkers(
    frames: int, spawn_per_frame: int, life: int, seed: int = 7
) -> Iterator[list[tuple[float, float]]]:
    """Yield, per frame, the corners of people who each stay ``life`` frames and drift right slowly."""
    rng = np.random.default_rng(seed)
    alive: list[tuple[int, float, float]] = []
    for seq in range(frames):
        alive = [(born, x, y) for born, x, y in alive if seq - born < life]
        for _ in range(spawn_per_frame):
            alive.append((seq, float(rng.uniform(0, WIDTH - 40)), float(rng.uniform(0, HEIGHT - 40))))
        yield [(x + (seq - born) * 1.0, y) for born, x, y in alive]


def test_tracker_many_objects_bounded() -> None:
    config = TrackingConfig(history=6, max_tracks=10, track_buffer_s=1.0)
    tracker = CameraTracker("lobby", config, frame_rate=10.0)
    spawn, life = 3, 6
    track_ids: set[int] = set()
    max_live = max_history = max_aliases = max_lost = max_removed = 0

    for seq, corners in enumerate(walkers(frames=3000, spawn_per_frame=spawn, life=life)):
        tracked = tracker.update(frame_at(seq, seq / 10), boxes_of(corners, size=(12.0, 24.0)))
        assert tracked.track_id is not None
        track_ids.update(tracked.track_id.tolist())
        live = tracker.live_tracks()
        max_live = max(max_live, len(live))
        max_history = max(max_history, max((len(track.history) for track in live), default=0))
        max_aliases = max(max_aliases, len(tracker._aliases))
        max_lost = max(max_lost, len(tracker._tracker.lost_stracks))
        max_removed = max(max_removed, len(tracker._tracker.removed_stracks))

    # Thousands of people came and went; the test means nothing unless many tracks existed.
    assert len(track_ids) > 50 * config.max_tracks
    assert max_live <= config.max_tracks
    assert max_history <= config.history
    # Each ByteTrack id is remembered for track_buffer_s (10 frames here) after its last use.
    assert max_aliases <= spawn * life * 11
    # ByteTrack drops a lost track after track_buffer frames (10 here). The factor 2 is slack.
    assert max_lost <= spawn * 11 * 2
    # Ultralytics 8.4 trims its list of removed tracks to the last 1000.
    assert max_removed <= 1000


def test_tracker_evicts_dead_tracks() -> None:
    config = TrackingConfig(track_buffer_s=1.0)
    tracker = CameraTracker("lobby", config, frame_rate=4.0)
    for seq in range(10):
        tracker.update(frame_at(seq, seq * 0.25), boxes_of([(100.0 + seq, 100.0)]))
    last_seen = 9 * 0.25
    assert len(tracker.live_tracks()) == 1

    tracker.update(frame_at(10, last_seen + 1.0), Detections.empty())
    assert len(tracker.live_tracks()) == 1

    tracker.update(frame_at(11, last_seen + 1.25), Detections.empty())
    assert tracker.live_tracks() == []
    assert tracker._aliases == {}


# --- RuleEngine and EventLifecycle ---

LOBBY_RULES = CameraConfig.model_validate(
    {
        "url": "rtsp://127.0.0.1:8554/lobby",
        "zones": {"floor": {"polygon": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]}},
        "lines": {"middle": {"points": [[0.5, 0.0], [0.5, 1.0]]}},
        "rules": {
            "intrusion": {"type": "zone_intrusion", "zone": "floor", "cooldown_s": 2, "exit_grace_s": 0.2},
            "loitering": {"type": "loitering", "zone": "floor", "dwell_s": 0.3, "cooldown_s": 2},
            "crossing": {"type": "line_crossing", "line": "middle", "cooldown_s": 2},
            "crowd": {"type": "crowding", "min_count": 2, "min_duration_s": 0.2, "cooldown_s": 2},
            "fall-detector": {"type": "fall", "source": "detector", "min_frames": 2, "cooldown_s": 2},
            "fall-fusion": {"type": "fall", "hold_s": 0.2, "cooldown_s": 2},
            "fight": {"type": "label", "label": "fight", "zone": "floor", "hold_s": 0.2, "cooldown_s": 2},
        },
    }
)


def rule_state_sizes(engine: RuleEngine) -> dict[str, int]:
    """Return the size of every per-key dict the rules keep, by rule and dict name."""
    sizes = {}
    for rule in engine.rules:
        sizes[f"{rule.name}.active"] = len(rule.lifecycle.active)
        sizes[f"{rule.name}.quiet_until"] = len(rule.lifecycle._quiet_until)
        if isinstance(rule, Loitering):
            sizes[f"{rule.name}.inside_since"] = len(rule._inside_since)
            sizes[f"{rule.name}.outside_since"] = len(rule._outside_since)
        if isinstance(rule, LabelScore):
            sizes[f"{rule.name}.high_since"] = len(rule._high_since)
    return sizes


def step_person(track: Track, age: int, timestamp: float) -> None:
    """Move a person right across the middle line; odd ids leave the floor zone for their last frames."""
    x = 0.31 + 0.04 * age
    y = 0.3 if track.track_id % 2 and age >= 7 else 0.8
    box = (x * WIDTH - 8, y * HEIGHT - 32, x * WIDTH + 8, y * HEIGHT)
    point = TrackPoint(timestamp=timestamp, x=x, y=y, box=box, class_name="Fall", confidence=0.9)
    track.history.append(point)
    track.scores = {"fall": 0.9, "fight": 0.9}
    track.scored_at = timestamp


def test_rule_state_bounded() -> None:
    engine = RuleEngine("lobby", LOBBY_RULES)
    life, step_s, frames = 10, 0.1, 3000
    live: dict[int, tuple[Track, int]] = {}
    started: collections.Counter[str] = collections.Counter()
    max_sizes: collections.Counter[str] = collections.Counter()

    for seq in range(frames):
        now = seq * step_s
        live = {tid: (track, born) for tid, (track, born) in live.items() if seq - born < life}
        live[seq] = (Track(seq, now, collections.deque(maxlen=16)), seq)
        for track, born in live.values():
            step_person(track, seq - born, now)
        events = engine.evaluate(frame_at(seq, now), [track for track, _ in live.values()])
        started.update(event.rule for event in events if event.state == "started")
        for name, size in rule_state_sizes(engine).items():
            max_sizes[name] = max(max_sizes[name], size)

    # Every per-track rule fired over and over, so its state was exercised. The crowd
    # never thins out, so crowding keeps one event open for the whole run.
    for name in LOBBY_RULES.rules:
        minimum = 1 if name == "crowd" else 100
        assert started[name] >= minimum, f"{name} started only {started[name]} events"
    # At most `life` people are live at once, and a cooldown of 2 s covers 20 frames of departures.
    for name, size in max_sizes.items():
        limit = 1 if name.startswith("crowd.") else 2 / step_s + life
        assert size <= limit, f"{name} grew to {size}"

    end = frames * step_s
    # Long enough for the crowding grace (2 s) and every cooldown (2 s) to run out.
    for seq in range(frames, frames + 60):
        engine.evaluate(frame_at(seq, end + (seq - frames) * step_s), [])
    assert engine.active_events() == 0
    for name, size in rule_state_sizes(engine).items():
        assert size == 0, f"{name} still holds {size} entries"


# --- CueExtractor ---


def test_cue_extractor_caps_observations() -> None:
    cues = CueExtractor("lobby", window_s=60.0, max_observations=8)
    for seq in range(300):
        tracked = boxes_of([(50.0 + seq % 20, 60.0), (200.0, 100.0 + seq % 10)])
        tracked = Detections.from_arrays(
            tracked.xyxy, tracked.confidence, tracked.class_id, ["person"], track_id=[1, 2]
        )
        cues.observe(frame_at(seq, seq / 10), tracked)
    for track_id in (1, 2):
        window = cues.window(track_id, first_seen=0.0)
        assert window is not None
        assert len(window.observations) == 8
        assert len(cues._observations[track_id]) == 8


def test_cue_extractor_retain_forgets() -> None:
    cues = CueExtractor("lobby", window_s=2.0, max_observations=8)
    life, max_kept = 5, 0
    for seq, corners in enumerate(walkers(frames=1000, spawn_per_frame=1, life=life)):
        track_ids = list(range(seq - len(corners) + 1, seq + 1))
        tracked = boxes_of(corners)
        tracked = Detections.from_arrays(
            tracked.xyxy, tracked.confidence, tracked.class_id, ["person"], track_id=track_ids
        )
        cues.observe(frame_at(seq, seq / 10), tracked)
        cues.retain(track_ids)
        max_kept = max(max_kept, len(cues), len(cues._flow_peak))
    assert max_kept <= life
    cues.retain([])
    assert len(cues) == 0
    assert cues._flow_peak == {}


# --- MotionGate ---


@pytest.mark.parametrize("enabled", [True, False], ids=["gate on", "gate off"])
def test_motion_gate_keeps_few_masks(enabled: bool) -> None:
    gate = MotionGate(MotionConfig(enabled=enabled, width=32), keep_masks=True)
    rng = np.random.default_rng(3)
    frames = 4 * MASKS_KEPT
    for seq in range(frames):
        image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        gate.should_detect(frame_at(seq, seq / 10, image))
        assert len(gate._masks) <= MASKS_KEPT
    assert gate.mask_for(frames - 1) is not None
    assert gate.mask_for(frames - MASKS_KEPT) is not None
    assert gate.mask_for(frames - MASKS_KEPT - 1) is None


# --- FrameSlot ---


def test_frame_slot_drops_oldest() -> None:
    slot = FrameSlot(capacity=3, overflow=Overflow.DROP_OLDEST)
    for seq in range(1000):
        slot.put(frame_at(seq, seq / 10))
        assert len(slot) <= 3
    assert slot.dropped == 997
    taken_frames = [slot.take() for _ in range(4)]
    assert [frame.seq for frame in taken_frames if frame is not None] == [997, 998, 999]
    assert taken_frames[3] is None


def test_frame_slot_wait_stays_full() -> None:
    slot = FrameSlot(capacity=2, overflow=Overflow.WAIT)
    stored = [slot.put(frame_at(seq, seq / 10), timeout=0.0) for seq in range(50)]
    assert stored[:2] == [True, True]
    assert not any(stored[2:])
    assert len(slot) == 2
    assert slot.dropped == 0
