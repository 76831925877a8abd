"""Count fall alerts of the fusion model and of the detector's own Fall class on the sample footage.

Each clip is replayed offline through the daemon's own stages with two rules on the
same tracks. Both are ``type: fall``: one with ``source: fusion`` (the fusion
model's ``fall`` label, zero-shot unless ``--model-dir`` names trained models) and
one with ``source: detector`` (the detector's ``Fall`` class held for
``min_frames`` detections). For the GMDCSA24 clips, an alert counts as a hit when
it starts inside an annotated ``Falling (...)`` segment or up to ``--slack``
seconds after it ends, and every other alert is false. The Intel clips contain no
falls, so each alert there is false.

    .venv/bin/python bench/fall_alerts.py --data-dir /path/to/sample-footage
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

from common import bench_parser, set_offline_defaults

set_offline_defaults()


FALL_DATASET = "gmdcsa24_fall"
INTEL_CLIPS = (
    "intel_sample_videos/one-by-one-person-detection.mp4",
    "intel_sample_videos/car-detection.mp4",
    "intel_sample_videos/bottle-detection.mp4",
)
RULES = ("fusion", "detector")


def fall_segments(events_csv: Path) -> dict[str, list[tuple[float, float]]]:
    """Read the (start, end) seconds of each ``Falling`` segment, keyed by clip path inside the dataset."""
    segments: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with events_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["label"].startswith("Falling"):
                segments[row["video"]].append((float(row["start_s"]), float(row["end_s"])))
    return segments


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--model-dir", type=Path, help="versioned fusion models; zero-shot when omitted")
    parser.add_argument(
        "--fps", type=float, default=10.0, help="maximum frames per second taken from each clip"
    )
    parser.add_argument("--imgsz", type=int, default=320, help="detector input size in pixels")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="fusion rule: minimum fall score in [0, 1]"
    )
    parser.add_argument("--hold", type=float, default=1.0, help="seconds the fall score must stay high")
    parser.add_argument("--min-frames", type=int, default=5, help="detector rule: Fall detections in a row")
    parser.add_argument("--slack", type=float, default=1.0, help="seconds after a segment that still count")
    parser.add_argument("--no-intel", action="store_true", help="skip the Intel clips")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from pipeline.config import parse_config
    from pipeline.detect import YoloDetector
    from pipeline.fusion.scorer import FusionScorer
    from pipeline.processing import Processor
    from pipeline.replay import replay_file

    fusion: dict[str, object] = {}
    if args.model_dir is not None:
        fusion["model_dir"] = str(args.model_dir)
    rules = {
        "fusion": {"type": "fall", "source": "fusion", "threshold": args.threshold, "hold_s": args.hold},
        "detector": {"type": "fall", "source": "detector", "min_frames": args.min_frames},
    }
    config = parse_config(
        {
            "cameras": {"clip": {"url": "clip", "fps": args.fps, "rules": rules}},
            "detector": {"imgsz": args.imgsz},
            "fusion": fusion,
        }
    )
    detector = YoloDetector(config.detector)
    scorer = FusionScorer(config.fusion, detector.device, detector.feature_dim)
    processor = Processor(config, detector, scorer, cameras={})
    print(f"fusion model {scorer.version}; detector {config.detector.weights} at imgsz {args.imgsz}")

    segments = fall_segments(args.data_dir / FALL_DATASET / "events.csv")
    clips = sorted((args.data_dir / FALL_DATASET).rglob("*.mp4"))
    if not args.no_intel:
        clips += [args.data_dir / name for name in INTEL_CLIPS]
    totals: dict[str, dict[str, int]] = {rule: defaultdict(int) for rule in RULES}
    header = f"{'clip':44} {'falls':>5} | " + " | ".join(f"{rule + ' hit/false':>18}" for rule in RULES)
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for clip in clips:
        relative = clip.relative_to(args.data_dir).as_posix()
        key = clip.relative_to(args.data_dir / FALL_DATASET).as_posix() if FALL_DATASET in relative else None
        falls = segments.get(key, []) if key else []
        if key is None:
            group = "intel"
        elif falls:
            group = "fall"
        else:
            group = "adl"
        alerts: dict[str, list[float]] = {rule: [] for rule in RULES}
        for result in replay_file(processor, clip, camera=config.cameras["clip"]):
            for event, frame in result.events:
                if event.state == "started":
                    alerts[event.rule].append(frame.timestamp)
        cells = []
        for rule in RULES:
            hits = sum(any(s <= t <= e + args.slack for s, e in falls) for t in alerts[rule])
            false = len(alerts[rule]) - hits
            totals[rule][f"{group}_clips"] += 1
            totals[rule][f"{group}_false"] += false
            totals[rule][f"{group}_caught"] += int(hits > 0)
            cells.append(f"{hits:>8}/{false:<9}")
        print(f"{relative[-44:]:44} {len(falls):>5} | " + " | ".join(f"{cell:>18}" for cell in cells))
    print(f"\n{len(clips)} clips in {time.perf_counter() - started:.0f} s")
    for rule in RULES:
        t = totals[rule]
        print(
            f"{rule:9} falls caught {t['fall_caught']}/{t['fall_clips']} fall clips; "
            f"false alerts: {t['fall_false']} on fall clips outside the fall, "
            f"{t['adl_false']} on {t['adl_clips']} ADL clips, {t['intel_false']} on {t['intel_clips']} Intel clips"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
