"""Malformed configs: each is rejected with a problem that names the field and gives the reason."""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import check_rule_classes, load_config, parse_config
from pipeline.daemon import Daemon
from pipeline.errors import ConfigError

BASE: dict[str, Any] = {
    "cameras": {
        "lobby": {
            "url": "rtsp://127.0.0.1:8554/lobby",
            "fps": 10,
            "zones": {"entrance": {"polygon": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]}},
            "lines": {"doorway": {"points": [[0.5, 0.0], [0.5, 1.0]]}},
            "rules": {
                "intruder": {"type": "zone_intrusion", "zone": "entrance"},
                "passage": {"type": "line_crossing", "line": "doorway"},
            },
        }
    },
}

LOBBY = "cameras.lobby"
RULES = "cameras.lobby.rules"


def edited(*changes: tuple[str, Any]) -> dict[str, Any]:
    """Return a copy of BASE with each dotted path set to its value; the value ``...`` deletes the key."""
    document = copy.deepcopy(BASE)
    for path, value in changes:
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return document


def renamed_camera(new_id: str) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    document["cameras"][new_id] = document["cameras"].pop("lobby")
    return document


# Each case: id, a document (dict or list) or YAML text, the expected field path, words of the reason.
CASES: list[tuple[str, Any, str, list[str]]] = [
    ("unknown top-level key", edited(("logging", {"level": "debug"})), "logging", ["unknown key"]),
    ("unknown camera key", edited((f"{LOBBY}.resolution", "1080p")), f"{LOBBY}.resolution", ["unknown key"]),
    ("missing url", edited((f"{LOBBY}.url", ...)), f"{LOBBY}.url", ["required", "missing"]),
    ("empty url", edited((f"{LOBBY}.url", "")), f"{LOBBY}.url", ["must not be empty"]),
    (
        "url with broken host",
        edited((f"{LOBBY}.url", "rtsp://admin:hunter2pass@[127.0.0.1/s")),
        f"{LOBBY}.url",
        ["invalid URL", "IPv6"],
    ),
    ("url port out of range", edited((f"{LOBBY}.url", "rtsp://127.0.0.1:99999/s")), f"{LOBBY}.url", ["Port"]),
    (
        "url with unsupported scheme",
        edited((f"{LOBBY}.url", "ftp://127.0.0.1/cam.mp4")),
        f"{LOBBY}.url",
        ["unsupported scheme 'ftp'", "rtsp"],
    ),
    ("url without host", edited((f"{LOBBY}.url", "rtsp:///lobby")), f"{LOBBY}.url", ["no host name"]),
    ("camera id with slash", renamed_camera("lobby/2"), "cameras.lobby/2", ["invalid name", "'lobby/2'"]),
    (
        "camera id with spaces",
        renamed_camera("front door"),
        "cameras.front door",
        ["invalid name", "letters"],
    ),
    ("fps zero", edited((f"{LOBBY}.fps", 0)), f"{LOBBY}.fps", ["greater than 0"]),
    ("fps negative", edited((f"{LOBBY}.fps", -2.5)), f"{LOBBY}.fps", ["greater than 0"]),
    ("fps huge", edited((f"{LOBBY}.fps", 100_000)), f"{LOBBY}.fps", ["less than or equal to 240"]),
    (
        "polygon with two points",
        edited((f"{LOBBY}.zones.entrance.polygon", [[0.0, 0.0], [1.0, 1.0]])),
        f"{LOBBY}.zones.entrance.polygon",
        ["at least 3 points", "got 2"],
    ),
    (
        "polygon point below zero",
        edited((f"{LOBBY}.zones.entrance.polygon", [[0.2, -0.1], [1.0, 0.5], [0.0, 1.0]])),
        f"{LOBBY}.zones.entrance.polygon.0.1",
        ["greater than or equal to 0"],
    ),
    (
        "line with identical points",
        edited((f"{LOBBY}.lines.doorway.points", [[0.3, 0.3], [0.3, 0.3]])),
        f"{LOBBY}.lines.doorway.points",
        ["two distinct points"],
    ),
    (
        "rule with unknown type",
        edited((f"{RULES}.intruder.type", "vanish")),
        f"{RULES}.intruder",
        ["unknown rule type", "zone_intrusion", "loitering"],
    ),
    (
        "rule missing type",
        edited((f"{RULES}.intruder.type", ...)),
        f"{RULES}.intruder",
        ["missing 'type'", "crowding"],
    ),
    (
        "loitering without dwell_s",
        edited((f"{RULES}.lurker", {"type": "loitering", "zone": "entrance"})),
        f"{RULES}.lurker.dwell_s",
        ["required", "missing"],
    ),
    (
        "zone rule unknown zone",
        edited((f"{RULES}.intruder.zone", "yard")),
        f"{RULES}.intruder.zone",
        ["unknown zone 'yard'", "entrance"],
    ),
    (
        "line crossing unknown line",
        edited((f"{RULES}.passage.line", "gate")),
        f"{RULES}.passage.line",
        ["unknown line 'gate'", "doorway"],
    ),
    (
        "crowding min_count one",
        edited((f"{RULES}.crowd", {"type": "crowding", "min_count": 1})),
        f"{RULES}.crowd.min_count",
        ["greater than or equal to 2"],
    ),
    (
        "schedule with bad time",
        edited((f"{RULES}.intruder.schedule", {"start": "25:00"})),
        f"{RULES}.intruder.schedule.start",
        ["valid time", "hour"],
    ),
    (
        "schedule with bad weekday",
        edited((f"{RULES}.intruder.schedule", {"days": ["mon", "monday"]})),
        f"{RULES}.intruder.schedule.days.1",
        ["'mon'", "'sun'"],
    ),
    (
        "label rule unknown label",
        edited((f"{RULES}.fight", {"type": "label", "label": "fight"})),
        f"{RULES}.fight.label",
        ["unknown label 'fight'", "fall"],
    ),
    (
        "fusion fall without fusion",
        edited(("fusion", {"enabled": False}), (f"{RULES}.fall", {"type": "fall", "source": "fusion"})),
        f"{RULES}.fall.type",
        ["fusion.enabled is false"],
    ),
    (
        "fusion label empty description",
        edited(("fusion", {"labels": {"fall": "a person falls", "fight": "   "}})),
        "fusion.labels",
        ["'fight'", "needs a description"],
    ),
    ("imgsz not multiple of 32", edited(("detector", {"imgsz": 600})), "detector.imgsz", ["multiple of 32"]),
    ("detector device gpu", edited(("detector", {"device": "gpu"})), "detector.device", ["pattern", "cuda"]),
    ("detector conf above one", edited(("detector", {"conf": 1.5})), "detector.conf", ["less than 1"]),
    (
        "batching max_batch zero",
        edited(("batching", {"max_batch": 0})),
        "batching.max_batch",
        ["greater than or equal to 1"],
    ),
    (
        "backoff max below initial",
        edited((f"{LOBBY}.backoff", {"initial_s": 5, "max_s": 1})),
        f"{LOBBY}.backoff",
        ["max_s (1.0)", "initial_s (5.0)"],
    ),
    (
        "metrics port 70000",
        edited(("metrics", {"port": 70000})),
        "metrics.port",
        ["less than or equal to 65535"],
    ),
    (
        "redis url unset variable",
        edited(("redis", {"url": "${MISSING}"})),
        "redis.url",
        ["environment variable MISSING", "not set"],
    ),
    ("fps given as true", edited((f"{LOBBY}.fps", True)), LOBBY, ["fps: expected a number, got true"]),
    (
        "rule grace given as false",
        edited((f"{RULES}.intruder.exit_grace_s", False)),
        f"{RULES}.intruder",
        ["exit_grace_s: expected a number, got false"],
    ),
    (
        "zone point given as true",
        edited((f"{LOBBY}.zones.entrance.polygon", [[True, 0.5], [1.0, 0.5], [1.0, 1.0]])),
        f"{LOBBY}.zones.entrance.polygon.0.0",
        ["expected a number, got true"],
    ),
    ("yaml list as key", "cameras:\n  ? [a, b]\n  : 1\n", "line 2, column 5", ["unhashable key"]),
    (
        "yaml duplicate key",
        "cameras:\n  lobby:\n    url: rtsp://127.0.0.1/lobby\n    fps: 5\n    fps: 10\n",
        "line 5, column 5",
        ["invalid YAML", "duplicate key 'fps'"],
    ),
    (
        "zone polygon crossing itself",
        edited((f"{LOBBY}.zones.entrance.polygon", [[0, 0], [1, 1], [1, 0], [0, 1]])),
        f"{LOBBY}.zones.entrance.polygon",
        ["edges cross each other"],
    ),
    (
        "zone polygon on one line",
        edited((f"{LOBBY}.zones.entrance.polygon", [[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])),
        f"{LOBBY}.zones.entrance.polygon",
        ["encloses no area"],
    ),
    (
        "yaml syntax error",
        "cameras:\n  lobby:\n    url: rtsp://127.0.0.1/lobby\n     fps: 5\n",
        "line 4, column 9",
        ["invalid YAML", "mapping values"],
    ),
    (
        "yaml unclosed flow mapping",
        "cameras:\n  lobby: {url: rtsp://127.0.0.1/lobby\n",
        "line 3, column 1",
        ["invalid YAML", "expected ',' or '}'"],
    ),
    ("top level list", [BASE], "(top level)", ["mapping", "'cameras'"]),
    ("yaml top level list", "- cameras: {}\n", "(top level)", ["mapping", "'cameras'"]),
    ("alerts language fr", edited(("alerts", {"language": "fr"})), "alerts.language", ["'en'", "'zh'"]),
    (
        "tracking history one",
        edited(("tracking", {"history": 1})),
        "tracking.history",
        ["greater than or equal to 2"],
    ),
]


def problems_of(document: Any, tmp_path: Path) -> list[tuple[str, str]]:
    """Return the problems that parse_config, or load_config for YAML text, raises for ``document``."""
    with pytest.raises(ConfigError) as caught:
        if isinstance(document, str):
            path = tmp_path / "vigil.yaml"
            path.write_text(document, encoding="utf-8")
            load_config(path, env={})
        else:
            parse_config(document, env={})
    return caught.value.problems


def test_base_document_is_valid() -> None:
    config = parse_config(BASE, env={})
    assert set(config.cameras["lobby"].rules) == {"intruder", "passage"}


@pytest.mark.parametrize(
    ("document", "path", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_malformed_config_names_field(document: Any, path: str, words: list[str], tmp_path: Path) -> None:
    problems = problems_of(document, tmp_path)
    reasons = [reason for location, reason in problems if location == path]
    assert reasons, f"no problem at {path!r}: {problems}"
    for word in words:
        assert any(word in reason for reason in reasons), f"{word!r} missing from {reasons}"


def test_several_mistakes_reported_together() -> None:
    document = edited(
        ("logging", {"level": "debug"}),
        (f"{LOBBY}.fps", 0),
        (f"{LOBBY}.zones.entrance.polygon", [[0.0, 0.0], [1.0, 1.0]]),
        (f"{RULES}.intruder.zone", "yard"),
        (f"{RULES}.fight", {"type": "label", "label": "fight"}),
        ("detector", {"conf": 1.5}),
        ("metrics", {"port": 70000}),
    )
    locations = [location for location, _ in problems_of(document, Path())]
    assert "logging" in locations
    assert f"{LOBBY}.fps" in locations
    assert f"{LOBBY}.zones.entrance.polygon" in locations
    assert f"{RULES}.intruder.zone" in locations
    assert f"{RULES}.fight.label" in locations
    assert "detector.conf" in locations
    assert "metrics.port" in locations
    assert len(locations) == 7


def test_mistakes_in_two_cameras_reported() -> None:
    document = edited((f"{RULES}.passage.line", "gate"))
    second = copy.deepcopy(document["cameras"]["lobby"])
    second["rules"] = {"intruder": {"type": "zone_intrusion", "zone": "yard"}}
    second["fps"] = -1
    document["cameras"]["yard-cam"] = second
    locations = [location for location, _ in problems_of(document, Path())]
    assert f"{RULES}.passage.line" in locations
    assert "cameras.yard-cam.fps" in locations
    assert "cameras.yard-cam.rules.intruder.zone" in locations


def test_rule_classes_checked_against_the_detector() -> None:
    document = edited(
        (f"{RULES}.intruder.classes", ["person", "Normal"]),
        (f"{RULES}.fell", {"type": "fall", "source": "detector", "fall_class": "fallen"}),
    )
    config = parse_config(document, env={})
    with pytest.raises(ConfigError) as caught:
        check_rule_classes(config, ["Normal", "Fall"])
    assert caught.value.problems == [
        (f"{RULES}.intruder.classes", "person not among the detector's classes: Fall, Normal"),
        (f"{RULES}.fell.fall_class", "'fallen' not among the detector's classes: Fall, Normal"),
    ]
    check_rule_classes(parse_config(BASE, env={}), ["Normal", "Fall"])


def test_daemon_rejects_rule_class_the_detector_lacks(tmp_path: Path) -> None:
    document = edited((f"{RULES}.intruder.classes", ["person"]), ("fusion", {"enabled": False}))
    document["alerts"] = {"snapshot_dir": str(tmp_path), "spool_dir": str(tmp_path / "spool")}
    detector = types.SimpleNamespace(names={0: "Normal", 1: "Fall"})
    with pytest.raises(ConfigError, match="person not among the detector's classes"):
        Daemon(parse_config(document, env={}), detector=detector)  # type: ignore[arg-type]


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(
        "cameras:\n"
        "  lobby: &camera\n"
        "    url: rtsp://127.0.0.1:8554/lobby\n"
        "    fps: 5\n"
        "  hall:\n"
        "    <<: *camera\n"
        "    fps: 10\n"
    )
    config = load_config(path, env={})
    assert config.cameras["lobby"].fps == 5
    assert config.cameras["hall"].fps == 10
