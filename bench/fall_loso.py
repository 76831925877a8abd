"""Leave-one-subject-out on GMDCSA24: fine-tuned fusion model against zero-shot and the detector's Fall class.

For each subject, a model is trained on the other subjects' clips (its validation
split grouped by video) and evaluated on the held-out subject's clips, together
with the zero-shot model and the detector's own ``Fall`` class under the same
footage. Event-level counts are summed over the folds. Each fold's model is also
run on the Intel sample clips, which contain no falls, to count false alerts.

    .venv/bin/python bench/fall_loso.py --data-dir ../shared/data
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from common import bench_parser, set_offline_defaults

set_offline_defaults()


INTEL = ("one-by-one-person-detection.mp4", "car-detection.mp4", "bottle-detection.mp4")
METHODS = ("fine-tuned", "zero-shot", "detector Fall class")


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("sample_streams/training/gmdcsa24.yaml"),
        help="training config file",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(".cache/vigil-features"), help="feature cache folder"
    )
    parser.add_argument("--epochs", type=int, help="maximum epochs per fold, overriding train.epochs")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import numpy as np

    from training.config import load_training_config
    from training.dataset import Extractor, VideoWindows
    from training.evaluate import EventCounts, alerts_from_scores, format_table
    from training.run import collect_segments, extract_all, fit, score_videos

    base = load_training_config(args.config)
    data = base.data.model_copy(
        update={"root": (args.data_dir / "gmdcsa24_fall").resolve(), "group_depth": 0}
    )
    train_settings = (
        base.train if args.epochs is None else base.train.model_copy(update={"epochs": args.epochs})
    )
    extract = base.extract.model_copy(update={"cache_dir": args.cache_dir})
    config = base.model_copy(update={"data": data, "train": train_settings, "extract": extract})

    segments, videos = collect_segments(config)
    windows = extract_all(config, videos)
    intel = {name: Extractor(config).windows(args.data_dir / "intel_sample_videos", name) for name in INTEL}

    subjects = sorted({Path(video).parts[0] for video in videos})
    rule = config.rule

    def rule_alerts(video_windows: VideoWindows, scores: np.ndarray) -> list[float]:
        return alerts_from_scores(
            video_windows.timestamps,
            video_windows.track_ids,
            scores,
            rule.threshold,
            rule.hold_s,
            rule.cooldown_s,
            rule.exit_grace_s,
        )

    totals = {method: EventCounts() for method in METHODS}
    intel_false = {method: 0 for method in METHODS}
    rows = []

    for subject in subjects:
        held_out = [video for video in videos if Path(video).parts[0] == subject]
        training_videos = [video for video in videos if video not in held_out]
        with tempfile.TemporaryDirectory() as scratch:
            model, history, _ = fit(config, segments, windows, training_videos, Path(scratch) / "last.pt")

        fold_windows = {video: windows[video] for video in held_out}
        fine_scores = score_videos(model, fold_windows)
        intel_scores = score_videos(model, intel)
        fold = {method: EventCounts() for method in METHODS}
        for video, video_windows in fold_windows.items():
            spans = [(start, end) for label, start, end in segments.get(video, []) if label == "fall"]
            alerts = {
                "fine-tuned": rule_alerts(video_windows, fine_scores[video][:, 0]),
                "zero-shot": rule_alerts(video_windows, video_windows.zero_shot[:, 0]),
                "detector Fall class": video_windows.detector_alerts,
            }
            for method in METHODS:
                fold[method].add(alerts[method], spans, video_windows.duration_s, rule.slack_s)
                totals[method].add(alerts[method], spans, video_windows.duration_s, rule.slack_s)

        # The zero-shot model and the detector do not change between folds, so their
        # Intel false alerts are counted once, in the first fold.
        for name, intel_windows in intel.items():
            intel_false["fine-tuned"] += len(rule_alerts(intel_windows, intel_scores[name][:, 0]))
            if subject == subjects[0]:
                intel_false["zero-shot"] += len(rule_alerts(intel_windows, intel_windows.zero_shot[:, 0]))
                intel_false["detector Fall class"] += len(intel_windows.detector_alerts)

        for method in METHODS:
            rows.append({"fold": subject, "method": method, **fold[method].as_dict()})
        print(
            f"{subject}: best epoch {history['best_epoch'] + 1}, validation loss {history['best_validation_loss']:.4f}"
        )

    columns = [
        "fold",
        "method",
        "segments",
        "found",
        "alerts",
        "hits",
        "precision",
        "recall",
        "f1",
        "false_alerts_without_label",
    ]
    print(format_table(rows, columns))
    print()
    summary = [
        {
            "method": method,
            **totals[method].as_dict(),
            "intel_false_alerts": intel_false[method] / (len(subjects) if method == "fine-tuned" else 1),
        }
        for method in METHODS
    ]
    print("All folds (Intel false alerts: mean over the fold models for fine-tuned):")
    print(
        format_table(
            summary,
            [
                "method",
                "segments",
                "found",
                "recall",
                "precision",
                "f1",
                "false_alerts_without_label",
                "intel_false_alerts",
            ],
        )
    )
    print(f"\nwindows per video: {np.mean([len(video_windows) for video_windows in windows.values()]):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
