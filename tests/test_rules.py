"""Rules and the event lifecycle, driven by hand-made tracks with known positions and times."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from pipeline.config import parse_config
from pipeline.records import Event, Frame
from pipeline.rules import RuleEngine
from pipeline.tracking import Track, TrackPoint

# 2026-12-02 12:00 UTC, a Wednesday.
WALL_START = 1_796_212_800.0
IMAGE = np.zeros((10, 10, 3), dtype=np.uint8)
ZONE = [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]]


def engine_for(
    rules: dict[str, Any], zones: dict[str, Any] | None = None, lines: dict[str, Any] | None = None
) -> RuleEngine:
    camera = {
        "url": "file.mp4",
        "zones": zones if zones is not None else {"dock": {"polygon": ZONE}},
        "lines": lines or {},
        "rules": rules,
    }
    config = parse_config({"cameras": {"gate": camera}}, env={})
    return RuleEngine("gate", config.cameras["gate"])


class Scene:
    """Moves tracks frame by frame and collects the events the engine returns."""

    def __init__(self, engine: RuleEngine, history: int = 64) -> None:
        self.engine = engine
        self.tracks: dict[int, Track] = {}
        self.history = history
        self.events: list[Event] = []
        self.seq = 0

    def step(
        self, t: float, positions: dict[int, tuple[float, float]], class_name: str = "person"
    ) -> list[Event]:
        """Place each track at its (x, y) at stream time ``t``; tracks not listed are gone."""
        self.seq += 1
        for track_id, (x, y) in positions.items():
            point = TrackPoint(t, x, y, (x * 100 - 5, y * 100 - 20, x * 100 + 5, y * 100), class_name, 0.9)
            track = self.tracks.setdefault(
                track_id, Track(track_id, t, collections.deque(maxlen=self.history))
            )
            track.history.append(point)
        for track_id in [tid for tid in self.tracks if tid not in positions]:
            del self.tracks[track_id]
        frame = Frame("gate", self.seq, t, WALL_START + t, IMAGE)
        events = self.engine.evaluate(frame, list(self.tracks.values()))
        self.events.extend(events)
        return events

    def states(self) -> list[tuple[str, str]]:
        return [(event.rule, event.state) for event in self.events]


INSIDE = (0.5, 0.5)
OUTSIDE = (0.1, 0.1)


def test_intrusion_is_one_alert_per_visit() -> None:
    scene = Scene(
        engine_for({"dock-intrusion": {"type": "zone_intrusion", "zone": "dock", "exit_grace_s": 1.0}})
    )
    scene.step(0.0, {1: OUTSIDE})
    for i in range(1, 40):
        scene.step(i * 0.1, {1: INSIDE})
    assert scene.states() == [("dock-intrusion", "started")]
    started = scene.events[0]
    assert started.track_ids == (1,)
    assert started.zone == "dock"
    assert started.rule_type == "zone_intrusion"

    scene.step(4.0, {1: OUTSIDE})
    scene.step(4.5, {1: OUTSIDE})
    assert scene.states() == [("dock-intrusion", "started")], "ended before the exit grace passed"
    scene.step(5.2, {1: OUTSIDE})
    assert scene.states() == [("dock-intrusion", "started"), ("dock-intrusion", "ended")]
    ended = scene.events[1]
    assert ended.id == started.id
    assert ended.ended_at == WALL_START + 5.2


def test_end_all_closes_every_active_event() -> None:
    rules = {
        "dock-intrusion": {"type": "zone_intrusion", "zone": "dock"},
        "linger": {"type": "loitering", "zone": "dock", "dwell_s": 1},
    }
    scene = Scene(engine_for(rules))
    for i in range(15):
        scene.step(i * 0.1, {1: INSIDE, 2: INSIDE})
    assert sorted(scene.states()) == [("dock-intrusion", "started")] * 2 + [("linger", "started")] * 2
    ended = scene.engine.end_all(WALL_START + 99.0)
    assert (
        sorted((event.rule, event.state) for event in ended)
        == [("dock-intrusion", "ended")] * 2 + [("linger", "ended")] * 2
    )
    assert {event.id for event in ended} == {event.id for event in scene.events}
    assert all(event.ended_at == WALL_START + 99.0 for event in ended)
    assert scene.engine.active_events() == 0


def test_intrusion_cooldown_then_new_alert() -> None:
    rules = {
        "dock-intrusion": {"type": "zone_intrusion", "zone": "dock", "exit_grace_s": 0.0, "cooldown_s": 10}
    }
    scene = Scene(engine_for(rules))
    scene.step(0.0, {1: INSIDE})
    scene.step(1.0, {1: OUTSIDE})
    scene.step(2.0, {1: INSIDE})  # back within the cooldown: quiet
    scene.step(3.0, {1: OUTSIDE})
    assert scene.states() == [("dock-intrusion", "started"), ("dock-intrusion", "ended")]
    scene.step(12.0, {1: INSIDE})  # after the cooldown: a new event
    assert scene.states()[-1] == ("dock-intrusion", "started")
    assert scene.events[-1].id != scene.events[0].id


def test_intrusion_other_track_is_not_in_cooldown() -> None:
    scene = Scene(
        engine_for({"dock-intrusion": {"type": "zone_intrusion", "zone": "dock", "exit_grace_s": 0.0}})
    )
    scene.step(0.0, {1: INSIDE})
    scene.step(1.0, {1: OUTSIDE})
    scene.step(2.0, {1: OUTSIDE, 2: INSIDE})
    started = [event for event in scene.events if event.state == "started"]
    assert [event.track_ids for event in started] == [(1,), (2,)]


def test_intrusion_ends_when_track_is_lost() -> None:
    scene = Scene(
        engine_for({"dock-intrusion": {"type": "zone_intrusion", "zone": "dock", "exit_grace_s": 5.0}})
    )
    scene.step(0.0, {1: INSIDE})
    scene.step(0.1, {})
    assert scene.states() == [("dock-intrusion", "started"), ("dock-intrusion", "ended")]


def test_intrusion_respects_classes() -> None:
    rules = {"dock-intrusion": {"type": "zone_intrusion", "zone": "dock", "classes": ["person"]}}
    scene = Scene(engine_for(rules))
    scene.step(0.0, {1: INSIDE}, class_name="car")
    assert scene.events == []
    scene.step(0.1, {2: INSIDE}, class_name="person")
    assert scene.states() == [("dock-intrusion", "started")]


def test_intrusion_outside_schedule_is_quiet() -> None:
    # WALL_START is a Wednesday at 12:00 UTC; a Saturday-only rule stays quiet in any time zone.
    rules = {"night": {"type": "zone_intrusion", "zone": "dock", "schedule": {"days": ["sat"]}}}
    scene = Scene(engine_for(rules))
    scene.step(0.0, {1: INSIDE})
    scene.step(0.1, {1: INSIDE})
    assert scene.events == []


def test_loitering_needs_dwell() -> None:
    scene = Scene(engine_for({"linger": {"type": "loitering", "zone": "dock", "dwell_s": 5}}))
    for i in range(0, 49):
        scene.step(i * 0.1, {1: INSIDE})
    assert scene.events == [], "fired before 5 s of dwell"
    scene.step(5.0, {1: INSIDE})
    assert scene.states() == [("linger", "started")]
    assert scene.events[0].details["dwell_s"] == 5.0
    for i in range(51, 80):
        scene.step(i * 0.1, {1: INSIDE})
    assert len(scene.events) == 1


def test_loitering_resets_after_leaving() -> None:
    scene = Scene(
        engine_for({"linger": {"type": "loitering", "zone": "dock", "dwell_s": 3, "exit_grace_s": 0.5}})
    )
    scene.step(0.0, {1: INSIDE})
    scene.step(2.0, {1: INSIDE})
    scene.step(2.1, {1: OUTSIDE})
    scene.step(4.0, {1: INSIDE})  # back after more than the grace: the clock restarts
    scene.step(6.0, {1: INSIDE})
    assert scene.events == []
    scene.step(7.1, {1: INSIDE})
    assert scene.states() == [("linger", "started")]


LINE = {"door": {"points": [[0.5, 0.0], [0.5, 1.0]]}}  # vertical, pointing down the image


def crossing_scene(direction: str) -> Scene:
    rules = {
        "door-crossing": {"type": "line_crossing", "line": "door", "direction": direction, "cooldown_s": 5}
    }
    return Scene(engine_for(rules, zones={}, lines=LINE))


def test_line_crossing_both_directions() -> None:
    scene = crossing_scene("both")
    scene.step(0.0, {1: (0.3, 0.5)})
    scene.step(0.1, {1: (0.7, 0.5)})
    scene.step(0.2, {2: (0.7, 0.5)})
    scene.step(0.3, {2: (0.3, 0.5)})
    directions = [event.details["direction"] for event in scene.events]
    # Facing down the image from the first point, the image's right-hand side (x > 0.5) is on the left.
    assert directions == ["right_to_left", "left_to_right"]
    assert all(event.ended_at == event.started_at for event in scene.events), (
        "a crossing is a momentary event"
    )


def test_line_crossing_direction_filter() -> None:
    scene = crossing_scene("left_to_right")
    scene.step(0.0, {1: (0.3, 0.5)})
    scene.step(0.1, {1: (0.7, 0.5)})  # right_to_left: ignored
    scene.step(0.2, {1: (0.3, 0.5)})  # left_to_right: alert
    assert [(event.track_ids, event.details["direction"]) for event in scene.events] == [
        ((1,), "left_to_right")
    ]


def test_line_crossing_cooldown() -> None:
    scene = crossing_scene("both")
    for i, x in enumerate([0.3, 0.7, 0.3, 0.7]):
        scene.step(i * 0.5, {1: (x, 0.5)})
    assert len(scene.events) == 1
    scene.step(6.0, {1: (0.3, 0.5)})
    assert len(scene.events) == 2


def test_line_crossing_through_a_point_on_the_line() -> None:
    # Steps onto the line and off it again: one crossing each way, not zero and not two.
    scene = crossing_scene("both")
    for step, x in enumerate([0.3, 0.5, 0.7, 0.5, 0.3]):
        scene.step(step * 10.0, {1: (x, 0.5)})
    directions = [event.details["direction"] for event in scene.events]
    assert directions == ["right_to_left", "left_to_right"]


def test_line_crossing_outside_segment_is_ignored() -> None:
    rules = {"short": {"type": "line_crossing", "line": "door"}}
    scene = Scene(engine_for(rules, zones={}, lines={"door": {"points": [[0.5, 0.0], [0.5, 0.3]]}}))
    scene.step(0.0, {1: (0.3, 0.8)})
    scene.step(0.1, {1: (0.7, 0.8)})
    assert scene.events == []


def test_crowding_lifecycle() -> None:
    rules = {"crowd": {"type": "crowding", "zone": "dock", "min_count": 3, "min_duration_s": 1.0}}
    scene = Scene(engine_for(rules))
    three = {1: (0.45, 0.5), 2: (0.5, 0.5), 3: (0.55, 0.5)}
    scene.step(0.0, three)
    scene.step(0.5, three)
    assert scene.events == []
    scene.step(1.0, three)
    assert scene.states() == [("crowd", "started")]
    assert scene.events[0].details["count"] == 3
    scene.step(1.5, {**three, 4: (0.5, 0.45)})
    assert scene.states()[-1] == ("crowd", "updated")
    assert scene.events[-1].details["count"] == 4
    assert scene.events[-1].id == scene.events[0].id
    scene.step(2.0, {1: (0.45, 0.5)})
    scene.step(4.5, {1: (0.45, 0.5)})
    assert scene.states()[-1] == ("crowd", "ended")


def test_crowding_counts_only_zone_members() -> None:
    rules = {"crowd": {"type": "crowding", "zone": "dock", "min_count": 2, "min_duration_s": 0}}
    scene = Scene(engine_for(rules))
    scene.step(0.0, {1: INSIDE, 2: OUTSIDE, 3: (0.9, 0.9)})
    assert scene.events == []


def test_fall_needs_consecutive_frames() -> None:
    scene = Scene(engine_for({"fall": {"type": "fall", "source": "detector", "min_frames": 3}}, zones={}))
    scene.step(0.0, {1: INSIDE}, class_name="Fall")
    scene.step(0.1, {1: INSIDE}, class_name="Fall")
    scene.step(0.2, {1: INSIDE}, class_name="Normal")
    scene.step(0.3, {1: INSIDE}, class_name="Fall")
    scene.step(0.4, {1: INSIDE}, class_name="Fall")
    assert scene.events == []
    scene.step(0.5, {1: INSIDE}, class_name="Fall")
    assert scene.states() == [("fall", "started")]
    event = scene.events[0]
    assert event.label == "fall"
    assert event.details["frames"] == 3
    scene.step(0.6, {1: INSIDE}, class_name="Normal")
    scene.step(4.0, {1: INSIDE}, class_name="Normal")
    assert scene.states() == [("fall", "started"), ("fall", "ended")]


def test_engine_state_is_bounded() -> None:
    """Thousands of passers-by leave no growing state behind once they are gone and cooled down."""
    rules = {
        "dock-intrusion": {"type": "zone_intrusion", "zone": "dock", "exit_grace_s": 0, "cooldown_s": 1},
        "linger": {"type": "loitering", "zone": "dock", "dwell_s": 100},
    }
    engine = engine_for(rules)
    scene = Scene(engine)
    for visitor in range(2000):
        t = visitor * 2.0
        scene.step(t, {visitor: INSIDE})
        scene.step(t + 1.0, {})
    intrusion, loitering = engine.rules
    assert len(intrusion.lifecycle.active) == 0
    assert len(intrusion.lifecycle._quiet_until) <= 2
    assert len(loitering._inside_since) == 0
    assert len(scene.events) == 4000
