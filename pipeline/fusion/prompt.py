"""Track windows rendered as short English text for the fusion model's encoder.

The sentence carries the context (camera, zone, time of day) and the image cues
in words: the posture read from the box's shape, how it changed, and how fast the
person moves. A language model can compare that sentence with a label such as
"a person falls down and lies on the floor" before any training, which is what
makes a new label usable from its description alone. The thresholds below are in
the units of ``pipeline.fusion.features.cue_vector``.
"""

from __future__ import annotations

from pipeline.fusion.features import TrackWindow

# Box width over height.
LYING_ASPECT = 1.15
LOW_ASPECT = 0.8
# Box heights per second.
SUDDEN_DROP_RATE = 0.6
RUNNING_SPEED = 1.5
WALKING_SPEED = 0.35
# Change of width over height within the window.
TOPPLE_CHANGE = 0.45
# Last box height as a fraction of the tallest in the window, below which a quick
# drop without toppling reads as sitting or crouching.
CROUCH_HEIGHT_RATIO = 0.75


def time_of_day(hour: float) -> str:
    """Return the part of the day for a local ``hour`` in [0, 24), as a phrase."""
    if 6 <= hour < 12:
        return "in the morning"
    if 12 <= hour < 18:
        return "in the afternoon"
    if 18 <= hour < 22:
        return "in the evening"
    return "at night"


def _posture(cues: dict[str, float]) -> str:
    aspect = cues["aspect_last"]
    if aspect >= LYING_ASPECT:
        return "lies on the floor"
    if aspect >= LOW_ASPECT:
        return "is low, crouching or sitting"
    return "is upright"


def _change(cues: dict[str, float]) -> str | None:
    toppled = cues["aspect_change"] >= TOPPLE_CHANGE and cues["aspect_last"] >= LOW_ASPECT
    dropped = cues["height_drop_rate"] >= SUDDEN_DROP_RATE or cues["centre_drop_rate_max"] >= SUDDEN_DROP_RATE
    if toppled and dropped:
        return "suddenly falls down"
    if dropped and cues["height_ratio"] < CROUCH_HEIGHT_RATIO:
        return "sits or crouches down quickly"
    if toppled:
        return "tips over sideways"
    return None


def _movement(cues: dict[str, float]) -> str:
    speed = cues["speed"]
    if speed >= RUNNING_SPEED:
        return "runs"
    if speed >= WALKING_SPEED:
        return "walks"
    return "stays still"


def _dwell(seconds: float) -> str | None:
    if seconds < 60:
        return None
    minutes = seconds / 60
    if minutes < 60:
        return f"has been here for {minutes:.0f} minutes"
    return f"has been here for {minutes / 60:.1f} hours"


def track_prompt(window: TrackWindow, cues: dict[str, float]) -> str:
    """Return the sentence the encoder reads for ``window``; ``cues`` is ``cue_dict(window)``."""
    where = f"camera {window.camera}"
    if window.zones:
        where += ", zone " + ", ".join(window.zones)
    actions: list[str] = []
    change = _change(cues)
    if change:
        actions.append(change)
    actions.append(_posture(cues))
    actions.append(_movement(cues))
    dwell = _dwell(window.dwell_s)
    if dwell:
        actions.append(dwell)
    return f"{where}, {time_of_day(window.local_hour())}: a person " + ", ".join(actions) + "."
