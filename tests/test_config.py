"""Config validation: every error names the field path and the reason."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import LineCrossingRule, Schedule, load_config, parse_config
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

VALID: dict[str, Any] = {
    "cameras": {
        "gate": {
            "url": "rtsp://viewer:secret@127.0.0.1:8554/gate",
            "fps": 5,
            "zones": {"dock": {"polygon": [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]]}},
            "lines": {"door": {"points": [[0.5, 0.0], [0.5, 1.0]]}},
            "rules": {
                "dock-intrusion": {"type": "zone_intrusion", "zone": "dock"},
                "door-crossing": {"type": "line_crossing", "line": "door", "direction": "left_to_right"},
            },
        }
    },
    "redis": {"url": "redis://127.0.0.1:6379/0"},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """Return a copy of VALID with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    data = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def problems_of(data: Any, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env=env or {})
    return caught.value.problems


def test_valid_config_parses() -> None:
    config = parse_config(VALID, env={})
    rule = config.cameras["gate"].rules["door-crossing"]
    assert isinstance(rule, LineCrossingRule)
    assert rule.direction == "left_to_right"
    assert config.metrics.host == "127.0.0.1"


BAD_CASES = [
    (
        "cameras.gate.zones.dock.polygon",
        [[0.1, 0.1], [0.2, 0.2]],
        "cameras.gate.zones.dock.polygon",
        "needs at least 3 points",
    ),
    ("cameras.gate.fps", -1, "cameras.gate.fps", "greater than 0"),
    ("cameras.gate.colour", "red", "cameras.gate.colour", "unknown key"),
    ("cameras.gate.url", ..., "cameras.gate.url", "required field is missing"),
    ("cameras.gate.url", "  ", "cameras.gate.url", "must not be empty"),
    (
        "cameras.gate.rules.dock-intrusion.zone",
        "dok",
        "cameras.gate.rules.dock-intrusion.zone",
        "unknown zone 'dok'",
    ),
    (
        "cameras.gate.rules.door-crossing.line",
        "window",
        "cameras.gate.rules.door-crossing.line",
        "unknown line 'window'",
    ),
    (
        "cameras.gate.rules.door-crossing.direction",
        "up",
        "cameras.gate.rules.door-crossing.direction",
        "left_to_right",
    ),
    (
        "cameras.gate.rules.dock-intrusion.type",
        "teleport",
        "cameras.gate.rules.dock-intrusion",
        "unknown rule type",
    ),
    (
        "cameras.gate.rules.dock-intrusion.cooldown_s",
        -5,
        "cameras.gate.rules.dock-intrusion.cooldown_s",
        "greater than or equal to 0",
    ),
    (
        "cameras.gate.lines.door.points",
        [[0.5, 0.5], [0.5, 0.5]],
        "cameras.gate.lines.door.points",
        "two distinct points",
    ),
    (
        "cameras.gate.zones.dock.polygon",
        [[0.1, 0.1], [1.5, 0.1], [0.9, 0.9]],
        "cameras.gate.zones.dock.polygon.1.0",
        "less than or equal to 1",
    ),
    ("cameras", {}, "cameras", "at least one camera"),
    ("detector", {"imgsz": 650}, "detector.imgsz", "multiple of 32"),
    ("detector", {"device": "gpu7"}, "detector.device", "pattern"),
    ("batching", {"max_batch": 0}, "batching.max_batch", "greater than or equal to 1"),
    ("redis", {"url": "redis://127.0.0.1", "db": 2}, "redis.db", "unknown key"),
    ("metrics", {"port": 70000}, "metrics.port", "less than or equal to 65535"),
]


@pytest.mark.parametrize(
    ("path", "value", "where", "reason"), BAD_CASES, ids=[case[2] + ":" + case[3] for case in BAD_CASES]
)
def test_bad_config_names_field(path: str, value: Any, where: str, reason: str) -> None:
    problems = problems_of(with_change(path, value))
    assert any(location == where and reason in message for location, message in problems), problems


def test_rule_without_type_is_rejected() -> None:
    data = with_change("cameras.gate.rules.dock-intrusion", {"zone": "dock"})
    assert (
        "cameras.gate.rules.dock-intrusion",
        "missing 'type'; expected one of: zone_intrusion, loitering, line_crossing, crowding, fall, label",
    ) in problems_of(data)


def test_every_problem_is_reported() -> None:
    data = with_change("cameras.gate.fps", 0)
    data["cameras"]["gate"]["zones"]["dock"]["polygon"] = [[0.1, 0.1]]
    locations = {location for location, _ in problems_of(data)}
    assert "cameras.gate.fps" in locations
    assert "cameras.gate.zones.dock.polygon" in locations


def test_camera_id_must_be_safe() -> None:
    data = copy.deepcopy(VALID)
    data["cameras"]["../etc"] = data["cameras"].pop("gate")
    problems = problems_of(data)
    assert any(location.startswith("cameras.../etc") for location, _ in problems), problems


def test_environment_variables_are_expanded() -> None:
    data = with_change("cameras.gate.url", "rtsp://viewer:${GATE_PASSWORD}@127.0.0.1/gate")
    config = parse_config(data, env={"GATE_PASSWORD": "p@ss:word"})
    assert config.cameras["gate"].url.get_secret_value() == "rtsp://viewer:p@ss:word@127.0.0.1/gate"
    # The password never shows in the model's repr, which is what ends up in logs and tracebacks.
    assert "p@ss:word" not in repr(config)


def test_missing_environment_variable_names_field() -> None:
    data = with_change("cameras.gate.url", "rtsp://viewer:${GATE_PASSWORD}@127.0.0.1/gate")
    assert ("cameras.gate.url", "environment variable GATE_PASSWORD is not set") in problems_of(data)


def test_environment_default_is_used() -> None:
    data = with_change("cameras.gate.url", "${GATE_URL:-rtsp://127.0.0.1/fallback}")
    assert parse_config(data, env={}).cameras["gate"].url.get_secret_value() == "rtsp://127.0.0.1/fallback"


def test_redis_url_from_environment() -> None:
    data = with_change("redis", ...)
    config = parse_config(data, env={"VIGIL_REDIS_URL": "redis://127.0.0.1:6390/1"})
    assert config.redis.url is not None
    assert config.redis.url.get_secret_value() == "redis://127.0.0.1:6390/1"


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("cameras:\n  gate: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    location, reason = caught.value.problems[0]
    assert location.startswith("line ")
    assert "invalid YAML" in reason


@pytest.mark.parametrize(
    ("start", "end", "when", "active"),
    [
        ("08:00", "18:00", "2026-12-02 12:00", True),  # a Wednesday
        ("08:00", "18:00", "2026-12-02 19:00", False),
        ("22:00", "06:00", "2026-12-02 23:30", True),
        ("22:00", "06:00", "2026-12-03 05:00", True),  # Thursday early morning, window opened on Wednesday
        ("22:00", "06:00", "2026-12-02 12:00", False),
    ],
)
def test_schedule_window(start: str, end: str, when: str, active: bool) -> None:
    import datetime as dt

    schedule = Schedule.model_validate({"days": ["wed"], "start": start, "end": end})
    assert schedule.is_active(dt.datetime.fromisoformat(when)) is active


def test_check_config_command_prints_each_error(tmp_path: Path) -> None:
    data = with_change("cameras.gate.zones.dock.polygon", [[0.1, 0.1], [0.2, 0.2]])
    data["cameras"]["gate"]["fps"] = 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cameras.gate.zones.dock.polygon: needs at least 3 points, got 2" in result.stderr
    assert "cameras.gate.fps: Input should be greater than 0" in result.stderr
    assert "secret" not in result.stderr


def test_check_config_validates_a_training_config(tmp_path: Path) -> None:
    def check(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", "check-config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    shipped = check(REPO / "sample_streams" / "training" / "gmdcsa24.yaml")
    assert shipped.returncode == 0, shipped.stderr
    assert "OK (training config" in shipped.stdout
    broken = tmp_path / "training.yaml"
    broken.write_text(
        yaml.safe_dump(
            {"data": {"root": ".", "annotations": [{"format": "mot", "path": "gt.txt"}], "bogus": 1}}
        )
    )
    result = check(broken)
    assert result.returncode == 1
    assert "data.bogus: unknown key" in result.stderr
    assert "data.annotations.0: mot annotations need `video`" in result.stderr


def test_shipped_configs_are_valid() -> None:
    env = {"VIGIL_SAMPLE_DIR": "/samples"}
    config = load_config(REPO / "sample_streams" / "demo.yaml", env=env)
    assert set(config.cameras) == {"lobby", "ward"}
