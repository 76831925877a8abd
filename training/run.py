"""Steps behind ``vigil train`` and ``vigil eval``: import, extract, train, evaluate and publish."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from pipeline.errors import TrainingError
from pipeline.fusion.model import FusionModel
from training.config import AnnotationSource, TrainingConfig
from training.dataset import Extractor, VideoWindows, window_targets
from training.evaluate import (
    EventCounts,
    alerts_from_scores,
    average_precision,
    precision_recall_curve,
    roc_auc,
)
from training.train import Examples, predict, split_by_group, train

logger = logging.getLogger(__name__)

# A box track that is missing for longer than this becomes two segments.
MAX_GAP_S = 1.0

Segments = dict[str, list[tuple[str, float, float]]]
"""Annotated segments per video, as ``(label, start_s, end_s)``."""


def _video_fps(path: Path) -> float:
    """Read the frame rate of a video's first stream, falling back to 25 fps when the file has none."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 25)


def _import(source: AnnotationSource, config: TrainingConfig) -> Segments:
    """Import one annotation source as segments per video, with labels already mapped.

    A video whose labels all map to nothing is kept with an empty list.
    """
    from training import importers

    data = config.data
    path = source.path if source.path.is_absolute() else data.root / source.path
    skip = data.skip_bad_rows
    # The label map is applied here, not by the importer, so that videos with only
    # unmapped labels (daily activities) stay in the set as negatives.
    if source.format == "events_csv":
        result = importers.import_event_csv(path, skip_bad=skip)
    elif source.format == "cvat_video":
        result = importers.import_cvat_video(path, skip_bad=skip)
    elif source.format == "mot":
        assert source.video is not None, "AnnotationSource requires video for mot"
        result = importers.import_mot(path, source.video, skip_bad=skip)
    else:
        raise TrainingError(
            f"{source.format} annotations have no video time base, so they cannot be used for "
            "training. Use events_csv, cvat_video or mot."
        )

    def mapped(label: str) -> str | None:
        return data.label_map.get(label) if data.label_map else label

    segments: Segments = defaultdict(list)
    for segment in result.segments:
        segments.setdefault(segment.video, [])
        label = mapped(segment.label)
        if label is not None:
            segments[segment.video].append((label, segment.start_s, segment.end_s))

    # Box tracks become segments over the frames where the box is visible.
    spans: dict[tuple[str, object, str], list[int]] = defaultdict(list)
    for box in result.boxes:
        segments.setdefault(box.video, [])
        label = mapped(box.label)
        if label is not None and not box.outside:
            spans[(box.video, box.track_id, label)].append(box.frame)

    rates: dict[str, float] = {}
    for (video, _, label), frames in spans.items():
        rate = rates.setdefault(video, _video_fps(data.root / video))
        for first, last in frame_runs(frames, max_gap=max(1, round(MAX_GAP_S * rate))):
            segments[video].append((label, first / rate, (last + 1) / rate))
    return segments


def frame_runs(frames: Iterable[int], max_gap: int) -> list[tuple[int, int]]:
    """Group frame numbers into (first, last) runs, starting a new run after a gap of more than ``max_gap`` frames."""
    runs: list[tuple[int, int]] = []
    for frame in sorted(set(frames)):
        if runs and frame - runs[-1][1] <= max_gap:
            runs[-1] = (runs[-1][0], frame)
        else:
            runs.append((frame, frame))
    return runs


def collect_segments(config: TrainingConfig) -> tuple[Segments, list[str]]:
    """Import every annotation source and return segments of the configured labels and the videos to use."""
    segments: Segments = defaultdict(list)
    for source in config.data.annotations:
        for video, found in _import(source, config).items():
            segments[video].extend(item for item in found if item[0] in config.labels)

    videos = list(config.data.videos) if config.data.videos is not None else sorted(segments)
    videos += [video for video in config.data.extra_videos if video not in videos]
    return segments, videos


def extract_all(
    config: TrainingConfig, videos: Sequence[str], progress: bool = True
) -> dict[str, VideoWindows]:
    """Extract the track windows of every video, reusing the feature cache."""
    extractor = Extractor(config)
    found = {}
    for video in tqdm(videos, desc="features", unit="video", disable=not progress):
        found[video] = extractor.windows(config.data.root, video)
    logger.info("features: %d videos from the cache, %d extracted", extractor.hits, extractor.misses)
    return found


def data_hash(windows: dict[str, VideoWindows], segments: Segments) -> str:
    """Hash the video names, cues and segments that a model was trained on, as hex SHA-256."""
    digest = hashlib.sha256()
    for video in sorted(windows):
        digest.update(video.encode())
        digest.update(windows[video].cues.tobytes())
        digest.update(json.dumps(sorted(segments.get(video, []))).encode())
    return digest.hexdigest()


def _visual_dim(windows: dict[str, VideoWindows]) -> int:
    return max((w.visual.shape[1] for w in windows.values() if w.visual_present.any()), default=0)


def fit(
    config: TrainingConfig,
    segments: Segments,
    windows: dict[str, VideoWindows],
    train_videos: Sequence[str],
    checkpoint: Path | None = None,
    progress: bool = True,
) -> tuple[FusionModel, dict[str, Any], Examples]:
    """Train on ``train_videos`` with a grouped validation split held out.

    Return the model, its training history and the validation set.
    """
    labels = list(config.labels)
    training_videos, validation = split_by_group(
        train_videos, config.data.group_depth, config.train.validation_fraction, config.train.seed
    )
    logger.info(
        "training on %d videos, validating on %d: %s",
        len(training_videos),
        len(validation),
        ", ".join(validation),
    )
    dim = _visual_dim(windows)

    def examples(names: Sequence[str]) -> Examples:
        return Examples.stack(
            [(windows[v], window_targets(windows[v], segments.get(v, []), labels)) for v in names], dim
        )

    validation_set = examples(validation)
    model, history = train(
        config, examples(training_videos), validation_set, dim, checkpoint=checkpoint, progress=progress
    )
    history["train_videos"], history["validation_videos"] = list(training_videos), list(validation)
    return model, history, validation_set


def score_videos(model: FusionModel, windows: dict[str, VideoWindows]) -> dict[str, npt.NDArray[np.float32]]:
    """Score the windows of each video with ``model``, one column per label."""
    dim = model.spec.visual_dim
    return {
        video: predict(model, Examples.stack([(w, np.zeros((len(w), len(model.labels)), np.float32))], dim))
        for video, w in windows.items()
    }


def evaluate(
    config: TrainingConfig,
    segments: Segments,
    windows: dict[str, VideoWindows],
    scores: dict[str, npt.NDArray[np.float32]] | None,
    labels: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Compute window-level ROC AUC and AP and event-level counts for each label.

    When ``scores`` is None, the detector's Fall alerts are evaluated instead of a model.
    """
    rule = config.rule
    report: dict[str, dict[str, float]] = {}
    for column, label in enumerate(labels):
        counts = EventCounts()
        all_targets, all_scores = [], []
        for video, video_windows in windows.items():
            spans = [(start, end) for name, start, end in segments.get(video, []) if name == label]
            if scores is None:
                alerts = video_windows.detector_alerts if label == "fall" else []
            else:
                alerts = alerts_from_scores(
                    video_windows.timestamps,
                    video_windows.track_ids,
                    scores[video][:, column],
                    rule.threshold,
                    rule.hold_s,
                    rule.cooldown_s,
                    rule.exit_grace_s,
                )
                all_targets.append(window_targets(video_windows, segments.get(video, []), labels)[:, column])
                all_scores.append(scores[video][:, column])
            counts.add(alerts, spans, video_windows.duration_s, rule.slack_s)

        entry = counts.as_dict()
        if all_targets:
            entry["roc_auc"] = roc_auc(np.concatenate(all_targets), np.concatenate(all_scores))
            entry["ap"] = average_precision(np.concatenate(all_targets), np.concatenate(all_scores))
        report[label] = entry
    return report


def save_plots(
    history: dict[str, Any],
    validation: Examples,
    validation_scores: npt.NDArray[np.float32],
    labels: Sequence[str],
    folder: Path,
) -> list[Path]:
    """Write the loss curve and the validation precision-recall curve as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(history["train_loss"], label="training")
    axes.plot(history["validation_loss"], label="validation")
    axes.axvline(history["best_epoch"], linestyle=":", color="grey", label="best epoch")
    axes.set_xlabel("epoch")
    axes.set_ylabel("weighted binary cross entropy")
    axes.legend()
    figure.tight_layout()
    loss_path = folder / "loss.png"
    figure.savefig(loss_path, dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(5, 5))
    for column, label in enumerate(labels):
        if validation.targets[:, column].any():
            precision, recall = precision_recall_curve(
                validation.targets[:, column], validation_scores[:, column]
            )
            axes.plot(recall, precision, label=label)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_title("validation windows")
    if axes.get_lines():
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no positive windows in validation", ha="center", va="center")
    figure.tight_layout()
    pr_path = folder / "precision_recall.png"
    figure.savefig(pr_path, dpi=100)
    plt.close(figure)
    return [loss_path, pr_path]


def run_train(config: TrainingConfig, resume: bool = False, progress: bool = True) -> Path:
    """Import, extract and train, then publish a new model version under ``config.output``.

    Return the folder of the published version.
    """
    from pipeline.fusion.store import save_model

    segments, videos = collect_segments(config)
    windows = extract_all(config, videos, progress)

    checkpoint = config.output / ".checkpoints" / "last.pt"
    if not resume:
        checkpoint.unlink(missing_ok=True)
    model, history, validation = fit(config, segments, windows, videos, checkpoint, progress)

    validation_windows = {video: windows[video] for video in history["validation_videos"]}
    metrics = {
        "history": history,
        "validation": evaluate(
            config, segments, validation_windows, score_videos(model, validation_windows), model.labels
        ),
    }

    plots = save_plots(history, validation, predict(model, validation), model.labels, checkpoint.parent)
    folder = save_model(
        model, config.output, metrics=metrics, data_hash=data_hash(windows, segments), attachments=plots
    )
    checkpoint.unlink(missing_ok=True)
    return folder


def run_eval(config: TrainingConfig, model_folder: Path | None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a model folder, the zero-shot model and the detector's Fall class on the configured footage."""
    from pipeline.fusion.store import load_model

    segments, videos = collect_segments(config)
    windows = extract_all(config, videos, progress)
    labels = list(config.labels)
    report: dict[str, Any] = {
        "videos": len(windows),
        "zero-shot": evaluate(
            config, segments, windows, {v: w.zero_shot for v, w in windows.items()}, labels
        ),
    }
    if "fall" in labels:
        report["detector Fall class"] = evaluate(config, segments, windows, None, ["fall"])
    if model_folder is not None:
        model = load_model(model_folder)
        report[f"model {model.spec.version}"] = evaluate(
            config, segments, windows, score_videos(model, windows), model.labels
        )
    return report
