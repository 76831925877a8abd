"""Measure track windows scored per second by the fusion model at batch sizes 1, 8 and 32.

The windows are real because they come from replaying a GMDCSA24 fall clip through
the daemon's own stages, so the prompts and cue vectors have their real lengths.
Each batch size scores the same windows, and batch 1 is the baseline of the ratios.
Both modes are timed: zero-shot (text only) and with prefix tokens (as after training).

    .venv/bin/python bench/fusion.py --data-dir /path/to/sample-footage
"""

from __future__ import annotations

import os
import sys
import time

from common import bench_parser, set_offline_defaults

set_offline_defaults()


CLIP = "gmdcsa24_fall/Subject 2/Fall/14.mp4"


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds timed per batch size and mode")
    parser.add_argument(
        "--device", default="cpu", help="torch device of the fusion model, such as cpu or cuda"
    )
    parser.add_argument(
        "--batches", default="1,8,32", help="comma-separated batch sizes; the first is the baseline"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.batches.split(",")]

    import torch

    from pipeline.config import FusionConfig, parse_config
    from pipeline.detect import YoloDetector
    from pipeline.fusion.features import TrackWindow
    from pipeline.fusion.scorer import FusionScorer
    from pipeline.processing import Processor
    from pipeline.replay import replay_file

    torch.set_num_threads(os.cpu_count() or 1)
    config = parse_config({"cameras": {"clip": {"url": "clip", "fps": 10}}, "detector": {"imgsz": 320}})
    detector = YoloDetector(config.detector)
    windows: list[TrackWindow] = []
    scorer = FusionScorer(FusionConfig(max_batch=1024), args.device, detector.feature_dim)
    processor = Processor(
        config, detector, scorer, cameras={}, on_scored=lambda window, _: windows.append(window)
    )
    for _ in replay_file(processor, args.data_dir / CLIP, camera=config.cameras["clip"]):
        pass
    if not windows:
        print(
            f"error: no track window was scored in {args.data_dir / CLIP}; check --data-dir", file=sys.stderr
        )
        return 1
    print(
        f"{len(windows)} track windows from {CLIP}; device {args.device}, {torch.get_num_threads()} threads"
    )

    for mode in ("zero-shot", "prefix"):
        scorer.model.spec.use_prefix = mode == "prefix"
        baseline = None
        for size in sizes:
            pool = (windows * (size // len(windows) + 1))[:size]
            # One untimed call warms up the model and its caches.
            scorer.score(pool)
            scored = 0
            started = time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                scorer.score(pool)
                scored += len(pool)
            rate = scored / (time.perf_counter() - started)
            if baseline is None:
                baseline = rate
            call_ms = 1000 / rate * size
            print(
                f"{mode:9} batch {size:>3}: {rate:8.1f} tracks/s  "
                f"({call_ms:6.1f} ms per call, ratio {rate / baseline:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
