"""Anomaly rules and the event lifecycle.

Each rule watches one camera's tracks and returns ``Event`` records. An event is
``started`` once, may be ``updated`` while its condition holds and something
about it changes, and is ``ended`` when the condition has been false for the
rule's grace period or its track is gone. After an event ends, the same rule and
key (a track, or a zone for crowding) stay quiet for ``cooldown_s``, so a person
walking through a zone is one alert and not one per frame.

Durations (dwell, grace, cooldown) are measured in stream time, so a file read
faster than real time behaves like the camera it stands for. Event times and
schedules use the wall clock of capture.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Hashable, Iterable

from pipeline.config import (
    CameraConfig,
    CrowdingRule,
    FallRule,
    LabelRule,
    LineCrossingRule,
    LoiteringRule,
    RuleBase,
    ZoneIntrusionRule,
)
from pipeline.geometry import point_in_polygon, segments_intersect, side_of_line
from pipeline.records import Event, Frame, new_event_id
from pipeline.tracking import Track


@dataclasses.dataclass(slots=True)
class _ActiveEvent:
    event: Event
    last_true: float


class EventLifecycle:
    """Active events of one rule on one camera, keyed by track id or zone, with cooldown."""

    def __init__(self, camera: str, name: str, rule_type: str, rule: RuleBase) -> None:
        self.camera = camera
        self.name = name
        self.rule_type = rule_type
        self.rule = rule
        self.active: dict[Hashable, _ActiveEvent] = {}
        self._quiet_until: dict[Hashable, float] = {}

    def is_active(self, key: Hashable) -> bool:
        return key in self.active

    def in_cooldown(self, key: Hashable, now: float) -> bool:
        until = self._quiet_until.get(key)
        return until is not None and now < until

    def start(self, key: Hashable, frame: Frame, **fields: object) -> Event | None:
        """Start an event for ``key`` unless one is active or the key is cooling down."""
        if key in self.active or self.in_cooldown(key, frame.timestamp):
            return None
        event = Event(
            id=new_event_id(),
            camera=self.camera,
            rule=self.name,
            rule_type=self.rule_type,
            severity=self.rule.severity,
            state="started",
            started_at=frame.captured_at,
            ended_at=None,
            **fields,  # type: ignore[arg-type]
        )
        self.active[key] = _ActiveEvent(event, frame.timestamp)
        return event

    def fire_once(self, key: Hashable, frame: Frame, **fields: object) -> Event | None:
        """Publish a momentary event (a line crossing): one message, ``ended_at`` already set."""
        if self.in_cooldown(key, frame.timestamp):
            return None
        self._quiet_until[key] = frame.timestamp + self.rule.cooldown_s
        return Event(
            id=new_event_id(),
            camera=self.camera,
            rule=self.name,
            rule_type=self.rule_type,
            severity=self.rule.severity,
            state="started",
            started_at=frame.captured_at,
            ended_at=frame.captured_at,
            **fields,  # type: ignore[arg-type]
        )

    def touch(self, key: Hashable, now: float) -> None:
        """Record that the condition of ``key``'s event still holds."""
        self.active[key].last_true = now

    def update(self, key: Hashable, **changes: object) -> Event:
        entry = self.active[key]
        entry.event = entry.event.with_updates(state="updated", **changes)
        return entry.event

    def end(self, key: Hashable, frame: Frame) -> Event:
        entry = self.active.pop(key)
        self._quiet_until[key] = frame.timestamp + self.rule.cooldown_s
        return entry.event.with_updates(state="ended", ended_at=frame.captured_at)

    def end_all(self, ended_at: float) -> list[Event]:
        """End every active event at wall-clock time ``ended_at``, without a cooldown.

        For a stream that starts again and for a daemon that stops: the tracks of
        these events are gone, so their keys will not come back.
        """
        ended = [entry.event.with_updates(state="ended", ended_at=ended_at) for entry in self.active.values()]
        self.active.clear()
        return ended

    def end_expired(
        self, frame: Frame, grace_s: float, live_keys: Iterable[Hashable] | None = None
    ) -> list[Event]:
        """End events whose condition was last true more than ``grace_s`` ago, or whose track is gone."""
        live = None if live_keys is None else set(live_keys)
        ended = []
        for key, entry in list(self.active.items()):
            gone = live is not None and key not in live
            if gone or frame.timestamp - entry.last_true > grace_s:
                ended.append(self.end(key, frame))
        self.prune(frame.timestamp)
        return ended

    def prune(self, now: float) -> None:
        for key in [key for key, until in self._quiet_until.items() if until <= now]:
            del self._quiet_until[key]


def _class_allowed(rule: RuleBase, class_name: str) -> bool:
    return rule.classes is None or class_name in rule.classes


def _armed(rule: RuleBase, frame: Frame) -> bool:
    return rule.schedule is None or rule.schedule.is_active(dt.datetime.fromtimestamp(frame.captured_at))


def _track_fields(track: Track, zone: str | None) -> dict[str, object]:
    point = track.last
    return {
        "label": point.class_name,
        "track_ids": (track.track_id,),
        "zone": zone,
        "scores": {"confidence": round(point.confidence, 4)},
        "box": point.box,
    }


class Rule:
    """Base of the rule evaluators; ``evaluate`` gets the tracks seen in ``frame`` and all live tracks."""

    def __init__(self, camera: str, name: str, rule: RuleBase, rule_type: str) -> None:
        self.name = name
        self.config = rule
        self.lifecycle = EventLifecycle(camera, name, rule_type, rule)

    def evaluate(self, frame: Frame, seen: list[Track], live: list[Track]) -> list[Event]:
        raise NotImplementedError


class ZoneIntrusion(Rule):
    def __init__(
        self, camera: str, name: str, rule: ZoneIntrusionRule, polygon: list[tuple[float, float]]
    ) -> None:
        super().__init__(camera, name, rule, "zone_intrusion")
        self.rule = rule
        self.polygon = polygon

    def evaluate(self, frame: Frame, seen: list[Track], live: list[Track]) -> list[Event]:
        events: list[Event] = []
        armed = _armed(self.rule, frame)
        for track in seen:
            point = track.last
            if not _class_allowed(self.rule, point.class_name):
                continue
            if not point_in_polygon((point.x, point.y), self.polygon):
                continue
            if self.lifecycle.is_active(track.track_id):
                self.lifecycle.touch(track.track_id, frame.timestamp)
            elif armed:
                event = self.lifecycle.start(track.track_id, frame, **_track_fields(track, self.rule.zone))
                if event is not None:
                    events.append(event)
        live_ids = [track.track_id for track in live]
        events.extend(self.lifecycle.end_expired(frame, self.rule.exit_grace_s, live_ids))
        return events


class Loitering(Rule):
    def __init__(
        self, camera: str, name: str, rule: LoiteringRule, polygon: list[tuple[float, float]]
    ) -> None:
        super().__init__(camera, name, rule, "loitering")
        self.rule = rule
        self.polygon = polygon
        self._inside_since: dict[int, float] = {}
        # When a track inside was first seen outside again; a short step out keeps its dwell.
        self._outside_since: dict[int, float] = {}

    def _dwell(self, track_id: int, inside: bool, now: float) -> float | None:
        """Update the track's dwell clock; return seconds in the zone, or None when outside."""
        if not inside:
            if track_id in self._inside_since:
                self._outside_since.setdefault(track_id, now)
            return None
        left_at = self._outside_since.pop(track_id, None)
        if track_id not in self._inside_since or (
            left_at is not None and now - left_at > self.rule.exit_grace_s
        ):
            self._inside_since[track_id] = now
        return now - self._inside_since[track_id]

    def evaluate(self, frame: Frame, seen: list[Track], live: list[Track]) -> list[Event]:
        events: list[Event] = []
        now = frame.timestamp
        armed = _armed(self.rule, frame)
        for track in seen:
            point = track.last
            tid = track.track_id
            inside = _class_allowed(self.rule, point.class_name) and point_in_polygon(
                (point.x, point.y), self.polygon
            )
            dwell = self._dwell(tid, inside, now)
            if dwell is None:
                continue
            if self.lifecycle.is_active(tid):
                self.lifecycle.touch(tid, now)
            elif armed and dwell >= self.rule.dwell_s:
                fields = _track_fields(track, self.rule.zone)
                fields["details"] = {"dwell_s": round(dwell, 1)}
                event = self.lifecycle.start(tid, frame, **fields)
                if event is not None:
                    events.append(event)
        live_ids = {track.track_id for track in live}
        for tid in [tid for tid in self._inside_since if tid not in live_ids]:
            del self._inside_since[tid]
            self._outside_since.pop(tid, None)
        events.extend(self.lifecycle.end_expired(frame, self.rule.exit_grace_s, live_ids))
        return events


class LineCrossing(Rule):
    def __init__(
        self,
        camera: str,
        name: str,
        rule: LineCrossingRule,
        points: tuple[tuple[float, float], tuple[float, float]],
    ) -> None:
        super().__init__(camera, name, rule, "line_crossing")
        self.rule = rule
        self.start, self.end = points

    def crossing_direction(self, before: tuple[float, float], after: tuple[float, float]) -> str | None:
        """Return ``left_to_right``, ``right_to_left`` or None when the step does not cross the line."""
        if not segments_intersect(before, after, self.start, self.end):
            return None
        return "left_to_right" if side_of_line(after, self.start, self.end) > 0 else "right_to_left"

    def evaluate(self, frame: Frame, seen: list[Track], live: list[Track]) -> list[Event]:
        events: list[Event] = []
        if not _armed(self.rule, frame):
            return events
        for track in seen:
            if len(track.history) < 2 or not _class_allowed(self.rule, track.last.class_name):
                continue
            before, after = track.history[-2], track.history[-1]
            direction = self.crossing_direction((before.x, before.y), (after.x, after.y))
            if direction is None or self.rule.direction not in ("both", direction):
                continue
            fields = _track_fields(track, None)
            fields["details"] = {"line": self.rule.line, "direction": direction}
            event = self.lifecycle.fire_once(track.track_id, frame, **fields)
            if event is not None:
                events.append(event)
        self.lifecycle.prune(frame.timestamp)
        return events


class Crowding(Rule):
    """Counts tracks in a zone (or the whole frame); one event per zone while the count stays high."""

    def __init__(
        self, camera: str, name: str, rule: CrowdingRule, polygon: list[tuple[float, float]] | None
    ) -> None:
        super().__init__(camera, name, rule, "crowding")
        self.rule = rule
        self.polygon = polygon
        self._above_since: float | None = None
        self.grace_s = 2.0

    def evaluate(self, frame: Frame, seen: list[Track], live: list[Track]) -> list[Event]:
        events: list[Event] = []
        now = frame.timestamp
        members = [
            track
            for track in seen
            if _class_allowed(self.rule, track.last.class_name)
            and (self.polygon is None or point_in_polygon((track.last.x, track.last.y), self.polygon))
        ]
        key = self.rule.zone or "*"
        count = len(members)
        track_ids = tuple(sorted(track.track_id for track in members))
        if count >= self.rule.min_count:
            if self._above_since is None:
                self._above_since = now
            if self.lifecycle.is_active(key):
                self.lifecycle.touch(key, now)
                current = self.lifecycle.active[key].event
                if current.details.get("count") != count:
                    events.append(self.lifecycle.update(key, track_ids=track_ids, details={"count": count}))
            elif now - self._above_since >= self.rule.min_duration_s and _armed(self.rule, frame):
                event = self.lifecycle.start(
                    key,
                    frame,
                    label=members[0].last.class_name,
                    track_ids=track_ids,
                    zone=self.rule.zone,
                    scores={"count": float(count)},
                    details={"count": count},
                )
                if event is not None:
                    events.append(event)
        else:
            self._above_since = None
        events.extend(self.lifecycle.end_expired(frame, self.grace_s))
        return events


class DetectorFall(Rule):
    """Provisional fall rule: the detector labelled the track with its fall class ``min_frames`` times in a row."""

    def __init__(
        self, camera: str, name: str, rule: FallRule, polygon: list[tuple[float, float]] | None
    ) -> None:
        super().__init__(camera, name, rule, "fall")
        self.rule = rule
        self.polygon = polygon

    def _fall_streak(self, track: Track) -> int:
        streak = 0
        for point in reversed(track.history):
            if point.class_name != self.rule.fall_class:
                break
            streak += 1
        return streak

    def evaluate(self, frame: Frame, seen: list[Track], live: list[Track]) -> list[Event]:
        events: list[Event] = []
        armed = _armed(self.rule, frame)
        for track in seen:
            point = track.last
            if self.polygon is not None and not point_in_polygon((point.x, point.y), self.polygon):
                continue
            streak = self._fall_streak(track)
            if streak == 0:
                continue
            if self.lifecycle.is_active(track.track_id):
                self.lifecycle.touch(track.track_id, frame.timestamp)
            elif armed and streak >= self.rule.min_frames:
                fields = _track_fields(track, self.rule.zone)
                fields["label"] = "fall"
                fields["details"] = {"frames": streak}
                event = self.lifecycle.start(track.track_id, frame, **fields)
                if event is not None:
                    events.append(event)
        live_ids = [track.track_id for track in live]
        events.extend(self.lifecycle.end_expired(frame, self.rule.exit_grace_s, live_ids))
        return events


class LabelScore(Rule):
    """A fusion label's score stays at or above the threshold for ``hold_s`` seconds.

    Scores are refreshed every ``fusion.score_interval_s``; between two scores a
    track keeps its last one. A track whose score falls below the threshold starts
    its hold again, and its event ends ``exit_grace_s`` after the score last held.
    """

    def __init__(
        self,
        camera: str,
        name: str,
        rule: LabelRule | FallRule,
        label: str,
        polygon: list[tuple[float, float]] | None,
    ) -> None:
        super().__init__(camera, name, rule, "fall" if isinstance(rule, FallRule) else "label")
        self.rule = rule
        self.label = label
        self.polygon = polygon
        self._high_since: dict[int, float] = {}

    def evaluate(self, frame: Frame, seen: list[Track], live: list[Track]) -> list[Event]:
        events: list[Event] = []
        now = frame.timestamp
        armed = _armed(self.rule, frame)
        for track in seen:
            point = track.last
            tid = track.track_id
            score = track.scores.get(self.label, 0.0)
            inside = self.polygon is None or point_in_polygon((point.x, point.y), self.polygon)
            if score < self.rule.threshold or not inside or not _class_allowed(self.rule, point.class_name):
                self._high_since.pop(tid, None)
                continue
            since = self._high_since.setdefault(tid, now)
            if self.lifecycle.is_active(tid):
                self.lifecycle.touch(tid, now)
            elif armed and now - since >= self.rule.hold_s:
                fields = _track_fields(track, self.rule.zone)
                fields["label"] = self.label
                fields["scores"] = {self.label: round(score, 4), "confidence": round(point.confidence, 4)}
                fields["details"] = {"held_s": round(now - since, 1)}
                event = self.lifecycle.start(tid, frame, **fields)
                if event is not None:
                    events.append(event)
        live_ids = {track.track_id for track in live}
        for tid in [tid for tid in self._high_since if tid not in live_ids]:
            del self._high_since[tid]
        events.extend(self.lifecycle.end_expired(frame, self.rule.exit_grace_s, live_ids))
        return events


def _build_rule(camera: str, name: str, rule: RuleBase, config: CameraConfig) -> Rule:
    def polygon_of(zone: str | None) -> list[tuple[float, float]] | None:
        return None if zone is None else [(x, y) for x, y in config.zones[zone].polygon]

    if isinstance(rule, ZoneIntrusionRule):
        return ZoneIntrusion(camera, name, rule, polygon_of(rule.zone) or [])
    if isinstance(rule, LoiteringRule):
        return Loitering(camera, name, rule, polygon_of(rule.zone) or [])
    if isinstance(rule, LineCrossingRule):
        return LineCrossing(camera, name, rule, config.lines[rule.line].points)
    if isinstance(rule, CrowdingRule):
        return Crowding(camera, name, rule, polygon_of(rule.zone))
    if isinstance(rule, FallRule) and rule.source == "detector":
        return DetectorFall(camera, name, rule, polygon_of(rule.zone))
    if isinstance(rule, FallRule):
        return LabelScore(camera, name, rule, "fall", polygon_of(rule.zone))
    if isinstance(rule, LabelRule):
        return LabelScore(camera, name, rule, rule.label, polygon_of(rule.zone))
    raise TypeError(f"no evaluator for rule type {type(rule).__name__}")


class RuleEngine:
    """All rules of one camera, evaluated on each detected frame."""

    def __init__(self, camera: str, config: CameraConfig) -> None:
        self.camera = camera
        self.rules = [_build_rule(camera, name, rule, config) for name, rule in config.rules.items()]

    def evaluate(self, frame: Frame, live: list[Track]) -> list[Event]:
        seen = [track for track in live if track.last_seen == frame.timestamp]
        events: list[Event] = []
        for rule in self.rules:
            events.extend(rule.evaluate(frame, seen, live))
        return events

    def active_events(self) -> int:
        return sum(len(rule.lifecycle.active) for rule in self.rules)

    def end_all(self, ended_at: float) -> list[Event]:
        """End the active events of every rule; see ``EventLifecycle.end_all``."""
        return [event for rule in self.rules for event in rule.lifecycle.end_all(ended_at)]
